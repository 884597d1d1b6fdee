"""The demo's task and model: chain problems solved by rewriting (pope/problems.py), their three splits,
the held-out file, the warm-up documents and a short build of the demo model (pope/models/chains.py)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from pope.config import DataConfig
from pope.datasets import load_problems
from pope.models import chains
from pope.problems import builtin_chains, chain_solution, chain_split

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "configs/data/chains_heldout.jsonl"


def _expressions(ops: int):
    """Every expression of ``ops`` operations whose values stay in 0..9, by brute force."""

    def extend(value, left):
        if left == 0:
            yield ""
            return
        for operand in range(1, 10):
            if value + operand <= 9:
                yield from (f" + {operand}" + rest for rest in extend(value + operand, left - 1))
            if operand <= value:
                yield from (f" - {operand}" + rest for rest in extend(value - operand, left - 1))

    return [f"{start}{rest}" for start in range(1, 10) for rest in extend(start, ops)]


def test_a_chain_is_solved_by_rewriting_one_operation_a_step():
    steps, answer = chain_solution("6 - 5 - 1 + 3")
    assert steps == (
        "6 - 5 = 1, so 1 - 1 + 3. ",
        "1 - 1 = 0, so 0 + 3. ",
        "0 + 3 = 3. ",
        "The answer is $\\boxed{3}$.",
    )
    assert answer == "3"


def test_every_chain_answer_is_the_value_of_its_expression():
    for problem in builtin_chains(300, seed=5):
        expression = problem.problem.removeprefix("Compute ").removesuffix(".")
        tokens = expression.split(" ")
        value = int(tokens[0])
        for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
            value = value + int(operand) if op == "+" else value - int(operand)
        assert problem.answer == str(value)
        assert problem.solution.endswith(f"$\\boxed{{{value}}}$.")
        assert len(problem.solution_steps) == len(tokens) // 2 + 1


def test_the_splits_cut_the_expressions_an_eighth_an_eighth_and_the_rest():
    expressions = [f"Compute {e}." for ops in (2, 3, 4) for e in _expressions(ops)]
    counts = Counter(chain_split(e) for e in expressions)
    assert sum(counts.values()) == 729 + 6561 + 59049
    assert counts["eval"] / len(expressions) == pytest.approx(1 / 8, abs=0.01)
    assert counts["train"] / len(expressions) == pytest.approx(1 / 8, abs=0.01)
    for split in ("eval", "train", "warmup"):
        assert {chain_split(p.problem) for p in builtin_chains(200, seed=3, split=split)} == {split}
    with pytest.raises(ValueError, match="split 'test'"):
        builtin_chains(1, seed=0, split="test")


def test_builtin_chains_is_a_data_source():
    problems = load_problems("builtin:chains", 20, seed=0, fields=None)
    assert [p.problem for p in problems] == [p.problem for p in builtin_chains(20, seed=0)]
    assert {p.source for p in problems} == {"builtin:chains"}


def test_the_heldout_file_is_distinct_eval_split_problems_with_right_answers():
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    assert len(rows) == 64 == len({row["problem"] for row in rows})
    for row in rows:
        assert chain_split(row["problem"]) == "eval"
        steps, answer = chain_solution(row["problem"].removeprefix("Compute ").removesuffix("."))
        assert (row["answer"], row["solution"]) == (answer, "".join(steps))
    trained = {p.problem for p in builtin_chains(2000, seed=0)}  # configs/demo.yaml's problems
    assert not trained & {row["problem"] for row in rows}


def test_a_warmup_document_is_a_prompt_as_the_pipeline_renders_it_and_the_rest_of_the_solution():
    from pope.prompts import PromptSpec, max_prefix_units, prefix_text, render_prompt

    tokenizer = chains.build_tokenizer()
    assert all(len(tokenizer.tokenize(digit)) == 1 for digit in "0123456789")
    data = DataConfig(prefix_fraction=chains.CHAINS_SPEC["prefix_fraction"])
    problem = next(p for p in builtin_chains(50, seed=2) if max_prefix_units(p, data.prefix_fraction) >= 2)
    renders = {
        render_prompt(tokenizer, PromptSpec(problem, "guided" if k else "unguided", k), data): k
        for k in range(max_prefix_units(problem, data.prefix_fraction) + 1)
    }
    shown_counts = Counter()
    rng = random.Random(0)
    for _ in range(60):
        prompt_ids, target_ids = chains.document(rng, problem, tokenizer, data, guided_share=0.5)
        prompt, target = tokenizer.decode(prompt_ids), tokenizer.decode(target_ids[:-1])
        assert target_ids[-1] == tokenizer.eos_token_id
        assert prompt in renders  # exactly one of the prompts the pipeline can ask
        shown = renders[prompt]
        shown_counts[shown] += 1
        assert prefix_text(problem, shown) + target == problem.solution
    assert shown_counts[0] and sum(shown_counts.values()) > shown_counts[0]  # both kinds


def test_a_short_build_is_a_model_folder_that_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = {**chains.CHAINS_SPEC, "warmup_steps": 3, "batch_size": 4}
    folder = chains.resolve(tmp_path, spec)
    assert folder.name == f"tiny-chains-{chains.spec_hash(spec)}"
    meta = json.loads((folder / "pope_spec.json").read_text())
    assert meta["warmup_steps"] == 3 and meta["seed"] == 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>"
    assert chains.resolve(tmp_path, spec) == folder  # cached: the second call builds nothing


def test_chains_check_tells_a_lucky_answer_from_a_right_solution():
    import importlib.util

    spec = importlib.util.spec_from_file_location("chains_check", ROOT / "scripts/chains_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    steps, answer = chain_solution("5 + 3 - 2 - 1")
    row = {"answer": answer, "solution": "".join(steps)}
    assert module.score("".join(steps), row) == (True, True)
    lucky = "5 + 1 = 7, so 7 - 2 + 9. 7 - 2 = 7, so 7 - 3. 7 - 2 = 5. The answer is $\\boxed{5}$."
    assert module.score(lucky, row) == (True, False)  # right answer, wrong steps
    assert module.score("".join(steps[:-1]) + "The answer is $\\boxed{4}$.", row) == (False, False)
    assert module.score("5 + 3 = 8", row) == (False, False)  # no answer
