"""math-verify, run where it can be stopped: one child process, a deadline per item, kill and restart.

math-verify's own timeouts use SIGALRM, which fails off the main thread and cannot interrupt some
inputs (a nested power tower ran far past its timeout). So every call runs in a child process:

    parent ──[item 0, item 1, ...]──> child (math-verify imported once, grammars built at start)
           <──outcome 0── <──outcome 1── ...      each within timeout_s of the previous one

A whole batch goes in one message and outcomes stream back one by one (one round trip per batch,
not per item: on a busy machine each round trip costs ~2 ms of scheduling). When item i misses its
deadline the child is killed, i is a ``timeout``, and items i+1.. go to a fresh child. A child that
dies (memory) makes that item ``died``. Nothing waits longer than its deadline.

Two tasks use it: ``verify`` (scoring: ``verify(gold, completion)``, gold first) and ``parse``
(dataset validation: does math-verify find a mathematical object in a gold answer?). Both wrap
gold answers with the one ``wrap_gold`` below, so validation and scoring read a gold answer the same way.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from dataclasses import dataclass


def unwrap_math(answer: str) -> str:
    """The answer without surrounding whitespace and outer ``$``, ``$$``, ``\\[..\\]`` or ``\\(..\\)``."""
    inner = answer.strip()
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if inner.startswith(opener) and inner.endswith(closer) and len(inner) >= len(opener) + len(closer):
            return inner[len(opener) : len(inner) - len(closer)].strip()
    return inner


def wrap_gold(answer: str) -> str:
    """A gold answer as math-verify parses it reliably: ``$x$``, whatever math delimiters it came in
    (``x``, ``$x$``, ``$$x$$``, ``\\[x\\]``, ``\\(x\\)`` all give ``$x$``); a ``\\boxed{}`` answer is kept."""
    inner = unwrap_math(answer)
    return inner if "\\boxed" in inner else f"${inner}$"


def verify_one(gold: str, completion: str) -> bool:
    """math-verify's verdict on ``completion`` against the gold answer (in the calling process)."""
    from math_verify import parse, verify

    gold_parsed = parse(wrap_gold(gold), parsing_timeout=None)
    pred_parsed = parse(completion, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def parses_to_math(answer: str) -> bool:
    """Whether math-verify finds a mathematical object (not only strings) in the gold answer."""
    from math_verify import parse

    return any(not isinstance(item, str) for item in parse(wrap_gold(answer), parsing_timeout=None))


TASKS = {
    "verify": lambda item: verify_one(*item),  # item: (gold, completion)
    "parse": parses_to_math,  # item: a gold answer
}
WARMUP = {"verify": ("1", "$1$"), "parse": "1"}


def _child(conn, task: str) -> None:
    fn = TASKS[task]
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": we are the timeout
    fn(WARMUP[task])  # imports and grammar compilation (~0.5 s) now, under the startup deadline
    conn.send("ready")
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        if batch is None:
            return
        for item in batch:
            try:
                conn.send(("ok", fn(item)))
            except Exception as exc:  # deliberate: a math-verify failure is this item's outcome
                conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok" | "error" (math-verify raised) | "timeout" (killed at the deadline) | "died"
    value: object = None  # the task's result when ok, else the reason


class MathVerifyRunner:
    """One child process at a time running ``task``; ``run(items)`` returns one ``Outcome`` per item.

    ``start()`` spawns the child and returns at once (it warms up while the caller goes on); the
    first ``run`` waits for it, at most ``startup_timeout_s``. Counters: ``timeouts``, ``deaths``,
    ``restarts``. A context manager, or ``close()``, stops the child.
    """

    def __init__(self, task: str, timeout_s: float = 5.0, startup_timeout_s: float = 120.0):
        if task not in TASKS:
            raise ValueError(f"task {task!r}: not one of {sorted(TASKS)}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0")
        self.task, self.timeout_s, self.startup_timeout_s = task, timeout_s, startup_timeout_s
        self.timeouts = self.deaths = self.restarts = 0
        self._ctx = mp.get_context("spawn")  # no fork of a process that holds threads and sockets
        self._proc = None
        self._conn = None
        self._ready = False

    def start(self) -> None:
        if self._proc is not None:
            return
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child, args=(child, self.task), daemon=True, name=f"pope-math-verify-{self.task}"
        )
        self._proc.start()
        child.close()
        self._conn, self._ready = parent, False

    def _wait_ready(self) -> None:
        self.start()
        if self._ready:
            return
        if not self._conn.poll(self.startup_timeout_s):
            self._kill()
            raise RuntimeError(f"the math-verify process did not start within {self.startup_timeout_s} s")
        try:
            self._conn.recv()
        except EOFError:
            self._proc.join(timeout=5)
            exitcode = self._proc.exitcode
            self._kill()
            raise RuntimeError(f"the math-verify process exited at start (exit code {exitcode})") from None
        self._ready = True

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None
        self._ready = False

    def _restart(self) -> None:
        self._kill()
        self.restarts += 1
        self.start()

    def run(self, items: list) -> list[Outcome]:
        """The outcome of each item, in order; each within ``timeout_s`` of the one before."""
        outcomes: list[Outcome] = []
        while len(outcomes) < len(items):
            outcomes.extend(self._run_prefix(items[len(outcomes) :]))
        return outcomes

    def _run_prefix(self, items: list) -> list[Outcome]:
        """Outcomes of a prefix of ``items``: all of them, or up to and including a timeout or death."""
        self._wait_ready()
        outcomes: list[Outcome] = []
        try:
            self._conn.send(list(items))
            for _ in items:
                if not self._conn.poll(self.timeout_s):
                    self._restart()
                    self.timeouts += 1
                    outcomes.append(Outcome("timeout", f"math-verify exceeded {self.timeout_s:g} s"))
                    return outcomes
                outcomes.append(Outcome(*self._conn.recv()))
        except (EOFError, BrokenPipeError, ConnectionResetError) as exc:  # the child died (e.g. memory)
            self._restart()
            self.deaths += 1
            outcomes.append(Outcome("died", f"math-verify process died ({type(exc).__name__})"))
        return outcomes

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(None)
            self._proc.join(timeout=2)
        except (BrokenPipeError, OSError):
            pass  # already gone: killed below if not
        self._kill()

    def __enter__(self) -> MathVerifyRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
