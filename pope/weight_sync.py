"""Moving weights from the learner to the actors over a gloo group of their own (the ``gloo``
weight-transfer backend; on GPUs vLLM's own ``nccl`` and ``ipc`` backends do the moving).

The group is separate from DeepSpeed's default group: rank 0 is the learner (it hosts the
TCPStore), ranks 1..N are the actors' engine processes; gloo goes through host memory.

A broadcast sends tensors in buckets: tensors of one dtype are packed into a flat buffer of at
most ``bucket_bytes`` and sent with one collective, so a small model costs a few calls, not one
per parameter. Every rank must call ``broadcast_tensors`` with the same ``metas``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_NUMPY_SUMMED = (torch.float32, torch.float16, torch.float64)  # checksum's dtypes summed by numpy
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # a key of _DTYPES

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GlooInitInfo:
    """The gloo backend's init info (vLLM's weight-transfer API carries it as a dict): where the
    learner's group is and the receiver's place in it. Engine worker w of an actor joins as
    ``rank_offset + w``; ``world_size`` counts the learner (rank 0) and every engine worker."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    timeout_s: float


@dataclass
class GlooUpdateInfo:
    """The gloo backend's update info: one broadcast of every tensor, by Hugging Face name, dtype
    name (a key of ``_DTYPES``) and shape, in the sender's order (the field names are vLLM's)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    timeout_s: float

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(
                f"weight update info: {len(self.names)} names, {len(self.dtype_names)} dtypes and "
                f"{len(self.shapes)} shapes: give one of each per tensor"
            )
        unknown = sorted(set(self.dtype_names) - set(_DTYPES))
        if unknown:
            raise ValueError(f"weight update info: dtypes {unknown} not among {sorted(_DTYPES)}")

    @classmethod
    def of(cls, metas: list[TensorMeta], timeout_s: float) -> GlooUpdateInfo:
        return cls(
            [m.name for m in metas], [m.dtype for m in metas], [list(m.shape) for m in metas], timeout_s
        )

    def metas(self) -> list[TensorMeta]:
        return [
            TensorMeta(n, tuple(s), d)
            for n, d, s in zip(self.names, self.dtype_names, self.shapes, strict=True)
        ]


def meta_of(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in named]


def make_group(host: str, port: int, rank: int, world_size: int, timeout_s: float):
    """A gloo process group that does not touch torch.distributed's default group. Rank 0 hosts
    the group's TCPStore on ``host`` only (127.0.0.1 on a local run)."""
    timeout = timedelta(seconds=timeout_s)
    listener = None
    if rank == 0:  # the store listens on ``host`` alone (TCPStore itself would take every interface)
        listener = socket.create_server((host, port), backlog=max(64, world_size))
    store = dist.TCPStore(
        host, port, world_size, is_master=(rank == 0), timeout=timeout, wait_for_workers=False,
        master_listen_fd=None if listener is None else listener.detach(),
    )  # fmt: skip
    prefixed = dist.PrefixStore("pope-weights", store)
    group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    return group, store  # the store must outlive the group on the master


def _buckets(metas: list[TensorMeta], bucket_bytes: int) -> Iterator[list[int]]:
    current: list[int] = []
    size = 0
    for i, meta in enumerate(metas):
        nbytes = meta.numel * torch.empty((), dtype=_DTYPES[meta.dtype]).element_size()
        if current and (size + nbytes > bucket_bytes or metas[current[0]].dtype != meta.dtype):
            yield current
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        yield current


def _pack(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy ``tensors`` one after another into ``flat``.

    On CPU the copy is numpy's, a plain single-threaded memcpy: torch's ``cat``/``copy_`` run an
    OpenMP region per tensor, and with 2 torch threads on a busy machine each region waits for
    both threads to be scheduled, which made packing 64 MiB take 60-200 ms instead of ~4 ms
    (BENCHMARKS.md, broadcast attempts). One thread copies at memory speed, several times faster
    than gloo sends, so nothing is lost on an idle machine either.
    """
    offset = 0
    for tensor in tensors:
        src = tensor.detach().reshape(-1).to(device=flat.device, dtype=flat.dtype)
        dst = flat[offset : offset + src.numel()]
        if flat.device.type == "cpu":
            dst.view(torch.uint8).numpy()[:] = src.view(torch.uint8).numpy()
        else:
            dst.copy_(src)
        offset += src.numel()
    assert offset == flat.numel(), "the bucket's tensors do not fill its buffer"


def broadcast_tensors(
    group,
    metas: list[TensorMeta],
    tensors: list[torch.Tensor] | None,
    timeout_s: float,
    bucket_bytes: int = 256 << 20,
    device: str = "cpu",
    buffers: dict | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Send (rank 0, ``tensors`` given) or receive (``tensors`` None) every tensor of ``metas``.

    Yields (name, tensor) in order as buckets arrive; the yielded tensors are views of the bucket's
    buffer, valid until the next broadcast: copy them (loading weights does). ``buffers``, a dict
    the caller keeps between broadcasts, makes every broadcast reuse the same bucket buffers:
    allocating and faulting in fresh pages for each one cost several times the transfer itself
    (BENCHMARKS.md), at the price of holding one copy of the weights per side.
    """
    timeout = timedelta(seconds=timeout_s)
    for index, bucket in enumerate(_buckets(metas, bucket_bytes)):
        dtype = _DTYPES[metas[bucket[0]].dtype]
        numel = sum(metas[i].numel for i in bucket)
        key = (index, dtype, numel, device)
        flat = buffers.get(key) if buffers is not None else None
        if flat is None:
            flat = torch.empty(numel, dtype=dtype, device=device)
            if buffers is not None:
                buffers[key] = flat
        if tensors is not None:
            _pack(flat, [tensors[i] for i in bucket])
        group.broadcast(flat, 0, timeout).wait()
        offset = 0
        for i in bucket:
            meta = metas[i]
            yield meta.name, flat[offset : offset + meta.numel].view(meta.shape)
            offset += meta.numel


def checksum(named: Iterable[tuple[str, torch.Tensor]]) -> float:
    """Order-independent float64 sum of every element, for quick equality checks.

    A CPU tensor numpy holds (float32, float16, float64) is summed by numpy, in float64 without a
    float64 copy and on one thread: torch's ``sum`` runs an OpenMP region per tensor, and with 2
    torch threads on a busy machine each region waits for both threads to be scheduled, which made
    SmolLM2-135M's 272 tensors take 3.3 s instead of 0.25 s at load 6.5 (BENCHMARKS.md, weight
    transfer; the same trap as ``_pack``'s). bfloat16 and device tensors: torch's
    ``sum(dtype=float64)``. Both ends of a transfer call this same function."""
    total = 0.0
    for _, tensor in named:
        tensor = tensor.detach()
        if tensor.device.type == "cpu" and tensor.dtype in _NUMPY_SUMMED:
            import numpy as np  # not at the top: scripts/gpu_check.py imports this with torch alone

            total += float(np.sum(tensor.numpy(), dtype=np.float64))
        else:
            total += tensor.sum(dtype=torch.float64).item()
    return total
