"""The one helper that hands work to a component's loop thread (actors' weight loads, the learner's regroups)."""

from __future__ import annotations

import threading
import time

import pytest

from pope.loop_calls import LoopCalls

pytestmark = pytest.mark.unit


def test_work_runs_on_the_loop_thread_and_its_result_comes_back():
    calls = LoopCalls("actor0")
    calls.running = True
    stop = threading.Event()
    loop_thread = []

    def loop():
        loop_thread.append(threading.get_ident())
        while not stop.is_set():
            calls.serve()
            time.sleep(0.01)

    t = threading.Thread(target=loop)
    t.start()
    try:
        assert calls.call(threading.get_ident, "which thread", 5.0) == loop_thread[0] != threading.get_ident()
        with pytest.raises(RuntimeError, match="actor0: load failed: ValueError: bad"):
            calls.call(lambda: (_ for _ in ()).throw(ValueError("bad")), "load", 5.0)
    finally:
        stop.set()
        t.join()


def test_without_a_loop_the_caller_runs_it_and_a_stuck_loop_times_out():
    calls = LoopCalls("learner")
    assert calls.call(lambda: 41 + 1, "inline", 1.0) == 42  # no loop running: served at once
    calls.running = True  # a loop that never serves
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="learner: regroup did not finish within 0.2s"):
        calls.call(lambda: None, "regroup", 0.2)
    assert time.monotonic() - start < 2 and calls.pending()
