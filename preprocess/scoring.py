"""Scoring with math-verify in a worker process that is killed on a deadline.

math-verify's own timeouts use SIGALRM, which fails off the main thread and cannot interrupt some
inputs (a nested power tower ran far past its timeout). So each verification runs in a child
process; when the child misses the deadline it is killed and replaced, the rollout is scored 0,
and the timeout is counted. A verification never blocks a worker for longer than the deadline.

Batches: ``score_batch`` sends a whole group's (gold, completion) pairs in one message; the child
verifies them in order and sends each verdict as soon as it has it. The parent gives every item
its own deadline (``timeout_s`` from the previous verdict's arrival), so a hang on item i kills
the child at i's deadline, scores i as a timeout, and resends items i+1.. to the replacement.
One round trip per group instead of one per rollout: on a busy machine each round trip waits for
the child and then the parent to be scheduled, which cost ~2 ms per verification.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field

VERDICTS = ("correct", "wrong", "timeout", "error")


def wrap_gold(answer: str) -> str:
    """Gold answers are raw LaTeX; math-verify parses them reliably only inside $...$ or \\boxed{}."""
    answer = answer.strip()
    if answer.startswith("$") or "\\boxed" in answer:
        return answer
    return f"${answer}$"


def verify_one(gold: str, completion: str) -> bool:
    """math-verify, gold first. Runs in the child process."""
    from math_verify import parse, verify

    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(completion, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _child(conn) -> None:
    import logging

    logging.getLogger("math_verify").setLevel(
        logging.ERROR
    )  # its "timeout is disabled" notice: we are the timeout
    # math-verify's imports and grammar compilation (~0.5 s) now, while the parent is still
    # setting up, rather than in the first verification's time
    verify_one("1", "$1$")
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        for gold, completion in request:  # verdicts stream back one by one: each has its own deadline
            try:
                conn.send(("ok", verify_one(gold, completion)))
            except Exception as exc:  # deliberate: any verifier failure is a verdict, counted by the parent
                conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))


@dataclass
class ScoringStats:
    verified: int = 0
    correct: int = 0
    timeouts: int = 0
    errors: int = 0
    restarts: int = 0
    busy_s: float = 0.0
    last_errors: list[str] = field(default_factory=list)


class Verifier:
    """One child process at a time; ``score`` returns (reward, verdict) within ``timeout_s``."""

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = timeout_s
        self.stats = ScoringStats()
        self._ctx = mp.get_context("spawn")  # no fork of a process holding threads and sockets
        self._proc = None
        self._conn = None
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child, args=(child,), daemon=True, name="pope-verifier")
        self._proc.start()
        child.close()
        self._conn = parent

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join(timeout=5)
        self._conn.close()
        self.stats.restarts += 1
        self._start()

    def score(self, gold: str, completion: str) -> tuple[float, str]:
        """(reward, verdict) of one completion; see ``score_batch``."""
        return self.score_batch([(gold, completion)])[0]

    def score_batch(self, pairs: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """(reward, verdict) of each (gold, completion), in order, in one round trip to the child.

        Each item is verified within ``timeout_s`` of the previous verdict (or of the send): a
        hang is killed, scored (0.0, "timeout"), and the items after it go to a fresh child.
        """
        results: list[tuple[float, str]] = []
        while len(results) < len(pairs):
            results.extend(self._run_batch(pairs[len(results) :]))
        return results

    def _run_batch(self, pairs: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """Verdicts of a prefix of ``pairs``: all of them, or up to and including a timeout/death."""
        results: list[tuple[float, str]] = []
        start = time.monotonic()
        try:
            self._conn.send(list(pairs))
            for _ in pairs:
                if not self._conn.poll(self.timeout_s):
                    self._restart()
                    self.stats.timeouts += 1
                    results.append((0.0, "timeout"))
                    return results
                results.append(self._verdict(*self._conn.recv()))
        except (
            EOFError,
            BrokenPipeError,
            ConnectionResetError,
        ) as exc:  # the child died (e.g. out of memory)
            self._restart()
            self.stats.errors += 1
            self.stats.last_errors = (self.stats.last_errors + [f"verifier process died: {exc!r}"])[-5:]
            results.append((0.0, "error"))
        finally:
            self.stats.busy_s += time.monotonic() - start
        return results

    def _verdict(self, status: str, value) -> tuple[float, str]:
        self.stats.verified += 1
        if status == "error":
            self.stats.errors += 1
            self.stats.last_errors = (self.stats.last_errors + [value])[-5:]
            return 0.0, "error"
        self.stats.correct += int(value)
        return (1.0, "correct") if value else (0.0, "wrong")

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(timeout=2)
            except (BrokenPipeError, OSError):
                pass
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
        self._proc = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
