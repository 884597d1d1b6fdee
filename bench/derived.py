"""The headline numbers, derived from the benchmarks' entries in results.json, against the targets.

    ratio_vs_trl          pipeline.completions_per_s / trl.completions_per_s                 target >= 10
    ratio_vs_trl_long     pipeline_long.steady_completions_per_s / trl_long.completions_per_s  target >= 3
                          (256-token rollouts, every one to the budget; both rates over the
                          same span: the end of step 1 to the end of the last step)
    async_gain            pipeline.completions_per_s / sync.completions_per_s                (no target)
    pipeline_efficiency   compute_bound_s / pipeline.train_loop_s                             target >= 0.8
                          compute_bound_s = pipeline.completion_tokens_trained / generation.vllm.tokens_per_s
                                          + pipeline.padded_tokens_trained / learner_step.padded_tokens_per_s
    broker_share_of_step  broker.tokens_64.per_group_ms * HOPS * groups_per_step
                          / (1000 * pipeline.step_period_s)                                   target <= 0.02
    broadcast_vs_raw      broadcast.broadcast_vs_raw (pope / raw seconds, largest set)        target <= 1.5
    weight_transfer_vs_raw  weight_transfer.weight_transfer_vs_raw (learner -> vLLM engine update
                          / raw gloo broadcast of the same tensors, SmolLM2-135M)             target <= 1.5
    scoring_vs_raw        scoring.scoring_vs_raw (verifier rate / in-process rate, 1 core)    target >= 0.9
    generation_vs_raw     continuous.generation_vs_raw (continuous / raw vLLM tokens/s)       target >= 0.9
    engine_idle_share     continuous.engine_idle_share (no sequence decoding, work waiting)   target <= 0.05
    policy_lag_mean       policy_lag.policy_lag_mean (demo pipeline, continuous, per group)   target <= 1

Under ``derived``: ``weight_transfer_vs_raw_tiny`` (the same ratio for the tiny model) and
``weight_transfer_receive_only_vs_raw`` (SmolLM2-135M's bucketed receive without the load into
vLLM, over raw); ``ratio_vs_trl_tokens`` (trained completion tokens/s: completion lengths
differ between the runs), ``ratio_vs_trl_steady`` and ``async_gain_steady`` (pipeline steps 2..N),
``ratio_vs_trl_long_loop`` (pope's whole train loop, step 1 included, over the same TRL rate),
``ratio_vs_trl_long_tokens`` (completion tokens/s over the same span: rate x mean length on each
side), ``pipeline_long_data_wait_share`` (median learner data wait / median step time of the long
run: the share of a step the learner waits for generation), ``pipeline_efficiency_vs_sync_stages`` (the bound measured in place instead: the sync run's
generate_s + train_s, scaled to the pipeline's steps, over train_loop_s). The training-only time
scales the learner benchmark's rate by the padded tokens the pipeline's learner actually computed
on (its batches' lengths follow the completions, which training changes); ``compute_bound``
also has ``train_only_s_by_steps`` (pipeline.steps * learner_step.step_s_mean), the formula of
the runs before 2026-11-27 afternoon, whose learner batch had 4-8 token prompts.

HOPS = 2: every group crosses the broker twice (rollouts stream: actor -> preprocess; train
stream: preprocess -> learner), each hop a put, a read and an ack. The 64-token size is the one
closest to the pipeline's completions (at most 48 tokens). A number whose inputs are missing from
results.json is None.
"""

from __future__ import annotations

HOPS = 2
TARGETS = {  # key -> (comparison, bound)
    "ratio_vs_trl": (">=", 10.0),
    "ratio_vs_trl_long": (">=", 3.0),
    "pipeline_efficiency": (">=", 0.8),
    "broker_share_of_step": ("<=", 0.02),
    "broadcast_vs_raw": ("<=", 1.5),
    "weight_transfer_vs_raw": ("<=", 1.5),
    "scoring_vs_raw": (">=", 0.9),
    "generation_vs_raw": (">=", 0.9),
    "engine_idle_share": ("<=", 0.05),
    "policy_lag_mean": ("<=", 1.0),
}


def _get(results: dict, *path: str):
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(a, b):
    return a / b if a is not None and b else None


def derive(results: dict) -> dict:
    """Top-level keys for results.json: each headline number, ``derived`` (their inputs) and
    ``targets`` (value, bound, met)."""
    pipe = results.get("pipeline") or {}
    pipe_rate = pipe.get("completions_per_s")
    gen_tps = _get(results, "generation", "vllm", "tokens_per_s")
    learner_step_s = _get(results, "learner_step", "step_s_mean")
    learner_padded_tps = _get(results, "learner_step", "padded_tokens_per_s")
    per_group_ms = _get(results, "broker", "tokens_64", "per_group_ms")

    bound = None
    if pipe and gen_tps and learner_step_s and learner_padded_tps and pipe.get("padded_tokens_trained"):
        generate_only_s = pipe["completion_tokens_trained"] / gen_tps
        train_only_s = pipe["padded_tokens_trained"] / learner_padded_tps
        bound = {
            "generate_only_s": generate_only_s,
            "train_only_s": train_only_s,
            "train_only_s_by_steps": pipe["steps"] * learner_step_s,
            "compute_bound_s": generate_only_s + train_only_s,
        }
    sync = results.get("sync") or {}
    sync_bound = None
    if pipe and sync.get("stage_total_s") and sync.get("steps"):
        stages = sync["stage_total_s"]
        sync_bound = (stages["generate_s"] + stages["train_s"]) * pipe["steps"] / sync["steps"]

    broker_step_ms = None
    if per_group_ms is not None and pipe:
        broker_step_ms = per_group_ms * HOPS * pipe["groups_per_step"]
    long = results.get("pipeline_long") or {}
    trl_long_rate = _get(results, "trl_long", "completions_per_s")
    long_tokens = _ratio(
        long.get("steady_completions_per_s")
        and long["steady_completions_per_s"] * long["completion_length_mean"],
        trl_long_rate and trl_long_rate * (_get(results, "trl_long", "completion_length_mean") or 0),
    )
    out = {
        "ratio_vs_trl": _ratio(pipe_rate, _get(results, "trl", "completions_per_s")),
        "ratio_vs_trl_long": _ratio(long.get("steady_completions_per_s"), trl_long_rate),
        "pipeline_efficiency": _ratio(bound and bound["compute_bound_s"], pipe.get("train_loop_s")),
        "async_gain": _ratio(pipe_rate, sync.get("completions_per_s")),
        "broker_share_of_step": _ratio(broker_step_ms, pipe and 1000 * pipe["step_period_s"]),
        "broadcast_vs_raw": _get(results, "broadcast", "broadcast_vs_raw"),
        "weight_transfer_vs_raw": _get(results, "weight_transfer", "weight_transfer_vs_raw"),
        "scoring_vs_raw": _get(results, "scoring", "scoring_vs_raw"),
        "generation_vs_raw": _get(results, "continuous", "generation_vs_raw"),
        "engine_idle_share": _get(results, "continuous", "engine_idle_share"),
        "policy_lag_mean": _get(results, "policy_lag", "policy_lag_mean"),
    }
    out["derived"] = {
        "ratio_vs_trl_tokens": _ratio(pipe.get("tokens_per_s"), _get(results, "trl", "tokens_per_s")),
        "ratio_vs_trl_steady": _ratio(
            pipe.get("steady_completions_per_s"), _get(results, "trl", "completions_per_s")
        ),
        "ratio_vs_trl_long_loop": _ratio(long.get("completions_per_s"), trl_long_rate),
        "ratio_vs_trl_long_tokens": long_tokens,
        "pipeline_long_data_wait_share": _ratio(
            _get(long, "step_median", "data_wait_s"), _get(long, "step_median", "step_s")
        ),
        "compute_bound": bound,
        "pipeline_efficiency_vs_sync_stages": _ratio(sync_bound, pipe.get("train_loop_s")),
        "sync_generate_plus_train_s_scaled": sync_bound,
        "broker_hops_per_group": HOPS,
        "broker_ms_per_step": broker_step_ms,
        "broker_share_of_step_one_hop": _ratio(
            per_group_ms and per_group_ms * pipe.get("groups_per_step", 0),
            pipe and 1000 * pipe["step_period_s"],
        ),  # fmt: skip
        "async_gain_steady": _ratio(
            pipe.get("steady_completions_per_s"), sync.get("steady_completions_per_s")
        ),
        "weight_transfer_vs_raw_tiny": _get(results, "weight_transfer", "tiny", "pope_vs_raw"),
        "weight_transfer_receive_only_vs_raw": _get(
            results, "weight_transfer", "smollm2_135m", "receive_only_vs_raw"
        ),
    }
    out["targets"] = {}
    for key, (op, bound_value) in TARGETS.items():
        value = out[key]
        met = None if value is None else (value >= bound_value if op == ">=" else value <= bound_value)
        out["targets"][key] = {"value": value, "target": f"{op} {bound_value}", "met": met}
    return out
