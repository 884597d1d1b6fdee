"""Prompt construction and the sampler, on the built-in problems and the real solutions in ../shared/data."""

import copy
import json
from collections import Counter

import pytest

from pope.config import DataConfig
from pope.datasets import FieldMap, load_file
from pope.problems import builtin_arithmetic
from pope.prompts import (
    PromptSchedule,
    PromptSpec,
    max_prefix_units,
    prefix_text,
    render_prompt,
    request_seed,
    variant_quota,
)
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
        prefix = "".join(problem.solution_steps[:units]).rstrip(" \t")
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
    prefix = "".join(problem.solution_steps[:2]).rstrip(" \t")
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


def test_pope_mix_is_exact_in_every_step_and_asks_every_problem():
    problems = builtin_arithmetic(40, seed=1)
    schedule = PromptSchedule(problems, DataConfig(), seed=0, block_size=8)
    assert schedule.quota == {"unguided": 4, "guided": 4}
    specs = [schedule.at(p) for p in range(8 * 100)]
    for b in range(100):
        block = specs[8 * b : 8 * b + 8]
        assert Counter(s.variant for s in block) == {"unguided": 4, "guided": 4}, b
        assert [s.position for s in block] == list(range(8 * b, 8 * b + 8))
    # no shards: the first epoch of hard draws (40 problems) holds every problem once
    assert sorted(s.problem.problem_id for s in specs[:40]) == sorted(p.problem_id for p in problems)
    for s in specs:
        if s.variant == "guided":
            assert 1 <= s.prefix_units <= max_prefix_units(s.problem, 0.25)
    assert schedule.at(123) == PromptSchedule(problems, DataConfig(), 0, 8).at(123), "a pure function"


def test_pairs_put_both_versions_of_a_problem_in_one_step():
    problems = builtin_arithmetic(10, seed=3)
    schedule = PromptSchedule(problems, DataConfig(pair_variants=True), seed=0, block_size=6)
    for b in range(20):
        block = schedule.block(b)
        by_pair: dict = {}
        for s in block:
            by_pair.setdefault(s.pair, []).append(s)
        assert len(by_pair) == 3 and None not in by_pair
        for pair in by_pair.values():
            assert sorted(s.variant for s in pair) == ["guided", "unguided"]
            assert pair[0].problem == pair[1].problem
            assert abs(pair[0].position - pair[1].position) == 1


def test_searched_prefix_is_used():
    from dataclasses import replace

    problems = [
        replace(p, prefix_units=2) for p in builtin_arithmetic(10, seed=2) if len(p.solution_steps) >= 4
    ]
    schedule = PromptSchedule(problems, DataConfig(), 0, 4)
    assert {schedule.at(i).prefix_units for i in range(200) if schedule.at(i).variant == "guided"} == {2}


@pytest.mark.parametrize(
    ("mix", "quota"),
    [
        ("hard_only", {"unguided": 8}),
        ("hard_easy", {"unguided": 6, "easy": 2}),
        ("guided_easy", {"guided": 6, "easy": 2}),
        ("pope_easy", {"unguided": 3, "guided": 3, "easy": 2}),
    ],
)
def test_mixes_are_exact_per_step(mix, quota):
    data = DataConfig(mix=mix, easy_source="builtin:arithmetic-easy", easy_fraction=0.25)
    assert variant_quota(data, 8) == quota
    hard, easy = builtin_arithmetic(20, 1), builtin_arithmetic(20, 2, 1, 1)
    schedule = PromptSchedule(hard, data, 0, 8, easy)
    for b in range(50):
        assert Counter(s.variant for s in schedule.block(b)) == quota
    assert all((s.problem in easy) == (s.variant == "easy") for s in schedule.block(0))


def test_problems_without_a_short_enough_prefix_are_reported_not_asked():
    from pope.problems import Problem

    long_first = Problem(
        "long", "Compute it.", "3", ("A first step that is much longer than the rest. ", "So 3.")
    )
    problems = [*builtin_arithmetic(6, seed=4), long_first]
    schedule = PromptSchedule(problems, DataConfig(), 0, 4)
    assert schedule.not_guidable == [long_first]
    assert all(schedule.at(i).problem.problem_id != "long" for i in range(400))
    # a mix without guided prompts asks it
    assert PromptSchedule(problems, DataConfig(mix="hard_only"), 0, 4).not_guidable == []


def test_prefix_is_a_true_share_of_the_solution(omni):
    """At most (strictly under) a quarter of the characters, whatever the units' lengths: the old rule
    max(1, int(0.25 * units)) let a 2-7 unit solution show a unit covering up to 91% of it."""
    for problem in omni:
        units = max_prefix_units(problem, 0.25)
        total = len(problem.solution)
        if units:
            assert len(prefix_text(problem, units)) < 0.25 * total
        if units + 1 < len(problem.solution_steps):
            assert len(prefix_text(problem, units + 1)) >= 0.25 * total


def test_guided_prompts_do_not_end_on_a_space(tokenizer):
    problems = builtin_arithmetic(20, seed=5)  # every step unit ends with "= v. "
    schedule = PromptSchedule(problems, DataConfig(), 0, 8)
    guided = [schedule.at(i) for i in range(80) if schedule.at(i).variant == "guided"]
    assert guided and all(s.problem.solution_steps[0].endswith(" ") for s in guided)
    for spec in guided:
        text = render_prompt(tokenizer, spec, DataConfig())
        assert text.endswith(".") and not text.endswith(" ")


def test_request_seeds_never_collide_in_a_run():
    """vLLM gives child i of a request seed + i: the children of every position, for both run seeds,
    are all distinct."""
    children = [request_seed(run, p, 8) + i for run in (0, 1) for p in range(5000) for i in range(8)]
    assert len(set(children)) == len(children)


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


def test_the_papers_template_puts_problem_and_partial_response_in_the_user_turn(tokenizer, omni):
    data = DataConfig(instruction_version="paper-v1", prefix_placement="user_end")
    problem = next(p for p in omni if max_prefix_units(p, 0.25) >= 1)
    guided = render_prompt(tokenizer, PromptSpec(problem, "guided", 1), data)
    unguided = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), data)
    prefix = prefix_text(problem, 1)
    assert "<|im_start|>system" not in guided and "<|im_start|>system" not in unguided
    assert (
        f"Problem:\n{problem.problem}\n\nPartial Response:\n{prefix}\n\nContinue solving the problem"
        in guided
    )
    assert "Partial Response" not in unguided and problem.problem in unguided
    assert guided.endswith("<|im_start|>assistant\n") and "\\boxed{}" in guided


def test_one_instruction_version_makes_guided_the_unguided_prompt_plus_the_prefix(tokenizer, omni):
    data = DataConfig(instruction_version="pope-same-v1")
    for problem in omni[:20]:
        units = max_prefix_units(problem, 0.25)
        if units:
            guided = render_prompt(tokenizer, PromptSpec(problem, "guided", units), data)
            unguided = render_prompt(tokenizer, PromptSpec(problem, "unguided", 0), data)
            assert guided == unguided + prefix_text(problem, units)


def test_chat_template_keyword_arguments_reach_the_template(tokenizer):
    """data.chat_template_kwargs go to the tokenizer's chat template: a real tokenizer given a
    template that switches a thinking block on (as Qwen3's enable_thinking does) renders it only
    when asked."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking %}<think>{% endif %}{% endif %}"
    )
    problem = builtin_arithmetic(1, seed=0)[0]
    spec = PromptSpec(problem, "unguided", 0)
    thinking = render_prompt(tokenizer, spec, DataConfig(chat_template_kwargs={"enable_thinking": True}))
    plain = render_prompt(tokenizer, spec, DataConfig())
    assert thinking.endswith("<|assistant|><think>") and plain.endswith("<|assistant|>")
    assert thinking.removesuffix("<think>") == plain
