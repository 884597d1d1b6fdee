"""The demo's tasks and models: chain problems solved by rewriting (pope/problems.py), asked for the last
value (chains) or the running totals (totals), their three splits, the held-out files, the warm-up
documents and a short build of the demo models (pope/models/chains.py)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from pope.config import DataConfig
from pope.datasets import load_problems
from pope.models import chains
from pope.problems import builtin_chains, chain_expression, chain_from_text, chain_solution, chain_split

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "configs/data/chains_heldout.jsonl"
TOTALS_HELDOUT = ROOT / "configs/data/totals_heldout.jsonl"


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


def test_a_totals_answer_is_every_value_in_turn_and_the_steps_are_the_chains_ones():
    steps, answer = chain_solution("6 - 5 - 1 + 3", task="totals")
    assert answer == "6103"
    assert steps == (*chain_solution("6 - 5 - 1 + 3")[0][:-1], "The answer is $\\boxed{6103}$.")
    for chain, total in zip(
        builtin_chains(300, seed=5), builtin_chains(300, seed=5, task="totals"), strict=True
    ):  # the same draws: the same expressions, the same split
        _, expression = chain_expression(chain.problem)
        assert total.problem == f"Write the running totals of {expression} as one number."
        assert chain_split(total.problem) == chain_split(chain.problem) == "train"
        tokens = expression.split(" ")
        values = [int(tokens[0])]  # independently: the running value after each operation
        for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
            values.append(values[-1] + int(operand) if op == "+" else values[-1] - int(operand))
        assert total.answer == "".join(map(str, values)) and chain.answer == str(values[-1])
        assert total.solution_steps[:-1] == chain.solution_steps[:-1]
        assert total.source == "builtin:totals"
    with pytest.raises(ValueError, match="'Sum 1 \\+ 2.' is not a chains or totals question"):
        chain_from_text("x", "Sum 1 + 2.")
    with pytest.raises(ValueError, match="task 'sums'"):
        builtin_chains(1, seed=0, task="sums")


def test_the_reward_tells_a_totals_answer_from_its_digits_reordered_or_listed():
    from preprocess.scoring import Verifier  # the pipeline's reward: math-verify in its child process

    wrong = ["$\\boxed{6130}$", "$\\boxed{6,1,0,3}$", "$\\boxed{3}$", "$\\boxed{610}$"]
    with Verifier(timeout_s=10.0) as verifier:
        verdicts = verifier.score_batch([("6103", c) for c in ["The answer is $\\boxed{6103}$.", *wrong]])
    assert verdicts == [(1.0, "correct")] + [(0.0, "wrong")] * len(wrong)


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


@pytest.mark.parametrize("task", ["chains", "totals"])
def test_builtin_chains_and_totals_are_data_sources(task):
    problems = load_problems(f"builtin:{task}", 20, seed=0, fields=None)
    assert [p.problem for p in problems] == [p.problem for p in builtin_chains(20, seed=0, task=task)]
    assert {p.source for p in problems} == {f"builtin:{task}"}


def test_the_heldout_file_is_distinct_eval_split_problems_with_right_answers():
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    assert len(rows) == 64 == len({row["problem"] for row in rows})
    for row in rows:
        assert chain_split(row["problem"]) == "eval"
        steps, answer = chain_solution(row["problem"].removeprefix("Compute ").removesuffix("."))
        assert (row["answer"], row["solution"]) == (answer, "".join(steps))
    trained = {p.problem for p in builtin_chains(2000, seed=0)}  # configs/demo_chains.yaml's problems
    assert not trained & {row["problem"] for row in rows}


def test_the_totals_heldout_file_asks_the_chains_expressions_for_their_totals():
    chains_rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    rows = [json.loads(line) for line in TOTALS_HELDOUT.read_text().splitlines()]
    assert [chain_expression(r["problem"])[1] for r in rows] == [
        chain_expression(r["problem"])[1] for r in chains_rows
    ]
    for row in rows:
        problem = chain_from_text("x", row["problem"])
        assert (row["answer"], row["solution"]) == (problem.answer, problem.solution)
        assert chain_split(row["problem"]) == "eval"
    trained = {p.problem for p in builtin_chains(2000, seed=0, task="totals")}  # configs/demo.yaml's
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


@pytest.mark.parametrize("base", [chains.CHAINS_SPEC, chains.TOTALS_SPEC], ids=["chains", "totals"])
def test_a_short_build_is_a_model_folder_that_transformers_loads(tmp_path, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = {**base, "warmup_steps": 3, "batch_size": 4}
    folder = chains.resolve(tmp_path, spec)
    assert folder.name == f"{base['name']}-{chains.spec_hash(spec)}"
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
