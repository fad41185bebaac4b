"""The sandbox child: results back, hung work killed, errors and crashes as one line."""
import os
import signal
import threading
import time

import pytest

from vidfeat.sandbox import Sandbox, close_sandboxes, pooled_sandbox, prestart


# functions the child runs (top level, so they pickle by reference)
def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(*args, **kwargs):
    raise ValueError("boom\nsecond line")


def imported(name):
    import sys

    return name in sys.modules, os.getpid()


def test_sandbox_kills_hung_work_and_recovers():
    box = Sandbox()
    try:
        assert box.call(pow, (2, 10), timeout=30) == (True, 1024)
        first = box.proc.pid
        start = time.monotonic()
        ok, reason = box.call(time.sleep, (600,), timeout=1)
        assert not ok and "timed out after 1s" in reason and time.monotonic() - start < 10
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)  # the hung child is gone
        assert box.call(fail, timeout=30) == (False, "ValueError: boom second line")
        ok, reason = box.call(crash, timeout=30)
        assert not ok and "SIGSEGV" in reason
        assert box.call(pow, (3, 2), timeout=30) == (True, 9)  # a fresh child took over
    finally:
        box.close()


def test_pool_reuses_warm_children_across_calls_and_threads():
    """Started ahead with its preload imported before any call; one child per concurrent
    borrower, reused by later calls of any thread (not one per thread or per call)."""
    try:
        prestart(1, preload=("colorsys", "no_such_module", "os:getpid"))  # one fails: no matter
        with pooled_sandbox() as box:
            loaded, first = box.call(imported, ("colorsys",), timeout=60)[1]
        assert loaded  # imported at start-up: the call itself never imported it
        pids, barrier = [], threading.Barrier(2)

        def borrow():
            with pooled_sandbox() as box:
                barrier.wait(timeout=60)  # both hold a sandbox at once
                pids.append(box.call(imported, ("colorsys",), timeout=60)[1][1])

        threads = [threading.Thread(target=borrow) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert first in pids and len(set(pids)) == 2  # the warm child + one more
        with pooled_sandbox() as box:
            assert box.call(imported, ("colorsys",), timeout=60)[1][1] in pids
    finally:
        close_sandboxes()
    with pooled_sandbox() as box:  # the pool was emptied: a new child
        assert box.proc is None
