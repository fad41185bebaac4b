"""Per-video work and its files: the task run in the sandbox, the frame folders and the journal.

This module owns ``OUTDIR/frames/``, ``OUTDIR/.partial/`` and ``OUTDIR/ingest_journal.jsonl``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from vidfeat.files import environment_errors
from vidfeat.ingestion.probe import ProbeResult
from vidfeat.ingestion.sample import SamplingSpec
from vidfeat.sandbox import pooled_sandbox, prestart

FRAMES = "frames"            # OUTDIR/frames/<video_id>/*.jpg
PARTIAL = ".partial"         # OUTDIR/.partial/: frames being decoded (renamed when complete)
INGEST_LOCK = ".ingest.lock"  # OUTDIR/.ingest.lock: one ingest writes into OUTDIR at a time
JOURNAL = "ingest_journal.jsonl"  # OUTDIR/ingest_journal.jsonl: per-video outcomes, appended
# what a sandbox child imports (and computes) as soon as it starts, while the parent scans:
# the decoder's modules, and the library versions ingest.json records (0.05 s)
CHILD_PRELOAD = ("av", "numpy", "simplejpeg", "vidfeat.ingestion.decode",
                 "vidfeat.ingestion.tasks:cached_library_versions")


# --------------------------------------------------------------------------------------------
# Per-video work: a small picklable task in, a small JSON-able journal entry out. Runs on any
# joblib backend (threads, loky, Dask workers); the timeout and the kill are inside.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoTask:
    """Probe (``phase='probe'``) or decode (``'decode'``) one video."""

    phase: str
    video_id: str
    path: str
    outdir: str
    timeout: float
    key: str                          # what the result depends on (file stats, sampling, n)
    work: Callable                    # probe_video or decode_frames (tests swap in others)
    probe: dict | None = None         # decode: the probe fields
    spec: SamplingSpec | None = None  # decode: how to sample
    n: int | None = None              # decode: frames to sample (uniform)
    threads: int | None = None        # decode: decoder threads per worker


def run_video_task(task: VideoTask) -> dict:
    """Run ``task`` in a pooled sandbox child; returns the journal entry. Raises only
    ``StorageError`` (the environment failed: the run must stop, the video is not at fault)."""
    start = time.monotonic()
    if task.phase == "probe":
        with pooled_sandbox() as box:
            ok, value = box.call(task.work, (task.path,), {"check_decode": True},
                                 timeout=task.timeout)
        extra = {"probe": asdict(value)} if ok else {}
    else:
        ok, value = _decode_and_publish(task)
        extra = {"frames": value} if ok else {}
    return {"phase": task.phase, "video_id": task.video_id, "key": task.key,
            "status": "ok" if ok else "failed", "error": "" if ok else str(value),
            "elapsed_s": round(time.monotonic() - start, 4), **extra}


def warm_workers(n: int) -> None:
    """Start ``n`` sandbox children for this process's worker threads now, without waiting:
    they import PyAV and the decoder while this process goes on (the scan, the plan)."""
    prestart(n, preload=CHILD_PRELOAD)


@functools.cache
def cached_library_versions() -> dict:
    """``{"libraries": stats.library_versions(), "vidfeat": vidfeat's package version}``,
    computed once per process."""
    from vidfeat.ingestion.stats import library_versions, package_version

    return {"libraries": library_versions(), "vidfeat": package_version("vidfeat")}


def worker_library_versions(timeout: float) -> dict | None:
    """``cached_library_versions()`` as a pooled sandbox child sees them: it imported PyAV and
    computed them while starting (here that would cost 0.07 + 0.07 s); None if it failed."""
    with pooled_sandbox() as box:
        ok, value = box.call(cached_library_versions, timeout=timeout)
    return value if ok else None


def in_threads(fn: Callable, items: list, *, jobs: int):
    """``fn(item)`` for each of ``items`` on ``jobs`` threads (in this one for 1), yielded as
    they finish. The first exception (a StorageError: the environment failed; Ctrl-C) cancels
    what has not started and propagates at once, without waiting for the calls in flight: the
    caller then kills the sandbox children (``close_sandboxes``), which ends them.
    """
    if jobs <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    pool = ThreadPoolExecutor(jobs, thread_name_prefix="vidfeat-video")
    try:
        for future in as_completed([pool.submit(fn, item) for item in items]):
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _decode_and_publish(task: VideoTask) -> tuple[bool, object]:
    """Decode into ``OUTDIR/.partial/<random>``, then rename to ``frames/<video_id>``.

    A StorageError (disk full...) in the child or here propagates: it is not the video's fault.
    """
    partial = _partial_folder(Path(task.outdir, PARTIAL))
    try:
        with pooled_sandbox() as box:
            ok, value = box.call(
                task.work, (task.path, ProbeResult(**task.probe), task.spec, str(partial)),
                {"n": task.n, "threads": task.threads}, timeout=task.timeout)
        if ok and not value:
            return False, "no frames decoded"
        if ok:
            with environment_errors(frames_dir(task.outdir, task.video_id)):
                _publish(partial, frames_dir(task.outdir, task.video_id))
            value = [r.row() for r in value]  # clip rows add clip, pos, padded
        return ok, value
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _partial_folder(root: Path) -> Path:
    """A new folder under ``root``, created 0777 so the kernel applies the umask (mkdtemp's
    0700 would make published frame folders unreadable to the team on a shared filesystem)."""
    with environment_errors(root):
        root.mkdir(parents=True, exist_ok=True)
        while True:
            path = root / f"decode-{secrets.token_hex(6)}"
            with contextlib.suppress(FileExistsError):
                path.mkdir(0o777)
                return path


def frames_intact(outdir, video_id: str, frames: list) -> bool:
    """True when every frame of a journal entry is on disk with its recorded bytes.

    ``outdir``: the ingest folder. ``video_id``: the video. ``frames``: the entry's
    ``[index, time, filename, bytes, hash]`` rows (an entry of an older vidfeat, without bytes,
    is never intact: its frames are re-made with hashes). Each file is re-hashed (about 1 ms
    per 100 frames): a frame damaged in place, even at its old length, is re-made by a rerun.
    """
    from vidfeat.files import hash_bytes

    folder = frames_dir(outdir, video_id)
    checked = set()  # clip rows share the JPEG of a frame shown several times: hash it once
    for row in frames:
        if len(row) < 5:
            return False
        if tuple(row[2:5]) in checked:
            continue
        checked.add(tuple(row[2:5]))
        try:
            with environment_errors(folder / row[2], "reading"):
                data = (folder / row[2]).read_bytes()
        except FileNotFoundError:
            return False
        if len(data) != row[3] or hash_bytes(data) != row[4]:
            return False
    return True


def frames_dir(outdir, video_id: str) -> Path:
    """Where a video's JPEGs live: ``OUTDIR/frames/<video_id>/``."""
    return Path(outdir, FRAMES, *PurePosixPath(video_id).parts)


def _publish(partial: Path, final: Path) -> None:
    # A stale folder (a run killed after the rename, before the journal) is moved aside first:
    # renames are atomic, so the final folder is always either absent or complete.
    final.parent.mkdir(parents=True, exist_ok=True)
    stale = partial.with_name(partial.name + ".stale")
    with contextlib.suppress(FileNotFoundError):
        os.rename(final, stale)
    os.rename(partial, final)
    shutil.rmtree(stale, ignore_errors=True)


class Journal:
    """``OUTDIR/ingest_journal.jsonl``: one JSON line per finished task, appended as it happens.

    Only this file says a video is done, and a line is written after its frames folder is in
    place, so a run killed at any point resumes without taking half-written work as done.
    """

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / JOURNAL
        self._file = None

    def load(self) -> dict[tuple[str, str], dict]:
        """Latest entry per ``(phase, video_id)``; a torn last line (killed run) is skipped."""
        entries = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entry = json.loads(line)
                        entries[entry["phase"], entry["video_id"]] = entry
        return entries

    def append(self, entry: dict) -> None:
        with environment_errors(self.path):
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
                if self._file.tell() and not self._ends_with_newline():
                    self._file.write("\n")  # after a torn line
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # a full disk was already reported by append
                file.close()


def discard_outdir(outdir) -> None:
    """Remove an ingest OUTDIR as a whole: manifests, frames, journal, partial folders.

    ``outdir``: the folder ``ingest`` wrote (a pipeline stage whose options changed). Taken
    under the OUTDIR lock, so a running ingest into it is never pulled from under its feet.
    """
    from vidfeat.files import FileLock

    outdir = Path(outdir)
    if not outdir.exists():
        return
    with FileLock(outdir / INGEST_LOCK, what=f"into {outdir}"):
        for child in outdir.iterdir():
            if child.name == INGEST_LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    shutil.rmtree(outdir, ignore_errors=True)
