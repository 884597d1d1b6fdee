"""Prompts and the sampler: which problem each actor asks next, guided or not.

A guided prompt is the problem plus the first ``prefix_units`` steps of its oracle solution,
placed at the start of the assistant turn so that the model continues it. The prefix is
prompt: it is never a training target (no loss, no importance ratio on its tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from pope.config import DataConfig
from pope.problems import Problem


@dataclass(frozen=True)
class PromptSpec:
    problem: Problem
    variant: str  # "unguided" | "guided"
    prefix_units: int  # oracle steps included (0 when unguided)

    @property
    def prefix_text(self) -> str:
        return "".join(self.problem.solution_steps[: self.prefix_units])


def render_prompt(tokenizer, spec: PromptSpec, data: DataConfig) -> str:
    """The prompt as text, through the tokenizer's chat template."""
    system = data.guided_instruction if spec.variant == "guided" else data.system_prompt
    messages = [{"role": "system", "content": system}, {"role": "user", "content": spec.problem.problem}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if spec.prefix_units:
        text += spec.prefix_text
    return text


def max_prefix_units(problem: Problem, prefix_fraction: float) -> int:
    """Guided prompts show at most this many steps (at least one, never the step with the answer)."""
    usable = max(0, len(problem.solution_steps) - 1)
    return min(usable, max(1, int(prefix_fraction * len(problem.solution_steps))))


def sample_prompts(
    problems: list[Problem], data: DataConfig, seed: int, shard: int, num_shards: int
) -> Iterator[PromptSpec]:
    """An endless stream of prompts for one actor: its shard of the problems, reshuffled each epoch.

    Each problem becomes a guided prompt with probability ``guided_fraction`` (when it has
    solution steps to show), else an unguided one; each prompt is its own GRPO group.
    """
    mine = [p for i, p in enumerate(problems) if i % num_shards == shard] or list(problems)
    rng = random.Random(seed * 1_000_003 + shard)
    while True:
        order = list(mine)
        rng.shuffle(order)
        for problem in order:
            limit = max_prefix_units(problem, data.prefix_fraction)
            if limit > 0 and rng.random() < data.guided_fraction:
                yield PromptSpec(problem, "guided", rng.randint(1, limit))
            else:
                yield PromptSpec(problem, "unguided", 0)
