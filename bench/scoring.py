"""Verification rate: ``preprocess.scoring.Verifier`` (math-verify in a killable child process)
against math-verify called directly in this process.

Inputs are the real gold answers of /work/shared/data (MATH-500 sample and AIME 2025), each
checked against a correct completion "... so the answer is $\\boxed{<gold>}$." and a wrong one
whose boxed answer is another problem's gold answer. Both paths use the same calls as
``pope.verify.verify_one`` (gold wrapped with ``wrap_gold``, math-verify's own SIGALRM
timeouts off), so ``scoring_vs_raw`` (verifier rate / raw rate) is the cost of the process
boundary and the pipe round trips.

The three paths take turns group by group, each in its own process, so that the load of a
shared machine and the state of sympy's caches are the same for all three. The Verifier is
called as the preprocess worker calls it: ``score_batch`` with one group of
``GROUP_SIZE`` (8, the demo's rollouts per group) pairs per round trip (``verifier_per_s``). The
rate with one round trip per verification (``score``) is kept as ``verifier_single_per_s``.
"""

from __future__ import annotations

import json
import time

from bench.common import SHARED_DATA

FILES = ("math500_sample.jsonl", "aime2025.jsonl")
GROUP_SIZE = 8


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

    from pope.verify import wrap_gold

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

    # Three paths, each in its own process so that none sees inputs another already verified
    # (sympy caches): raw math-verify here, one child called per item, one child called per group.
    # They take turns group by group (the order rotating), so the load of a shared machine falls
    # on all three alike.
    groups = [work[start : start + GROUP_SIZE] for start in range(0, len(work), GROUP_SIZE)]
    with Verifier(timeout_s=30.0) as single_verifier, Verifier(timeout_s=30.0) as batch_verifier:
        raw_verify(*work[0][:2])  # imports and grammar compilation, outside the timing
        single_verifier.score(*work[0][:2])
        batch_verifier.score(*work[0][:2])

        def raw_path(group):
            return ["correct" if raw_verify(gold, completion) else "wrong" for gold, completion, _ in group]

        def single_path(group):
            return [single_verifier.score(gold, completion)[1] for gold, completion, _ in group]

        def batch_path(group):
            return [verdict for _, verdict in batch_verifier.score_batch([(g, c) for g, c, _ in group])]

        paths = {"raw": raw_path, "single": single_path, "batch": batch_path}
        seconds = dict.fromkeys(paths, 0.0)
        verdicts = {name: [] for name in paths}
        for i, group in enumerate(groups):
            names = list(paths)
            for name in names[i % 3 :] + names[: i % 3]:
                t0 = time.perf_counter()
                verdicts[name] += paths[name](group)
                seconds[name] += time.perf_counter() - t0
        restarts = single_verifier.stats.restarts + batch_verifier.stats.restarts
    assert verdicts["single"] == verdicts["batch"], "score and score_batch disagree"
    raw_s, single_s, verifier_s = seconds["raw"], seconds["single"], seconds["batch"]
    raw_correct = verdicts["raw"].count("correct")
    verdicts = verdicts["batch"]

    raw_rate, verifier_rate = len(work) / raw_s, len(work) / verifier_s
    return {
        "verifications": len(work),
        "group_size": GROUP_SIZE,
        "raw_per_s": raw_rate,
        "verifier_per_s": verifier_rate,
        "verifier_single_per_s": len(work) / single_s,
        "scoring_vs_raw": verifier_rate / raw_rate,
        "scoring_vs_raw_single": len(work) / single_s / raw_rate,
        "raw_correct": raw_correct,
        "verifier_correct": verdicts.count("correct"),
        "verifier_timeouts": verdicts.count("timeout"),
        "verifier_errors": verdicts.count("error"),
        "verifier_restarts": restarts,
        "expected_correct": sum(expected for _, _, expected in work),
    }


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
