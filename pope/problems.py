"""Problems with gold answers and step-by-step oracle solutions.

The built-in set is synthetic arithmetic: a start value and a chain of additions and
subtractions, every intermediate value in 0..9, so a tiny model can learn it and a random one
sometimes guesses it (useful for plumbing; issue D builds the harder testbed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    answer: str
    solution_steps: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""
    prefix_units: int | None = None  # i*(x) from the prefix search, when known

    @property
    def solution(self) -> str:
        """Steps keep their trailing whitespace, so the solution is their plain concatenation."""
        return "".join(self.solution_steps)


def arithmetic_problem(rng: random.Random, index: int, num_ops: int) -> Problem:
    value = rng.randint(1, 9)
    expression = str(value)
    steps = []
    for _ in range(num_ops):
        if rng.random() < 0.5 and value < 9:
            operand = rng.randint(1, 9 - value)
            new_value = value + operand
            expression += f" + {operand}"
            steps.append(f"{value} + {operand} = {new_value}.")
        elif value > 0:
            operand = rng.randint(1, value)
            new_value = value - operand
            expression += f" - {operand}"
            steps.append(f"{value} - {operand} = {new_value}.")
        else:
            operand = rng.randint(1, 9)
            new_value = value + operand
            expression += f" + {operand}"
            steps.append(f"{value} + {operand} = {new_value}.")
        value = new_value
    steps = [step + " " for step in steps]  # units keep the whitespace after them
    steps.append(f"The answer is $\\boxed{{{value}}}$.")
    return Problem(
        problem_id=f"arith-{index:06d}",
        problem=f"Compute {expression}.",
        answer=str(value),
        solution_steps=tuple(steps),
        source="builtin:arithmetic",
    )


def builtin_arithmetic(num_problems: int, seed: int, min_ops: int = 2, max_ops: int = 4) -> list[Problem]:
    rng = random.Random(seed)
    return [arithmetic_problem(rng, i, num_ops=rng.randint(min_ops, max_ops)) for i in range(num_problems)]
