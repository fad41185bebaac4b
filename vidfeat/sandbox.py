"""The process sandbox: a child Python process that runs one call at a time and is killed (with
everything it started) on timeout. Spawned with subprocess, not multiprocessing, so it also works
inside daemonic workers (Dask) and threads; it imports only what it runs, plus what it was told
to ``preload`` while its parent was busy elsewhere.

Children are pooled per process (``prestart``, ``pooled_sandbox``): a worker thread borrows a warm
child for one call and gives it back, so a run of many short videos starts a child once per
worker, not once per video or per phase, and the child's start-up (Python, PyAV: ~0.15 s) runs
alongside the parent's own (imports, the scan) instead of after it.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time

_CHILD = "from vidfeat.sandbox import _serve; _serve()"
_HEADER = struct.Struct("<Q")
MAX_CALLS_PER_CHILD = 500  # recycle the child now and then: bounds leaks in native decoders


def python_child(code: str, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``python -c code args...`` the one way vidfeat starts its children.

    ``code``/``args``: what the child runs. ``env``: variables added to this process's
    environment (the child also gets this process's ``sys.path`` as PYTHONPATH, so it imports
    the same vidfeat). ``popen``: further ``subprocess.Popen`` arguments (pipes, log files).
    The child runs in its own session: a kill of its process group reaches everything it
    started (ffmpeg, DataLoader workers), and Ctrl-C in a terminal goes to the parent only.
    """
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                    **(env or {}))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full_env,
                            start_new_session=True, **popen)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to ``proc``'s process group (it leads its own session); wait; return code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    return proc.wait()


class Sandbox:
    """Runs ``fn(*args, **kwargs)`` in a child process with a hard timeout."""

    def __init__(self, *, preload: tuple[str, ...] = ()):
        """``preload``: modules the child imports as soon as it starts (before any call);
        ``module:function`` also calls ``function()`` there (e.g. to fill a cache)."""
        self.proc: subprocess.Popen | None = None
        self.calls = 0
        self.preload = tuple(preload)

    def start(self) -> None:
        """Start the child now, unless it runs; returns at once (it imports ``preload`` meanwhile)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()

    def call(self, fn, args=(), kwargs=None, *, timeout: float) -> tuple[bool, object]:
        """``(True, result)``, or ``(False, one-line reason)`` on error, timeout or crash.

        A ``vidfeat.files.StorageError`` in the child (disk full...) is raised here instead:
        it is not the input's fault and must not be recorded as a failed input.
        """
        if self.proc is None or self.proc.poll() is not None or self.calls >= MAX_CALLS_PER_CHILD:
            self._start()
        self.calls += 1
        data = pickle.dumps((fn, args, kwargs or {}))
        try:
            _write_all(self.proc.stdin.fileno(), _HEADER.pack(len(data)) + data)
            status, value = pickle.loads(self._receive(time.monotonic() + timeout))
        except TimeoutError:
            self.close()
            return False, f"timed out after {timeout:g}s (work killed)"
        except (EOFError, BrokenPipeError):
            return False, f"worker process died ({self.close()})"
        if status == "storage":  # the environment failed, not the video: stop the run
            raise value
        return status == "ok", value

    def _start(self) -> None:
        self.close()
        self.proc = python_child(_CHILD, *self.preload, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        self.calls = 0
        with _SANDBOXES_LOCK:
            _SANDBOXES.add(self)

    def _receive(self, deadline: float) -> bytes:
        fd, buf, need = self.proc.stdout.fileno(), b"", _HEADER.size
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise EOFError
            buf += chunk
            if need == _HEADER.size and len(buf) >= need:
                need += _HEADER.unpack(buf[:_HEADER.size])[0]
        return buf[_HEADER.size:]

    def close(self) -> str:
        """Kill the child and its process group; return how it ended."""
        proc, self.proc = self.proc, None
        if proc is None:
            return "not running"
        rc = kill_group(proc)
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        with _SANDBOXES_LOCK:
            _SANDBOXES.discard(self)
        return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


_SANDBOXES: set[Sandbox] = set()
_SANDBOXES_LOCK = threading.Lock()
_IDLE: list[Sandbox] = []  # the pool: sandboxes no thread is using now (most recent last)


def prestart(n: int, *, preload: tuple[str, ...] = ()) -> None:
    """Have ``n`` pooled children running, starting the missing ones now (without waiting).

    ``n``: children wanted (e.g. the number of worker threads about to run). ``preload``:
    modules new children import at once, while this process goes on with its own work.
    """
    with _SANDBOXES_LOCK:
        missing = n - len(_IDLE)
    for _ in range(missing):
        box = Sandbox(preload=preload)
        box.start()
        with _SANDBOXES_LOCK:
            _IDLE.append(box)


@contextlib.contextmanager
def pooled_sandbox():
    """A sandbox from this process's pool (a warm child if one is idle) for the ``with`` block;
    given back after, for the next call of any thread. Thread-safe."""
    with _SANDBOXES_LOCK:
        box = _IDLE.pop() if _IDLE else Sandbox()
    try:
        yield box
    finally:
        with _SANDBOXES_LOCK:
            _IDLE.append(box)


@atexit.register
def close_sandboxes() -> None:
    """Kill every sandbox child this process started, and empty the pool."""
    with _SANDBOXES_LOCK:
        boxes = list(_SANDBOXES)
        _IDLE.clear()
    for box in boxes:
        box.close()


def _serve() -> None:
    """The child's loop: read a pickled call from stdin, write the pickled outcome back."""
    channel = os.dup(1)
    os.dup2(2, 1)  # library prints go to stderr, never into the result channel
    for name in sys.argv[1:]:  # preload; one that fails here fails the calls that need it
        with contextlib.suppress(Exception):
            _preload(name)
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    stdin = sys.stdin.buffer
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # parent closed the pipe
        payload = stdin.read(_HEADER.unpack(header)[0])
        try:
            fn, args, kwargs = pickle.loads(payload)
            out = pickle.dumps(("ok", fn(*args, **kwargs)))
        except Exception as exc:  # any failure is this video's, reported as one line
            out = pickle.dumps(_outcome(exc))
        _write_all(channel, _HEADER.pack(len(out)) + out)


def _preload(name: str) -> None:
    """Import ``module``, or for ``module:function`` also call ``function()`` (a warm-up whose
    result the function caches)."""
    import importlib

    module, _, function = name.partition(":")
    loaded = importlib.import_module(module)
    if function:
        getattr(loaded, function)()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _watch_parent(parent: int) -> None:
    # an orphaned child (its worker was killed) must not keep decoding
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _outcome(exc: Exception) -> tuple[str, object]:
    """An environment failure travels back as itself (the parent stops); others as one line."""
    from vidfeat.files import StorageError, is_environmental

    if isinstance(exc, StorageError):
        return "storage", exc
    if is_environmental(exc) and not type(exc).__module__.startswith("av."):  # not a decoder's
        return "storage", StorageError(exc.errno, exc.filename or "a file", "writing")
    return "error", _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return text if type(exc).__name__ == "VideoError" else f"{type(exc).__name__}: {text}"

