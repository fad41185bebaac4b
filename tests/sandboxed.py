"""Misbehaving stand-ins for the work a sandbox child runs, kept in a module that imports almost
nothing: the child imports it to unpickle them, and a test module importing torch would spend
seconds of the timeout under test doing that."""
import os
import signal
import time


def decode_or_misbehave(path, *args, **kwargs):
    """``decode_frames``, except that videos named ``hang*`` never return and ``crash*`` die
    of SIGSEGV (a decoder that hangs or crashes)."""
    from vidfeat.ingestion.decode import decode_frames

    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_frames(path, *args, **kwargs)
