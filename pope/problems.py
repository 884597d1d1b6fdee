"""Problems with gold answers and step-by-step oracle solutions.

The built-in set is synthetic arithmetic: a start value and a chain of additions and
subtractions, every intermediate value in 0..9, so a tiny model can learn it and a random one
sometimes guesses it (useful for plumbing; issue D builds the harder testbed).

The chains set (``builtin:chains``, the demo's task) asks the same expressions but solves them by
rewriting: each step works out the first operation and writes what is left, so the next step reads
only the text just written (``6 - 5 - 1.`` -> ``6 - 5 = 1, so 1 - 1. 1 - 1 = 0.``). That is a
procedure the demo's small model (``pope.models.chains``) can learn from examples, unlike finding the
k-th operand of the problem. The expressions are split three ways by a hash (``chain_split``): runs
train on one eighth, held-out sets come from another, and the demo model's warm-up sees only the rest.

The totals set (``builtin:totals``) asks for the same expressions' running totals written as one
number (``6 - 5 - 1.`` -> ``610``) and solves them by the same rewriting. Its answer carries every
intermediate value, so a wrong step cannot end on the right answer by luck, as it can one time in
ten when the answer is one digit (results/demo_preregistration.md, run 4). An expression falls in
the same split in both sets.
"""

from __future__ import annotations

import hashlib
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


CHAIN_QUESTIONS = {  # task -> (text before the expression, text after it)
    "chains": ("Compute ", "."),
    "totals": ("Write the running totals of ", " as one number."),
}


def chain_solution(expression: str, task: str = "chains") -> tuple[tuple[str, ...], str]:
    """The rewriting solution of ``"a op b op c ..."`` (single-digit operands, ``+``/``-``) as units,
    each ending in a space except the answer's, and the answer: the last value (``chains``) or every
    value from the first digit on, written together (``totals``)."""
    tokens = expression.split(" ")
    totals = [tokens[0]]
    steps = []
    while len(tokens) > 1:
        a, op, b = int(tokens[0]), tokens[1], int(tokens[2])
        value = a + b if op == "+" else a - b
        tokens = [str(value), *tokens[3:]]
        totals.append(str(value))
        rest = f", so {' '.join(tokens)}" if len(tokens) > 1 else ""
        steps.append(f"{a} {op} {b} = {value}{rest}. ")
    answer = tokens[0] if task == "chains" else "".join(totals)
    steps.append(f"The answer is $\\boxed{{{answer}}}$.")
    return tuple(steps), answer


def chain_expression(text: str) -> tuple[str, str]:
    """(task, expression) of a chains or totals question, or ValueError naming the text."""
    for task, (before, after) in CHAIN_QUESTIONS.items():
        if text.startswith(before) and text.endswith(after):
            return task, text[len(before) : len(text) - len(after)]
    raise ValueError(f"{text!r} is not a chains or totals question")


CHAIN_SPLITS = ("eval", "train", "warmup")


def chain_split(problem: str) -> str:
    """Which split an expression belongs to, by a hash of its chains question: an eighth "eval"
    (held-out sets), an eighth "train" (what runs train on), the rest "warmup" (the demo models')."""
    _, expression = chain_expression(problem)
    byte = hashlib.sha256(f"Compute {expression}.".encode()).digest()[0]
    return "eval" if byte < 32 else "train" if byte < 64 else "warmup"


def chain_from_text(problem_id: str, text: str) -> Problem:
    """The problem asked by ``text`` (``"Compute 6 - 5 - 1."``, ``"Write the running totals of 6 - 5
    as one number."``), with its rewriting solution."""
    task, expression = chain_expression(text)
    steps, answer = chain_solution(expression, task)
    return Problem(
        problem_id=problem_id, problem=text, answer=answer, solution_steps=steps, source=f"builtin:{task}"
    )


def chain_problem(rng: random.Random, index: int, num_ops: int, task: str = "chains") -> Problem:
    expression = arithmetic_problem(rng, index, num_ops).problem.removeprefix("Compute ").removesuffix(".")
    before, after = CHAIN_QUESTIONS[task]
    return chain_from_text(f"{task[:-1]}-{index:06d}", before + expression + after)


def builtin_chains(
    num_problems: int,
    seed: int,
    split: str = "train",
    min_ops: int = 2,
    max_ops: int = 4,
    task: str = "chains",
) -> list[Problem]:
    """``num_problems`` chain (or ``task="totals"``) problems of one split (``chain_split``), drawn with
    repeats allowed (there are only 729 expressions of two operations). The same seed and split draw
    the same expressions for both tasks."""
    if split not in CHAIN_SPLITS:
        raise ValueError(f"split {split!r} is not one of {CHAIN_SPLITS}")
    if task not in CHAIN_QUESTIONS:
        raise ValueError(f"task {task!r} is not one of {tuple(CHAIN_QUESTIONS)}")
    rng = random.Random(seed)
    problems: list[Problem] = []
    while len(problems) < num_problems:
        problem = chain_problem(rng, len(problems), num_ops=rng.randint(min_ops, max_ops), task=task)
        if chain_split(problem.problem) == split:
            problems.append(problem)
    return problems
