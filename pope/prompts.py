"""Prompts and the sampler: which problem the run asks at each position, guided or not.

A guided prompt is the problem plus the first ``prefix_units`` units of its oracle solution,
placed at the start of the assistant turn (the model continues it) or at the end of the user turn
(``data.prefix_placement``). The prefix is prompt either way: it is never a training target (no
loss and no importance ratio on its tokens; tests/test_loss.py checks the mask). Trailing spaces
of the prefix are dropped (not newlines): a prompt that ends on a bare space token asks the model
to continue from a state its tokenizer almost never produces.

The sampler is one sequence for the whole run, a pure function of the position:

    position p ──> block b = p // B (B = learner.groups_per_step), slot p % B
    block b    ──> exactly the mix's count of each variant (``variant_quota``), in a seeded order;
                   with ``data.pair_variants`` a problem's unguided and guided prompts side by side
    hard draw k ─> problem perm_epoch[k % n], a fresh seeded permutation every epoch

Actors claim positions from one Redis counter (broker/streams.py ``PositionClaims``), so no actor
owns a shard: a pool of any size, resized or restarted, asks every problem, and no position (and
so no sampling seed, ``request_seed``) is used twice in a run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pope.config import DataConfig
from pope.instructions import INSTRUCTIONS
from pope.problems import Problem

VARIANTS = ("unguided", "guided", "easy")


@dataclass(frozen=True)
class PromptSpec:
    problem: Problem
    variant: str  # "unguided" | "guided" | "easy"
    prefix_units: int  # oracle units included (0 unless guided)
    position: int = -1  # in the run's sampler; -1 outside it (offline passes)
    pair: int | None = None  # shared by a problem's unguided and guided prompts drawn together

    @property
    def prefix_text(self) -> str:
        return prefix_text(self.problem, self.prefix_units)


def prefix_text(problem: Problem, num_units: int) -> str:
    """The first ``num_units`` oracle units, without trailing spaces or tabs (newlines are kept)."""
    return "".join(problem.solution_steps[:num_units]).rstrip(" \t")


def render_prompt(tokenizer, spec: PromptSpec, data: DataConfig) -> str:
    """The prompt as text, through the tokenizer's chat template."""
    version = INSTRUCTIONS[data.instruction_version]
    shown = spec.prefix_text if spec.prefix_units else ""
    if "user_template" in version:  # the problem (and a partial response) in the user turn, no system turn
        in_user = bool(shown) and data.prefix_placement == "user_end"
        template = version["user_template_guided" if in_user else "user_template"]
        messages = [{"role": "user", "content": template.format(problem=spec.problem.problem, prefix=shown)}]
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **data.chat_template_kwargs
        )
        return text + shown if shown and not in_user else text
    user = spec.problem.problem
    if shown and data.prefix_placement == "user_end":
        user += version["prefix_header"] + shown
    messages = [
        {"role": "system", "content": data.instruction(spec.variant)},
        {"role": "user", "content": user},
    ]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **data.chat_template_kwargs
    )
    if shown and data.prefix_placement == "assistant_start":
        text += shown
    return text


def max_prefix_units(problem: Problem, prefix_fraction: float) -> int:
    """The most units a guided prompt may show: the longest prefix strictly shorter (in characters,
    trailing spaces dropped) than ``prefix_fraction`` of the whole solution, never the answer's unit.
    0 when even the first unit is too long: the problem is not guidable at this share."""
    limit = prefix_fraction * len(problem.solution)
    best = 0
    for units in range(1, len(problem.solution_steps)):  # the last unit holds the answer
        if len(prefix_text(problem, units)) >= limit:
            break
        best = units
    return best


def guided_spec(problem: Problem, data: DataConfig, rng: random.Random, **where) -> PromptSpec | None:
    """The guided prompt of a problem: its searched prefix i*(x) when known, else a random prefix
    strictly shorter than the limit; None when the problem is not guidable."""
    if problem.prefix_units:
        return PromptSpec(problem, "guided", problem.prefix_units, **where)
    limit = max_prefix_units(problem, data.prefix_fraction)
    return PromptSpec(problem, "guided", rng.randint(1, limit), **where) if limit > 0 else None


def is_guidable(problem: Problem, data: DataConfig) -> bool:
    return bool(problem.prefix_units) or max_prefix_units(problem, data.prefix_fraction) > 0


def mix_has_guided(data: DataConfig) -> bool:
    return data.mix in ("pope", "pope_easy", "guided_easy")


def variant_quota(data: DataConfig, groups_per_step: int) -> dict[str, int]:
    """How many groups of each variant one learner step (and one sampler block) holds, exactly."""

    def share(x: float) -> int:
        return math.floor(x + 0.5)

    size = groups_per_step
    easy = share(data.easy_fraction * size) if data.mix in ("hard_easy", "guided_easy", "pope_easy") else 0
    hard = size - easy
    if data.mix == "hard_only":
        quota = {"unguided": size}
    elif data.mix == "hard_easy":
        quota = {"unguided": hard, "easy": easy}
    elif data.mix == "guided_easy":
        quota = {"guided": hard, "easy": easy}
    else:  # pope, pope_easy
        guided = share(data.guided_fraction * hard)
        quota = {"unguided": hard - guided, "guided": guided, "easy": easy}
    return {variant: n for variant, n in quota.items() if n > 0}


class PromptSchedule:
    """The run's prompt at every sampler position (see the module docstring); deterministic in
    (problems, data, seed, block size), so a restarted actor re-asks exactly what it had claimed."""

    def __init__(
        self,
        problems: list[Problem],
        data: DataConfig,
        seed: int,
        block_size: int,
        easy: list[Problem] | None = None,
    ):
        self.data, self.seed, self.block_size = data, seed, block_size
        self.quota = variant_quota(data, block_size)
        guided = mix_has_guided(data)
        self.not_guidable = [p for p in problems if guided and not is_guidable(p, data)]
        left_out = {id(p) for p in self.not_guidable}
        self.hard = [p for p in problems if id(p) not in left_out]
        self.easy = list(easy or [])
        if not self.hard:
            raise ValueError(
                f"data.source: none of its {len(problems)} problems has a prefix shorter than "
                f"data.prefix_fraction={data.prefix_fraction} of its solution: nothing to guide"
            )
        if "easy" in self.quota and not self.easy:
            raise ValueError(f"data.mix={data.mix} needs easy problems (data.easy_source holds none)")
        self.paired = data.pair_variants and self.quota.get("guided", 0) == self.quota.get("unguided", -1)
        if data.pair_variants and not self.paired:
            raise ValueError(
                f"data.pair_variants needs as many guided as unguided groups per step; the quota of "
                f"data.mix={data.mix} at learner.groups_per_step={block_size} is {self.quota}"
            )
        # one block: its items (variant tuples; a pair is one item of two) before the seeded shuffle
        items: list[tuple[str, ...]] = []
        if self.paired:
            items += [("unguided", "guided")] * self.quota["guided"]
        else:
            items += [(v,) for v in ("unguided", "guided") for _ in range(self.quota.get(v, 0))]
        self._hard_items = len(items)
        items += [("easy",)] * self.quota.get("easy", 0)
        self._items = items
        self._perms: dict[tuple[str, int], list[Problem]] = {}

    def _perm(self, pool: str, epoch: int) -> list[Problem]:
        key = (pool, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:  # positions move forward: old epochs are not asked again
                self._perms.pop(next(iter(self._perms)))
            order = list(self.hard if pool == "hard" else self.easy)
            random.Random(f"pope-sampler-{self.seed}-{pool}-{epoch}").shuffle(order)
            self._perms[key] = order
        return self._perms[key]

    def _draw(self, pool: str, k: int) -> Problem:
        problems = self.hard if pool == "hard" else self.easy
        return self._perm(pool, k // len(problems))[k % len(problems)]

    def block(self, b: int) -> list[PromptSpec]:
        rng = random.Random(f"pope-sampler-{self.seed}-block-{b}")
        order = list(range(len(self._items)))
        rng.shuffle(order)
        specs: list[PromptSpec] = []
        for item_index in order:
            variants = self._items[item_index]
            if variants == ("easy",):
                k = b * (len(self._items) - self._hard_items) + (item_index - self._hard_items)
                problem, pair = self._draw("easy", k), None
            else:
                k = b * self._hard_items + item_index
                problem = self._draw("hard", k)
                pair = b * self.block_size + item_index if self.paired else None
            for variant in variants:
                position = b * self.block_size + len(specs)
                spec = None
                if variant == "guided":
                    prefix_rng = random.Random(f"pope-prefix-{self.seed}-{position}")
                    spec = guided_spec(problem, self.data, prefix_rng, position=position, pair=pair)
                    assert spec is not None, "not guidable problems are left out of guided mixes"
                specs.append(spec or PromptSpec(problem, variant, 0, position=position, pair=pair))
        return specs

    def at(self, position: int) -> PromptSpec:
        return self.block(position // self.block_size)[position % self.block_size]

    def prompts(self, start: int = 0):
        """Every prompt from ``start`` on (an endless iterator)."""
        position = start
        while True:
            yield self.at(position)
            position += 1


def request_seed(run_seed: int, position: int, num_rollouts: int) -> int:
    """The sampling seed of the request at ``position``. vLLM gives child i of a request the seed
    seed + i, so requests ``num_rollouts`` apart never share a stream; the run seed picks a disjoint
    range (2^40 positions each)."""
    return (run_seed % 4096) * (1 << 40) * num_rollouts + position * num_rollouts
