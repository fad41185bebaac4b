"""Shared file machinery: atomic writes and the one advisory lock every writer takes.

Atomic writes go to a temporary file beside the target and are renamed onto it, so a crash never
leaves a half-written file. The temporary file is created with mode 0666 and the kernel applies
the process umask, so results get the mode a plain ``open()`` gives (readable by the team on a
shared filesystem), with no umask trickery in Python.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, then rename it onto ``path``.

    ``path``: the target file. ``write``: a callable taking the temporary file's path (str).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


class FileLock:
    """An exclusive, non-blocking ``fcntl`` lock on the file ``path``, held while writing.

    ``path``: the lock file (created when missing). ``what``: the thing being written, named in
    the error a second writer gets. The kernel drops the lock when the holder dies (SIGKILL
    included), so a stale lock file is harmless. The holder unlinks the file while it still holds
    the lock, and a new holder checks that the file it locked is still the one at ``path``
    (else it retries), so no lock file is left behind and no two writers ever both hold one.
    """

    def __init__(self, path: str | os.PathLike, *, what: str | None = None):
        self.path = Path(path)
        self.what = what or str(self.path)
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self._acquire(fd)
            except BaseException:
                os.close(fd)
                raise
            if self._is_current(fd):
                self._fd = fd
                _HELD.add(self)
            else:  # its holder unlinked it between our open and our lock: lock the new one
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def _acquire(self, fd: int) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RuntimeError(f"another vidfeat process is writing {self.what} (lock "
                                   f"{self.path} is held); wait for it or use another "
                                   "output") from None
            raise

    def _is_current(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)  # still held: nobody else can be using this file
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self)


_HELD: "weakref.WeakSet[FileLock]" = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    # A forked child (a DataLoader worker) shares the parent's open lock file and would keep the
    # output locked if it outlived a killed parent, refusing an immediate rerun. Closing the
    # child's copy leaves the parent's lock in place; the child never releases or unlinks it.
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)
