"""Scoring: math-verify verdicts on a group's completions, within a deadline each.

The verifications run in a killable child process (``pope.verify.MathVerifyRunner``, task
``verify``): a whole group goes in one round trip, each item has its own deadline, a hang is
killed and scored as a timeout, the items after it go to a fresh child. A verification never
blocks a worker for longer than ``preprocess.verify_timeout_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pope.verify import MathVerifyRunner, Outcome

VERDICTS = ("correct", "wrong", "timeout", "error")


@dataclass
class ScoringStats:
    verified: int = 0
    correct: int = 0
    timeouts: int = 0
    errors: int = 0
    restarts: int = 0
    busy_s: float = 0.0
    last_errors: list[str] = field(default_factory=list)
    reasoning_unclosed: int = 0  # completions without the reasoning delimiter: scored wrong, unverified


def answer_text(completion: str, reasoning_delimiter: str | None) -> str | None:
    """What is scored: the completion after its reasoning (after the last ``reasoning_delimiter``);
    None when a delimiter is configured and the completion never closed its reasoning."""
    if reasoning_delimiter is None:
        return completion
    _, found, tail = completion.rpartition(reasoning_delimiter)
    return tail if found else None


class Verifier:
    """``score_batch`` returns (reward, verdict) per completion, each within ``timeout_s``."""

    def __init__(self, timeout_s: float = 5.0, reasoning_delimiter: str | None = None):
        """``reasoning_delimiter``: only the text after its last occurrence is scored (the answer of a
        model that thinks first); a completion without it is scored wrong unverified."""
        self.timeout_s = timeout_s
        self.reasoning_delimiter = reasoning_delimiter
        self.stats = ScoringStats()
        self._runner = MathVerifyRunner("verify", timeout_s)
        self._runner.start()  # math-verify's imports and grammars while the caller sets up

    def score(self, gold: str, completion: str) -> tuple[float, str]:
        """(reward, verdict) of one completion; see ``score_batch``."""
        return self.score_batch([(gold, completion)])[0]

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """(reward, verdict) of each (gold, completion), in order, in one round trip to the child:
        (1.0, "correct"), (0.0, "wrong"), (0.0, "timeout") or (0.0, "error")."""
        import time

        start = time.monotonic()
        answers = [(gold, answer_text(completion, self.reasoning_delimiter)) for gold, completion in pairs]
        self.stats.reasoning_unclosed += sum(answer is None for _, answer in answers)
        try:
            outcomes = iter(self._runner.run([(g, a) for g, a in answers if a is not None]))
            return [(0.0, "wrong") if a is None else self._verdict(next(outcomes)) for _, a in answers]
        finally:
            self.stats.busy_s += time.monotonic() - start
            self.stats.restarts = self._runner.restarts

    def _verdict(self, outcome: Outcome) -> tuple[float, str]:
        if outcome.status == "timeout":
            self.stats.timeouts += 1
            return 0.0, "timeout"
        if outcome.status in ("error", "died"):
            self.stats.verified += outcome.status == "error"  # math-verify answered, with an exception
            self.stats.errors += 1
            self.stats.last_errors = (self.stats.last_errors + [str(outcome.value)])[-5:]
            return 0.0, "error"
        self.stats.verified += 1
        self.stats.correct += int(outcome.value)
        return (1.0, "correct") if outcome.value else (0.0, "wrong")

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
