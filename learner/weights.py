"""The learner's side of the weight protocol: the transfer group with the actors, the update, and
the check that every actor loaded exactly what was sent.

    regroup(actors)  a new transfer group: learner rank 0, actor i rank i+1 (each joins on its own
                     loop), then an update, so a new or restarted actor generates with the current weights
    broadcast(v)     the backend's trainer engine sends every tensor; each actor loads them between
                     two decoding steps and (gloo) returns the checksum of what it loaded, which must
                     equal the learner's

One code path for every backend (``learner.weight_transfer``, resolved by
``PopeConfig.weight_transfer_backend``), in the shape of vLLM's weight-transfer API: a trainer engine
(``trainer_init``, ``send_weights``) drives the actors through a client with vLLM's four calls.
``gloo`` is ``GlooTrainerTransfer`` below (bucketed broadcasts, pope/weight_sync.py); ``nccl`` and
``ipc`` are vLLM's own trainer engines (``vllm.distributed.weight_transfer``, CUDA only, imported
on use). ``ActorPoolClient`` is the client: it fans each call out to every actor's Ray handle
(``init_weight_transfer``, ``update_weights``: actors/actor.py). An actor applies an update whole
(start, receive, finish) on its own loop, so the client's start and finish have nothing to do.

Every wait is bounded by ``broadcast_timeout_s``.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from pope.weight_sync import GlooInitInfo, GlooUpdateInfo, broadcast_tensors, checksum, make_group


class ActorPoolClient:
    """vLLM's ``VLLMWeightSyncClient`` over the pool's Ray handles: one call reaches every actor.
    Actor i takes ranks from ``rank_offset`` + i (one engine worker per actor)."""

    def __init__(self, actor_handles: list, timeout_s: float):
        self.actor_handles = list(actor_handles)
        self.timeout_s = timeout_s
        self.version = 0  # the version the next update carries (set by the publisher)
        self.checksums: list[float | None] = []  # what each actor loaded in the last update

    def _get(self, refs: list, what: str) -> list:
        import ray

        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"an actor failed {what}: {exc}") from exc

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offset = init_info.get("rank_offset", 1)
        refs = [
            h.init_weight_transfer.remote({**init_info, "rank_offset": offset + i}, self.timeout_s)
            for i, h in enumerate(self.actor_handles)
        ]
        self._get(refs, "to join the weight-transfer group")

    def start_weight_update(self) -> None:
        """Nothing: each actor starts its update itself, on its loop."""

    def update_weights(self, update_info: dict) -> None:
        version = self.version
        refs = [h.update_weights.remote(version, update_info, self.timeout_s) for h in self.actor_handles]
        self.checksums = self._get(refs, f"to load weights v{version}")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        """Nothing: each actor finished its update before its ``update_weights`` returned."""


class GlooTrainerTransfer:
    """The trainer engine of the ``gloo`` backend (vLLM's trainer-engine interface)."""

    def __init__(self, client: ActorPoolClient, policy, group, store, timeout_s: float):
        self.client = client
        self.policy = policy
        self.group, self._store = group, store  # the store must outlive the group
        self.timeout_s = timeout_s
        self._buffers: dict = {}  # broadcast buckets, reused between updates

    @classmethod
    def trainer_init(cls, init_info: GlooInitInfo, *, client: ActorPoolClient, policy) -> GlooTrainerTransfer:
        """Open the group as rank 0 while the actors join it."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            joined = pool.submit(client.init_weight_transfer_engine, asdict(init_info))
            group, store = make_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            joined.result()
        return cls(client, policy, group, store, init_info.timeout_s)

    def send_weights(self) -> None:
        """The update: the actors post their receive, the buckets go out, the actors finish."""
        named = list(self.policy.iter_weights())
        info = GlooUpdateInfo.of(self.policy.weight_metas(), self.timeout_s)
        self.client.start_weight_update()
        with ThreadPoolExecutor(max_workers=1) as pool:
            loaded = pool.submit(self.client.update_weights, asdict(info))
            for _ in broadcast_tensors(self.group, info.metas(), [t for _, t in named], self.timeout_s, buffers=self._buffers):  # fmt: skip
                pass
            loaded.result()
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.group = self._store = None


class PolicySource:
    """vLLM's ``WeightSource`` over the learner's policy (Hugging Face names, full tensors)."""

    def __init__(self, policy):
        self.policy = policy

    def metadata(self):
        import torch
        from vllm.distributed.weight_transfer import ParamMeta

        return [
            ParamMeta(m.name, getattr(torch, m.dtype), tuple(m.shape)) for m in self.policy.weight_metas()
        ]

    def __iter__(self):
        return iter(self.policy.iter_weights())


def vllm_trainer_engine(backend: str, host: str, port: int, world: int, client: ActorPoolClient, policy):
    """vLLM's trainer engine for ``nccl`` or ``ipc`` (CUDA only)."""
    from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=world, rank=0)
    else:
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=PolicySource(policy))


class WeightPublisher:
    def __init__(self, policy, timeout_s: float, actor_handles=None, backend: str = "gloo"):
        self.policy = policy
        self.timeout_s = timeout_s
        self.backend = backend
        self.actor_handles = list(actor_handles or [])
        self.client: ActorPoolClient | None = None
        self.transfer = None  # the backend's trainer engine
        self.last_regroup: dict | None = None

    def regroup(self, actor_handles: list) -> dict:
        """A new transfer group with ``actor_handles`` (ranks 1..N), then the current weights to all."""
        import ray

        from broker.embedded import free_port

        self.last_regroup = None
        if self.transfer is not None:
            self.transfer.shutdown()
        # a local run keeps the group on the loopback (the launcher sets POPE_WEIGHT_SYNC_HOST)
        host = os.environ.get("POPE_WEIGHT_SYNC_HOST") or ray.util.get_node_ip_address()
        port, world = free_port(), len(actor_handles) + 1
        self.client = ActorPoolClient(actor_handles, self.timeout_s)
        if self.backend == "gloo":
            info = GlooInitInfo(host, port, 1, world, self.timeout_s)
            self.transfer = GlooTrainerTransfer.trainer_init(info, client=self.client, policy=self.policy)
        else:
            self.transfer = vllm_trainer_engine(self.backend, host, port, world, self.client, self.policy)
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

    def broadcast(self, version: int) -> tuple[float, int, float, list[float | None]]:
        """Send the current weights as ``version`` to every actor.

        Returns (seconds, bytes, the learner's checksum, each actor's checksum of what it loaded:
        None where the backend computes none)."""
        start = time.monotonic()
        named = list(self.policy.iter_weights())
        sent = checksum(named)
        if not self.actor_handles:  # a learner without actors (component tests, offline training)
            return time.monotonic() - start, 0, sent, []
        self.client.version = version
        self.transfer.send_weights()
        received = list(self.client.checksums)
        for index, value in enumerate(received):
            if value is not None and not math.isclose(value, sent, rel_tol=1e-9, abs_tol=1e-6):
                raise RuntimeError(
                    f"actor{index} loaded weights with checksum {value}, the learner sent {sent}"
                )
        num_bytes = sum(t.numel() * t.element_size() for _, t in named)
        return time.monotonic() - start, num_bytes, sent, received
