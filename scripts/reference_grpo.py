"""A reference GRPO loop outside the pipeline, to tell "this pipeline's update does not improve the demo
model" from "this model does not improve under RL at this rate" (results/demo_preregistration.md,
after run 5).

    python scripts/reference_grpo.py MODEL_FOLDER --task totals --lr 1e-4 --steps 120 [--out FILE]

One process, no Ray, no DeepSpeed, no vLLM: HF ``generate`` samples 8 completions of each of 8
``train``-split problems a step (half unguided, half guided behind a random prefix within
``prefix_fraction``, as the pipeline draws them), the reward is 1 when the last ``\\boxed{}`` is the
answer, the advantage is r minus the group's mean (the pipeline's default, no std scaling), and the
loss is the mean over the step's completion tokens of -A * log p (one update per batch, so the PPO
ratio is 1 and its clip never acts). AdamW (betas 0.9/0.999, no weight decay), gradient clip 1,
a linear lr warm-up over ``--warmup`` steps: the learner's settings in ``configs/demo.yaml``.

Every ``--eval-every`` steps it measures the unguided correct share on a **validation** set: 64
distinct ``eval``-split expressions (seed 2027) that are not in the held-out file, 4 samples each,
so that choosing a setting by these numbers leaves the held-out set untouched. One JSON line per
round (and the whole record in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.chains_check import HELDOUT, score  # noqa: E402


def validation_problems(task: str, count: int = 64, seed: int = 2027) -> list:
    """``count`` distinct eval-split problems of ``task`` that are not in the held-out file."""
    from pope.problems import builtin_chains

    heldout = {json.loads(line)["problem"] for line in HELDOUT[task].read_text().splitlines()}
    chosen: dict[str, object] = {}
    for problem in builtin_chains(20 * count, seed, split="eval", task=task):
        if problem.problem not in heldout and problem.problem not in chosen and len(chosen) < count:
            chosen[problem.problem] = problem
    if len(chosen) < count:
        raise RuntimeError(f"only {len(chosen)} validation problems of {count}")
    return list(chosen.values())


def group_advantages(rewards: list[float], group_size: int) -> list[float]:
    """r minus its group's mean, groups being consecutive runs of ``group_size``."""
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = sum(group) / len(group)
        out += [r - mean for r in group]
    return out


def sample(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple:
    """(prompt ids [B, P] left-padded, completion ids [B, C], completion mask [B, C]) at temperature 1."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    completion = out[:, batch["input_ids"].shape[1] :]
    # the mask keeps every token up to and including the first end-of-sequence
    ended = (completion == tokenizer.eos_token_id).long().cumsum(1)
    mask = (ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))
    return batch, completion, mask


def loss_of(model, batch, completion, mask, advantages):
    """Mean over completion tokens of -A * log p(token)."""
    import torch

    ids = torch.cat([batch["input_ids"], completion], dim=1)
    attention = torch.cat([batch["attention_mask"], mask.long()], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    prompt_len = batch["input_ids"].shape[1]
    logits = logits[:, prompt_len - 1 : -1].float()  # the logits that predict each completion token
    logp = torch.log_softmax(logits, dim=-1).gather(2, completion.unsqueeze(2)).squeeze(2)
    weights = torch.tensor(advantages, dtype=logp.dtype).unsqueeze(1) * mask
    return -(weights * logp).sum() / mask.sum()


def evaluate(model, tokenizer, problems, data, n: int, max_new_tokens: int) -> float:
    from pope.prompts import PromptSpec, render_prompt

    prompts = [render_prompt(tokenizer, PromptSpec(p, "unguided", 0), data) for p in problems] * n
    _, completion, _ = sample(model, tokenizer, prompts, max_new_tokens)
    texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
    rows = [{"answer": p.answer, "solution": p.solution} for p in problems] * n
    return sum(score(text, row)[0] for text, row in zip(texts, rows, strict=True)) / len(texts)


def run(args) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pope.config import DataConfig
    from pope.problems import builtin_chains
    from pope.prompts import PromptSpec, guided_spec, render_prompt

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    data = DataConfig(prefix_fraction=args.prefix_fraction)
    train = builtin_chains(2000, seed=0, task=args.task)
    validation = validation_problems(args.task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    record, rewards_by_variant = [], {"unguided": [], "guided": []}
    start = time.monotonic()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            model.eval()
            torch.manual_seed(10_000 + step)  # each round's samples, apart from the training draws
            correct = evaluate(model, tokenizer, validation, data, args.eval_n, args.max_new_tokens)
            torch.manual_seed(args.seed + step)
            window = {v: r[-12 * args.groups // 2 * args.group_size :] for v, r in rewards_by_variant.items()}
            row = {
                "step": step,
                "validation_correct": correct,
                **{f"reward_{v}_last12": sum(r) / len(r) if r else None for v, r in window.items()},
                "elapsed_s": round(time.monotonic() - start, 1),
            }
            record.append(row)
            print(json.dumps(row), flush=True)
        if step == args.steps:
            break
        specs = []
        for index in range(args.groups):
            problem = train[(step * args.groups + index) % len(train)]
            guided = guided_spec(problem, data, rng) if index % 2 else None
            specs.append(guided or PromptSpec(problem, "unguided", 0))
        prompts = [render_prompt(tokenizer, spec, data) for spec in specs for _ in range(args.group_size)]
        model.eval()
        batch, completion, mask = sample(model, tokenizer, prompts, args.max_new_tokens)
        texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
        rewards = []
        for index, text in enumerate(texts):
            spec = specs[index // args.group_size]
            right, _ = score(text, {"answer": spec.problem.answer, "solution": spec.problem.solution})
            rewards.append(float(right))
            rewards_by_variant[spec.variant].append(float(right))
        model.train()
        optimizer.zero_grad()
        loss = loss_of(model, batch, completion, mask, group_advantages(rewards, args.group_size))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--task", choices=sorted(HELDOUT), default="totals")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prefix-fraction", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    record = run(args)
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": record})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
