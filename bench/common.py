"""Helpers shared by the benchmarks: paths, the tiny model, and workers in fresh processes.

Heavy stacks (DeepSpeed, vLLM) run in a child process started with ``python -m bench.<module>
--worker``; the child writes its numbers as JSON to a file, so their logs on stdout never mix
with the result.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "pope"
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results.json"  # make bench merges every benchmark into it


def tiny_model_path() -> str:
    """The built-in tiny model's folder (built once into the cache, as the tests do)."""
    from orchestrator.models import resolve_model_path

    return str(resolve_model_path("builtin:tiny-qwen2", CACHE_DIR, seed=0))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_worker(
    module: str, args: list[str], env: dict[str, str] | None = None, timeout_s: float = 1800
) -> dict:
    """Run ``python -m module --worker OUT args`` in a fresh process; return the dict it wrote."""
    with tempfile.TemporaryDirectory(prefix="pope-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", str(out), *args]
        child_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"{' '.join(cmd)} exited with code {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
            )
        return json.loads(out.read_text())


def write_worker_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result))
