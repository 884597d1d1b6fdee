"""scripts/gpu_check.py: its checks on CPU (--device cpu), its SKIP and --require-gpu paths on a
machine without CUDA, and checks that fail when their data is damaged."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
CHECKS = ["learner_step_bf16", "bucket_packing", "ipc_transfer"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="these paths are for a machine without CUDA")


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def status_lines(stdout: str) -> dict[str, str]:
    """check name -> its status word, from the ``STATUS name  seconds  detail`` lines."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("PASS", "FAIL", "SKIP") and words[1] in CHECKS:
            out[words[1]] = words[0]
    return out


def tiny_qwen2_numel() -> int:
    """Parameters of the tiny Qwen2 (pope/models/tiny.py TINY_SPEC), counted by hand: tied
    embedding 384 x 128; per layer q 128x128 + 128, k and v 128x64 + 64 each, o 128x128, the MLP
    3 x 128x256, two norms of 128; a final norm of 128."""
    layer = (128 * 128 + 128) + 2 * (128 * 64 + 64) + 128 * 128 + 3 * 128 * 256 + 2 * 128
    return 384 * 128 + 2 * layer + 128


def test_cpu_mode_passes_every_check_and_writes_its_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_script("--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status_lines(proc.stdout) == dict.fromkeys(CHECKS, "PASS")
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS and all(c["status"] == "PASS" for c in checks.values())

    step = checks["learner_step_bf16"]["numbers"]
    if step["model"] == "tiny-qwen2":
        assert step["weights"] == 26  # embedding, 2 x (q, k, v with biases; o; 3 MLP; 2 norms), final norm
    assert step["loss_abs_diff"] == pytest.approx(abs(step["loss_bf16"] - step["loss_fp32"]))
    assert step["loss_abs_diff"] <= step["loss_tolerance"]
    assert step["weights_moved"] == step["weights"]
    # the synthetic batch: 8 rollouts of 32 tokens; the mask is never empty and covers only targets
    assert 0 < step["tokens"] <= 8 * 31

    packing = checks["bucket_packing"]["numbers"]
    if packing["model"] == "tiny-qwen2":
        assert packing["tensors"] == 2 * 26
        assert packing["bytes"] == tiny_qwen2_numel() * (4 + 2)  # float32 and a bfloat16 copy
    # 64 KiB buckets: several per dtype, never more than one per tensor
    assert 2 * 2 < packing["buckets"] <= packing["tensors"]

    ipc = checks["ipc_transfer"]["numbers"]
    assert ipc["bytes"] == 64 << 20 and ipc["via"] == "CPU shared memory"
    expected = float(
        torch.randn(16 << 20, generator=torch.Generator().manual_seed(0)).sum(dtype=torch.float64)
    )
    assert ipc["checksum"] == pytest.approx(expected, rel=1e-12)
    assert ipc["receiver_checksum"] == pytest.approx(expected, rel=1e-12)


@no_cuda
def test_default_device_without_cuda_skips_every_check_and_exits_0(tmp_path):
    out = tmp_path / "skip.json"
    proc = run_script("--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status_lines(proc.stdout) == dict.fromkeys(CHECKS, "SKIP")
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["gpu"] is None
    assert all("no CUDA device" in c["detail"] for c in report["checks"])


@no_cuda
def test_require_gpu_without_cuda_exits_1():
    proc = run_script("--require-gpu")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert status_lines(proc.stdout) == dict.fromkeys(CHECKS, "SKIP")
    assert "FAIL --require-gpu" in proc.stdout


def test_each_check_fails_on_damaged_data(tmp_path):
    out = tmp_path / "corrupt.json"
    proc = run_script("--device", "cpu", "--json", str(out), *[f"--corrupt={name}" for name in CHECKS])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert status_lines(proc.stdout) == dict.fromkeys(CHECKS, "FAIL")
    details = {c["name"]: c["detail"] for c in json.loads(out.read_text())["checks"]}
    assert "not finite" in details["learner_step_bf16"]
    assert "tensors differ" in details["bucket_packing"]
    assert "checksum" in details["ipc_transfer"]


@pytest.fixture
def gpu_check(monkeypatch):
    """The script imported as a module, in this process."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bucket_packing_catches_a_pack_that_drops_a_tensor(gpu_check, monkeypatch):
    import pope.weight_sync as weight_sync

    pack = weight_sync._pack

    def pack_all_but_last(flat, tensors):
        pack(flat, tensors)
        if len(tensors) > 1:  # the bucket's last tensor left as zeros
            flat[flat.numel() - tensors[-1].numel() :] = 0

    monkeypatch.setattr(weight_sync, "_pack", pack_all_but_last)
    result = gpu_check.check_bucket_packing("cpu")
    assert result.status == "FAIL" and "tensors differ" in result.detail
    monkeypatch.setattr(weight_sync, "_pack", pack)
    assert gpu_check.check_bucket_packing("cpu").status == "PASS"


def test_without_transformers_the_checks_use_the_torch_model(gpu_check, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # ``import transformers`` raises ImportError
    step = gpu_check.check_learner_step("cpu")
    packing = gpu_check.check_bucket_packing("cpu")
    assert step.status == "PASS" and packing.status == "PASS", (step.detail, packing.detail)
    assert step.numbers["model"] == packing.numbers["model"] == "torch-lm"
    # embedding 384 x 128, 2 blocks of (norm: 2 x 128; 128 -> 256 and 256 -> 128 with biases), final norm
    block = 2 * 128 + (128 * 256 + 256) + (256 * 128 + 128)
    assert packing.numbers["bytes"] == (384 * 128 + 2 * block + 2 * 128) * (4 + 2)
