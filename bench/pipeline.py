"""The whole pipeline end to end: ``orchestrator.launcher.train`` on configs/demo_cpu.yaml.

Local Ray, an embedded redis-server, 2 vLLM-CPU actors, 1 preprocess worker (math-verify), the
DeepSpeed-CPU learner and the gloo weight broadcast, for a fixed number of learner steps
(``learner.steps``: 20 full, 5 quick). The run starts Ray, so it runs in a fresh process
(``python -m bench.pipeline --worker OUT STEPS``) that writes the numbers as JSON.

    completions_per_s = groups_trained * num_rollouts / train_loop_s

``train_loop_s`` is the launcher's time from the learner's first ``run`` call to its return
(setup, the final probe and the shutdown are not in it). ``tokens_per_s`` counts trained
completion tokens (``tokens_trained`` summed over the steps of metrics.jsonl) per second of the
same loop; ``padded_tokens_trained`` sums the padded batches the learner computed on (the
compute bound's training time, bench/derived.py). ``steady_completions_per_s`` leaves the first step out (start of the loop to the end of
step 1: the buffer fills, the engines warm up): steps 2..N over the time between the ends of
step 1 and step N. ``launcher_wall_s`` is the launcher's ``wall_s`` split (its own key:
results.json's ``wall_s`` is the benchmark's); ``step_median`` has per-step medians from
metrics.jsonl, ``first_step`` the same times of step 1.

``run_long`` (``--only pipeline_long``, key ``pipeline_long``) is the generation-heavy workload of
``ratio_vs_trl_long``: the same run with ``LONG_OVERRIDES``, every rollout decoding the full
``LONG_MAX_NEW_TOKENS`` = 256 (``actors.engine.stop_at_eos=false``: the tiny model would stop
after ~25 tokens), 6 steps (quick: 3). bench/trl_peer.py ``run_long`` is its TRL peer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import ROOT

CONFIG = ROOT / "configs" / "demo_cpu.yaml"
OVERRIDES = [
    "actors.num_actors=2", "metrics.port=0", "checkpoint.save_final=false", "run.seed=0",
]  # fmt: skip
LONG_MAX_NEW_TOKENS = 256
LONG_OVERRIDES = [
    f"actors.max_new_tokens={LONG_MAX_NEW_TOKENS}", "actors.engine.max_model_len=512",
    "actors.engine.stop_at_eos=false",
]  # fmt: skip
STEP_KEYS = ("step_s", "data_wait_s", "forward_backward_s", "optimizer_s", "broadcast_s")


def _worker(out: str, steps: int, config_path: str, extra: list[str]) -> None:
    from bench.common import median, write_worker_result
    from orchestrator.launcher import train
    from pope.config import load_config

    with tempfile.TemporaryDirectory(prefix="pope-bench-pipeline-") as tmp:
        overrides = [*OVERRIDES, *extra, f"learner.steps={steps}", f"run.output_dir={tmp}"]
        config = load_config(config_path, overrides)
        summary = train(config, printer=lambda line: print(line, flush=True))
        lines = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    wall = summary["wall_s"]
    loop_s = wall["train_loop_s"]
    completions = summary["groups_trained"] * config.actors.num_rollouts
    tokens = sum(m["tokens_trained"] for m in lines)
    padded = sum(m["padded_tokens"] for m in lines)
    write_worker_result(out, {
        "config": str(Path(config_path).relative_to(ROOT)), "overrides": [*OVERRIDES, *extra, f"learner.steps={steps}"],
        "engine": config.actors.engine.type, "num_actors": config.actors.num_actors,
        "num_workers": config.preprocess.num_workers, "groups_per_step": config.learner.groups_per_step,
        "num_rollouts": config.actors.num_rollouts, "max_new_tokens": config.actors.max_new_tokens,
        "steps": summary["steps"], "groups_trained": summary["groups_trained"],
        "groups_generated": summary["groups_generated"], "groups_lost": summary["groups_lost"],
        "completions_trained": completions, "completion_tokens_trained": tokens,
        "completion_length_mean": tokens / completions,
        "padded_tokens_trained": padded, "sequence_tokens_trained": sum(m["sequence_tokens"] for m in lines),
        "train_loop_s": loop_s, "completions_per_s": completions / loop_s, "tokens_per_s": tokens / loop_s,
        "step_period_s": loop_s / summary["steps"],
        "steady_completions_per_s": (len(lines) - 1) * config.learner.groups_per_step
        * config.actors.num_rollouts / (lines[-1]["time"] - lines[0]["time"]),
        "generated_completions_per_s": summary["completions_per_s"],
        "generated_tokens_per_s": summary["tokens_per_s"],
        "policy_lag_mean": sum(m["policy_lag_mean"] for m in lines) / len(lines),
        "reward_mean": summary["reward_mean"], "launcher_wall_s": wall,
        "step_median": {key: median([m[key] for m in lines]) for key in STEP_KEYS},
        "first_step": {key: lines[0][key] for key in STEP_KEYS},
    })  # fmt: skip


def run(quick: bool = False, config_path: Path = CONFIG, extra: tuple[str, ...] = (), steps: int = 0) -> dict:
    from bench.common import run_worker

    steps = steps or (5 if quick else 20)
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
    return run_worker("bench.pipeline", [str(steps), str(config_path), *extra], env=env, timeout_s=1200)


def run_long(quick: bool = False) -> dict:
    """The generation-heavy workload: 256-token rollouts, every one to the budget."""
    return run(quick, extra=tuple(LONG_OVERRIDES), steps=3 if quick else 6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) run the pipeline, write JSON to OUT")
    parser.add_argument("steps", nargs="?", type=int, default=5)
    parser.add_argument("config", nargs="?", default=str(CONFIG))
    parser.add_argument("overrides", nargs="*", help="config overrides after the benchmark's own")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.steps, args.config, args.overrides)
    else:
        print(json.dumps(run(quick=True, config_path=Path(args.config)), indent=2))
