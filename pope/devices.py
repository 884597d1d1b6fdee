"""Which device, collective backend, DeepSpeed accelerator and precision each component uses.

Small pure functions of the config and of the devices a process sees. Nothing here queries a
device itself: callers pass ``torch.cuda.is_available()`` and ``torch.cuda.device_count()``, so
every branch, the CUDA ones included, is tested on a machine without a GPU. No torch import: the CPU-only checks stay cheap.

    learner.num_gpus --learner_device--> "cpu" | "cuda:<local rank>"
                          |--> dist_backend        gloo | nccl      (DeepSpeed's default group)
                          |--> ds_accelerator      DS_ACCELERATOR   cpu | cuda
    model.dtype -------ds_precision------------> DeepSpeed's bf16 / fp16 section

The weight-transfer backend is chosen from the config too (``pope.config.select_weight_transfer``).

The config alone decides the device: a learner with ``num_gpus: 0`` trains on CPU even on a
machine with GPUs (Ray then gives it none), and one that asks for a GPU where there is none fails
at start, naming the key, instead of training on CPU for days.
"""

from __future__ import annotations


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
