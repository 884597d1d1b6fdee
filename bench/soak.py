"""Soak: a long CPU training run with each component's memory sampled, to find growth.

    python -m bench.soak --minutes 60 [--config configs/demo_cpu_hf.yaml] [--out bench/soak.json] [KEY=VALUE ...]

Starts `pope train` with a step budget it cannot reach in time, samples the resident memory (RSS)
of every process of the run every ``--every`` seconds, grouped by role (the Ray actor's title:
RolloutActor, PreprocessWorker, Learner; the vLLM engine processes; redis-server; Ray's own
daemons; the launcher), and after ``--minutes`` ends the run's processes (only those it started).
Reports per role: RSS at 10% of the run (after warm-up), at the end, the max, and the least-squares
slope in MiB per hour over the part after warm-up, and every sample (``series``). Not a test: a
benchmark for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
ROLES = (
    "RolloutActor",
    "PreprocessWorker",
    "Learner",
    "VLLM",
    "redis-server",
    "raylet",
    "gcs_server",
    "pope train",
)


def role_of(proc: psutil.Process) -> str | None:
    try:
        title = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return next((role for role in ROLES if role in title), None)


def sample(root: psutil.Process) -> dict[str, float]:
    """MiB of RSS per role, summed over the role's processes."""
    totals: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        role = role_of(proc)
        if role is None:
            continue
        try:
            totals[role] = totals.get(role, 0.0) + proc.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return totals


def slope_per_hour(times: list[float], values: list[float]) -> float:
    n = len(times)
    if n < 2:
        return 0.0
    mt, mv = sum(times) / n, sum(values) / n
    var = sum((t - mt) ** 2 for t in times)
    return (
        0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var * 3600
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--config", default="configs/demo_cpu_hf.yaml")
    parser.add_argument("--out", default=str(ROOT / "bench" / "soak.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides passed to pope train (key=value)")
    args = parser.parse_args()
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans stay ours
    out_dir = ROOT / "runs" / "soak"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [str(Path(sys.executable).parent / "pope"), "train", "--config", args.config, "learner.steps=1000000",
           f"run.output_dir={out_dir}", "metrics.port=0", "checkpoint.every=50", *args.overrides]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "soak.log", "w")  # noqa: SIM115 (closed at the end)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    series: list[tuple[float, dict[str, float]]] = []
    try:
        while time.monotonic() - start < args.minutes * 60 and proc.poll() is None:
            series.append((time.monotonic() - start, sample(root)))
            time.sleep(args.every)
    finally:
        procs = (
            [root, *root.children(recursive=True)]
            if proc.poll() is None
            else psutil.Process().children(recursive=True)
        )
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=20)
        log.close()
    warm = [s for s in series if s[0] >= 0.1 * args.minutes * 60] or series
    report = {"command": " ".join(sys.argv), "minutes": args.minutes, "samples": len(series), "roles": {}}
    for role in sorted({r for _, s in series for r in s}):
        points = [(t, s[role]) for t, s in warm if role in s]
        if not points:
            continue
        report["roles"][role] = {
            "rss_mib_after_warmup": round(points[0][1], 1),
            "rss_mib_end": round(points[-1][1], 1),
            "rss_mib_max": round(max(v for _, v in points), 1),
            "slope_mib_per_hour": round(slope_per_hour([t for t, _ in points], [v for _, v in points]), 1),
        }
    roles = sorted(report["roles"])
    report["series"] = {  # every sample: seconds since start, MiB per role (None: no such process then)
        "t_s": [round(t, 1) for t, _ in series],
        **{role: [None if role not in s else round(s[role], 1) for _, s in series] for role in roles},
    }
    metrics_files = sorted(out_dir.glob("*/metrics.jsonl"))
    report["learner_steps"] = len(metrics_files[-1].read_text().splitlines()) if metrics_files else 0
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "series"}, indent=2))


if __name__ == "__main__":
    main()
