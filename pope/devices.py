"""Which device, collective backend, DeepSpeed accelerator and precision each component uses.

Small pure functions of the config and of the devices a process sees. Nothing here queries a
device itself: callers pass ``torch.cuda.is_available()`` and ``torch.cuda.device_count()`` (or,
for the weight transfer, what each process reported), so every branch, the CUDA ones included,
is tested on a machine without a GPU. No torch import: the CPU-only checks stay cheap.

    learner.num_gpus --learner_device--> "cpu" | "cuda:<local rank>"
                          |--> dist_backend        gloo | nccl      (DeepSpeed's default group)
                          |--> ds_accelerator      DS_ACCELERATOR   cpu | cuda
    model.dtype -------ds_precision------------> DeepSpeed's bf16 / fp16 section
    who holds which GPU --select_weight_backend--> gloo | nccl | ipc   (learner -> actors)

The config alone decides the device: a learner with ``num_gpus: 0`` trains on CPU even on a
machine with GPUs (Ray then gives it none), and one that asks for a GPU where there is none fails
at start, naming the key, instead of training on CPU for days.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WEIGHT_BACKENDS = ("auto", "gloo", "nccl", "ipc")


def learner_device(num_gpus: float, cuda_available: bool, device_count: int, local_rank: int = 0) -> str:
    """The learner's torch device: 'cpu' when ``learner.num_gpus`` is 0, else 'cuda:<local_rank>'
    (Ray and torchrun each show a rank its own GPUs, numbered from 0)."""
    if num_gpus == 0:
        return "cpu"
    if not cuda_available or device_count == 0:
        raise ValueError(
            f"learner.num_gpus={num_gpus:g}: this process sees no CUDA device "
            "(set learner.num_gpus=0 to train on CPU)"
        )
    if local_rank >= device_count:
        raise ValueError(
            f"learner.num_gpus={num_gpus:g}: local rank {local_rank} has no GPU of its own "
            f"({device_count} visible); start at most {device_count} learner ranks per node"
        )
    return f"cuda:{local_rank}"


def dist_backend(device: str) -> str:
    """torch.distributed backend of DeepSpeed's default group for a learner on ``device``: NCCL
    collectives need CUDA tensors, gloo ones CPU tensors."""
    return "nccl" if device.startswith("cuda") else "gloo"


def ds_accelerator(learner_num_gpus: float) -> str:
    """``DS_ACCELERATOR`` for the run's processes (DeepSpeed reads it at import): the learner's
    device type. Set explicitly either way, so DeepSpeed never guesses from what is installed."""
    return "cpu" if learner_num_gpus == 0 else "cuda"


def check_ds_accelerator(device: str, env_value: str | None) -> None:
    """A ``DS_ACCELERATOR`` already set that disagrees with the learner's device (a CPU accelerator
    with a CUDA model, or the reverse) fails here, before DeepSpeed mixes the two."""
    if env_value is None or env_value == "":
        return
    want = "cuda" if device.startswith("cuda") else "cpu"
    if env_value != want:
        raise ValueError(
            f"DS_ACCELERATOR={env_value} but the learner trains on {device} (learner.num_gpus): "
            f"unset it or set DS_ACCELERATOR={want}"
        )


def ds_precision(dtype: str) -> dict:
    """DeepSpeed's precision section for ``model.dtype``. In bf16 or fp16 DeepSpeed keeps float32
    master weights and optimizer states: an AdamW update of lr ~1e-6 is far below bf16's
    resolution (8 bits of mantissa, steps of ~0.4% of a weight) and would round to no change on
    pure bf16 weights. fp16 also scales the loss dynamically (its range is narrow)."""
    if dtype == "float32":
        return {}
    if dtype == "bfloat16":
        return {"bf16": {"enabled": True}}
    if dtype == "float16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}}
    raise ValueError(f"model.dtype {dtype!r}: use float32, bfloat16 or float16")


@dataclass(frozen=True)
class Placement:
    """Where one process of the weight transfer runs: its node, and the GPU it holds (a device
    UUID, ``None`` on CPU). Ray's runtime context and ``torch.cuda.get_device_properties`` give both."""

    node: str
    gpu: str | None


def select_weight_backend(
    requested: str, learner: Placement, actors: Sequence[Placement], nccl_available: bool = True
) -> str:
    """How the learner's weights reach the actors: 'gloo' (host memory, works everywhere),
    'nccl' (GPU to GPU, one rank per GPU) or 'ipc' (CUDA IPC handles, same node only).

    ``requested`` 'auto' takes the fastest that the placement allows: NCCL when every process holds
    a GPU of its own; IPC when every process holds a GPU on the learner's node and some share one
    (NCCL refuses two ranks on one device); gloo otherwise. An explicit 'nccl' or 'ipc' that the
    placement does not allow fails, naming the process in the way.
    """
    if requested not in WEIGHT_BACKENDS:
        raise ValueError(f"weight transfer {requested!r}: use one of {', '.join(WEIGHT_BACKENDS)}")
    if requested == "gloo":
        return "gloo"
    everyone = [("the learner", learner)] + [(f"actor {i}", a) for i, a in enumerate(actors)]
    without_gpu = [name for name, p in everyone if p.gpu is None]
    gpus = [p.gpu for _, p in everyone]
    shared = sorted({g for g in gpus if g is not None and gpus.count(g) > 1})
    off_node = [name for name, p in everyone if p.node != learner.node]
    if requested == "auto":
        if without_gpu:
            return "gloo"
        if not shared and nccl_available:
            return "nccl"
        return "ipc" if not off_node else "gloo"
    if without_gpu:
        raise ValueError(
            f"weight transfer {requested!r} needs a GPU on every side; none on {', '.join(without_gpu)}"
        )
    if requested == "nccl":
        if not nccl_available:
            raise ValueError("weight transfer 'nccl': this torch build has no NCCL")
        if shared:
            raise ValueError(
                f"weight transfer 'nccl': GPU {shared[0]} is held by more than one process (NCCL allows one "
                "rank per GPU); use 'ipc' when they share a node, or give each process its own GPU"
            )
        return "nccl"
    if off_node:
        raise ValueError(
            f"weight transfer 'ipc': CUDA IPC works within one node; {', '.join(off_node)} "
            f"run off the learner's node {learner.node}"
        )
    return "ipc"
