"""Prompt construction and the sampler, on the built-in problems and the real solutions in ../shared/data."""

import json
from collections import Counter

import pytest

from pope.config import DataConfig
from pope.datasets import FieldMap, load_file
from pope.problems import builtin_arithmetic
from pope.prompts import PromptSpec, max_prefix_units, render_prompt, sample_prompts
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def omni():
    problems, _ = load_file(SHARED_DATA / "omni_math_sample.jsonl", FieldMap(), max_bad_fraction=1.0)
    return problems


def test_guided_prompt_ends_with_the_exact_prefix(tokenizer, omni):
    data = DataConfig()
    checked = 0
    for problem in omni:
        units = max_prefix_units(problem, 0.25)
        if units == 0:
            continue
        spec = PromptSpec(problem, "guided", units)
        text = render_prompt(tokenizer, spec, data)
        prefix = "".join(problem.solution_steps[:units])
        assert text.endswith("<|im_start|>assistant\n" + prefix)
        assert problem.solution.startswith(prefix)  # the boundary is kept exactly as written
        assert data.instruction("guided") in text and data.instruction("unguided") not in text
        checked += 1
    assert checked > 40


def test_prefix_at_end_of_user_turn(tokenizer):
    problems, _ = load_file(SHARED_DATA / "math500_sample.jsonl", FieldMap(), max_bad_fraction=1.0)
    data = DataConfig(prefix_placement="user_end")
    problem = next(p for p in problems if len(p.solution_steps) >= 4)
    text = render_prompt(tokenizer, PromptSpec(problem, "guided", 2), data)
    prefix = "".join(problem.solution_steps[:2])
    assert ("Beginning of a solution:\n" + prefix + "<|im_end|>") in text
    assert text.endswith("<|im_start|>assistant\n")


def test_unguided_prompt_has_no_solution_text(tokenizer, omni):
    problem = omni[0]
    text = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), DataConfig())
    assert problem.solution_steps[0] not in text and text.endswith("<|im_start|>assistant\n")


def test_instruction_overrides_and_versions():
    assert DataConfig(guided_instruction="X").instruction("guided") == "X"
    with pytest.raises(ValueError, match="instruction_version"):
        DataConfig(instruction_version="nope")


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_pope_mix_is_one_to_one_and_sharded():
    problems = builtin_arithmetic(40, seed=1)
    specs = take(sample_prompts(problems, DataConfig(), seed=0, shard=1, num_shards=2), 2000)
    counts = Counter(s.variant for s in specs)
    assert abs(counts["guided"] / 2000 - 0.5) < 0.05
    assert {s.problem.problem_id for s in specs} == {p.problem_id for p in problems[1::2]}
    for s in specs:
        if s.variant == "guided":
            assert 1 <= s.prefix_units <= max_prefix_units(s.problem, 0.25)


def test_searched_prefix_is_used():
    from dataclasses import replace

    problems = [
        replace(p, prefix_units=2) for p in builtin_arithmetic(10, seed=2) if len(p.solution_steps) >= 4
    ]
    specs = take(sample_prompts(problems, DataConfig(), 0, 0, 1), 200)
    assert {s.prefix_units for s in specs if s.variant == "guided"} == {2}


@pytest.mark.parametrize(
    ("mix", "variants"),
    [("hard_only", {"unguided"}), ("hard_easy", {"unguided", "easy"}), ("guided_easy", {"guided", "easy"})],
)
def test_mixes(mix, variants):
    data = DataConfig(mix=mix, easy_source="builtin:arithmetic-easy", easy_fraction=0.25)
    hard, easy = builtin_arithmetic(20, 1), builtin_arithmetic(20, 2, 1, 1)
    specs = take(sample_prompts(hard, data, 0, 0, 1, easy), 2000)
    counts = Counter(s.variant for s in specs)
    assert set(counts) == variants
    if "easy" in variants:
        assert abs(counts["easy"] / 2000 - 0.25) < 0.04


def test_easy_mix_needs_an_easy_source():
    with pytest.raises(ValueError, match="easy_source"):
        DataConfig(mix="hard_easy")


def test_builtin_rows_round_trip_through_jsonl(tmp_path):
    rows = [
        {"id": p.problem_id, "problem": p.problem, "answer": p.answer, "solution": p.solution}
        for p in builtin_arithmetic(5, 3)
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded, report = load_file(path, FieldMap(id="id"))
    assert report.rows_bad == 0
    assert [p.solution for p in loaded] == [r["solution"] for r in rows]
