"""Problems with gold answers and step-by-step oracle solutions.

The built-in set is synthetic arithmetic: a start value and a chain of additions and
subtractions, every intermediate value in 0..9, so a tiny model can learn it and a random one
sometimes guesses it (useful for plumbing; issue D builds the harder testbed).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    answer: str
    solution_steps: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    @property
    def solution(self) -> str:
        return " ".join(self.solution_steps)


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
    steps.append(f"The answer is $\\boxed{{{value}}}$.")
    return Problem(
        problem_id=f"arith-{index:06d}",
        problem=f"Compute {expression}.",
        answer=str(value),
        solution_steps=tuple(steps),
        source="builtin:arithmetic",
    )


def builtin_arithmetic(num_problems: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [arithmetic_problem(rng, i, num_ops=rng.randint(2, 4)) for i in range(num_problems)]


def load_jsonl(path: Path, problem_field: str, answer_field: str, solution_field: str) -> list[Problem]:
    """Read problems from JSONL; a bad row is an error naming the file, row and field."""
    problems = []
    with open(path, encoding="utf-8") as handle:
        for row_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{row_number}: not valid JSON ({exc.msg})") from None
            for name in (problem_field, answer_field):
                if not isinstance(row.get(name), (str, int, float)) or str(row.get(name)).strip() == "":
                    raise ValueError(f"{path}:{row_number}: field {name!r} is missing or empty")
            solution = row.get(solution_field) or ""
            steps = tuple(s.strip() + "." for s in str(solution).split(".") if s.strip())
            problems.append(
                Problem(
                    problem_id=str(row.get("id", f"{path.stem}-{row_number}")),
                    problem=str(row[problem_field]),
                    answer=str(row[answer_field]),
                    solution_steps=steps,
                    source=str(path),
                )
            )
    return problems


def load_problems(source: str, num_problems: int, seed: int, fields: tuple[str, str, str]) -> list[Problem]:
    if source == "builtin:arithmetic":
        return builtin_arithmetic(num_problems, seed)
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        return load_jsonl(path, *fields)
    raise ValueError(f"data.source {source!r}: not 'builtin:arithmetic' and not an existing .jsonl file")
