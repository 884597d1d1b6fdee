"""The autoscaling policy on synthetic buffer series; each expected decision worked out by hand."""

from __future__ import annotations

import pytest

from pope.autoscale import Decision, LagAutoscaler
from pope.config import AutoscaleConfig, ConfigError, load_config

pytestmark = pytest.mark.unit
CFG = AutoscaleConfig(enabled=True, min_actors=1, max_actors=3, max_workers=2, window_s=10, cooldown_s=20)


def feed(scaler: LagAutoscaler, start: float, seconds: int, waiting: int, unscored: int) -> float:
    for t in range(seconds + 1):
        scaler.observe(start + t, waiting, unscored)
    return start + seconds


def test_starved_learner_adds_an_actor_then_waits_for_the_cooldown():
    scaler = LagAutoscaler(CFG, bound=8)
    now = feed(scaler, 100, 4, waiting=1, unscored=0)
    assert scaler.decide(now, actors=1, workers=1) is None, "4 s of samples is not a 10 s window"
    now = feed(scaler, now, 6, waiting=1, unscored=0)  # 10 s at 1/8 = 12.5% < 25%
    decision = scaler.decide(now, actors=1, workers=1)
    assert decision == Decision("actors", 2, "learner starved (buffer 12% full over 10s)")
    now = feed(scaler, now, 15, waiting=0, unscored=0)  # 15 s later: still inside the 20 s cooldown
    assert scaler.decide(now, actors=2, workers=1) is None
    now = feed(scaler, now, 5, waiting=0, unscored=0)
    assert scaler.decide(now, actors=2, workers=1) == Decision(
        "actors", 3, "learner starved (buffer 0% full over 10s)"
    )
    now = feed(scaler, now, 30, waiting=0, unscored=0)
    assert scaler.decide(now, actors=3, workers=1) is None, "max_actors reached"


def test_full_buffer_of_unscored_groups_adds_a_worker_and_of_scored_ones_removes_an_actor():
    scaler = LagAutoscaler(CFG, bound=8)
    now = feed(scaler, 0, 10, waiting=8, unscored=6)  # 100% full, 75% unscored
    assert scaler.decide(now, actors=2, workers=1) == Decision(
        "preprocess", 2, "scoring behind (buffer 100% full over 10s, 75% unscored)"
    )
    now = feed(scaler, now, 20, waiting=8, unscored=6)
    assert scaler.decide(now, actors=2, workers=2) is None, "max_workers reached, and scored are the minority"
    scaler = LagAutoscaler(CFG, bound=8)
    now = feed(scaler, 0, 10, waiting=8, unscored=2)
    assert scaler.decide(now, actors=2, workers=1) == Decision(
        "actors", 1, "actors wait on backpressure (buffer 100% full over 10s)"
    )
    now = feed(scaler, now, 30, waiting=8, unscored=2)
    assert scaler.decide(now, actors=1, workers=1) is None, "min_actors reached"


def test_inside_the_band_nothing_changes_and_the_window_forgets_old_samples():
    scaler = LagAutoscaler(CFG, bound=8)
    now = feed(scaler, 0, 10, waiting=4, unscored=1)  # 50%: inside [25%, 90%]
    assert scaler.decide(now, actors=2, workers=1) is None
    now = feed(scaler, now, 10, waiting=0, unscored=0)  # the 50% samples left the 10 s window
    assert scaler.samples[0][0] == now - 10
    assert scaler.decide(now, actors=2, workers=1).pool == "actors"


def test_bad_samples_and_bounds_are_rejected():
    scaler = LagAutoscaler(CFG, bound=8)
    with pytest.raises(ValueError, match="unscored"):
        scaler.observe(0, waiting=1, unscored=2)
    with pytest.raises(ConfigError, match="min_actors"):
        load_config(None, ["autoscale.min_actors=5", "autoscale.max_actors=2"])
    with pytest.raises(ConfigError, match="low_fill"):
        load_config(None, ["autoscale.low_fill=0.9", "autoscale.high_fill=0.5"])
