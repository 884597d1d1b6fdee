"""The autoscaling policy on synthetic buffer series (each expected decision worked out by hand), and
a real run whose starved actor pool the launcher grows."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.autoscale import Decision, LagAutoscaler
from pope.config import AutoscaleConfig, ConfigError, load_config

CFG = AutoscaleConfig(enabled=True, min_actors=1, max_actors=3, max_workers=2, window_s=10, cooldown_s=20)


def feed(scaler: LagAutoscaler, start: float, seconds: int, waiting: int, unscored: int) -> float:
    for t in range(seconds + 1):
        scaler.observe(start + t, waiting, unscored)
    return start + seconds


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_inside_the_band_nothing_changes_and_the_window_forgets_old_samples():
    scaler = LagAutoscaler(CFG, bound=8)
    now = feed(scaler, 0, 10, waiting=4, unscored=1)  # 50%: inside [25%, 90%]
    assert scaler.decide(now, actors=2, workers=1) is None
    now = feed(scaler, now, 10, waiting=0, unscored=0)  # the 50% samples left the 10 s window
    assert scaler.samples[0][0] == now - 10
    assert scaler.decide(now, actors=2, workers=1).pool == "actors"


@pytest.mark.unit
def test_samples_sparser_than_the_window_still_decide():
    """The launcher samples about every 1-1.5 s; a 2 s window must still fill (it once never did)."""
    scaler = LagAutoscaler(AutoscaleConfig(enabled=True, window_s=2, cooldown_s=2), bound=64)
    decisions = []
    for i in range(6):
        now = 10 + 1.4 * i
        scaler.observe(now, waiting=10, unscored=0)
        decisions.append(scaler.decide(now, actors=1, workers=1))
    assert decisions[:2] == [None, None]  # 0 s and 1.4 s of window
    assert decisions[2] == Decision("actors", 2, "learner starved (buffer 16% full over 2s)")


@pytest.mark.unit
def test_bad_samples_and_bounds_are_rejected():
    scaler = LagAutoscaler(CFG, bound=8)
    with pytest.raises(ValueError, match="unscored"):
        scaler.observe(0, waiting=1, unscored=2)
    with pytest.raises(ConfigError, match="min_actors"):
        load_config(None, ["autoscale.min_actors=5", "autoscale.max_actors=2"])
    with pytest.raises(ConfigError, match="low_fill"):
        load_config(None, ["autoscale.low_fill=0.9", "autoscale.high_fill=0.5"])


@pytest.mark.integration
@pytest.mark.slow
def test_launcher_grows_a_starved_actor_pool(tmp_path):
    """A real run (HF engine, embedded Redis, DeepSpeed learner) starts with one actor and a buffer
    bound of 64 groups: in its first seconds the buffer is under half full, so the policy adds the
    second actor, which joins the weight group (whether it also writes a group
    before the learner's last step depends on the machine's speed: not asserted; tests/test_cluster.py
    checks that a resized pool's new actor trains)."""
    from orchestrator.launcher import train
    from tests.conftest import become_subreaper

    become_subreaper()
    overrides = [
        f"run.output_dir={tmp_path}",
        "actors.num_actors=1",
        "learner.steps=12",
        "learner.groups_per_step=2",
        "broker.max_groups_in_flight=64",
        "autoscale.enabled=true",
        "autoscale.max_actors=2",
        "autoscale.low_fill=0.5",
        "autoscale.high_fill=0.95",
        "autoscale.window_s=2",
        "autoscale.cooldown_s=2",
        "metrics.port=0",
    ]
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "demo_cpu_hf.yaml", overrides)
    lines: list[str] = []
    summary = train(config, printer=lines.append)
    grown = [line for line in lines if line.startswith("autoscale actors to 2 (learner starved")]
    assert len(grown) == 1, "\n".join(lines)
    assert summary["actor_versions"] == [12, 12], "the added actor loaded every broadcast after it joined"
    assert summary["groups_duplicated"] == 0 and summary["groups_lost"] == 0
    assert summary["groups_trained"] == 24
