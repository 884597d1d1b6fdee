"""The v2 testbed ("locks", ../shared/TESTBED.md, results/v2_preregistration.md): a search task whose
difficulty sits in the first quarter of the solution, and a base model pretrained on it (seeded, cached).

The task. A fixed secret permutation P of the keys 1..9 (``PERMUTATION``) is only ever seen through
pretraining. A lock ``(depth d, code c)`` opens with the one key k for which P applied d times to k
gives c. A problem lists up to 12 locks, labelled A..L, one per line as ``<label><d><c>``; the answer
is the keys in order, ``\\boxed{k_A k_B ...}`` (12 digits for a hard problem: a blind guess is right
with probability 9^-12). A solution is a search, one line (one unit) per lock::

    A47 35916 18247 key 1.          lock A: d=4, c=7; key 3 turns 5,9,1,6 (no), key 1 turns 8,2,4,7 (yes)
    B11 21 key 2.                   lock B: d=1, c=1; key 2 turns 1 (yes): a first-try line
    All locks are open, so the answer is the row of keys $\\boxed{12}$.

Each try is a space, the key, then its chain P(k) .. P^d(k) (d+2 tokens: digits are single tokens);
keys are never repeated within a line and the last try opens the lock; ``key k`` restates it, so the
answer is a copy of the restated keys. The oracle's line for a lock is its first-try line, a line
the model writes itself whenever its first try is right.

A hard problem is 3 "top" locks then 9 "descent" locks (d=1, keys skewed, P(k) ~ 0.5^k); the arm
(row field ``arm``) sets the top: ``H-shared`` d=4 with skewed keys (the skill "try small keys first"
carries to the top), ``H-unshared`` d=4 with uniform keys, ``H-blind`` d=9 with uniform keys (out of
reach within the budget). Invariants (tests/test_testbed_v2.py):

- a solution has 13 units (``pope.units``), and the 3 top lines are at most a quarter of its
  characters while 4 lines are more, in every arm (the character-based prefix limit is exactly 3);
- under instruction ``pope-same-v1`` with ``prefix_placement: assistant_start``,
  render(guided) == render(unguided) + prefix, as text and as tokens;
- eval instances come from a quarter of the lock lists, reserved by a hash of the list
  (``is_eval_locks``), that pretraining never draws; no lock list appears twice across the splits.

The base model (``resolve_base_model``, ``python -m experiments.testbed_v2 build``): the tiny model's
BPE (trained on texts without digits, so every digit is one token), a 3-layer Qwen2, trained from
scratch on complete documents rendered exactly as the pipeline renders prompts, loss on the
assistant tokens, one system instruction for all. Its searches try keys in uniformly random order
(never small first): the learnable skill is the order, under a token budget.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pope.models.training import train_step
from pope.problems import Problem

SOURCE = "testbed:locks"
KEYS = tuple(range(1, 10))
LABELS = "ABCDEFGHIJKL"
NUM_LOCKS, NUM_TOP = 12, 3
DESCENT_DEPTH, TOP_DEPTH, BLIND_DEPTH = 1, 4, 9
SKEWED = tuple(0.5**k for k in KEYS)  # unnormalised key weights, P(k) ~ 0.5^k
UNIFORM = tuple(1.0 for _ in KEYS)
ARMS = {  # arm -> (top depth, top key weights)
    "H-shared": (TOP_DEPTH, SKEWED),
    "H-unshared": (TOP_DEPTH, UNIFORM),
    "H-blind": (BLIND_DEPTH, UNIFORM),
}
ARM_TAGS = {"H-shared": "shared", "H-unshared": "unshared", "H-blind": "blind", "easy": "easy"}
INSTRUCTION_VERSION = "pope-same-v1"
INTRO = "Find the key of each lock."
ANSWER = "All locks are open, so the answer is the row of keys $\\boxed{{{}}}$."
PREFIX_FRACTION = 0.25  # data.prefix_fraction: the guided prefix holds at most this share of the characters


def _permutation(seed: str = "pope-testbed-v2-permutation") -> tuple[int, ...]:
    """P as a tuple, ``P[k]`` for k in 1..9 (index 0 unused): a seeded 7-cycle on 1..7 and the swap (8 9).

    Why this cycle type: P and P^9 then fix no key (a d=1 or d=9 lock never opens with its own code),
    and P^4 fixes only 8 and 9, the rarest skewed keys; a 9-cycle would make P^9 the identity.
    """
    cycle = list(range(1, 8))
    random.Random(seed).shuffle(cycle)
    perm = [0] * 10
    for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        perm[a] = b
    perm[8], perm[9] = 9, 8
    return tuple(perm)


PERMUTATION = _permutation()


# ---- the task ----


def chain(key: int, depth: int) -> tuple[int, ...]:
    """P(k), P^2(k), ..., P^depth(k)."""
    values, value = [], key
    for _ in range(depth):
        value = PERMUTATION[value]
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class Lock:
    depth: int
    code: int

    @staticmethod
    def of_key(depth: int, key: int) -> Lock:
        return Lock(depth, chain(key, depth)[-1])

    @property
    def key(self) -> int:
        """The one key that opens it (P^depth is a permutation)."""
        return next(k for k in KEYS if chain(k, self.depth)[-1] == self.code)


def header(label: str, lock: Lock) -> str:
    return f"{label}{lock.depth}{lock.code}"


def lock_line(label: str, lock: Lock, tried: list[int]) -> str:
    """The line of a search that tried ``tried`` in order (distinct keys, the last one opens the lock)."""
    assert len(set(tried)) == len(tried) and tried[-1] == lock.key and lock.key not in tried[:-1]
    tries = "".join(f" {k}" + "".join(map(str, chain(k, lock.depth))) for k in tried)
    return f"{header(label, lock)}{tries} key {tried[-1]}.\n"


def oracle_line(label: str, lock: Lock) -> str:
    """The first-try line: a line the model writes itself whenever its first key is right."""
    return lock_line(label, lock, [lock.key])


def random_order(lock: Lock, rng: random.Random) -> list[int]:
    """The base model's search: keys in uniformly random order, up to the one that opens the lock."""
    order = list(KEYS)
    rng.shuffle(order)
    return order[: order.index(lock.key) + 1]


def small_first(lock: Lock) -> list[int]:
    """The skill RL can learn: keys in increasing order (optimal for skewed keys)."""
    return list(range(1, lock.key + 1))


def line_tokens(depth: int, tries: int) -> int:
    """Tokens of a lock line: header 3, each try a space, the key and d values, then " key", " k", ".", newline."""
    return 3 + tries * (depth + 2) + 5


ANSWER_TOKENS = 30  # the answer sentence of a 12-digit answer (tests/test_testbed_v2.py counts it)


def answer_of(locks: tuple[Lock, ...]) -> str:
    return "".join(str(lock.key) for lock in locks)


def problem_text(locks: tuple[Lock, ...]) -> str:
    # one lock per line, no space before a label: a label is the same token here and in the trace
    return (
        INTRO
        + "\n"
        + "\n".join(header(label, lock) for label, lock in zip(LABELS[: len(locks)], locks, strict=True))
    )


def trace(locks: tuple[Lock, ...], orders: list[list[int]]) -> tuple[str, ...]:
    """The solution units of a search that tried ``orders[i]`` at lock i: one line each, then the answer."""
    lines = [
        lock_line(label, lock, order)
        for label, lock, order in zip(LABELS[: len(locks)], locks, orders, strict=True)
    ]
    return (*lines, ANSWER.format(answer_of(locks)))


def make_problem(locks: tuple[Lock, ...], problem_id: str) -> Problem:
    if not 1 <= len(locks) <= NUM_LOCKS:
        raise ValueError(f"a problem has 1..{NUM_LOCKS} locks, got {len(locks)}")
    return Problem(
        problem_id=problem_id,
        problem=problem_text(locks),
        answer=answer_of(locks),
        solution_steps=trace(locks, [[lock.key] for lock in locks]),
        source=SOURCE,
    )


_HEADER = re.compile(r"^([A-L])(\d)(\d)$", re.MULTILINE)


def locks_of(problem: Problem | str) -> tuple[Lock, ...]:
    """The locks a problem statement lists, in order."""
    text = problem if isinstance(problem, str) else problem.problem
    locks = tuple(Lock(int(d), int(c)) for _, d, c in _HEADER.findall(text))
    if not locks:
        raise ValueError("not a locks problem: no lock lines")
    return locks


def prefix_limit_units(problem: Problem, fraction: float = PREFIX_FRACTION) -> int:
    """The most units a guided prefix may show when it holds at most ``fraction`` of the solution's
    characters (never the answer unit): our own count of the character-based limit."""
    steps, total, used = problem.solution_steps, len(problem.solution), 0
    for units, step in enumerate(steps[:-1]):
        used += len(step)
        if used > fraction * total:
            return units
    return len(steps) - 1


def locks_id(locks: tuple[Lock, ...]) -> str:
    return " ".join(f"{lock.depth}{lock.code}" for lock in locks)


def is_eval_locks(locks: tuple[Lock, ...]) -> bool:
    """A quarter of the lock lists, chosen by hash, is reserved for eval splits."""
    return hashlib.sha256(f"testbed-v2-locks-{locks_id(locks)}".encode()).digest()[0] % 4 == 0


def _draw(rng: random.Random, depth: int, weights: tuple[float, ...]) -> Lock:
    return Lock.of_key(depth, rng.choices(KEYS, weights=weights)[0])


def hard_locks(rng: random.Random, arm: str) -> tuple[Lock, ...]:
    top_depth, top_weights = ARMS[arm]
    top = [_draw(rng, top_depth, top_weights) for _ in range(NUM_TOP)]
    return (*top, *(_draw(rng, DESCENT_DEPTH, SKEWED) for _ in range(NUM_LOCKS - NUM_TOP)))


def easy_locks(rng: random.Random) -> tuple[Lock, ...]:
    """3..4 locks, the first d=4 half the time, the others d=1, keys uniform: always within budget.

    Why at least 3: math-verify falls back to the last number of a completion without ``\boxed``,
    and a trace only writes numbers of 1, 2, 5 or 10 digits, so a 3- or 4-digit answer is never
    matched by a truncated trace (a 2-digit one is, by a d=1 try)."""
    first = TOP_DEPTH if rng.random() < 0.5 else DESCENT_DEPTH
    depths = [first] + [DESCENT_DEPTH] * rng.randint(2, 3)
    return tuple(_draw(rng, d, UNIFORM) for d in depths)


# ---- the splits ----

SPLITS = {  # name -> (arms cycled in order, number of problems)
    "train_hard": (tuple(ARMS), 36),
    "heldout_hard": (tuple(ARMS), 36),
    "calibration": (tuple(ARMS), 36),
    "easy": (("easy",), 32),
}


@dataclass(frozen=True)
class Instance:
    problem: Problem
    arm: str
    split: str


def make_splits(seed: int = 0) -> dict[str, list[Instance]]:
    """Every split, drawn from the reserved quarter, no lock list twice across them (one ``seen`` set)."""
    rng = random.Random(f"testbed-v2-splits-{seed}")
    seen: set[str] = set()
    splits: dict[str, list[Instance]] = {}
    for name, (arms, count) in SPLITS.items():
        instances = []
        while len(instances) < count:
            arm = arms[len(instances) % len(arms)]
            locks = easy_locks(rng) if arm == "easy" else hard_locks(rng, arm)
            if not is_eval_locks(locks) or locks_id(locks) in seen:
                continue
            seen.add(locks_id(locks))
            problem_id = f"{name}-{ARM_TAGS[arm]}-{len(instances):02d}"
            instances.append(Instance(make_problem(locks, problem_id), arm, name))
        splits[name] = instances
    return splits


def problem_row(instance: Instance) -> dict:
    problem = instance.problem
    return {
        "id": problem.problem_id,
        "problem": problem.problem,
        "answer": problem.answer,
        "solution": problem.solution,
        "arm": instance.arm,
        "split": instance.split,
        "num_locks": len(locks_of(problem)),
    }


def write_splits(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """<split>.jsonl under ``out_dir`` for every split of ``make_splits``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, instances in make_splits(seed).items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text(
            "".join(json.dumps(problem_row(i)) + "\n" for i in instances), encoding="utf-8"
        )
    return paths


# ---- the trace parser (diagnostics) ----

_LINE = re.compile(r"([A-L])(\d)(\d)((?: \d+)*)(?: key (\d))?(\.?)")
_BOXED = re.compile(r"\\boxed\{(\d+)\}")


@dataclass
class Try:
    key: int
    chain: tuple[int, ...]
    chain_ok: bool  # every value is P of the one before it (the key first) and there are d of them
    opens: bool  # the chain is right and ends on the code


@dataclass
class Line:
    label: str
    lock: Lock  # as the line's header states it
    tries: list[Try]
    stated_key: int | None
    complete: bool  # ends with "key k." and a newline
    end_char: int  # index just after the line (its newline) in the completion

    @property
    def repeats(self) -> int:
        return len(self.tries) - len({t.key for t in self.tries})

    @property
    def decisions_ok(self) -> bool:
        """Went on after every try that does not open the lock and stopped at the one that does."""
        stops = [t.opens for t in self.tries]
        if self.complete:
            return stops[-1] and not any(stops[:-1]) and self.stated_key == self.tries[-1].key
        return not any(stops[:-1])


@dataclass
class Trace:
    lines: list[Line] = field(default_factory=list)
    answer: str | None = None
    malformed: bool = False  # a line that is neither a lock line nor the answer

    def consistent(self) -> bool:
        """The boxed answer is the row of keys the trace itself opened the locks with."""
        keys = "".join(str(t.tries[-1].key) for t in self.lines if t.complete and t.tries)
        return self.answer is not None and self.answer == keys

    def top_end_char(self, locks: tuple[Lock, ...], num_top: int = NUM_TOP) -> int | None:
        """Where the trace has opened the first ``num_top`` locks right (their true keys), else None."""
        top = self.lines[:num_top]
        if len(top) < num_top or not all(
            line.complete and line.lock == lock and line.tries[-1].opens and line.stated_key == lock.key
            for line, lock in zip(top, locks[:num_top], strict=True)
        ):
            return None
        return top[-1].end_char


def parse_trace(completion: str) -> Trace:
    """Lock lines until the answer sentence; a truncated last line is kept (``complete=False``)."""
    result, pos = Trace(), 0
    while pos < len(completion):
        end = completion.find("\n", pos)
        text = completion[pos:] if end < 0 else completion[pos:end]
        if "\\boxed" in text or text.startswith("All locks"):
            boxed = _BOXED.findall(text)
            result.answer = boxed[-1] if boxed else None
            break
        match = _LINE.fullmatch(text)
        if match is None:
            result.malformed = True
            break
        label, depth, code, tries_text, stated, dot = match.groups()
        lock = Lock(int(depth), int(code))
        tries = []
        for word in tries_text.split():
            key, values = int(word[0]), tuple(int(c) for c in word[1:])
            ok = len(values) == lock.depth and key in KEYS and values == chain(key, lock.depth)
            tries.append(Try(key, values, ok, ok and values[-1] == lock.code))
        complete = bool(dot) and stated is not None and end >= 0 and bool(tries)
        line_end = len(completion) if end < 0 else end + 1
        result.lines.append(Line(label, lock, tries, int(stated) if stated else None, complete, line_end))
        if not complete:
            break
        pos = line_end
    return result


# ---- the base model ----

STAGE1_SPEC = {  # the cache key hashes this dict, not the code: bump "version" when the task or corpus changes
    "name": "testbed-v2",
    "version": 1,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,  # vLLM-CPU wants head_dim 64
    "max_position_embeddings": 1024,
    "train_steps": 1500,
    "batch_size": 24,
    "micro_batches": 6,  # a batch sorted by length, cut in this many pieces (less padding, less attention)
    "lr": 3e-3,
    "warmup_steps": 40,
    "doc_mix": {"mechanics": 0.45, "mixed": 0.25, "blind": 0.10, "hard": 0.10, "hint": 0.10},
    "torch_threads": 1,  # one thread: the same reduction order on every build, and robust on a shared machine
}
# Stage 2 continues stage 1 (its folder, cached under its own hash) with more documents of many locks:
# stage 1 alone skipped or ended early at late labels after short (first-try) lines and miscopied
# 12-digit answers (G4, G5 failed; results/v2_preregistration.md), a shortcut on position.
STAGE2_SPEC = {
    **STAGE1_SPEC,
    "version": 2,
    "init": STAGE1_SPEC,
    "train_steps": 800,
    "lr": 1e-3,
    "warmup_steps": 20,
    "doc_mix": {"mechanics": 0.25, "mixed": 0.20, "long": 0.25, "blind": 0.05, "hard": 0.15, "hint": 0.10},
}
# Stage 3 continues stage 2, which still failed G4 (answer consistency) and G5: under random order a
# line is short only when its first try is right (1/9), so a trace of many short lines stayed rare.
# Its "short" documents make first-try lines frequent (each line one with probability
# first_try_share) and take every line's first tried key out of the loss: the text is one the corpus
# could show, only more often, and it carries no signal about which key to try first.
BASE_SPEC = {
    **STAGE2_SPEC,
    "version": 3,
    "init": STAGE2_SPEC,
    "train_steps": 600,
    "lr": 7e-4,
    "warmup_steps": 20,
    "first_try_share": 0.5,
    "doc_mix": {
        "mechanics": 0.15,
        "mixed": 0.15,
        "long": 0.15,
        "short": 0.30,
        "blind": 0.05,
        "hard": 0.10,
        "hint": 0.10,
    },  # fmt: skip
}
STAGE3_SPEC = BASE_SPEC
# Stage 4 continues stage 3, which passed G5 but still miscopied 1.7% of the 12-digit answers (G4's
# consistency 0.983 < 0.99: a digit dropped or doubled in runs of equal keys): more documents with
# long answers, a lower learning rate; two torch threads (the build is still deterministic per machine).
BASE_SPEC = {
    **STAGE3_SPEC,
    "version": 4,
    "init": STAGE3_SPEC,
    "train_steps": 500,
    "lr": 5e-4,
    "warmup_steps": 20,
    "torch_threads": 2,
    "doc_mix": {
        "mechanics": 0.10,
        "mixed": 0.10,
        "long": 0.25,
        "short": 0.30,
        "blind": 0.05,
        "hard": 0.15,
        "hint": 0.05,
    },  # fmt: skip
}
PILOT_SPEC = {**STAGE1_SPEC, "name": "testbed-v2-pilot", "train_steps": 300}
SPECS = {
    "base": BASE_SPEC, "stage3": STAGE3_SPEC, "stage2": STAGE2_SPEC, "stage1": STAGE1_SPEC, "pilot": PILOT_SPEC
}  # fmt: skip


def data_config(placement: str = "assistant_start"):
    from pope.config import DataConfig

    return DataConfig(instruction_version=INSTRUCTION_VERSION, prefix_placement=placement)


def _corpus_locks(rng: random.Random, kind: str) -> tuple[Lock, ...]:
    """The lock list of one pretraining document of ``kind`` (see BASE_SPEC["doc_mix"])."""
    if kind == "mechanics":  # 1..6 locks of any depth, keys skewed or uniform
        return tuple(
            _draw(rng, rng.choice((1, 1, 4, 4, 9)), rng.choice((SKEWED, UNIFORM)))
            for _ in range(rng.randint(1, 6))
        )
    if kind == "mixed":  # 1..3 d=4 tops, then d=1 locks, 2..12 in all
        total = rng.randint(2, NUM_LOCKS)
        tops = rng.randint(1, min(NUM_TOP, total - 1))
        weights = rng.choice((SKEWED, UNIFORM))
        return tuple(_draw(rng, TOP_DEPTH, weights) for _ in range(tops)) + tuple(
            _draw(rng, DESCENT_DEPTH, SKEWED) for _ in range(total - tops)
        )
    if (
        kind == "long"
    ):  # 7..12 locks, mostly d=1 (short lines): late labels and long answers at many positions
        weights = rng.choice((SKEWED, UNIFORM))
        return tuple(
            _draw(rng, rng.choice((1, 1, 1, 1, 4, 9)), weights) for _ in range(rng.randint(7, NUM_LOCKS))
        )
    if kind == "blind":  # one d=9 lock, then up to 4 d=1 locks
        rest = tuple(_draw(rng, DESCENT_DEPTH, SKEWED) for _ in range(rng.randint(0, 4)))
        return (_draw(rng, BLIND_DEPTH, UNIFORM), *rest)
    if kind in ("hard", "hint"):  # the hard shape, every arm (long positions made familiar)
        return hard_locks(rng, rng.choice(tuple(ARMS)))
    if kind == "short":  # the hard shape or a long one; its lines are often first-try (document())
        return _corpus_locks(rng, rng.choice(("hard", "long")))
    raise ValueError(f"unknown document kind {kind!r}")


def document(
    rng: random.Random, tokenizer, spec: dict, configs: dict
) -> tuple[list[int], list[int], tuple[int, ...]]:
    """One complete pretraining document: (prompt ids, target ids, target positions left out of the
    loss), tokenized apart as the actors do.

    Every target is a random-order search ending with the answer. A hint document shows the
    oracle's first j lines in the user turn (prefix_placement user_end) and the target rewrites
    them, then searches on: only the user-end ablation (A1) needs it. In a short document each
    line is a first-try line with probability ``spec["first_try_share"]``, and the first tried key
    of every line is left out of the loss.
    """
    from pope.prompts import PromptSpec, render_prompt

    kind = rng.choices(list(spec["doc_mix"]), weights=list(spec["doc_mix"].values()))[0]
    while True:
        locks = _corpus_locks(rng, kind)
        if not is_eval_locks(locks):
            break
    problem = make_problem(locks, "pretrain")
    orders = [random_order(lock, rng) for lock in locks]
    if kind == "hint":
        shown = rng.randint(1, NUM_TOP)
        orders[:shown] = [[lock.key] for lock in locks[:shown]]
        prompt = render_prompt(tokenizer, PromptSpec(problem, "guided", shown), configs["user_end"])
    else:
        prompt = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), configs["assistant_start"])
    if kind == "short":
        share = spec["first_try_share"]
        orders = [[lock.key] if rng.random() < share else o for lock, o in zip(locks, orders, strict=True)]
    units = trace(locks, orders)
    target = "".join(units)
    encoded = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
    target_ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    masked: tuple[int, ...] = ()
    if kind == "short":  # the first tried key of each line: the character after its header and space
        starts = [0, *itertools.accumulate(map(len, units[: len(locks) - 1]))]
        labelled = zip(starts, LABELS[: len(locks)], locks, strict=True)
        keys = {start + len(header(label, lock)) + 1 for start, label, lock in labelled}
        masked = tuple(i for i, (begin, _) in enumerate(encoded["offset_mapping"]) if begin in keys)
        assert len(masked) == len(locks), "a first key is not one token"
    return tokenizer(prompt, add_special_tokens=False)["input_ids"], target_ids, masked


def build_tokenizer(seed: int = 0):
    """The tiny model's BPE, trained on texts with the digits removed: every digit stays one token."""
    from pope.models.tiny import CHAT_TEMPLATE
    from pope.models.tiny import build_tokenizer as tiny_build_tokenizer

    rng = random.Random(f"testbed-v2-tokenizer-{seed}")
    texts = []
    for index in range(300):
        locks = _corpus_locks(rng, ("mechanics", "mixed", "hard")[index % 3])
        solution = "".join(trace(locks, [random_order(lock, rng) for lock in locks]))
        texts.append(re.sub(r"\d", "", problem_text(locks) + "\n" + solution))
    data = data_config()
    instructions = [data.instruction("unguided"), data.instruction("guided")]
    texts += [CHAT_TEMPLATE, *instructions, "system user assistant", "\n\nBeginning of a solution:\n"] * 20
    return tiny_build_tokenizer(texts)


def spec_hash(spec: dict, seed: int) -> str:
    return hashlib.sha256(json.dumps({**spec, "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]


def pretrain(model, tokenizer, spec: dict, seed: int, log=None) -> list[float]:
    """AdamW on target tokens, linear warm-up then linear decay; returns the loss per step."""
    import torch

    stream = {1: "", 2: "stage2-"}.get(
        spec["version"], f"v{spec['version']}-"
    )  # each stage its own documents
    rng = random.Random(f"testbed-v2-pretrain-{stream}{seed}")
    configs = {"assistant_start": data_config("assistant_start"), "user_end": data_config("user_end")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.98), weight_decay=0.0)
    steps, warmup = spec["train_steps"], spec["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1.0 - s / steps)
    )
    losses = []
    model.train()
    for index in range(steps):
        docs = [document(rng, tokenizer, spec, configs) for _ in range(spec["batch_size"])]
        losses.append(train_step(model, optimizer, docs, tokenizer.pad_token_id, spec["micro_batches"]))
        schedule.step()
        if log is not None and (index % 50 == 0 or index == steps - 1):
            log(f"pretrain step {index + 1}/{steps}: loss {losses[-1]:.4f}")
    model.eval()
    return losses


def build_base_model(out_dir: Path, spec: dict | None = None, seed: int = 0, log=None) -> Path:
    """Build the base model folder at ``out_dir`` (kept if another process built it first)."""
    import torch

    from pope.models.tiny import new_qwen2, save_model_folder

    spec = dict(spec or BASE_SPEC)
    parent = resolve_base_model(Path(out_dir).parent, spec["init"], seed, log) if spec.get("init") else None
    threads = torch.get_num_threads()
    torch.set_num_threads(spec["torch_threads"])  # the same reduction order on every build
    try:
        tokenizer = build_tokenizer(seed)
        torch.manual_seed(seed)
        if parent is None:
            model = new_qwen2(spec, tokenizer)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
        losses = pretrain(model, tokenizer, spec, seed, log)
    finally:
        torch.set_num_threads(threads)
    meta = {**spec, "seed": seed, "spec_hash": spec_hash(spec, seed), "final_loss": losses[-1]}
    return save_model_folder(model, tokenizer, meta, out_dir)


def resolve_base_model(
    cache_dir: Path = Path(".cache/pope"), spec: dict | None = None, seed: int = 0, log=None
) -> Path:
    """The base model folder (``builtin:testbed-v2``), built once per (spec, seed) into ``cache_dir``."""
    spec = dict(spec or BASE_SPEC)
    target = Path(cache_dir) / f"{spec['name']}-v{spec['version']}-{spec_hash(spec, seed)}"
    if not (target / "config.json").is_file():
        build_base_model(target, spec, seed, log)
    return target.resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.testbed_v2", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) the base model; prints its folder")
    build.add_argument("--cache-dir", default=".cache/pope")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--spec", choices=sorted(SPECS), default="base", help="pilot: the same model, fewer steps"
    )
    data = sub.add_parser("data", help="write train_hard, heldout_hard, calibration and easy .jsonl")
    data.add_argument("--out", default="runs/testbed_v2/data")
    data.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build":
        spec = SPECS[args.spec]
        print(f"spec hash {spec_hash(spec, args.seed)}", file=sys.stderr)
        print(
            resolve_base_model(Path(args.cache_dir), spec, args.seed, log=lambda m: print(m, file=sys.stderr))
        )
    else:
        for name, path in write_splits(Path(args.out), args.seed).items():
            print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
