"""Shared file machinery: atomic writes and the one advisory lock every writer takes.

Atomic writes go to a temporary file beside the target and are renamed onto it, so a crash never
leaves a half-written file. The temporary file is created with mode 0666 and the kernel applies
the process umask, so results get the mode a plain ``open()`` gives (readable by the team on a
shared filesystem), with no umask trickery in Python.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None


# errno -> what the user is told: the environment failed, not the data. These stop a run at once
# (StorageError) and are never recorded as a bad video, a bad frame or a corrupt file.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: ("disk full", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EROFS: ("read-only filesystem", "write to a writable location"),
    errno.EACCES: ("permission denied", "fix the permissions"),
    errno.EPERM: ("operation not permitted", "fix the permissions"),
    errno.EIO: ("I/O error", "check the disk"),
}
HASH_HEX = 32            # hex digits kept of a sha256: 128 bits, ample against accidents
SOURCE_HASH_WHOLE = 8 << 20   # sources up to 8 MiB are hashed whole
SOURCE_HASH_BLOCK = 1 << 20   # larger ones: size + first, middle and last MiB


class StorageError(OSError):
    """The environment failed while reading or writing ``path`` (disk full, read-only, EIO...).

    Not a property of the data: the run stops at once, nothing is recorded as failed, and a
    plain rerun after the fix completes. ``str()`` is one line saying what to do.
    """

    def __init__(self, err: int, path, doing: str = "writing", *, message: str | None = None):
        what, fix = ENVIRONMENT_ERRNOS.get(err, (os.strerror(err), "fix the cause"))
        self.path, self.doing = str(path), doing
        if message is None:
            message = f"{what} {doing} {path}: {fix} and rerun the same command; nothing was lost"
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # crosses process boundaries (sandbox children, Dask workers)
        return _rebuild_storage_error, (self.errno, self.path, self.doing, self.strerror)


def check_output(path: str | os.PathLike, *, kind: str = "file", need_bytes: int = 0) -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("file" or "folder").

    ``path`` must not exist as the other kind; its nearest existing ancestor must be a folder in
    which a file can really be created (a probe file is made and removed: permissions,
    read-only mounts and pseudo-filesystems all answer); with ``need_bytes``, that filesystem
    must have that much free. Raises ``StorageError`` (one line, what to do). Returns ``path``
    made absolute.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and (path.is_dir() != (kind == "folder")):
        other = "a folder" if path.is_dir() else "a file"
        raise StorageError(errno.EEXIST, path, message=f"{path} is {other}, but the output "
                           f"must be a {kind}: choose another output path")
    base = path if path.is_dir() else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise StorageError(errno.ENOTDIR, base, message=f"cannot create {path}: {base} is a "
                           "file, not a folder; choose another output path")
    _probe_write(base, path)
    if need_bytes:
        import shutil

        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise StorageError(errno.ENOSPC, base, message=f"not enough free space for {path}: "
                               f"about {human_bytes(need_bytes)} needed, {human_bytes(free)} "
                               f"free in {base}; free space or choose another output")
    return path


def human_bytes(n: float) -> str:
    """``n`` bytes as a short text: ``49 kB``, ``1.2 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if n >= 10 or unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"  # pragma: no cover - the loop returns


def _probe_write(base: Path, path: Path) -> None:
    probe = base / f".vidfeat-probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise StorageError(exc.errno, base, message=f"cannot write {path}: creating a file in "
                           f"{base} fails ({exc.strerror}); choose a writable output or fix "
                           "its permissions") from None
    os.unlink(probe)


def _rebuild_storage_error(err, path, doing, message):
    return StorageError(err, path, doing, message=message)


def is_environmental(exc: BaseException) -> bool:
    """True for an OSError whose errno says the environment failed (see ENVIRONMENT_ERRNOS)."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


@contextlib.contextmanager
def environment_errors(path, doing: str = "writing"):
    """Re-raise an environmental OSError inside the block as a one-line ``StorageError``.

    ``path``: what was being read or written, named in the message. ``doing``: "writing" or
    "reading". Other exceptions pass through unchanged.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if not is_environmental(exc):
            raise
        raise StorageError(exc.errno, path if path is not None else exc.filename, doing) from exc


def hash_bytes(data) -> str:
    """Content hash of ``data`` (bytes-like): sha256, first HASH_HEX hex digits."""
    return hashlib.sha256(data).hexdigest()[:HASH_HEX]


def source_hash(path: str | os.PathLike, size: int | None = None) -> str:
    """Content hash of a source video: whole file up to 8 MiB, else size + first, middle and
    last MiB (a replaced or re-encoded video changes them; reading a whole 10 GB file does not
    pay). ``path``: the file; ``size``: its size if already known."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size if size is None else size
        h.update(f"{size}:".encode())
        if size <= SOURCE_HASH_WHOLE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            for offset in (0, size // 2, size - SOURCE_HASH_BLOCK):
                f.seek(offset)
                h.update(f.read(SOURCE_HASH_BLOCK))
    return h.hexdigest()[:HASH_HEX]


def write_exact(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and check the length that reached it.

    A short write (a full disk that some libraries report as success) is an ENOSPC
    ``StorageError``; the partial file is removed.
    """
    with environment_errors(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    if written == 0:
                        raise OSError(errno.ENOSPC, "short write", str(path))
                    view = view[written:]
            finally:
                os.close(fd)
            if os.stat(path).st_size != len(data):
                raise OSError(errno.ENOSPC, "short write", str(path))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, then rename it onto ``path``.

    ``path``: the target file. ``write``: a callable taking the temporary file's path (str).
    Environmental OSErrors (disk full, read-only...) become ``StorageError``; the temporary file
    is removed whatever happens.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with environment_errors(path):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            write(str(tmp))
            os.replace(tmp, path)
    except StorageError as exc:
        if exc.path == str(path):
            raise
        raise StorageError(exc.errno, path, exc.doing) from exc  # name the target, not the temp
    finally:
        with contextlib.suppress(OSError):
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
        with environment_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            with environment_errors(self.path):
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
        try:
            with environment_errors(self.path):
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
        except BaseException:
            self.__exit__()  # a full disk must not leave this process holding the lock
            raise
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
