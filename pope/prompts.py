"""Prompts and the sampler: which problem each actor asks next, guided or not.

A guided prompt is the problem plus the first ``prefix_units`` units of its oracle solution,
placed at the start of the assistant turn (the model continues it) or at the end of the user turn
(``data.prefix_placement``). The prefix is prompt either way: it is never a training target (no
loss and no importance ratio on its tokens; tests/test_loss.py checks the mask).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from pope.config import DataConfig
from pope.instructions import INSTRUCTIONS
from pope.problems import Problem


@dataclass(frozen=True)
class PromptSpec:
    problem: Problem
    variant: str  # "unguided" | "guided" | "easy"
    prefix_units: int  # oracle units included (0 unless guided)

    @property
    def prefix_text(self) -> str:
        return "".join(self.problem.solution_steps[: self.prefix_units])


def render_prompt(tokenizer, spec: PromptSpec, data: DataConfig) -> str:
    """The prompt as text, through the tokenizer's chat template."""
    user = spec.problem.problem
    if spec.prefix_units and data.prefix_placement == "user_end":
        user += INSTRUCTIONS[data.instruction_version]["prefix_header"] + spec.prefix_text
    messages = [
        {"role": "system", "content": data.instruction(spec.variant)},
        {"role": "user", "content": user},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if spec.prefix_units and data.prefix_placement == "assistant_start":
        text += spec.prefix_text
    return text


def max_prefix_units(problem: Problem, prefix_fraction: float) -> int:
    """Guided prompts show at most this many units (at least one, never the unit with the answer)."""
    usable = max(0, len(problem.solution_steps) - 1)
    return min(usable, max(1, int(prefix_fraction * len(problem.solution_steps))))


def guided_spec(problem: Problem, data: DataConfig, rng: random.Random) -> PromptSpec | None:
    """The guided prompt of a problem: its searched prefix i*(x) when known, else a random short one."""
    if problem.prefix_units:
        return PromptSpec(problem, "guided", problem.prefix_units)
    limit = max_prefix_units(problem, data.prefix_fraction)
    return PromptSpec(problem, "guided", rng.randint(1, limit)) if limit > 0 else None


def _endless(problems: list[Problem], rng: random.Random) -> Iterator[Problem]:
    while True:
        order = list(problems)
        rng.shuffle(order)
        yield from order


def sample_prompts(
    problems: list[Problem],
    data: DataConfig,
    seed: int,
    shard: int,
    num_shards: int,
    easy: list[Problem] | None = None,
) -> Iterator[PromptSpec]:
    """An endless stream of prompts for one actor: its shard of the problems, reshuffled each epoch.

    ``data.mix`` decides the variants (see DataConfig.mix); a hard problem with nothing to show
    (no solution units) is asked unguided.
    """
    rng = random.Random(seed * 1_000_003 + shard)
    mine = [p for i, p in enumerate(problems) if i % num_shards == shard] or list(problems)
    hard = _endless(mine, rng)
    easy_mine = [p for i, p in enumerate(easy or []) if i % num_shards == shard] or list(easy or [])
    easy_stream = _endless(easy_mine, rng) if easy_mine else None
    while True:
        if (
            easy_stream is not None
            and data.mix in ("hard_easy", "guided_easy")
            and rng.random() < data.easy_fraction
        ):
            yield PromptSpec(next(easy_stream), "easy", 0)
            continue
        problem = next(hard)
        wants_guided = data.mix == "guided_easy" or (
            data.mix == "pope" and rng.random() < data.guided_fraction
        )
        spec = guided_spec(problem, data, rng) if wants_guided else None
        yield spec or PromptSpec(problem, "unguided", 0)
