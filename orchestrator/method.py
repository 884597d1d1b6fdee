"""The method's offline passes: hard-set filtering, the prefix search i*(x), and pass@k evaluation.

    pope filter-hard    k samples per problem; keep problems with 0 correct      (paper: k = 128)
    pope find-prefixes  i*(x) = shortest prefix (in units) with >= 1 correct of n samples, searched
                        up to a quarter of the solution; else a random shorter prefix, flagged
    pope eval           pass@k = 1 - C(n-c, k) / C(n, k) per problem, averaged, for a list of k

Each writes an annotated dataset or table; every row keeps the problem, answer and solution, so
the output is a valid input of the next pass and of training (``pope_prefix_units``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pope.config import PopeConfig
from pope.datasets import PREFIX_UNITS_FIELD
from pope.passk import pass_at_k
from pope.problems import Problem
from pope.prompts import PromptSpec, max_prefix_units, render_prompt


def _row(problem: Problem, **annotations) -> dict:
    return {
        "id": problem.problem_id,
        "problem": problem.problem,
        "answer": problem.answer,
        "solution": problem.solution,
        "source": problem.source,
        **annotations,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def sample_counts(pool, problems: list[Problem], specs: list[PromptSpec], config: PopeConfig, n: int):
    """For each prompt: (correct count, completion lengths) over ``n`` samples."""
    prompts = [render_prompt(pool.tokenizer, spec, config.data) for spec in specs]
    groups = pool.generate(prompts, n, config.actors.max_new_tokens)
    pairs = [
        (spec.problem.answer, text) for spec, group in zip(specs, groups, strict=True) for text, _ in group
    ]
    rewards = pool.score(pairs)
    out = []
    for i, group in enumerate(groups):
        correct = int(sum(rewards[i * n : (i + 1) * n]))
        out.append((correct, [length for _, length in group]))
    return out


def filter_hard(pool, problems: list[Problem], config: PopeConfig, k: int, output: Path) -> dict:
    """Sample ``k`` per problem; write every problem annotated, and the hard ones (0 correct) to ``output``."""
    specs = [PromptSpec(p, "unguided", 0) for p in problems]
    results = sample_counts(pool, problems, specs, config, k)
    annotated = [
        _row(p, pope_k=k, pope_correct=c, pope_lengths=lengths)
        for p, (c, lengths) in zip(problems, results, strict=True)
    ]
    hard = [row for row in annotated if row["pope_correct"] == 0]
    _write_jsonl(output, hard)
    _write_jsonl(output.with_suffix(".all.jsonl"), annotated)
    return {"problems": len(problems), "hard": len(hard), "k": k, "output": str(output)}


def find_prefixes(
    pool, problems: list[Problem], config: PopeConfig, n: int, output: Path, seed: int = 0
) -> dict:
    """i*(x) for every problem, one batched round per prefix length over all unresolved problems.

    Lengths go up to ``max_prefix_units`` at ``data.prefix_fraction`` (a prefix strictly shorter, in
    characters, than that share of the solution). A problem without a working length gets a random
    one within the limit (``pope_prefix_fallback``); one whose first unit is already too long is not
    guidable (``pope_prefix_units`` 0, ``pope_prefix_guidable`` false)."""
    rng = random.Random(seed)
    fraction = config.data.prefix_fraction

    def search_limit(problem: Problem) -> int:
        return max_prefix_units(problem, fraction)

    found: dict[str, tuple[int, int]] = {}
    unresolved = [p for p in problems if search_limit(p) > 0]
    length = 1
    while unresolved:
        active = [p for p in unresolved if length <= search_limit(p)]
        if not active:
            break
        specs = [PromptSpec(p, "guided", length) for p in active]
        for problem, (correct, _) in zip(active, sample_counts(pool, active, specs, config, n), strict=True):
            if correct > 0:
                found[problem.problem_id] = (length, correct)
        unresolved = [p for p in unresolved if p.problem_id not in found]
        length += 1
    rows = []
    for p in problems:
        if p.problem_id in found:
            units, correct = found[p.problem_id]
            rows.append(
                _row(
                    p, **{PREFIX_UNITS_FIELD: units}, pope_prefix_fallback=False, pope_prefix_correct=correct
                )
            )
        else:
            limit = search_limit(p)
            units = rng.randint(1, limit) if limit > 0 else 0
            rows.append(
                _row(p, **{PREFIX_UNITS_FIELD: units}, pope_prefix_fallback=True, pope_prefix_correct=0)
            )
        rows[-1]["pope_prefix_n"] = n
        rows[-1]["pope_prefix_guidable"] = search_limit(p) > 0
        rows[-1]["pope_solution_units"] = len(p.solution_steps)
    _write_jsonl(output, rows)
    return {
        "problems": len(problems),
        "found": len(found),
        "fallback": sum(1 for p in problems if p.problem_id not in found and search_limit(p) > 0),
        "not_guidable": sum(1 for p in problems if search_limit(p) == 0),
        "n": n,
        "output": str(output),
    }


def evaluate(
    pool, benchmarks: dict[str, list[Problem]], config: PopeConfig, n: int, ks: list[int], out_dir: Path
) -> dict:
    """pass@k for each benchmark; writes results.json and results.md with per-problem counts."""
    if max(ks) > n:
        raise ValueError(f"every k must be at most n={n}; got k={max(ks)}")
    table: dict[str, dict] = {}
    for name, problems in benchmarks.items():
        specs = [PromptSpec(p, "unguided", 0) for p in problems]
        results = sample_counts(pool, problems, specs, config, n)
        per_problem = [
            {"id": p.problem_id, "n": n, "correct": c} for p, (c, _) in zip(problems, results, strict=True)
        ]
        table[name] = {
            "problems": len(problems),
            "n": n,
            "pass_at_k": {
                str(k): sum(pass_at_k(n, r["correct"], k) for r in per_problem) / len(per_problem) for k in ks
            },
            "per_problem": per_problem,
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(table, indent=2))
    lines = ["| benchmark | problems | n | " + " | ".join(f"pass@{k}" for k in ks) + " |"]
    lines.append("|---" * (3 + len(ks)) + "|")
    for name, row in table.items():
        values = " | ".join(f"{row['pass_at_k'][str(k)]:.4f}" for k in ks)
        lines.append(f"| {name} | {row['problems']} | {n} | {values} |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return table
