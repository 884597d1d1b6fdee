"""Policy lag of what the learner trains, in the demo pipeline, per call and continuous.

Each run is ``orchestrator.launcher.train`` on configs/demo_cpu.yaml (2 vLLM-CPU actors, 4 groups
per step, ``broker.max_groups_in_flight`` 4) for 12 steps in a fresh process
(``python -m bench.lag --worker OUT GENERATION STEPS BOUND``), under ``actors.generation`` per_call
and continuous, at the demo's bound (4, one step) and at twice it (8), to show what the bound buys
and costs.

Per run: ``policy_lag_mean`` (per trained group: the version it was trained at minus the version
its first token was sampled with, i.e. learner version after the step - 1 - ``policy_version_start``),
``policy_lag_tokens_mean`` (per token, under the version that sampled it, averaged over steps),
``group_lag_histogram`` (trained groups per lag), ``trained_completions_per_s`` (groups trained x 8
over the training loop's wall time), ``generated_completions_per_s`` (the summary's: every group the
actors wrote, trained or not), ``step_period_s`` and the actors' summed ``backpressure_wait_s``.
``policy_lag_mean`` at the top of the entry is the continuous run's at the demo bound (target <= 1).
"""

from __future__ import annotations

import argparse

GENERATIONS = ("per_call", "continuous")
BOUNDS = (4, 8)  # the demo's (= learner.groups_per_step), and twice it


def _worker(out: str, generation: str, steps: int, bound: int) -> None:
    import json
    import tempfile
    from pathlib import Path

    from bench.common import ROOT, write_worker_result
    from orchestrator.launcher import train
    from pope.config import load_config

    with tempfile.TemporaryDirectory(prefix="pope-bench-lag-") as tmp:
        overrides = [f"actors.generation={generation}", f"learner.steps={steps}", "metrics.port=0",
                     f"broker.max_groups_in_flight={bound}", "checkpoint.save_final=false",
                     f"run.output_dir={tmp}"]  # fmt: skip
        config = load_config(ROOT / "configs" / "demo_cpu.yaml", overrides)
        summary = train(config, printer=lambda line: None)
        lines = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    group_lags = [
        m["learner_version"] - 1 - g["policy_version"] for m in lines for g in m["groups"] if g["trained"]
    ]
    histogram: dict[str, int] = {}
    for lag in sorted(group_lags):
        histogram[str(lag)] = histogram.get(str(lag), 0) + 1
    wall = summary["wall_s"]
    loop_s = wall["train_loop_s"]
    write_worker_result(out, {
        "generation": generation, "max_groups_in_flight": bound, "steps": summary["steps"],
        "groups_trained": summary["groups_trained"], "groups_generated": summary["groups_generated"],
        "policy_lag_mean": sum(group_lags) / len(group_lags),
        "policy_lag_tokens_mean": sum(m["policy_lag_tokens_mean"] for m in lines) / len(lines),
        "group_lag_histogram": histogram,
        "trained_completions_per_s": summary["groups_trained"] * config.actors.num_rollouts / loop_s,
        "generated_completions_per_s": summary["completions_per_s"],
        "step_period_s": loop_s / summary["steps"], "train_loop_s": loop_s,
        "backpressure_wait_s": wall["actor_backpressure_wait_s"],
        "learner_data_wait_s": wall["learner_data_wait_s"],
    })  # fmt: skip


def run(quick: bool = False) -> dict:
    from bench.common import run_worker

    steps = "3" if quick else "12"
    env = {"VLLM_LOGGING_LEVEL": "WARNING"}
    runs = {
        f"{generation}_bound_{bound}": run_worker("bench.lag", [generation, steps, str(bound)], env=env)
        for bound in BOUNDS
        for generation in GENERATIONS
    }
    return {"runs": runs, "policy_lag_mean": runs[f"continuous_bound_{BOUNDS[0]}"]["policy_lag_mean"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) one run, its JSON to OUT")
    parser.add_argument("run", nargs="*", help="with --worker: GENERATION STEPS BOUND")
    options = parser.parse_args()
    if not options.worker:
        import json

        print(json.dumps(run(quick=True), indent=2))
    else:
        generation, steps, bound = options.run
        _worker(options.worker, generation, int(steps), int(bound))
