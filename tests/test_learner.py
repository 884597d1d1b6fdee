"""The DeepSpeed learner for real: ZeRO 0/2/3 on 2 ranks (torchrun, gloo) against 1 rank, and an
exact resume from a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parent / "scripts" / "learner_step.py"
ROOT = Path(__file__).resolve().parent.parent


def run_script(tmp_path: Path, model: str, name: str, *args: str, ranks: int = 1) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if ranks == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), model, *args]
    else:
        from broker.embedded import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={free_port()}", str(SCRIPT), str(out), model, *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, tiny_model_path):
    return run_script(tmp_path_factory.mktemp("one"), tiny_model_path, "one", "--zero", "0")


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_two_ranks_match_one_rank(tmp_path, tiny_model_path, one_rank, zero):
    two = run_script(tmp_path, tiny_model_path, f"two_z{zero}", "--zero", str(zero), ranks=2)
    assert two["world_size"] == 2 and one_rank["world_size"] == 1
    # one rank skips DeepSpeed's shared-memory all-reduce op (a 40 s first build, nothing to reduce); two keep it
    assert one_rank["shm_comm_op_loaded"] is False and two["shm_comm_op_loaded"] is True
    # same loss on the same batch, and the same update (two steps), up to float32 reduction order
    assert two["losses"] == pytest.approx(one_rank["losses"], rel=1e-5, abs=1e-7)
    assert two["checksum"] == pytest.approx(one_rank["checksum"], rel=1e-6)
    assert two["abs_checksum"] == pytest.approx(one_rank["abs_checksum"], rel=1e-6)
    assert two["sample"] == pytest.approx(one_rank["sample"], abs=1e-6)
    # the logged grad norm: finite, and the same whether pope computes it (ZeRO 0) or DeepSpeed's ZeRO optimizer does
    assert all(0 < g < float("inf") for g in one_rank["grad_norms"])
    assert two["grad_norms"] == pytest.approx(one_rank["grad_norms"], rel=1e-4)


def test_resume_continues_exactly(tmp_path, tiny_model_path, one_rank):
    ckpt = str(tmp_path / "ckpt")
    saved = run_script(
        tmp_path, tiny_model_path, "save", "--zero", "0", "--checkpoint", ckpt, "--mode", "save"
    )
    resumed = run_script(
        tmp_path, tiny_model_path, "resume", "--zero", "0", "--checkpoint", ckpt, "--mode", "resume"
    )
    # the uninterrupted run's second loss, and its weights, are reproduced exactly by the restored learner
    assert resumed["losses"] == [saved["losses"][1]]
    assert resumed["checksum"] == saved["checksum"] and resumed["sample"] == saved["sample"]
    assert saved["losses"] == one_rank["losses"]  # the save itself changes nothing


def test_nonfinite_loss_skips_the_update(tmp_path, tiny_model_path, one_rank):
    """A batch with NaN behaviour logprobs: the step is skipped (weights bit-identical, counted), and
    the next good step equals the uninterrupted run's second step."""
    got = run_script(tmp_path, tiny_model_path, "nan", "--zero", "0", "--mode", "nan")
    assert got["nonfinite"] == 1.0 and got["unchanged_after_nan"] is True
    assert got["steps"] == 2  # two updates: the NaN step did not count
    assert got["losses"][0] == one_rank["losses"][0]
    assert got["losses"][1] == pytest.approx(one_rank["losses"][1], rel=1e-6)


def test_lr_warmup_scales_adamw_first_updates(tmp_path, tiny_model_path):
    """AdamW's first update moves every weight with a gradient by lr exactly (m / sqrt(v) is the sign
    of the gradient), so under a 4-update warm-up the largest move of the first update is lr / 4
    (it would be lr if the warm-up were not applied), and later ones stay within their rates."""
    lr = 0.01  # the script's rate
    warm = run_script(
        tmp_path, tiny_model_path, "warm", "--zero", "0", "--mode", "moves", "learner.lr_warmup_steps=4"
    )
    assert warm["lrs"] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4], rel=1e-12)
    assert warm["max_abs_moves"][0] == pytest.approx(lr / 4, rel=1e-4)
    assert all(move <= 2 * rate for move, rate in zip(warm["max_abs_moves"], warm["lrs"], strict=True))


def test_micro_batches_cut_to_their_own_length_match_one_micro_batch(tmp_path, tiny_model_path, one_rank):
    """The learner sorts a step's sequences by length and cuts each micro-batch to its longest one
    (one_rank: 4 micro-batches of 2, sequences of 6-14 tokens). One micro-batch of all 8 sequences,
    padded to the step's longest, must give the same losses, grad norms and weights."""
    whole = run_script(tmp_path, tiny_model_path, "whole", "learner.micro_batch_size=8", "--zero", "0")
    assert whole["losses"] == pytest.approx(one_rank["losses"], rel=1e-5, abs=1e-7)
    assert whole["grad_norms"] == pytest.approx(one_rank["grad_norms"], rel=1e-5)
    assert whole["checksum"] == pytest.approx(one_rank["checksum"], rel=1e-6)
    assert whole["sample"] == pytest.approx(one_rank["sample"], abs=1e-6)
