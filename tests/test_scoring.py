"""Scoring runs real math-verify in a killable child process."""

import json
import time

import pytest

from pope.verify import wrap_gold
from preprocess.scoring import Verifier
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout_s=3.0) as v:
        yield v


def test_correct_and_wrong(verifier):
    assert verifier.score("6", "so the answer is $\\boxed{6}$.") == (1.0, "correct")
    assert verifier.score("6", "so the answer is $\\boxed{7}$.") == (0.0, "wrong")
    assert verifier.score("\\frac{1}{2}", "We get $\\boxed{0.5}$") == (1.0, "correct")
    assert verifier.score("6", "no answer here at all") == (0.0, "wrong")


def test_gold_is_wrapped():
    assert wrap_gold("2\\sqrt{3}") == "$2\\sqrt{3}$"
    assert wrap_gold("$5$") == "$5$"
    assert wrap_gold("\\boxed{5}") == "\\boxed{5}"


def test_wrapped_gold_keeps_radicals(verifier):
    # raw 2\sqrt{3} parses to 2 unless wrapped: a completion answering 2 must be wrong
    assert verifier.score("2\\sqrt{3}", "$\\boxed{2}$")[1] == "wrong"
    assert verifier.score("2\\sqrt{3}", "$\\boxed{2\\sqrt{3}}$")[1] == "correct"


def test_hanging_verification_costs_one_timeout(verifier):
    before = verifier.stats.timeouts
    # comparing 5 with 10^(10^10) makes sympy build a ten-billion-digit integer: it runs for minutes
    start = time.monotonic()
    reward, verdict = verifier.score("5", "$\\boxed{10^{10^{10}}}$")
    elapsed = time.monotonic() - start
    assert (reward, verdict) == (0.0, "timeout")
    assert elapsed < verifier.timeout_s + 2.0
    assert verifier.stats.timeouts == before + 1
    # the replacement process works
    assert verifier.score("6", "$\\boxed{6}$") == (1.0, "correct")


def test_real_benchmark_answers_verify_against_themselves(verifier):
    rows = [
        json.loads(line) for line in (SHARED_DATA / "aime2025.jsonl").read_text().splitlines() if line.strip()
    ]
    assert len(rows) == 30
    for row in rows[:10]:
        answer = str(row["answer"])
        assert verifier.score(answer, f"Therefore $\\boxed{{{answer}}}$.") == (1.0, "correct"), row["id"]
        assert verifier.score(answer, f"Therefore $\\boxed{{{int(answer) + 1}}}$.")[1] == "wrong", row["id"]


def test_batch_matches_single_scores(verifier):
    pairs = [("6", "$\\boxed{6}$"), ("6", "$\\boxed{7}$"), ("\\frac{1}{2}", "$\\boxed{0.5}$"), ("6", "none")]
    assert verifier.score_batch(pairs) == [verifier.score(gold, text) for gold, text in pairs]
    assert verifier.score_batch([]) == []


def test_hang_inside_a_batch_is_killed_and_the_rest_scored(verifier):
    before_timeouts, before_restarts = verifier.stats.timeouts, verifier.stats.restarts
    pairs = [
        ("6", "$\\boxed{6}$"),
        ("5", "$\\boxed{10^{10^{10}}}$"),
        ("6", "$\\boxed{7}$"),
        ("2", "$\\boxed{2}$"),
    ]
    start = time.monotonic()
    scores = verifier.score_batch(pairs)
    elapsed = time.monotonic() - start
    assert scores == [(1.0, "correct"), (0.0, "timeout"), (0.0, "wrong"), (1.0, "correct")]
    assert elapsed < verifier.timeout_s + 2.0  # one deadline, not one per remaining item
    assert verifier.stats.timeouts == before_timeouts + 1
    assert verifier.stats.restarts == before_restarts + 1


def test_one_gold_wrapper_for_validation_and_scoring():
    """Every math delimiter a dataset may use gives the same gold string (validation and scoring used
    to wrap $$x$$ and \\[x\\] differently)."""
    for raw in ("x^2", "$x^2$", "$$x^2$$", "\\[x^2\\]", "\\(x^2\\)", "  $x^2$ "):
        assert wrap_gold(raw) == "$x^2$", raw


def test_a_thinking_models_reasoning_is_stripped_before_scoring():
    """With preprocess.reasoning_delimiter '</think>': a boxed number inside the reasoning does not
    count, the answer after the last delimiter does; a completion still thinking at the budget (no
    delimiter) is wrong without being verified, and counted. Real math-verify."""
    from preprocess.scoring import answer_text

    assert answer_text("a</think>b</think> c", "</think>") == " c"
    assert answer_text("no delimiter", "</think>") is None and answer_text("x", None) == "x"
    completions = [
        "<think>maybe $\\boxed{5}$</think> so the answer is $\\boxed{7}$",  # right after thinking
        "<think>it is $\\boxed{7}$</think> no, $\\boxed{5}$",  # right only inside the reasoning
        "<think>still going, $\\boxed{7}$",  # never closed
    ]
    with Verifier(timeout_s=5.0, reasoning_delimiter="</think>") as thinking:
        scored = thinking.score_batch([("7", c) for c in completions])
        assert scored == [(1.0, "correct"), (0.0, "wrong"), (0.0, "wrong")]
        assert thinking.stats.reasoning_unclosed == 1 and thinking.stats.verified == 2
    with Verifier(timeout_s=5.0) as plain:  # without the delimiter the last boxed answer counts
        assert [r for r, _ in plain.score_batch([("7", c) for c in completions])] == [1.0, 0.0, 1.0]
