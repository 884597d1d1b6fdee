"""The demo's models: the tiny model's architecture, warmed up on the chains task (``builtin:tiny-chains``,
``CHAINS_SPEC``, demo runs 1-4) or the totals task (``builtin:tiny-totals``, ``TOTALS_SPEC``, run 5:
the same recipe, the answer written as the running totals; ``builtin:tiny-totals-guess``,
``GUESS_SPEC``, run 6 and ``make demo`` now: the same, with some unguided answers given at once).

What it is. The tiny model's byte-level BPE, trained on texts with the digits taken out (every digit
stays one token), and a 2-layer Qwen2 trained from scratch on chain problems (``pope.problems``)
drawn only from the warm-up split of the expressions (``chain_split``), which runs never use. Its
documents are rendered exactly as the pipeline renders prompts (``pope.prompts.render_prompt``, the
default ``DataConfig`` with the demo's ``prefix_fraction``): most are unguided (the whole solution
is the target), some guided (the first units are in the prompt, the target is the rest), with the
loss on the target tokens only. Under ``guess_share`` that share of the unguided documents is the
answer line alone, so the model learns two behaviours: working the chain out, or answering at once
(a 2-layer model cannot add up a chain in one go, so those answers are almost always wrong).

Why these. The warm-up stops while the model still slips (a wrong sum, a miscopied operand) on
about a third of the chains it works out. RL at the demo's budget did not make those slips rarer
(runs 1-5, results/demo_preregistration.md); what it did change within the demo's few minutes is
the choice between the two behaviours of the guess model (run 6: answers given at once 30% ->
0.4%, held-out pass@1 0.48 -> 0.66).

The folder does not depend on the run's seed (the build uses seed 0) and is built once per spec
(about 3 min on the idle 2-core machine) and cached.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

CHAINS_SPEC = {  # the cache key hashes this dict: bump "version" when the build changes
    "name": "tiny-chains",
    "version": 1,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,  # vLLM-CPU wants head_dim 64
    "max_position_embeddings": 1024,
    "warmup_steps": 550,  # the rule of results/demo_preregistration.md, run 2 (450 in run 1)
    "batch_size": 32,
    "lr": 2e-3,
    "guided_share": 0.3,  # documents whose first units are in the prompt, as a guided prompt shows them
    "prefix_fraction": 0.5,  # data.prefix_fraction of configs/demo.yaml: a chain's first unit is ~30% of it
    "torch_threads": 2,
}
# the totals task (pope.problems): the same recipe, only the answer line differs ("task" is absent from
# CHAINS_SPEC, whose cache key must not change: absent means "chains")
TOTALS_SPEC = {**CHAINS_SPEC, "name": "tiny-totals", "task": "totals"}
# the totals model that often answers at once, without steps (and so mostly wrong): 30% of its unguided
# warm-up documents are the answer line alone (demo run 6's rule, results/demo_preregistration.md:
# 0.5 left it right 10% of the time unguided, below the rule's 0.20, so 0.3)
GUESS_SPEC = {**TOTALS_SPEC, "name": "tiny-totals-guess", "guess_share": 0.3}
BUILD_SEED = 0


def spec_task(spec: dict) -> str:
    """The task a spec warms up on: "chains" when it names none (``CHAINS_SPEC``)."""
    return spec.get("task", "chains")


def build_tokenizer(task: str = "chains"):
    """The tiny model's BPE on the task's texts with the digits removed, plus the prompts' fixed text."""
    from pope.config import DataConfig
    from pope.models.tiny import CHAT_TEMPLATE
    from pope.models.tiny import build_tokenizer as tiny_build_tokenizer
    from pope.problems import builtin_chains

    problems = builtin_chains(300, seed=1, split="warmup", task=task)
    texts = [re.sub(r"\d", "", p.problem + " " + p.solution) for p in problems]
    data = DataConfig()
    texts += [CHAT_TEMPLATE, data.instruction("unguided"), data.instruction("guided")] * 20
    return tiny_build_tokenizer(texts)


def document(
    rng: random.Random, problem, tokenizer, data, guided_share: float, guess_share: float = 0.0
) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of one warm-up document, tokenized apart as the actors do. With
    ``guess_share``, that share of the unguided documents is the answer line alone, with no steps."""
    from pope.prompts import PromptSpec, max_prefix_units, prefix_text, render_prompt

    shown = 0
    limit = max_prefix_units(problem, data.prefix_fraction)
    if limit and rng.random() < guided_share:
        shown = rng.randint(1, limit)
    prompt = render_prompt(tokenizer, PromptSpec(problem, "guided" if shown else "unguided", shown), data)
    # the prompt ends with the shown units less their trailing space; the target is all that follows
    target = problem.solution[len(prefix_text(problem, shown)) :]
    # no draw without guess_share, so the builds made before it existed stay as they were
    if not shown and guess_share and rng.random() < guess_share:
        target = problem.solution_steps[-1]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, target_ids


def warm_up(model, tokenizer, spec: dict, seed: int = BUILD_SEED, on_step=None) -> list[float]:
    """AdamW on the target tokens, linear warm-up over 20 steps then linear decay; the loss per step.
    ``on_step(step, model)`` is called after each step (the calibration's hook)."""
    import torch

    from pope.config import DataConfig
    from pope.models.training import train_step
    from pope.problems import builtin_chains

    data = DataConfig(prefix_fraction=spec["prefix_fraction"])
    rng = random.Random(f"tiny-chains-warmup-{seed}")  # both tasks: the same documents' draws
    count = spec["warmup_steps"] * spec["batch_size"]
    problems = iter(builtin_chains(count, seed=seed + 1, split="warmup", task=spec_task(spec)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.98), weight_decay=0.0)
    steps = spec["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1.0 - s / steps)
    )
    losses = []
    model.train()
    for index in range(steps):
        batch = [
            document(rng, next(problems), tokenizer, data, spec["guided_share"], spec.get("guess_share", 0.0))
            for _ in range(spec["batch_size"])
        ]
        docs = [(prompt, target, ()) for prompt, target in batch]
        losses.append(train_step(model, optimizer, docs, tokenizer.pad_token_id, micro_batches=1))
        schedule.step()
        if on_step is not None:
            on_step(index + 1, model)
    model.eval()
    return losses


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps({**spec, "seed": BUILD_SEED}, sort_keys=True).encode()).hexdigest()[:12]


def build_chains_model(out_dir: Path, spec: dict | None = None, on_step=None) -> Path:
    """Build the folder at ``out_dir`` (kept if another process built the same spec first)."""
    import torch

    from pope.models.tiny import new_qwen2, save_model_folder

    spec = dict(spec or CHAINS_SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec["torch_threads"])
    try:
        tokenizer = build_tokenizer(spec_task(spec))
        torch.manual_seed(BUILD_SEED)
        model = new_qwen2(spec, tokenizer)
        losses = warm_up(model, tokenizer, spec, on_step=on_step)
    finally:
        torch.set_num_threads(threads)
    meta = {**spec, "seed": BUILD_SEED, "final_loss": losses[-1]}
    return save_model_folder(model, tokenizer, meta, out_dir)


def resolve(cache_dir: Path, spec: dict | None = None) -> Path:
    """The folder of ``builtin:tiny-chains`` (or of ``spec``'s model), built once into ``cache_dir``."""
    spec = dict(spec or CHAINS_SPEC)
    target = Path(cache_dir) / f"{spec['name']}-{spec_hash(spec)}"
    if not (target / "config.json").is_file():
        build_chains_model(target, spec)
    return target.resolve()
