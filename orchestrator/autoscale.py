"""The optional autoscaling policy: resize the pools from how full the buffer is.

The buffer holds at most ``broker.max_groups_in_flight`` groups (producers wait beyond it). Its
fill over a window says which side is short:

    fill < low_fill                        the learner waits for data: one more actor
    fill > high_fill, mostly unscored      scoring is the bottleneck: one more preprocess worker
    fill > high_fill, mostly scored        actors outpace the learner and wait: one actor fewer

One change per decision, within the configured bounds, then a cooldown and a fresh window, so
that a resize shows its effect before the next one. The launcher feeds it a sample per learner
step and applies what it returns with ``Pools.resize``; this module only decides (and is tested
on synthetic series).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pope.config import AutoscaleConfig


@dataclass(frozen=True)
class Decision:
    pool: str  # "actors" | "preprocess"
    size: int
    reason: str


@dataclass
class LagAutoscaler:
    config: AutoscaleConfig
    bound: int  # broker.max_groups_in_flight
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, waiting, unscored)
    last_change: float = float("-inf")
    window_start: float | None = None  # the first sample since the last change

    def observe(self, now: float, waiting: int, unscored: int) -> None:
        """One sample: groups waiting to be trained, of which ``unscored`` still wait for scoring."""
        if not 0 <= unscored <= waiting:
            raise ValueError(f"autoscale sample: need 0 <= unscored ({unscored}) <= waiting ({waiting})")
        if self.window_start is None:
            self.window_start = now
        self.samples.append((now, waiting, unscored))
        self.samples = [s for s in self.samples if s[0] >= now - self.config.window_s]

    def decide(self, now: float, actors: int, workers: int) -> Decision | None:
        """The resize to make now, or None (too early, not enough samples, or within the band)."""
        cfg = self.config
        if now - self.last_change < cfg.cooldown_s:
            return None
        if self.window_start is None or now - self.window_start < cfg.window_s:
            return None  # not a full window of samples since the last change
        window = [s for s in self.samples if s[0] >= self.window_start]
        waiting = sum(s[1] for s in window) / len(window)
        unscored = sum(s[2] for s in window) / len(window)
        fill = waiting / self.bound
        span = f"{fill:.0%} full over {cfg.window_s:g}s"
        decision = None
        if fill < cfg.low_fill and actors < cfg.max_actors:
            decision = Decision("actors", actors + 1, f"learner starved (buffer {span})")
        elif fill > cfg.high_fill and unscored > 0.5 * waiting and workers < cfg.max_workers:
            decision = Decision(
                "preprocess",
                workers + 1,
                f"scoring behind (buffer {span}, {unscored / waiting:.0%} unscored)",
            )
        elif fill > cfg.high_fill and unscored <= 0.5 * waiting and actors > cfg.min_actors:
            decision = Decision("actors", actors - 1, f"actors wait on backpressure (buffer {span})")
        if decision is not None:
            self.last_change, self.window_start, self.samples = now, None, []
        return decision
