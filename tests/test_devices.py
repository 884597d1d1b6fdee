"""Device, backend and precision selection (pope/devices.py), every CUDA branch included, on CPU.

The selection functions take the device facts as arguments, so the CUDA cases are exercised by
passing them. The one mock is ``torch.cuda.is_available`` / ``device_count`` in the learner test
below: the code under test queries those itself, and only a GPU machine would answer True.
"""

from __future__ import annotations

import pytest

from pope.config import load_config
from pope.devices import (
    check_ds_accelerator,
    dist_backend,
    ds_accelerator,
    ds_precision,
    learner_device,
)

pytestmark = pytest.mark.unit


def test_learner_device_follows_num_gpus_not_the_machine():
    assert learner_device(0, cuda_available=True, device_count=8) == "cpu"  # GPUs there, none asked for
    assert learner_device(1, cuda_available=True, device_count=1) == "cuda:0"
    assert learner_device(0.5, cuda_available=True, device_count=1) == "cuda:0"
    assert learner_device(1, cuda_available=True, device_count=4, local_rank=3) == "cuda:3"


def test_learner_device_errors_name_the_key():
    with pytest.raises(ValueError, match=r"learner.num_gpus=1: this process sees no CUDA device"):
        learner_device(1, cuda_available=False, device_count=0)
    with pytest.raises(ValueError, match=r"local rank 2 has no GPU of its own \(2 visible\)"):
        learner_device(1, cuda_available=True, device_count=2, local_rank=2)


def test_backend_accelerator_and_precision():
    assert dist_backend("cpu") == "gloo"
    assert dist_backend("cuda:1") == "nccl"
    assert ds_accelerator(0) == "cpu" and ds_accelerator(1) == "cuda" and ds_accelerator(0.25) == "cuda"
    assert ds_precision("float32") == {}
    assert ds_precision("bfloat16") == {"bf16": {"enabled": True}}
    assert ds_precision("float16")["fp16"]["enabled"] is True
    assert ds_precision("float16")["fp16"]["loss_scale"] == 0  # 0 = dynamic loss scaling
    with pytest.raises(ValueError, match="model.dtype 'int8'"):
        ds_precision("int8")


def test_a_disagreeing_ds_accelerator_is_refused():
    check_ds_accelerator("cpu", None)
    check_ds_accelerator("cpu", "cpu")
    check_ds_accelerator("cuda:0", "cuda")
    with pytest.raises(ValueError, match=r"DS_ACCELERATOR=cpu but the learner trains on cuda:0"):
        check_ds_accelerator("cuda:0", "cpu")
    with pytest.raises(ValueError, match=r"set DS_ACCELERATOR=cpu"):
        check_ds_accelerator("cpu", "cuda")


def test_ds_config_carries_the_model_dtype():
    from learner.policy import ds_config

    cfg = load_config(None, ["model.dtype=bfloat16", "learner.micro_batch_size=2"]).for_learner()
    got = ds_config(cfg.learner, sequences_per_step=8, world_size=2, dtype=cfg.model.dtype)
    assert got["bf16"] == {"enabled": True} and "fp16" not in got
    assert (
        got["gradient_accumulation_steps"] == 2 and got["train_batch_size"] == 8
    )  # 8 / 2 ranks / 2 per pass
    assert "bf16" not in ds_config(cfg.learner, 8, 2)  # float32 by default


def test_launcher_sets_ds_accelerator_from_the_learner():
    from orchestrator.launcher import _process_env

    cpu = load_config(None, ["actors.num_gpus=1"])  # actors on GPU, learner on CPU
    gpu = load_config(None, ["learner.num_gpus=1"])
    assert _process_env(cpu, 1)["DS_ACCELERATOR"] == "cpu"
    assert _process_env(gpu, 1)["DS_ACCELERATOR"] == "cuda"


def test_policy_trainer_refuses_a_gpu_it_does_not_have(tiny_model_path, monkeypatch):
    """The learner's device comes from learner.num_gpus and is checked before DeepSpeed loads.
    Mocked: the CUDA device query (True on a GPU machine only)."""
    import torch

    from learner.policy import PolicyTrainer

    cfg = load_config(None, ["learner.num_gpus=1"]).for_learner()
    with pytest.raises(ValueError, match="learner.num_gpus=1: this process sees no CUDA device"):
        PolicyTrainer(cfg, tiny_model_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(ValueError, match="DS_ACCELERATOR=cpu but the learner trains on cuda:0"):
        PolicyTrainer(cfg, tiny_model_path)
