"""vidfeat.files: atomic writes (target untouched on failure, umask-following mode) and FileLock
(exclusive across processes, released by the kernel when its holder is SIGKILLed)."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from vidfeat.files import FileLock, atomic_write, write_json


def test_atomic_write_leaves_the_target_untouched_when_write_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half-written")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left behind


def test_atomic_write_does_not_create_the_target_when_write_raises(tmp_path):
    def fail(tmp):
        raise OSError("nope")

    with pytest.raises(OSError, match="nope"):
        atomic_write(tmp_path / "new.txt", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    # os.umask is process-wide: set it in a child so other tests never see it changed
    code = textwrap.dedent(f"""
        import os, sys
        from vidfeat.files import atomic_write, write_json
        os.umask({umask:#o})
        write_json(sys.argv[1], {{"a": 1}})
        atomic_write(sys.argv[2], lambda tmp: open(tmp, "w").write("x"))
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json"), str(tmp_path / "y.txt")],
                   check=True, timeout=60)
    for name in ("x.json", "y.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_written_files_get_what_a_plain_open_gives(tmp_path):
    # whatever this process's umask is: the mode of open(), not mkstemp's 0600
    write_json(tmp_path / "x.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    assert (stat.S_IMODE((tmp_path / "x.json").stat().st_mode)
            == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode))


HOLDER = textwrap.dedent("""
    import sys, time
    from vidfeat.files import FileLock
    with FileLock(sys.argv[1], what="the thing"):
        print("locked", flush=True)
        time.sleep(600)
""")


def _hold(lock_path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
    return proc


def _wait_dead(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=30)
    finally:
        proc.stdout.close()


def test_file_lock_is_exclusive_across_processes(tmp_path):
    lock = tmp_path / "out.lock"
    proc = _hold(lock)
    try:
        with pytest.raises(RuntimeError, match=r"another vidfeat process is writing the thing"):
            with FileLock(lock, what="the thing"):
                pass
        assert lock.read_text().strip() == str(proc.pid)  # the holder wrote its pid
    finally:
        proc.terminate()
        _wait_dead(proc)


def test_file_lock_is_released_when_the_holder_is_killed(tmp_path):
    lock = tmp_path / "sub" / "out.lock"
    proc = _hold(lock)
    os.kill(proc.pid, signal.SIGKILL)  # no __exit__, no cleanup: only the kernel can release it
    assert _wait_dead(proc) == -signal.SIGKILL
    # the kernel closed the dead process's files before wait() could reap it: free at once
    with FileLock(lock):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()  # released by its holder: no lock file left behind


def test_file_lock_can_be_taken_again_after_release(tmp_path):
    lock = tmp_path / "out.lock"
    with FileLock(lock):
        pass
    with FileLock(lock):
        pass


def test_file_lock_never_admits_two_holders_while_files_come_and_go(tmp_path):
    """Holders unlink the lock file on release; racing takers must still exclude each other."""
    import threading

    lock, inside, overlaps, taken = tmp_path / "race.lock", [0], [], [0]

    def worker():
        for _ in range(200):
            try:
                with FileLock(lock):
                    inside[0] += 1
                    if inside[0] != 1:
                        overlaps.append(inside[0])
                    taken[0] += 1
                    inside[0] -= 1
            except RuntimeError:
                pass  # held by another thread: the non-blocking refusal a second writer gets

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not overlaps and taken[0] > 0 and not lock.exists()


FORKING_HOLDER = """
import os, sys, time
from vidfeat.files import FileLock
lock = FileLock(sys.argv[1]).__enter__()
pid = os.fork()
if pid == 0:  # a DataLoader-style worker: outlives its parent
    print("forked", flush=True)  # fork's hooks have run in this child by now
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_a_forked_child_does_not_keep_a_killed_parents_lock(tmp_path):
    lock = tmp_path / "out.lock"
    proc = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(lock)],
                            stdout=subprocess.PIPE, text=True)
    # both lines, in either order: the child's once it runs (on a loaded machine the parent
    # can be killed before the child was scheduled at all), the parent's with the child's pid
    lines = {proc.stdout.readline().strip(), proc.stdout.readline().strip()}
    child = int((lines - {"forked"}).pop())
    try:
        with pytest.raises(RuntimeError, match="is held"):
            FileLock(lock).__enter__()   # the parent holds it
        proc.kill()
        proc.wait()
        os.kill(child, 0)                # the orphaned child is still alive ...
        with FileLock(lock):             # ... and the rerun gets the lock at once
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# --- environment failures, hashes, output checks ----------------------------------------------

def test_storage_error_is_one_line_and_crosses_processes():
    import errno
    import pickle

    from vidfeat.files import StorageError

    exc = StorageError(errno.ENOSPC, "/data/out/x.jpg")
    assert str(exc) == ("disk full writing /data/out/x.jpg: free space and rerun the same "
                        "command; nothing was lost")
    again = pickle.loads(pickle.dumps(exc))
    assert isinstance(again, OSError) and again.errno == errno.ENOSPC and str(again) == str(exc)


def test_environment_errors_maps_only_environmental_errnos(tmp_path):
    import errno

    from vidfeat.files import StorageError, environment_errors

    with pytest.raises(StorageError, match="read-only filesystem writing /x"):
        with environment_errors("/x"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(FileNotFoundError):  # not the environment: passes through unchanged
        with environment_errors("/x"):
            raise FileNotFoundError(errno.ENOENT, "No such file")


def test_source_hash_whole_small_file_and_sampled_large_file(tmp_path):
    import hashlib

    from vidfeat.files import source_hash

    small = tmp_path / "small"
    small.write_bytes(b"abc" * 1000)
    assert source_hash(small) == hashlib.sha256(b"3000:" + b"abc" * 1000).hexdigest()[:32]
    big = tmp_path / "big"
    data = os.urandom(9 << 20)
    big.write_bytes(data)
    mib, n = 1 << 20, len(data)
    expected = hashlib.sha256(f"{n}:".encode() + data[:mib] + data[n // 2:n // 2 + mib]
                              + data[n - mib:]).hexdigest()[:32]
    assert source_hash(big) == expected
    changed = bytearray(data)
    changed[n // 2 + 5] ^= 1
    big.write_bytes(bytes(changed))
    assert source_hash(big) != expected


@pytest.fixture
def tiny_disk(tmp_path):
    from featfiles import small_disk

    with small_disk(tmp_path / "disk", "64k") as mnt:
        yield mnt


def test_write_exact_and_atomic_write_on_a_full_disk(tiny_disk):
    from vidfeat.files import StorageError, atomic_write, write_exact

    with pytest.raises(StorageError, match="disk full writing"):
        write_exact(tiny_disk / "big.bin", b"\0" * (1 << 20))
    assert not (tiny_disk / "big.bin").exists()
    with pytest.raises(StorageError, match=f"disk full writing {tiny_disk / 'out.bin'}"):
        atomic_write(tiny_disk / "out.bin", lambda tmp: write_exact(tmp, b"\0" * (1 << 20)))
    assert list(tiny_disk.iterdir()) == []  # no temp file left


def test_check_output(tmp_path):
    from vidfeat.files import StorageError, check_output

    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(StorageError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "out", kind="folder")
    with pytest.raises(StorageError, match="is a file, but the output must be a folder"):
        check_output(tmp_path / "file", kind="folder")
    with pytest.raises(StorageError, match="is a folder, but the output must be a file"):
        check_output(tmp_path / "folder", kind="file")
    with pytest.raises(StorageError, match="not enough free space"):
        check_output(tmp_path / "f.h5", need_bytes=1 << 62)
    assert check_output(tmp_path / "new" / "deeper", kind="folder") == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # probe removed


def test_check_output_accepts_an_existing_output_of_the_right_kind(tmp_path):
    from vidfeat.files import check_output

    (tmp_path / "f.h5").write_bytes(b"x")
    assert check_output(tmp_path / "f.h5", kind="file") == tmp_path / "f.h5"
    assert check_output(tmp_path, kind="folder") == tmp_path
