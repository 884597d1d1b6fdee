"""Learner step throughput: ``learner.policy.PolicyTrainer.train_step`` on DeepSpeed-CPU, one rank,
the tiny model, with the pipeline benchmark's learner settings (configs/demo_cpu.yaml: ZeRO 0,
micro-batches of 16, ``learner.torch_threads``).

The batch has the pipeline's shapes: ``groups_per_step`` 4 x ``num_rollouts`` 8 = 32 sequences whose
prompts are the actors' own (built-in arithmetic problems rendered by ``render_prompt``, guided and
unguided as ``PromptSchedule`` mixes them: ~70 tokens) and whose completions are random tokens,
10-48 long (the demo's completions stop at the end token after ~20-30 tokens, at most 48), with
behaviour logprobs, rewards and group-centred advantages. After ``warmup_steps`` steps, ``steps``
steps are timed; ``tokens_per_s`` counts trained (completion) tokens per second of ``train_step``
wall time, ``padded_tokens_per_s`` the padded batch the forward pass computes on (the compute
bound of bench/derived.py scales the pipeline's own padded tokens by it).

DeepSpeed reads DS_ACCELERATOR at import, so the step runs in a fresh process
(``python -m bench.learner --worker OUT``) with DS_ACCELERATOR=cpu, as the launcher sets it.
"""

from __future__ import annotations

import argparse
import time

from bench.common import ROOT

CONFIG = ROOT / "configs" / "demo_cpu.yaml"  # the pipeline benchmark's config
OVERRIDES = ["run.seed=0"]
COMPLETION_TOKENS = (10, 48)  # inclusive range


def actor_prompts(config, model_path: str, count: int) -> list[list[int]]:
    """The first ``count`` prompts actor 0 of ``config`` would generate for, as token ids."""
    from transformers import AutoTokenizer

    from pope.datasets import run_problems
    from pope.prompts import PromptSchedule, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    specs = PromptSchedule(
        run_problems(config.data, config.run.seed),
        config.data,
        config.run.seed,
        config.learner.groups_per_step,
    ).prompts()
    texts = [render_prompt(tokenizer, next(specs), config.data) for _ in range(count)]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def scaled_batch(
    seed: int,
    groups: int,
    rollouts: int,
    vocab: int,
    completion_tokens=COMPLETION_TOKENS,
    prompts: list[list[int]] | None = None,
):
    """``fixed_batch`` of tests/scripts/learner_step.py with longer completions and, given
    ``prompts``, those prompts (group g gets prompt g)."""
    import torch

    from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup

    gen = torch.Generator().manual_seed(seed)
    low, high = completion_tokens
    out = []
    for g in range(groups):
        prompt = torch.randint(3, vocab, (int(torch.randint(4, 9, (1,), generator=gen)),), generator=gen)
        if prompts is not None:
            prompt = torch.tensor(prompts[g])
        items = []
        for _ in range(rollouts):
            length = int(torch.randint(low, high + 1, (1,), generator=gen))
            items.append(
                Rollout(
                    completion_ids=PackedArray.of(torch.randint(3, vocab, (length,), generator=gen), "int32"),
                    behaviour_logprobs=PackedArray.of(-torch.rand(length, generator=gen) * 4, "float32"),
                    text="",
                    finish_reason="length",
                )
            )
        rewards = (torch.rand(rollouts, generator=gen) < 0.5).float().tolist()
        mean = sum(rewards) / len(rewards)
        group = RolloutGroup(
            run_id="bench", group_id=f"g{seed}-{g}", problem_id="p", variant="unguided", answer="1",
            prompt_ids=PackedArray.of(prompt, "int32"), rollouts=items, temperature=1.0,
            max_new_tokens=high, policy_version_start=0,
            policy_version_end=0, actor_id="a", sampled_at=0.0, generate_s=0.0,
        )  # fmt: skip
        out.append(ScoredGroup(group=group, rewards=rewards, advantages=[r - mean for r in rewards],
                               verdicts=["wrong"] * rollouts, worker_id="w"))  # fmt: skip
    return out


def _worker(out: str, warmup_steps: int, steps: int) -> None:
    from bench.common import median, tiny_model_path, write_worker_result
    from learner.policy import PolicyTrainer
    from pope.config import load_config

    config = load_config(str(CONFIG), OVERRIDES)
    model_path = tiny_model_path()
    trainer = PolicyTrainer(config.for_learner(), model_path)
    vocab = trainer.engine.module.config.vocab_size
    groups = config.learner.groups_per_step
    prompts = actor_prompts(config, model_path, groups)
    batch = scaled_batch(1, groups, config.actors.num_rollouts, vocab, prompts=prompts)
    for _ in range(warmup_steps):
        trainer.train_step(batch)
    step_s, fwd_bwd_s, optimizer_s = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = trainer.train_step(batch)
        step_s.append(time.perf_counter() - t0)
        fwd_bwd_s.append(metrics["forward_backward_s"])
        optimizer_s.append(metrics["optimizer_s"])
    total_s = sum(step_s)
    tokens, sequence_tokens, padded = (
        metrics[k] for k in ("tokens_trained", "sequence_tokens", "padded_tokens")
    )
    write_worker_result(out, {
        "config": str(CONFIG.relative_to(ROOT)), "overrides": OVERRIDES,
        "torch_threads": config.learner.torch_threads, "micro_batch_size": config.learner.micro_batch_size,
        "sequences_per_step": trainer.sequences_per_step, "grad_accum": trainer.grad_accum,
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "completion_tokens_per_step": tokens, "sequence_tokens_per_step": sequence_tokens,
        "padded_tokens_per_step": padded, "warmup_steps": warmup_steps, "steps": steps,
        "step_s_mean": total_s / steps, "step_s_median": median(step_s),
        "forward_backward_s_median": median(fwd_bwd_s), "optimizer_s_median": median(optimizer_s),
        "tokens_per_s": tokens * steps / total_s,
        "sequence_tokens_per_s": sequence_tokens * steps / total_s,
        "padded_tokens_per_s": padded * steps / total_s,
    })  # fmt: skip


def run(quick: bool = False) -> dict:
    from bench.common import run_worker
    from pope.config import load_config

    threads = load_config(str(CONFIG), OVERRIDES).learner.torch_threads
    warmup, steps = (1, 3) if quick else (3, 50)
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads)}
    return run_worker("bench.learner", [str(warmup), str(steps)], env=env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="OUT", help="(internal) run the timed steps, write JSON to OUT")
    parser.add_argument("warmup_steps", nargs="?", type=int, default=1)
    parser.add_argument("steps", nargs="?", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.warmup_steps, args.steps)
    else:
        import json

        print(json.dumps(run(quick=True), indent=2))
