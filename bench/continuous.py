"""Continuous generation against raw vLLM and against per-call generation, on a generation-heavy
workload: the tiny model, 8 rollouts per prompt, up to 256 new tokens, temperature 1.

All three run the same requests (same prompts, same seeds) on one vLLM-CPU engine in one process
(``python -m bench.continuous --worker OUT``), after one untimed warm-up:

- ``raw``: ``LLM.generate`` of every request at once (vLLM batches them itself: the ceiling).
- ``continuous``: ``actors.continuous.ContinuousGeneration`` as the actor drives it: groups added
  while the engine has room (``max_num_seqs`` sequences), one decoding step at a time, finished
  groups collected between steps.
- ``per_call``: the per-call actor's pattern: ``prompts_per_call`` prompts per ``generate`` call,
  one call after another (the engine idles at each call's tail while the longest rollout ends).

``generation_vs_raw`` = continuous tokens/s over raw tokens/s (target >= 0.9);
Every rollout runs to the budget (``ignore_eos``): the tiny model would stop after ~25 tokens.
``engine_idle_share``: the share of the continuous run's wall time in which no sequence was
decoding while prompts were still waiting (target <= 5%); ``step_share``: the share spent inside
the engine's step; ``continuous_vs_per_call``: tokens/s ratio.

The demo pipeline's policy lag, per call and continuous, is bench/lag.py's.
"""

from __future__ import annotations

import argparse
import time

NUM_ROLLOUTS = 8
MAX_NEW_TOKENS = 256


def _requests(tokenizer, count: int):
    from pope.config import DataConfig
    from pope.problems import builtin_arithmetic
    from pope.prompts import PromptSpec, render_prompt

    problems = builtin_arithmetic(count, seed=1)
    texts = [render_prompt(tokenizer, PromptSpec(p, "unguided", 0), DataConfig()) for p in problems]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    seeds = [index * NUM_ROLLOUTS for index in range(count)]
    return prompts, seeds


def _raw(engine, prompts, seeds, max_new_tokens: int) -> tuple[float, int]:
    from vllm import SamplingParams

    params = [
        SamplingParams(
            n=NUM_ROLLOUTS, temperature=1.0, max_tokens=max_new_tokens, logprobs=0, seed=seed, ignore_eos=True
        )
        for seed in seeds
    ]
    start = time.perf_counter()
    outputs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(c.token_ids) for o in outputs for c in o.outputs)


def _continuous(engine, prompts, seeds, max_new_tokens: int, capacity: int) -> dict:
    from actors.engine import SamplingSettings

    stream = engine.continuous()
    settings = SamplingSettings(NUM_ROLLOUTS, max_new_tokens, 1.0, 1.0, seeds=(0,), stop_at_eos=False)
    waiting = list(range(len(prompts)))
    tokens = 0
    idle_s = step_s = 0.0
    start = time.perf_counter()
    while waiting or stream.groups_running:
        mark = time.perf_counter()
        while waiting and stream.sequences_running < capacity:
            index = waiting.pop(0)
            stream.submit(str(index), prompts[index], settings, seeds[index])
        if not stream.sequences_running and waiting:
            idle_s += time.perf_counter() - mark
        mark = time.perf_counter()
        finished = stream.step()
        step_s += time.perf_counter() - mark
        tokens += sum(len(s.token_ids) for group in finished for s in group.samples)
    elapsed = time.perf_counter() - start
    return {"generate_s": elapsed, "tokens": tokens, "idle_s": idle_s, "step_s": step_s}


def _per_call(engine, prompts, seeds, max_new_tokens: int, per_call: int) -> tuple[float, int]:
    from actors.engine import SamplingSettings

    tokens = 0
    start = time.perf_counter()
    for first in range(0, len(prompts), per_call):
        batch = prompts[first : first + per_call]
        settings = SamplingSettings(
            NUM_ROLLOUTS, max_new_tokens, 1.0, 1.0, tuple(seeds[first : first + per_call]), stop_at_eos=False
        )
        tokens += sum(len(s.token_ids) for group in engine.generate(batch, settings) for s in group)
    return time.perf_counter() - start, tokens


def _worker(out: str, prompts_count: int, max_new_tokens: int) -> None:
    from transformers import AutoTokenizer

    from actors.vllm_engine import VLLMEngine
    from bench.common import tiny_model_path, write_worker_result
    from pope.config import ActorsConfig, VLLMEngineConfig

    model_path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts, seeds = _requests(tokenizer, prompts_count)
    config = VLLMEngineConfig(max_model_len=512)
    engine = VLLMEngine(config, model_path, seed=0, dtype="float32")
    capacity = config.max_num_seqs + NUM_ROLLOUTS  # as the actor: one group waiting in vLLM's queue
    per_call = ActorsConfig().prompts_per_call
    _raw(engine, prompts[:2], seeds[:2], 16)  # warm-up
    raw_s, raw_tokens = _raw(engine, prompts, seeds, max_new_tokens)
    cont = _continuous(engine, prompts, seeds, max_new_tokens, capacity)
    call_s, call_tokens = _per_call(engine, prompts, seeds, max_new_tokens, per_call)
    engine.close()
    write_worker_result(out, {
        "prompts": prompts_count, "num_rollouts": NUM_ROLLOUTS, "max_new_tokens": max_new_tokens,
        "max_num_seqs": config.max_num_seqs, "prompts_per_call": per_call,
        "raw": {"generate_s": raw_s, "tokens": raw_tokens, "tokens_per_s": raw_tokens / raw_s},
        "continuous": {**cont, "tokens_per_s": cont["tokens"] / cont["generate_s"]},
        "per_call": {"generate_s": call_s, "tokens": call_tokens, "tokens_per_s": call_tokens / call_s},
        "completion_tokens_mean": raw_tokens / (prompts_count * NUM_ROLLOUTS),
        "generation_vs_raw": (cont["tokens"] / cont["generate_s"]) / (raw_tokens / raw_s),
        "engine_idle_share": cont["idle_s"] / cont["generate_s"],
        "step_share": cont["step_s"] / cont["generate_s"],
        "continuous_vs_per_call": (cont["tokens"] / cont["generate_s"]) / (call_tokens / call_s),
    })  # fmt: skip


def run(quick: bool = False) -> dict:
    from bench.common import run_worker

    args = ["16", "64"] if quick else ["48", str(MAX_NEW_TOKENS)]
    env = {"VLLM_LOGGING_LEVEL": "WARNING"}
    return run_worker("bench.continuous", args, env=env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) run the three, write JSON to OUT")
    parser.add_argument("args", nargs="*", help="prompts max_new_tokens")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, int(args.args[0]), int(args.args[1]))
    else:
        import json

        print(json.dumps(run(quick=True), indent=2))
