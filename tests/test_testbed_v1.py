"""The testbed of issue D (experiments/testbed_v1.py): the task's invariants, and the base model's build."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from experiments import testbed_v1 as tb

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_a_step_worked_by_hand():
    # 8067: drop 8, append (3*8 + 1) mod 10 = 5 -> 0675; drop 0, append 1 -> 6751
    problem = tb.make_problem("8067", 2, "x")
    assert problem.answer == "6751"
    assert problem.solution_steps == (
        "1: 8067 -> 0675.\n",
        "2: 0675 -> 6751.\n",
        "The answer is $\\boxed{6751}$.",
    )
    assert "Start with 8067. Do 2 steps." in problem.problem


@pytest.mark.unit
def test_answer_space_is_large_and_uniform():
    states = [f"{i:04d}" for i in range(10_000)]
    # one step is a bijection of the 10^4 states, so for a fixed difficulty the answer is a
    # bijection of the start: a uniformly random start gives a uniform answer (a guess: 1e-4)
    assert len({tb.step(s) for s in states}) == 10_000 == tb.ANSWER_SPACE
    assert 1 / tb.ANSWER_SPACE < 1e-3
    answers = [p.answer for p in tb.make_split("space", 400, range(tb.HARD_MIN, tb.HARD_MAX + 1), 0)]
    assert all(len(a) == 4 and a.isdigit() for a in answers)
    assert len(set(answers)) > 370  # 400 draws from 10^4 values: about 8 repeats expected


@pytest.mark.unit
def test_solutions_verify_with_math_verify_and_truncations_do_not():
    from pope.verify import verify_one

    rng = random.Random(3)
    for difficulty in (1, 4, 9):
        for _ in range(3):
            problem = tb.make_problem(tb.sample_start(rng, difficulty, False), difficulty, "v")
            assert verify_one(problem.answer, problem.solution)
            wrong = f"{(int(problem.answer) + 1) % 10_000:04d}"
            assert not verify_one(problem.answer, f"The answer is $\\boxed{{{wrong}}}$.")
            # a chain cut before its end (as the base model writes on hard problems) never scores:
            # every state of a chain is distinct, so its last number is not the answer
            for cut in range(1, difficulty):
                assert not verify_one(problem.answer, "".join(problem.solution_steps[:cut]))


@pytest.mark.unit
def test_difficulty_is_the_number_of_steps():
    from pope.units import split_units

    for difficulty in range(1, 10):
        problem = tb.make_problem("1234", difficulty, "d")
        assert tb.difficulty_of(problem) == difficulty
        # the units the pipeline cuts from the JSONL solution are the steps plus the answer sentence
        assert tuple(split_units(problem.solution)) == problem.solution_steps
        assert len(problem.solution_steps) == difficulty + 1
        assert 1 <= tb.v1_prefix_limit(problem, 0.25) < len(problem.solution_steps)
    assert tb.chain("1234", 3)[-1] == tb.step(tb.step(tb.step("1234")))
    with pytest.raises(ValueError):
        tb.make_problem("1234", 10, "d")
    with pytest.raises(ValueError):
        tb.make_problem("123", 2, "d")


@pytest.mark.unit
def test_splits_are_deterministic_balanced_and_reserved(tmp_path):
    a = tb.write_splits(tmp_path / "a", seed=0, num_easy=12, num_hard=8)
    b = tb.write_splits(tmp_path / "b", seed=0, num_easy=12, num_hard=8)
    c = tb.write_splits(tmp_path / "c", seed=1, num_easy=12, num_hard=8)
    for name in ("easy", "hard"):
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes() != c[name].read_bytes()
    rows = [json.loads(x) for x in a["hard"].read_text().splitlines()]
    assert set(rows[0]) == {"id", "problem", "answer", "solution", "difficulty"}
    assert [r["difficulty"] for r in rows] == [6, 7, 8, 9, 6, 7, 8, 9]
    easy = [json.loads(x) for x in a["easy"].read_text().splitlines()]
    assert {r["difficulty"] for r in easy} == {1, 2, 3}
    for row in rows + easy:  # eval starts come from the reserved quarter that pretraining skips
        assert tb.is_eval_start(row["problem"].split()[2].rstrip("."))
    rng = random.Random(0)
    assert not any(tb.is_eval_start(tb.sample_start(rng, 5, eval_split=False)) for _ in range(200))


@pytest.mark.unit
def test_split_files_load_through_the_pipeline_loader(tmp_path):
    from pope.datasets import FieldMap, load_file

    paths = tb.write_splits(tmp_path, seed=0, num_easy=6, num_hard=4)
    problems, report = load_file(paths["hard"], FieldMap(id="id"))
    assert report.rows_bad == 0
    assert [p.problem_id for p in problems] == [f"hard-{i:04d}" for i in range(4)]
    original = tb.make_split("hard", 4, range(tb.HARD_MIN, tb.HARD_MAX + 1), 0)
    assert [p.solution_steps for p in problems] == [p.solution_steps for p in original]


@pytest.mark.unit
def test_pretraining_documents_follow_the_spec():
    """Long problems are never shown whole under the unguided instruction."""
    tokenizer = tb._tokenizer(0)
    rng = random.Random(0)
    eos = tokenizer.eos_token_id
    for _ in range(60):
        prompt, target = tb._documents(rng, tokenizer, tb.TESTBED_SPEC)
        text = tokenizer.decode(prompt)
        difficulty = int(text.split("Do ")[1].split()[0])
        answer_given = "boxed" in tokenizer.decode(target)
        assert target[-1] == eos
        if "Continue it" not in text and difficulty > tb.EASY_MAX:
            assert not answer_given
            assert tokenizer.decode(target).count("->") <= tb.EASY_MAX
        else:
            assert answer_given
    # digits are never merged: a state is four tokens
    assert len(tokenizer("8067", add_special_tokens=False)["input_ids"]) == 4


@pytest.mark.unit
def test_testbed_configs_parse():
    from pope.config import load_config

    files = sorted((ROOT / "configs" / "testbed").glob("*.yaml"))
    assert {f.stem for f in files} >= {"grpo_hard", "pope", "pope_easy", "sft_rl", "passk"}
    for path in files:
        config = load_config(path, ["model.path=/nowhere"])
        assert config.actors.engine.type == "hf"
        assert config.actors.num_actors == 2
    assert load_config(ROOT / "configs/testbed/passk.yaml").preprocess.advantage == "passk"
    assert load_config(ROOT / "configs/testbed/clip_higher.yaml").learner.eps_high == 0.28


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_is_deterministic_and_cached(tmp_path):
    """The full build takes minutes on 2 cores; a reduced spec checks the same code path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = {
        **tb.TESTBED_SPEC,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "train_steps": 12,
        "batch_size": 4,
    }
    first = tb.build_testbed_model(tmp_path / "a", spec, seed=0)
    second = tb.build_testbed_model(tmp_path / "b", spec, seed=0)
    other = tb.build_testbed_model(tmp_path / "c", spec, seed=1)
    assert _digest(first) == _digest(second) != _digest(other)
    cached = tb.resolve_testbed_model(tmp_path / "cache", spec, seed=0)
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert tb.resolve_testbed_model(tmp_path / "cache", spec, seed=0) == cached
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    assert _digest(cached) == _digest(first)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached)
    ids = tokenizer("Start with 8067.", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
