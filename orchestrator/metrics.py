"""The run's Prometheus exporter: one endpoint per run, on the driver node (deploy/metrics.md).

Components do not open ports: actors and preprocess workers publish ``Progress`` messages and the
learner ``StepReport`` / ``WeightsPublished`` on the control stream; the launcher feeds each one to
``RunMetrics.observe`` and calls ``refresh`` for the stream gauges it reads from Redis itself.
Every series carries ``run_id``. A failing export never stops training: failures are counted in
``export_errors`` and the run goes on.
"""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from broker.schemas import ActorProgress, Message, PreprocessProgress, StepReport, WeightsPublished
from broker.streams import oldest_unconsumed_age_s, stream_health, stream_key

LAG_BUCKETS = (0, 1, 2, 4, 8, 16, 32)
STEP_PARTS = {"data_wait": "data_wait_s", "forward_backward": "forward_backward_s", "optimizer": "optimizer_s",
              "broadcast": "broadcast_s"}  # fmt: skip


class RunMetrics:
    def __init__(self, run_id: str, client, port: int, host: str = "127.0.0.1"):
        self.run_id = run_id
        self.client = client
        self.registry = CollectorRegistry()
        self.export_errors = 0
        r = self.registry

        def gauge(name, doc, *labels):
            return Gauge(name, doc, ["run_id", *labels], registry=r)

        def counter(name, doc, *labels):
            return Counter(name, doc, ["run_id", *labels], registry=r)

        self.lag = gauge(
            "pope_broker_consumer_lag_entries", "Entries not yet delivered to the group.", "stream"
        )
        self.pending = gauge("pope_broker_pending_entries", "Entries delivered, not acknowledged.", "stream")
        self.oldest = gauge(
            "pope_broker_oldest_unconsumed_age_seconds", "Age of the oldest unacked entry.", "stream"
        )
        self.length = gauge("pope_broker_stream_length_entries", "Entries in the stream.", "stream")
        self.lost = gauge("pope_broker_lost_entries", "Entries trimmed before they were read.", "stream")
        self.dead = counter("pope_broker_dead_letters", "Entries set aside in the dead-letter stream.")
        self.policy_lag = Histogram("pope_learner_policy_lag_versions", "Versions behind, per trained group.",
                                    ["run_id"], buckets=LAG_BUCKETS, registry=r)  # fmt: skip
        self.actor_version = gauge("pope_actor_policy_version", "Weight version an actor holds.", "actor")
        self.learner_version = gauge("pope_learner_version", "The learner's weight version.")
        self.actor_groups = counter("pope_actor_groups", "Rollout groups written.", "actor")
        self.actor_tokens = counter("pope_actor_tokens", "Completion tokens generated.", "actor")
        self.pre_groups = counter("pope_preprocess_groups", "Groups scored and published.", "worker")
        self.pool = gauge("pope_pool_size", "Live Ray actors per pool.", "pool")
        self.reward = gauge("pope_learner_reward_mean", "Mean reward of the last step.", "variant")
        self.solve = gauge(
            "pope_learner_solve_rate", "Share of last step's groups with a success.", "variant"
        )
        self.headline = gauge(
            "pope_learner_hard_solved_unguided_fraction", "Hard set solved unguided (window)."
        )
        self.step_s = gauge("pope_learner_step_seconds", "The last step's time, by part.", "part")
        self.broadcast_s = gauge("pope_learner_weight_broadcast_seconds", "The last weight broadcast.")
        self.steps = counter("pope_learner_steps", "Optimizer steps done.")
        self.verdicts = counter(
            "pope_preprocess_verifications", "Completions verified, by verdict.", "verdict"
        )
        self.eval_pass_at_k = gauge(
            "pope_eval_pass_at_k",
            "Unguided pass@k of the last evaluation (eval.*), per held-out set.",
            "set",
            "k",
        )
        self.timeouts = counter("pope_preprocess_verifier_timeouts", "Verifications killed at the deadline.")
        self._seen: dict[tuple, float] = {}
        self.server = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=host, registry=r)

    @property
    def port(self) -> int | None:
        return self.server.server_port if self.server else None

    def _advance(self, metric, value: float, *labels: str, source: str = "") -> None:
        """Counters from cumulative totals: add what is new since ``source``'s last report."""
        key = (metric._name, source, *labels)
        delta = value - self._seen.get(key, 0.0)
        self._seen[key] = value
        metric.labels(self.run_id, *labels).inc(delta if delta >= 0 else value)  # a restart counts afresh

    def observe(self, message: Message) -> None:
        try:
            self._observe(message)
        except (ValueError, KeyError, TypeError):  # deliberate: metrics never stop training; counted
            self.export_errors += 1

    def _observe(self, message: Message) -> None:
        rid = self.run_id
        if isinstance(message, ActorProgress):
            self._advance(self.actor_groups, message.groups, message.component)
            self._advance(self.actor_tokens, message.tokens, message.component)
            self.actor_version.labels(rid, message.component).set(message.policy_version)
        elif isinstance(message, PreprocessProgress):
            self._advance(self.pre_groups, message.groups, message.component)
            for verdict in ("correct", "wrong", "timeout", "error"):
                self._advance(self.verdicts, getattr(message, verdict), verdict, source=message.component)
            self._advance(self.timeouts, message.timeout, source=message.component)
        elif isinstance(message, StepReport):
            for lag in message.policy_lags:
                self.policy_lag.labels(rid).observe(lag)
            for part, field in STEP_PARTS.items():
                self.step_s.labels(rid, part).set(getattr(message, field))
            for variant, value in message.reward_mean_by_variant.items():
                self.reward.labels(rid, variant).set(value)
            for variant, value in message.solve_rate_by_variant.items():
                self.solve.labels(rid, variant).set(value)
            if message.hard_solved_unguided_fraction is not None:
                self.headline.labels(rid).set(message.hard_solved_unguided_fraction)
            self.steps.labels(rid).inc()
        elif isinstance(message, WeightsPublished):
            self.learner_version.labels(rid).set(message.version)
            self.broadcast_s.labels(rid).set(message.broadcast_s)

    def observe_eval(self, name: str, pass_at_k: dict[str, float]) -> None:
        """An evaluation round's pass@k of set ``name`` (``{"1": 0.25, ...}``)."""
        for k, value in pass_at_k.items():
            self.eval_pass_at_k.labels(self.run_id, name, k).set(value)

    def refresh(self, pool_sizes: dict[str, int]) -> None:
        """Stream gauges, read from Redis now, and the pool sizes."""
        rid = self.run_id
        try:
            for stream in ("rollouts", "train"):
                health = stream_health(self.client, rid, stream)
                self.lag.labels(rid, stream).set(health.lag)
                self.pending.labels(rid, stream).set(health.pending)
                self.length.labels(rid, stream).set(health.length)
                self.lost.labels(rid, stream).set(health.lost)
                self.oldest.labels(rid, stream).set(oldest_unconsumed_age_s(self.client, rid, stream))
            self._advance(self.dead, float(self.client.xlen(stream_key(rid, "dead"))))
            for pool, size in pool_sizes.items():
                self.pool.labels(rid, pool).set(size)
        except (
            OSError,
            ValueError,
            RuntimeError,
            redis.RedisError,
        ) as exc:  # deliberate: counted, training goes on
            self.export_errors += 1
            if self.export_errors == 1:  # the first one says why; the count says how often
                print(f"metrics export failed (counted in metrics_export_errors; training goes on): {exc!r}")

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
