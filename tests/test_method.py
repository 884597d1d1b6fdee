"""filter-hard, find-prefixes and eval end to end: a real actor pool (HF engine, Ray), the tiny
model, real math-verify; outputs checked against their definitions."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import pytest

from orchestrator import method
from pope.config import load_config
from pope.datasets import FieldMap, load_file
from pope.problems import builtin_arithmetic
from tests.conftest import ROOT, SHARED_DATA

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def config():
    return load_config(
        ROOT / "configs" / "demo_cpu_hf.yaml", ["actors.num_actors=1", "actors.max_new_tokens=40"]
    )


@pytest.fixture(scope="module")
def pool(config, tiny_model_path):
    from orchestrator.pool import GenerationPool

    with GenerationPool(config, tiny_model_path) as p:
        yield p


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rows = [
        {"id": p.problem_id, "problem": p.problem, "answer": p.answer, "solution": p.solution}
        for p in builtin_arithmetic(16, seed=11)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_filter_hard_then_find_prefixes(pool, config, problems_file, tmp_path):
    problems, _ = load_file(problems_file, FieldMap(id="id"))
    out = tmp_path / "hard.jsonl"
    result = method.filter_hard(pool, problems, config, k=8, output=out)
    annotated = read_jsonl(out.with_suffix(".all.jsonl"))
    hard = read_jsonl(out)
    assert len(annotated) == 16 and result["hard"] == len(hard)
    for row in annotated:
        assert row["pope_k"] == 8 and 0 <= row["pope_correct"] <= 8 and len(row["pope_lengths"]) == 8
        assert all(1 <= n <= 40 for n in row["pope_lengths"])
    assert [r["id"] for r in hard] == [r["id"] for r in annotated if r["pope_correct"] == 0]
    assert 0 < len(hard) < 16, "the tiny model should solve some problems and fail others"

    hard_problems, _ = load_file(out, FieldMap(id="id"))
    prefixed = tmp_path / "prefixed.jsonl"
    found = method.find_prefixes(pool, hard_problems, config, n=4, output=prefixed)
    rows = read_jsonl(prefixed)
    assert len(rows) == len(hard) and found["found"] + found["fallback"] == len(hard)
    for row in rows:
        quarter = max(1, int(0.25 * row["pope_solution_units"]))
        assert 1 <= row["pope_prefix_units"] <= quarter
        if row["pope_prefix_fallback"]:
            assert row["pope_prefix_correct"] == 0 and (row["pope_prefix_units"] < quarter or quarter == 1)
        else:
            assert row["pope_prefix_correct"] >= 1
    # the annotated file is a training input: the searched prefix reaches the problems
    again, report = load_file(prefixed, FieldMap(id="id"))
    assert report.rows_bad == 0
    assert [p.prefix_units for p in again] == [r["pope_prefix_units"] for r in rows]


def test_eval_pass_at_k_table(pool, config, problems_file, tmp_path):
    benchmarks = {
        "arith": load_file(problems_file, FieldMap(id="id"))[0],
        "aime2025": load_file(SHARED_DATA / "aime2025.jsonl", FieldMap(solution="solution", id="id"))[0],
    }
    table = method.evaluate(pool, benchmarks, config, n=4, ks=[1, 2, 4], out_dir=tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(table))
    assert saved["aime2025"]["problems"] == 30 and len(saved["aime2025"]["per_problem"]) == 30
    for row in saved.values():
        for k in (1, 2, 4):
            want = (
                sum(1 - comb(4 - r["correct"], k) / comb(4, k) for r in row["per_problem"]) / row["problems"]
            )
            assert row["pass_at_k"][str(k)] == pytest.approx(want, abs=1e-12)
    markdown = (tmp_path / "results.md").read_text()
    assert "| aime2025 | 30 | 4 |" in markdown and "pass@4" in markdown
