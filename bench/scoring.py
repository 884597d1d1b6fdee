"""Verification rate: ``preprocess.scoring.Verifier`` (math-verify in a killable child process)
against math-verify called directly in this process.

Inputs are the real gold answers of /work/shared/data (MATH-500 sample and AIME 2025), each
checked against a correct completion "... so the answer is $\\boxed{<gold>}$." and a wrong one
whose boxed answer is another problem's gold answer. Both paths use the same calls as
``preprocess.scoring.verify_one`` (gold wrapped with ``wrap_gold``, math-verify's own SIGALRM
timeouts off), so ``scoring_vs_raw`` (verifier rate / raw rate) is the cost of the process
boundary and the pipe round trip per verification.
"""

from __future__ import annotations

import json
import time

from bench.common import SHARED_DATA

FILES = ("math500_sample.jsonl", "aime2025.jsonl")


def load_answers() -> list[str]:
    answers = []
    for name in FILES:
        for line in (SHARED_DATA / name).read_text().splitlines():
            if line.strip():
                answers.append(str(json.loads(line)["answer"]))
    return answers


def cases(answers: list[str]) -> list[tuple[str, str, bool]]:
    """(gold, completion, expected) pairs: each gold with a correct and a wrong completion."""
    out = []
    for i, gold in enumerate(answers):
        wrong = answers[(i + 1) % len(answers)]
        if wrong.strip() == gold.strip():
            wrong = gold + "+1"
        out.append((gold, f"Some working ... so the answer is $\\boxed{{{gold}}}$.", True))
        out.append((gold, f"Some working ... so the answer is $\\boxed{{{wrong}}}$.", False))
    return out


def raw_verify(gold: str, completion: str) -> bool:
    from math_verify import parse, verify

    from preprocess.scoring import wrap_gold

    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(completion, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def run(quick: bool = False) -> dict:
    from preprocess.scoring import Verifier

    answers = load_answers()
    if quick:
        answers = answers[:15] + answers[-5:]
    work = cases(answers)

    raw_verify(*work[0][:2])  # imports and grammar compilation, outside the timing
    t0 = time.perf_counter()
    raw_correct = sum(raw_verify(gold, completion) for gold, completion, _ in work)
    raw_s = time.perf_counter() - t0

    with Verifier(timeout_s=30.0) as verifier:
        verifier.score(*work[0][:2])
        t0 = time.perf_counter()
        verdicts = [verifier.score(gold, completion)[1] for gold, completion, _ in work]
        verifier_s = time.perf_counter() - t0
        restarts = verifier.stats.restarts

    raw_rate, verifier_rate = len(work) / raw_s, len(work) / verifier_s
    return {
        "verifications": len(work),
        "raw_per_s": raw_rate,
        "verifier_per_s": verifier_rate,
        "scoring_vs_raw": verifier_rate / raw_rate,
        "raw_correct": raw_correct,
        "verifier_correct": verdicts.count("correct"),
        "verifier_timeouts": verdicts.count("timeout"),
        "verifier_errors": verdicts.count("error"),
        "verifier_restarts": restarts,
        "expected_correct": sum(expected for _, _, expected in work),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
