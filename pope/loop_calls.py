"""Work that other threads hand to one loop thread, each call waited for with a deadline.

An actor's engine and a learner's weight group belong to the thread that runs the component's loop
(generation, training). Ray serves other method calls on other threads, so a weight update or a
regroup is posted here and the loop runs it at its next pause:

    caller thread ──call(fn)──> queue ──serve() between engine calls / steps──> fn() ──result──> caller

With no loop running, ``call`` runs the work itself (before the loop starts, after it stops).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Call:
    fn: Callable[[], Any]
    what: str
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: str | None = None


class LoopCalls:
    def __init__(self, owner: str):
        self.owner = owner
        self.running = False  # set by the loop while it serves
        self.posted = threading.Event()  # wakes a loop that sleeps (e.g. on backpressure)
        self._queue: queue.Queue[_Call] = queue.Queue()
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """Run ``fn`` on the loop thread and return its result; ``TimeoutError`` after ``timeout_s``,
        ``RuntimeError`` (naming the owner and the work) when ``fn`` raised."""
        work = _Call(fn, what)
        self._queue.put(work)
        self.posted.set()
        if not self.running:
            self.serve()
        if not work.done.wait(timeout_s):
            raise TimeoutError(f"{self.owner}: {what} did not finish within {timeout_s}s")
        if work.error:
            raise RuntimeError(f"{self.owner}: {what} failed: {work.error}")
        return work.result

    def pending(self) -> bool:
        return not self._queue.empty()

    def serve(self) -> None:
        """On the loop thread: run every posted call, in order."""
        with self._lock:
            while True:
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    return
                try:
                    work.result = work.fn()
                except Exception as exc:  # deliberate: handed to the caller, which fails or reports it
                    work.error = f"{type(exc).__name__}: {exc}"
                finally:
                    work.done.set()
