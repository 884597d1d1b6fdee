"""The peer: TRL's ``GRPOTrainer`` doing the same work on the same machine.

Same tiny model (bench.common.tiny_model_path), same prompts (the pipeline's sampler,
``PromptSchedule`` with the POPE mix of configs/demo_cpu.yaml, rendered with ``render_prompt``
through the chat template: a ``datasets.Dataset`` with a text "prompt" column and the gold
"answer"), group size ``num_generations`` = 8, ``max_completion_length`` = 48, temperature 1,
lr 1e-3, a reward function calling math-verify as ``pope.verify.verify_one`` does
(in-process: TRL has no killable verifier), group-mean advantages (``scale_rewards="none"``),
``beta=0`` (no reference model), one step = 4 prompts x 8 generations
(``per_device_train_batch_size=32``, one gradient step per generation), HF ``generate`` (no
vLLM: ``use_vllm=False``), CPU (``use_cpu=True``), torch's default threads (every core).

A callback stamps the end of every optimizer step; the rate counts the steps after
``warmup_steps`` only (model load, the first generation and the optimizer's first step are out):

    completions_per_s = timed_steps * 32 / (t_end(last step) - t_end(last warm-up step))

Over the same steps, ``generate_s_timed`` is the time of TRL's generation calls (HF ``generate``;
a subclass times ``_generate_single_turn``) and ``verify_s_timed`` that of the reward function.

Runs in a fresh process (``python -m bench.trl_peer --worker OUT``) like the other benchmarks.

``run_long`` (``--only trl_long``, key ``trl_long``) is the peer of bench/pipeline.py ``run_long``:
``max_completion_length`` = 256 (``bench.pipeline.LONG_MAX_NEW_TOKENS``) and
``generation_kwargs={"min_new_tokens": 256}``, so every completion is 256 tokens long as on pope's
side (HF ``generate`` has no ignore-EOS switch; TRL masks a completion after its first EOS, so
masking EOS is the way to train on all of them), 1 warm-up step and 5 timed (quick: 1 and 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

PROMPTS_PER_STEP = 4
NUM_GENERATIONS = 8
MAX_COMPLETION_LENGTH = 48


def _dataset(tokenizer, num_prompts: int):
    from datasets import Dataset

    from bench.pipeline import CONFIG
    from pope.config import load_config
    from pope.datasets import run_problems
    from pope.prompts import PromptSchedule, render_prompt

    config = load_config(CONFIG)
    problems = run_problems(config.data, config.run.seed)
    specs = PromptSchedule(problems, config.data, config.run.seed, config.learner.groups_per_step).prompts()
    rows = [next(specs) for _ in range(num_prompts)]
    return Dataset.from_dict({
        "prompt": [render_prompt(tokenizer, spec, config.data) for spec in rows],
        "answer": [spec.problem.answer for spec in rows],
    })  # fmt: skip


def _worker(out: str, warmup_steps: int, steps: int, max_completion_length: int, full: bool) -> None:
    import torch
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench.common import tiny_model_path, write_worker_result
    from pope.verify import verify_one

    model_path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    total_steps = warmup_steps + steps
    dataset = _dataset(tokenizer, PROMPTS_PER_STEP * total_steps)
    verdicts = {"correct": 0, "wrong": 0, "error": 0}
    verify_s = [0.0]

    def math_verify_reward(prompts, completions, answer, **kwargs) -> list[float]:
        t0 = time.perf_counter()
        rewards = []
        for gold, completion in zip(answer, completions, strict=True):
            try:
                ok = verify_one(gold, completion)
            except Exception:  # deliberate: a verifier failure scores 0 and is counted, as in preprocess
                verdicts["error"] += 1
                rewards.append(0.0)
                continue
            verdicts["correct" if ok else "wrong"] += 1
            rewards.append(1.0 if ok else 0.0)
        verify_s[0] += time.perf_counter() - t0
        return rewards

    generate_s = [0.0]

    class TimedGRPOTrainer(GRPOTrainer):
        """Times TRL's generation call (HF ``generate``), to split the step."""

        def _generate_single_turn(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                generate_s[0] += time.perf_counter() - t0

    # per optimizer step: (end time, verification s so far, generation s so far)
    stamps: list[tuple[float, float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append((time.perf_counter(), verify_s[0], generate_s[0]))

    with tempfile.TemporaryDirectory(prefix="pope-bench-trl-") as tmp:
        args = GRPOConfig(
            output_dir=tmp, max_steps=total_steps, learning_rate=1e-3, lr_scheduler_type="constant",
            per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS, gradient_accumulation_steps=1,
            num_generations=NUM_GENERATIONS, max_completion_length=max_completion_length,
            generation_kwargs={"min_new_tokens": max_completion_length} if full else None,
            temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, scale_rewards="none",
            use_vllm=False, use_cpu=True, bf16=False, seed=0, shuffle_dataset=False,
            save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
            model_init_kwargs={"dtype": "float32"},
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer = TimedGRPOTrainer(
            model=model_path, reward_funcs=math_verify_reward, args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[StepClock()],
        )  # fmt: skip
        start_s = time.perf_counter() - t0
        trainer.train()
    if len(stamps) != total_steps:
        raise RuntimeError(f"TRL ran {len(stamps)} optimizer steps, expected {total_steps}")
    timed_s = stamps[-1][0] - stamps[warmup_steps - 1][0]
    completions = steps * PROMPTS_PER_STEP * NUM_GENERATIONS
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = [h["completions/mean_length"] for h in logs[warmup_steps:] if "completions/mean_length" in h]
    write_worker_result(out, {
        "trl": trl.__version__, "torch_threads": torch.get_num_threads(), "loss_type": args.loss_type,
        "prompts_per_step": PROMPTS_PER_STEP, "num_generations": NUM_GENERATIONS,
        "max_completion_length": max_completion_length, "min_new_tokens": max_completion_length if full else None,
        "warmup_steps": warmup_steps, "steps": steps,
        "start_s": start_s, "timed_s": timed_s, "step_s_mean": timed_s / steps,
        "completions_per_s": completions / timed_s,
        "completion_length_mean": sum(lengths) / len(lengths) if lengths else None,
        "completion_length_by_step": [h.get("completions/mean_length") for h in logs],
        "tokens_per_s": completions * sum(lengths) / len(lengths) / timed_s if lengths else None,
        "verify_s_timed": stamps[-1][1] - stamps[warmup_steps - 1][1], "verdicts": verdicts,
        "generate_s_timed": stamps[-1][2] - stamps[warmup_steps - 1][2],
        "reward_mean": sum(h.get("reward", 0.0) for h in logs) / max(1, len(logs)),
    })  # fmt: skip


def run(quick: bool = False) -> dict:
    from bench.common import run_worker

    warmup, steps = (1, 2) if quick else (2, 16)
    return run_worker(
        "bench.trl_peer", [str(warmup), str(steps), str(MAX_COMPLETION_LENGTH), "0"], timeout_s=1200
    )


def run_long(quick: bool = False) -> dict:
    """The generation-heavy workload: every completion 256 tokens."""
    from bench.common import run_worker
    from bench.pipeline import LONG_MAX_NEW_TOKENS

    warmup, steps = (1, 1) if quick else (1, 5)
    return run_worker(
        "bench.trl_peer", [str(warmup), str(steps), str(LONG_MAX_NEW_TOKENS), "1"], timeout_s=1800
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) run TRL's GRPO steps, write JSON to OUT")
    parser.add_argument("warmup_steps", nargs="?", type=int, default=1)
    parser.add_argument("steps", nargs="?", type=int, default=2)
    parser.add_argument("max_completion_length", nargs="?", type=int, default=MAX_COMPLETION_LENGTH)
    parser.add_argument("full", nargs="?", type=int, default=0, help="1: every completion to the budget")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.warmup_steps, args.steps, args.max_completion_length, bool(args.full))
    else:
        print(json.dumps(run(quick=True), indent=2))
