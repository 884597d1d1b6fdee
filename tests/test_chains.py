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


@pytest.mark.parametrize(
    "base", [chains.CHAINS_SPEC, chains.TOTALS_SPEC, chains.GUESS_SPEC], ids=["chains", "totals", "guess"]
)
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


def test_a_guess_document_is_the_answer_line_alone_and_only_unguided_ones_guess():
    tokenizer = chains.build_tokenizer("totals")
    data = DataConfig(prefix_fraction=chains.GUESS_SPEC["prefix_fraction"])
    problem = builtin_chains(1, seed=2, task="totals")[0]
    answer_line = problem.solution_steps[-1]
    kinds = Counter()
    rng = random.Random(0)
    for _ in range(80):
        prompt_ids, target_ids = chains.document(rng, problem, tokenizer, data, 0.5, guess_share=0.5)
        prompt, target = tokenizer.decode(prompt_ids), tokenizer.decode(target_ids[:-1])
        if target == answer_line:
            assert problem.solution_steps[0].strip() not in prompt  # a guess is never behind a prefix
            kinds["guess"] += 1
        elif problem.solution_steps[0].strip() in prompt:
            kinds["guided"] += 1
        else:
            assert target == problem.solution
            kinds["worked"] += 1
    # of 80: about 40 guided, and of the 40 unguided about half guesses
    assert 25 <= kinds["guided"] <= 55 and kinds["guess"] >= 8 and kinds["worked"] >= 8
    # without guess_share the draws are the ones earlier builds made (run 5's model stays as built)
    plain, zero = random.Random(1), random.Random(1)
    for _ in range(20):
        assert chains.document(plain, problem, tokenizer, data, 0.3) == chains.document(
            zero, problem, tokenizer, data, 0.3, guess_share=0.0
        )


def _reference_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_grpo", ROOT / "scripts/reference_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_loop_validates_on_eval_problems_apart_from_the_heldout_set():
    module = _reference_module()
    assert module.group_advantages([1, 0, 0, 1, 1, 1, 1, 1], 4) == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    problems = module.validation_problems("totals")
    texts = {p.problem for p in problems}
    heldout = {json.loads(line)["problem"] for line in TOTALS_HELDOUT.read_text().splitlines()}
    assert len(texts) == 64 and not texts & heldout
    assert {chain_split(t) for t in texts} == {"eval"}


def test_the_reference_loss_is_the_advantage_weighted_mean_logprob_of_each_completion(tmp_path):
    """Padded, batched loss against a naive one: each sequence alone, no padding, float64 sums."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module = _reference_module()
    folder = chains.resolve(tmp_path, {**chains.TOTALS_SPEC, "warmup_steps": 2, "batch_size": 4})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = ["Write the running totals of 1 + 2 as one number.", "Write 9 - 1."]
    torch.manual_seed(0)
    batch, completion, mask = module.sample(model, tokenizer, prompts, max_new_tokens=12)
    advantages = [0.75, -0.25]
    with torch.no_grad():
        got = module.loss_of(model, batch, completion, mask, advantages).item()
        total, tokens = 0.0, 0
        for row, prompt in enumerate(prompts):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            kept = completion[row][mask[row]].tolist()
            ids = torch.tensor([prompt_ids + kept])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for offset, token in enumerate(kept):
                total += -advantages[row] * logp[len(prompt_ids) - 1 + offset, token].item()
            tokens += len(kept)
    assert tokens == int(mask.sum()) > 0
    assert got == pytest.approx(total / tokens, rel=1e-4, abs=1e-6)
