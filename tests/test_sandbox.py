"""The sandbox child: results back, hung work killed, errors and crashes as one line."""
import os
import signal
import time

import pytest

from vidfeat.sandbox import Sandbox


# functions the child runs (top level, so they pickle by reference)
def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)


def fail(*args, **kwargs):
    raise ValueError("boom\nsecond line")


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
