"""The learner's side of the weight protocol: the group with the actors, the bucketed broadcast,
and the check that every actor loaded exactly what was sent.

    regroup(actors)  new process group: learner rank 0, actor i rank i+1 (each joins on its own loop)
                     then a broadcast, so a new or restarted actor generates with the current weights
    broadcast(v)     actors post a receive for v; the learner sends every tensor in buckets
                     (pope/weight_sync.py); each actor returns the checksum of what it loaded, which
                     must equal the learner's

Every wait is bounded by ``broadcast_timeout_s``. The actors are reached through their Ray handles:
``init_weight_group`` and ``update_weights`` (actors/actor.py).
"""

from __future__ import annotations

import math
import os
import time

from pope.weight_sync import broadcast_tensors, checksum, make_group


class WeightPublisher:
    def __init__(self, policy, timeout_s: float, actor_handles=None):
        self.policy = policy
        self.timeout_s = timeout_s
        self.actor_handles = list(actor_handles or [])
        self.group = None
        self._store = None
        self._buffers: dict = {}  # broadcast buckets, reused between broadcasts
        self.last_regroup: dict | None = None

    def regroup(self, actor_handles: list) -> dict:
        """A new weight group with ``actor_handles`` (ranks 1..N), then the current weights to all."""
        import ray

        from broker.embedded import free_port

        self.last_regroup = None
        # a local run keeps the group on the loopback (the launcher sets POPE_WEIGHT_SYNC_HOST)
        host = os.environ.get("POPE_WEIGHT_SYNC_HOST") or ray.util.get_node_ip_address()
        port = free_port()
        world = len(actor_handles) + 1
        refs = [
            h.init_weight_group.remote(host, port, world, self.timeout_s, i + 1)
            for i, h in enumerate(actor_handles)
        ]
        self.group, self._store = make_group(host, port, 0, world, self.timeout_s)
        ray.get(refs, timeout=self.timeout_s)
        self.actor_handles = list(actor_handles)
        broadcast_s, num_bytes, sent, received = self.broadcast(self.policy.version)
        self.last_regroup = {
            "actors": len(actor_handles),
            "broadcast_s": broadcast_s,
            "num_bytes": num_bytes,
            "checksum": sent,
            "actor_checksums": received,
        }
        return self.last_regroup

    def broadcast(self, version: int) -> tuple[float, int, float, list[float]]:
        """Send the current weights as ``version`` to every actor.

        Returns (seconds, bytes, the learner's checksum, each actor's checksum of what it loaded)."""
        import ray

        start = time.monotonic()
        named = list(self.policy.iter_weights())
        if not self.actor_handles:  # a learner without actors (component tests, offline training)
            return time.monotonic() - start, 0, checksum(named), []
        metas = self.policy.weight_metas()
        refs = [h.update_weights.remote(version, metas, self.timeout_s) for h in self.actor_handles]
        tensors = [t for _, t in named]
        for _ in broadcast_tensors(self.group, metas, tensors, self.timeout_s, buffers=self._buffers):
            pass
        sent = checksum(named)  # while the actors load what they received
        try:
            received = ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"an actor did not load weights v{version}: {exc}") from exc
        for index, value in enumerate(received):
            if not math.isclose(value, sent, rel_tol=1e-9, abs_tol=1e-6):
                raise RuntimeError(
                    f"actor{index} loaded weights with checksum {value}, the learner sent {sent}"
                )
        num_bytes = sum(t.numel() * t.element_size() for _, t in named)
        return time.monotonic() - start, num_bytes, sent, list(received)
