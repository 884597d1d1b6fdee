"""Issue D's testbed: a synthetic chain task with graded difficulty, and a base model that the
project pretrains on part of it, so that the hard split is unsolved unguided but solvable guided.

The task ("digit chain"). A state is a 4-digit string. One step removes the first digit d and
appends (3d + 1) mod 10 (``8067 -> 0675``). A problem gives a start state and a
number of steps, its ``difficulty`` (1..9); the answer is the state after the last step, one of
10,000 strings, so a blind guess is right with probability 1e-4. The oracle solution writes one
unit per step and ends with ``\\boxed{answer}``::

    1: 8067 -> 0675.
    2: 0675 -> 6751.
    The answer is $\\boxed{6751}$.

Invariants: every state of a problem's chain is distinct (so a truncated chain never ends on the
answer by accident); the solution splits into ``difficulty + 1`` units with ``pope.units``; eval
splits draw their starts from a reserved quarter of the start space that pretraining never uses.

The base model (``build_testbed_model``, ``python -m experiments.testbed_v1 build``): the tiny model's
tokenizer builder and chat template, a 2-layer Qwen2, trained from scratch (seeded) on documents
rendered exactly as the pipeline renders prompts (``pope.prompts.render_prompt``):

    full     unguided instruction, difficulty 1..easy_max, the whole solution
    partial  unguided instruction, difficulty easy_max+1..hard_max, only the first m <= easy_max
             steps, then end of turn (no answer): long chains appear only as partial chains
    guided   guided instruction, difficulty 1..hard_max, an oracle prefix of at most a quarter of
             the solution in the prompt, the rest as target (the instruction the pipeline uses)

Loss is on the target tokens only. So: easy problems are solved; hard ones are stopped after a
few steps unguided (0 of k); with an oracle prefix and the guided instruction the model continues
to the answer. Whether RL on guided prompts transfers to unguided ones is the experiment.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
from pathlib import Path

from pope.problems import Problem

NUM_DIGITS = 4
ANSWER_SPACE = 10**NUM_DIGITS
EASY_MAX = 3  # difficulties 1..EASY_MAX are pretrained fully
HARD_MIN, HARD_MAX = 6, 9  # the hard split; 4..5 is the unguided-unseen middle
SOURCE = "testbed:digit-chain"

TESTBED_SPEC = {
    "name": "testbed",
    "version": 1,
    "easy_max": EASY_MAX,
    "hard_max": HARD_MAX,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 512,
    "train_steps": 600,
    "batch_size": 24,
    "lr": 3e-3,
    "warmup_steps": 30,
    "doc_mix": {"full": 0.4, "partial": 0.2, "guided": 0.4},
    "torch_threads": 2,
}


# ---- the task ----


def step(state: str) -> str:
    """One step: remove the first digit d, append (3d + 1) mod 10 (a permutation of the digits)."""
    return state[1:] + str((3 * int(state[0]) + 1) % 10)


def chain(start: str, difficulty: int) -> list[str]:
    """The ``difficulty + 1`` states from ``start`` to the answer."""
    states = [start]
    for _ in range(difficulty):
        states.append(step(states[-1]))
    return states


def is_eval_start(start: str) -> bool:
    """A quarter of the start space, chosen by hash, is reserved for eval splits."""
    return hashlib.sha256(f"testbed-start-{start}".encode()).digest()[0] % 4 == 0


def valid_start(start: str, difficulty: int) -> bool:
    states = chain(start, difficulty)
    return len(set(states)) == len(states)


def problem_text(start: str, difficulty: int) -> str:
    return (
        f"Start with {start}. Do {difficulty} steps. In each step, remove the first digit d and append "
        "(3d + 1) mod 10. What is the final number?"
    )


def solution_steps(start: str, difficulty: int) -> tuple[str, ...]:
    states = chain(start, difficulty)
    lines = [f"{i}: {a} -> {b}.\n" for i, (a, b) in enumerate(itertools.pairwise(states), start=1)]
    return (*lines, f"The answer is $\\boxed{{{states[-1]}}}$.")


def make_problem(start: str, difficulty: int, problem_id: str) -> Problem:
    if not 1 <= difficulty <= 9:
        raise ValueError(f"difficulty must be in 1..9, got {difficulty}")
    if len(start) != NUM_DIGITS or not start.isdigit():
        raise ValueError(f"start must be {NUM_DIGITS} digits, got {start!r}")
    return Problem(
        problem_id=problem_id,
        problem=problem_text(start, difficulty),
        answer=chain(start, difficulty)[-1],
        solution_steps=solution_steps(start, difficulty),
        source=SOURCE,
    )


def difficulty_of(problem: Problem) -> int:
    """The difficulty (number of steps) stated in a testbed problem."""
    match = re.search(r"Do (\d+) steps", problem.problem)
    if match is None:
        raise ValueError(f"{problem.problem_id}: not a testbed problem")
    return int(match.group(1))


def sample_start(rng: random.Random, difficulty: int, eval_split: bool) -> str:
    while True:
        start = f"{rng.randrange(ANSWER_SPACE):0{NUM_DIGITS}d}"
        if is_eval_start(start) == eval_split and valid_start(start, difficulty):
            return start


def make_split(name: str, num_problems: int, difficulties: range, seed: int) -> list[Problem]:
    """``num_problems`` distinct eval problems, difficulties cycled in order (a balanced split)."""
    rng = random.Random(f"testbed-{name}-{seed}")
    problems, seen = [], set()
    while len(problems) < num_problems:
        difficulty = difficulties[len(problems) % len(difficulties)]
        start = sample_start(rng, difficulty, eval_split=True)
        if (start, difficulty) in seen:
            continue
        seen.add((start, difficulty))
        problems.append(make_problem(start, difficulty, f"{name}-{len(problems):04d}"))
    return problems


def problem_row(problem: Problem) -> dict:
    return {
        "id": problem.problem_id,
        "problem": problem.problem,
        "answer": problem.answer,
        "solution": problem.solution,
        "difficulty": difficulty_of(problem),
    }


def write_jsonl(path: Path, problems: list[Problem]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(problem_row(problem)) + "\n")
    return path


def write_splits(out_dir: Path, seed: int = 0, num_easy: int = 64, num_hard: int = 32) -> dict[str, Path]:
    """easy.jsonl (difficulty 1..EASY_MAX) and hard.jsonl (HARD_MIN..HARD_MAX) under ``out_dir``."""
    out_dir = Path(out_dir)
    return {
        "easy": write_jsonl(
            out_dir / "easy.jsonl", make_split("easy", num_easy, range(1, EASY_MAX + 1), seed)
        ),
        "hard": write_jsonl(
            out_dir / "hard.jsonl", make_split("hard", num_hard, range(HARD_MIN, HARD_MAX + 1), seed)
        ),
    }


# ---- the base model ----


def _documents(rng: random.Random, tokenizer, spec: dict) -> tuple[list[int], list[int]]:
    """One pretraining document: (prompt ids, target ids), tokenized apart as the actors do."""
    from pope.config import DataConfig
    from pope.prompts import PromptSpec, render_prompt

    data = DataConfig()
    kind = rng.choices(list(spec["doc_mix"]), weights=list(spec["doc_mix"].values()))[0]
    if kind == "full":
        difficulty = rng.randint(1, spec["easy_max"])
    else:
        difficulty = rng.randint(spec["easy_max"] + 1 if kind == "partial" else 1, spec["hard_max"])
    problem = make_problem(sample_start(rng, difficulty, eval_split=False), difficulty, "pretrain")
    steps = problem.solution_steps
    if kind == "guided":
        shown = rng.randint(1, v1_prefix_limit(problem, data.prefix_fraction))
        spec_ = PromptSpec(problem, "guided", shown)
        target = "".join(steps[shown:])
    else:
        spec_ = PromptSpec(problem, "unguided", 0)
        target = "".join(steps) if kind == "full" else "".join(steps[: rng.randint(1, spec["easy_max"])])
    prompt = render_prompt(tokenizer, spec_, data)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer(prompt, add_special_tokens=False)["input_ids"], target_ids


def v1_prefix_limit(problem: Problem, prefix_fraction: float) -> int:
    """The prefix limit v1's base model was built with: a quarter of the units, at least one, never
    the answer's unit. (The pipeline now limits a prefix by its share of the solution's characters,
    pope.prompts.max_prefix_units; v1 keeps its own rule so that its cached model and RESULTS.md
    stay reproducible.)"""
    usable = max(0, len(problem.solution_steps) - 1)
    return min(usable, max(1, int(prefix_fraction * len(problem.solution_steps))))


def _tokenizer(seed: int):
    """The tiny model's BPE builder, trained on texts with the digits removed: every digit stays one
    token, so a state is always four tokens (no merges across digits)."""
    from pope.config import DataConfig
    from pope.models.tiny import CHAT_TEMPLATE, build_tokenizer

    rng = random.Random(f"testbed-tokenizer-{seed}")
    texts = []
    for _ in range(200):
        difficulty = rng.randint(1, HARD_MAX)
        problem = make_problem(sample_start(rng, difficulty, False), difficulty, "tok")
        texts.append(re.sub(r"\d", "", problem.problem + "\n" + problem.solution))
    data = DataConfig()
    texts += [
        CHAT_TEMPLATE,
        data.instruction("unguided"),
        data.instruction("guided"),
        "system user assistant",
    ] * 20
    return build_tokenizer(texts)


def spec_hash(spec: dict, seed: int) -> str:
    return hashlib.sha256(json.dumps({**spec, "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]


def collate(docs: list[tuple[list[int], list[int]]], pad_id: int):
    """(prompt ids, target ids) pairs -> right-padded (input_ids, attention_mask, labels); the labels
    are -100 outside the targets, so the loss is on the target tokens only."""
    import torch

    width = max(len(p) + len(t) for p, t in docs)
    ids = torch.full((len(docs), width), pad_id)
    labels = torch.full((len(docs), width), -100)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for row, (prompt, target) in enumerate(docs):
        ids[row, : len(prompt) + len(target)] = torch.tensor(prompt + target)
        labels[row, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        mask[row, : len(prompt) + len(target)] = 1
    return ids, mask, labels


def train_step(model, optimizer, docs: list[tuple[list[int], list[int]]], pad_id: int) -> float:
    """One supervised step on (prompt ids, target ids) pairs, loss on the targets, grad norm clipped at 1."""
    import torch

    ids, mask, labels = collate(docs, pad_id)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def pretrain(model, tokenizer, spec: dict, seed: int, log=None) -> list[float]:
    """AdamW on target tokens, linear warm-up then linear decay; returns the loss per step."""
    import torch

    rng = random.Random(f"testbed-pretrain-{seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.98), weight_decay=0.0)
    steps, warmup = spec["train_steps"], spec["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1.0 - s / steps)
    )
    losses = []
    model.train()
    for index in range(steps):
        docs = [_documents(rng, tokenizer, spec) for _ in range(spec["batch_size"])]
        losses.append(train_step(model, optimizer, docs, tokenizer.pad_token_id))
        schedule.step()
        if log is not None and (index % 50 == 0 or index == steps - 1):
            log(f"pretrain step {index + 1}/{steps}: loss {losses[-1]:.4f}")
    model.eval()
    return losses


def build_testbed_model(out_dir: Path, spec: dict | None = None, seed: int = 0, log=None) -> Path:
    """Build the base model folder at ``out_dir`` (kept if another process built it first)."""
    import torch

    from pope.models.tiny import new_qwen2, save_model_folder

    spec = dict(spec or TESTBED_SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec["torch_threads"])  # the same reduction order on every build
    try:
        tokenizer = _tokenizer(seed)
        torch.manual_seed(seed)
        model = new_qwen2(spec, tokenizer)
        losses = pretrain(model, tokenizer, spec, seed, log)
    finally:
        torch.set_num_threads(threads)
    out_dir = save_model_folder(model, tokenizer, {**spec, "seed": seed, "final_loss": losses[-1]}, out_dir)
    return out_dir


def resolve_testbed_model(
    cache_dir: Path = Path(".cache/pope"), spec: dict | None = None, seed: int = 0, log=None
) -> Path:
    """The base model folder, built once per (spec, seed) into ``cache_dir``."""
    spec = dict(spec or TESTBED_SPEC)
    target = Path(cache_dir) / f"{spec['name']}-v{spec['version']}-{spec_hash(spec, seed)}"
    if not (target / "config.json").is_file():
        build_testbed_model(target, spec, seed, log)
    return target.resolve()


def link_current(model: Path, cache_dir: Path = Path(".cache/pope")) -> Path:
    """Point ``<cache_dir>/testbed-current`` (the model.path of configs/testbed/*.yaml) at ``model``."""
    link = Path(cache_dir) / "testbed-current"
    tmp = link.with_name(link.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(model).resolve())
    os.replace(tmp, link)
    return link


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.testbed_v1", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) the base model; prints its folder")
    build.add_argument("--cache-dir", default=".cache/pope")
    build.add_argument("--seed", type=int, default=0)
    data = sub.add_parser("data", help="write easy.jsonl and hard.jsonl")
    data.add_argument("--out", default="runs/testbed/data")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--num-easy", type=int, default=64)
    data.add_argument("--num-hard", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "build":
        import sys

        path = resolve_testbed_model(
            Path(args.cache_dir), seed=args.seed, log=lambda m: print(m, file=sys.stderr)
        )
        print(path)
    else:
        for name, path in write_splits(Path(args.out), args.seed, args.num_easy, args.num_hard).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
