"""Ingest: a folder of labelled videos -> stored JPEG frames + validated manifests.

Stages, each a plain function over rows: ``scan_source`` (one row per input video) -> probe every
video -> ``split.assign_splits`` -> ``balance.balance`` (train only) -> decode the planned frames
-> ``manifest.write_manifest``.

What happens to bad input (nothing is ever lost, the run goes on):

* URL / ``protocol:`` rows, missing, empty, non-regular or duplicate files become ``failed`` rows
  at scan time and are never opened.
* Corrupt, truncated, audio-only or otherwise unusable videos become ``failed`` rows with the
  one-line reason from ``probe_video`` / ``decode_frames``; so does any unexpected exception.
* Every probe and decode runs in a sandbox child process that is killed (with its process group)
  after ``timeout`` seconds, or when it crashes; the video becomes a ``failed`` row and a fresh
  child takes the next one. A hung decoder cannot stall the run.
* Frames are decoded into ``OUTDIR/.partial/`` and renamed into ``OUTDIR/frames/<video_id>/``
  only when complete; completion is appended to ``OUTDIR/ingest_journal.jsonl`` as it happens,
  so a killed run resumes where it stopped and a half-written folder is never taken as done.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import pickle
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

from vidfeat.decode import decode_frames
from vidfeat.media import UnsafeMediaPath, check_local_path
from vidfeat.options import check_choice, check_positive
from vidfeat.probe import ProbeResult, probe_video
from vidfeat.sample import SamplingSpec, max_distinct_frames

if TYPE_CHECKING:
    from vidfeat.manifest import Manifest

log = logging.getLogger(__name__)

# Containers looked for in class folders (lower-case suffixes); anything else there is ignored.
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .qt .mpg .mpeg .m2v .ts .mts .m2ts .flv .wmv .asf .3gp .3g2 "
    ".ogv .ogg .mxf .vob .dv .y4m .nut".split())

SCAN_COLUMNS = ("video_id", "path", "label", "split", "status", "error", "size_bytes", "mtime_ns")
FRAMES = "frames"            # OUTDIR/frames/<video_id>/*.jpg
PARTIAL = ".partial"         # OUTDIR/.partial/: frames being decoded (renamed when complete)
JOURNAL = "ingest_journal.jsonl"  # OUTDIR/ingest_journal.jsonl: per-video outcomes, appended
# video_id prefix for labels-file rows outside the labels file's folder (absolute path follows)
EXTERNAL_PREFIX = "_external"


def scan_source(src, *, labels: str | os.PathLike | None = None):
    """One row per input video: ``video_id, path, label, split, status, error`` (+ file stats).

    ``src`` is a folder of class folders (``src/<label>/**/<video>``), or, with ``labels``, a
    CSV/Parquet file with ``path,label`` and optionally ``split`` whose relative paths resolve
    against the labels file's folder (``src`` is then ignored and may be None). ``video_id`` is
    the POSIX path relative to that root: unique, and safe as a relative folder (no '..', never
    absolute). Rows that cannot be used (URL or ``protocol:`` path, missing/empty/non-regular
    file, bad split value, same file listed twice) get ``status='failed'`` and a reason; nothing
    is opened here. Rows are sorted by ``video_id``.
    """
    import pandas as pd  # lazily: the sandbox child imports this module and must start fast

    rows = _scan_labels(Path(labels)) if labels is not None else _scan_folders(src)
    df = pd.DataFrame(rows, columns=list(SCAN_COLUMNS))
    for column in ("size_bytes", "mtime_ns"):  # built directly: via float64, ns would round
        df[column] = pd.array([r[column] for r in rows], dtype="Int64")
    if df.empty:
        where = labels if labels is not None else src
        raise ValueError(f"no videos found in {where}")
    return df.sort_values("video_id", kind="stable").reset_index(drop=True)


def _row(video_id, path, label, split="", error="", st=None) -> dict:
    return {"video_id": video_id, "path": str(path), "label": label, "split": split,
            "status": "failed" if error else "ok", "error": error,
            "size_bytes": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None}


def _scan_folders(src) -> list[dict]:
    if src is None:
        raise ValueError("give a source folder of class folders, or labels=FILE")
    root = check_local_path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if rel_dir == PurePosixPath("."):
                log.warning("ignoring %s: a video directly in %s has no class folder", name, root)
                continue
            path = Path(dirpath) / name
            rows.append(_file_row(str(rel_dir / name), path, rel_dir.parts[0]))
    return rows


def _file_row(video_id: str, path: Path, label: str, split: str = "") -> dict:
    """Row for a local file, failed when it is missing, not a regular file, or empty."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _row(video_id, path, label, split, "file not found")
    except OSError as exc:
        return _row(video_id, path, label, split, f"cannot stat file: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return _row(video_id, path, label, split, "not a regular file", st)
    if st.st_size == 0:
        return _row(video_id, path, label, split, "file is empty (0 bytes)", st)
    if not os.access(path, os.R_OK):
        return _row(video_id, path, label, split, "file is not readable (permission denied)", st)
    return _row(video_id, path, label, split, "", st)


def read_labels(path: Path):
    """The labels table (CSV or Parquet) with text columns ``path, label, split``."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        raise ValueError(f"labels file must be .csv or .parquet, got {path.name!r}")
    df.columns = [str(c).strip().lower() for c in df.columns]
    for column in ("path", "label"):
        if column not in df.columns:
            raise ValueError(f"labels file {path.name}: missing column {column!r} "
                             f"(has {', '.join(map(repr, df.columns))})")
    if "split" not in df.columns:
        df["split"] = ""
    return df[["path", "label", "split"]].fillna("").astype(str).apply(lambda s: s.str.strip())


def _scan_labels(labels: Path) -> list[dict]:
    labels = check_local_path(labels)
    base = labels.parent
    rows, seen = [], {}
    for i, (raw, label, split) in enumerate(read_labels(labels).itertuples(index=False), start=2):
        row = _labels_row(i, raw, label, split.lower(), base)
        first = seen.setdefault(row["video_id"], i)
        if first != i:  # the same file listed twice: keep the first, report the rest
            row.update(video_id=f"{row['video_id']}~dup{i}", status="failed",
                       error=f"same file as line {first} of the labels file")
        rows.append(row)
    return rows


def _labels_row(line: int, raw: str, label: str, split: str, base: Path) -> dict:
    """Row for labels-file line ``line`` (1 is the header)."""
    from vidfeat.manifest import SPLITS

    rejected = f"_rejected/line{line}"
    if not raw:
        return _row(rejected, raw, label, split, "empty path")
    try:
        path = check_local_path(raw, base=base)
    except UnsafeMediaPath as exc:
        return _row(rejected, raw, label, split, str(exc))
    vid = video_id_for(path, base)
    if not label:
        return _row(vid, path, label, split, "empty label")
    if split and split not in SPLITS:
        return _row(vid, path, label, split, f"split {split!r} is not one of {', '.join(SPLITS)}")
    return _file_row(vid, path, label, split)


def video_id_for(path: Path, base: Path) -> str:
    """POSIX path of ``path`` relative to ``base``; outside ``base``, ``_external/<abs path>``.

    Both ``path`` and ``base`` are absolute and normalised, so the result never holds '..' and
    distinct files get distinct ids.
    """
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        drive = Path(path).drive.strip(":\\/")  # "C" on Windows, "" on POSIX
        return PurePosixPath(EXTERNAL_PREFIX, drive, *Path(path).parts[1:]).as_posix()


# --------------------------------------------------------------------------------------------
# The sandbox: a child Python process per worker thread that runs one call at a time and is
# killed (with everything it started) on timeout. Spawned with subprocess, not multiprocessing,
# so it also works inside daemonic workers (Dask) and threads; it imports only what it runs.
# --------------------------------------------------------------------------------------------

_CHILD = "from vidfeat.ingest import _serve; _serve()"
_HEADER = struct.Struct("<Q")
MAX_CALLS_PER_CHILD = 500  # recycle the child now and then: bounds leaks in native decoders


class Sandbox:
    """Runs ``fn(*args, **kwargs)`` in a child process with a hard timeout."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.calls = 0

    def call(self, fn, args=(), kwargs=None, *, timeout: float) -> tuple[bool, object]:
        """``(True, result)``, or ``(False, one-line reason)`` on error, timeout or crash."""
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
        return status == "ok", value

    def _start(self) -> None:
        self.close()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        # own session: the kill reaches any ffmpeg it started, and Ctrl-C goes to the parent only
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, start_new_session=True)
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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        with _SANDBOXES_LOCK:
            _SANDBOXES.discard(self)
        return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


_SANDBOXES: set[Sandbox] = set()
_SANDBOXES_LOCK = threading.Lock()
_LOCAL = threading.local()


def _sandbox() -> Sandbox:
    """This thread's sandbox (one child per worker thread, reused across videos)."""
    if getattr(_LOCAL, "sandbox", None) is None:
        _LOCAL.sandbox = Sandbox()
    return _LOCAL.sandbox


@atexit.register
def close_sandboxes() -> None:
    """Kill every sandbox child this process started."""
    with _SANDBOXES_LOCK:
        boxes = list(_SANDBOXES)
    for box in boxes:
        box.close()


def _serve() -> None:
    """The child's loop: read a pickled call from stdin, write the pickled outcome back."""
    channel = os.dup(1)
    os.dup2(2, 1)  # library prints go to stderr, never into the result channel
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
            out = pickle.dumps(("error", _one_line(exc)))
        _write_all(channel, _HEADER.pack(len(out)) + out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _watch_parent(parent: int) -> None:
    # an orphaned child (its worker was killed) must not keep decoding
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return text if type(exc).__name__ == "VideoError" else f"{type(exc).__name__}: {text}"


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
    """Run ``task`` in this thread's sandbox; never raises. Returns the journal entry."""
    start = time.monotonic()
    if task.phase == "probe":
        ok, value = _sandbox().call(task.work, (task.path,), {"check_decode": True},
                                    timeout=task.timeout)
        extra = {"probe": asdict(value)} if ok else {}
    else:
        ok, value = _decode_and_publish(task)
        extra = {"frames": value} if ok else {}
    return {"phase": task.phase, "video_id": task.video_id, "key": task.key,
            "status": "ok" if ok else "failed", "error": "" if ok else str(value),
            "elapsed_s": round(time.monotonic() - start, 4), **extra}


def _decode_and_publish(task: VideoTask) -> tuple[bool, object]:
    """Decode into ``OUTDIR/.partial/<random>``, then rename to ``frames/<video_id>``."""
    partial_root = Path(task.outdir, PARTIAL)
    partial_root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=partial_root, prefix="decode-"))
    try:
        ok, value = _sandbox().call(
            task.work, (task.path, ProbeResult(**task.probe), task.spec, str(partial)),
            {"n": task.n, "threads": task.threads}, timeout=task.timeout)
        if ok and not value:
            return False, "no frames decoded"
        if ok:
            _publish(partial, frames_dir(task.outdir, task.video_id))
            value = [[r.frame_index, r.timestamp_s, r.filename] for r in value]
        return ok, value
    finally:
        shutil.rmtree(partial, ignore_errors=True)


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
            self._file.close()
            self._file = None


@contextlib.contextmanager
def _outdir_lock(outdir: Path):
    """Refuse a second ingest writing into the same OUTDIR at the same time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, no guard
        yield
        return
    with open(outdir / ".ingest.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another vidfeat ingest is writing into {outdir}") from None
        yield


# --------------------------------------------------------------------------------------------
# The stage: scan -> probe (all) -> split -> balance -> decode -> manifests.
# --------------------------------------------------------------------------------------------

BACKENDS = {
    "threading": "threads in this process, each driving its own sandbox child (default)",
    "loky": "joblib's process pool; each worker drives its own sandbox child",
    "multiprocessing": "multiprocessing pool; each worker drives its own sandbox child",
    "dask": "a Dask cluster: scheduler=ADDRESS or scheduler file, else a local cluster of "
            "`jobs` worker processes (vidfeat.scale)",
}


def decode_threads(jobs: int) -> int:
    """Decoder threads per worker: $VIDFEAT_DECODE_THREADS, else this machine's cores / jobs
    (so ``--jobs 1`` still decodes each video with every core)."""
    return int(os.environ.get("VIDFEAT_DECODE_THREADS") or max(1, (os.cpu_count() or 1) // jobs))


@dataclass
class IngestResult:
    """What ``ingest`` did; ``exit_code`` is the CLI's."""

    outdir: Path
    manifest: Manifest
    n_ok: int
    n_failed: int
    n_reused: int                 # videos whose work an earlier run into OUTDIR had done
    n_frames: int
    elapsed_s: float
    failures: dict[str, int] = field(default_factory=dict)  # reason -> videos
    strict: bool = False

    @property
    def exit_code(self) -> int:
        """0 when at least one video is ok (and, with ``strict``, none failed); else 1."""
        return 1 if self.n_ok == 0 or (self.strict and self.n_failed) else 0

    def summary(self) -> str:
        """One paragraph: counts, failures by reason, frames, throughput, outputs."""
        info = self.manifest.info
        failed = "; ".join(f"{n} {reason}" for reason, n in self.failures.items())
        splits = ", ".join(f"{s} {n}" for s, n in info["counts"]["videos_per_split"].items())
        fps = info["throughput"]["frames_per_s"]
        return (f"Ingested {self.n_ok} of {self.n_ok + self.n_failed} videos "
                f"({len(self.manifest.class_names)} classes; splits: {splits or 'none'}), "
                f"{self.n_failed} failed{f' ({failed})' if failed else ''}, "
                f"{self.n_reused} reused from an earlier run. Stored {self.n_frames} frames "
                f"in {self.elapsed_s:.1f} s ({fps:.1f} frames/s written this run). "
                f"Outputs: {self.outdir}/ (videos/frames manifests, ingest.json, {FRAMES}/).")


def ingest(src, outdir, *, labels=None, frames_per_video: int = 16, fps: float | None = None,
           keyframes: bool = False, size: int = 256, jpeg_quality: int = 90,
           split=(0.8, 0.1, 0.1), seed: int = 0, balance: str = "none",
           max_frames_per_video: int | None = None, max_per_class: int | None = None,
           fmt: str = "parquet", jobs: int = 1, timeout: float = 600.0, strict: bool = False,
           retry_failed: bool = False, backend: str = "threading", scheduler=None,
           progress: bool = True) -> IngestResult:
    """Probe, split, balance and store frames of the videos in ``src`` into ``outdir``.

    ``src`` is a folder of class folders, or use ``labels`` (CSV/Parquet ``path,label[,split]``).
    Sampling: ``frames_per_video`` uniform (default), ``fps`` frames per second, or
    ``keyframes``; frames resized to short side ``size``. ``split`` is train,val,test fractions
    (a labels file's split column wins). ``balance`` (train split only): none | undersample |
    oversample | frames, with ``max_frames_per_video`` (frames mode; default 4x
    ``frames_per_video``) and ``max_per_class``. Each video's probe and decode run in a child
    process killed after ``timeout`` seconds; ``jobs`` videos at a time on joblib's ``backend``
    (threading | loky | multiprocessing), or ``backend='dask'``: on the Dask cluster at
    ``scheduler`` (``tcp://HOST:PORT``, a scheduler file or a ``distributed.Client``; OUTDIR on
    a filesystem the workers share), or without one on a local cluster of ``jobs`` processes.
    Rerunning into ``outdir`` skips done videos (``retry_failed`` retries failed ones). Writes
    ``videos``/``frames`` manifests (``fmt`` parquet or csv), ``ingest.json`` and
    ``frames/<video_id>/*.jpg``. Bad videos become failed rows; raises only for bad options,
    a missing source, or a source with no videos.
    """
    arguments = dict(locals())
    started = time.monotonic()
    if scheduler is not None:
        from vidfeat.scale import describe

        arguments["scheduler"] = describe(scheduler)
    from vidfeat.balance import MODES as BALANCE_MODES
    from vidfeat.manifest import FORMATS, write_manifest
    from vidfeat.split import parse_ratios

    spec = sampling_spec(frames_per_video=frames_per_video, fps=fps, keyframes=keyframes,
                         size=size, jpeg_quality=jpeg_quality)
    check_choice("fmt", fmt, FORMATS)
    check_choice("balance", balance, BALANCE_MODES)
    check_choice("backend", backend, BACKENDS)
    check_positive("jobs", jobs)
    check_positive("timeout", timeout)
    if scheduler is not None and backend != "dask":
        raise ValueError(f"scheduler= needs backend='dask' (backend is {backend!r})")
    parse_ratios(split)
    if balance == "frames" and spec.mode != "uniform":
        raise ValueError("balance='frames' needs uniform sampling (frames_per_video), "
                         "not fps or keyframes")
    videos = scan_source(src, labels=labels)
    out = check_local_path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out, spec, timeout=timeout, jobs=jobs, backend=backend, progress=progress,
               retry_failed=retry_failed)
    with _outdir_lock(out):
        shutil.rmtree(out / PARTIAL, ignore_errors=True)  # leftovers of a killed run
        try:
            with _runner(backend, scheduler, jobs, out) as run.runner:
                videos, frames = run.execute(videos, split=split, seed=seed, balance=balance,
                                             max_frames_per_video=max_frames_per_video,
                                             max_per_class=max_per_class)
        finally:
            run.journal.close()
            close_sandboxes()
        # a worker killed mid-decode leaves its partial folder behind; nothing else writes now
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        info = run.info(videos, frames, arguments, time.monotonic() - started)
        manifest = write_manifest(out, videos, frames, info, fmt=fmt)
    result = run.result(manifest, strict=strict)
    if progress:
        print(result.summary(), file=sys.stderr)
    return result


def _runner(backend: str, scheduler, jobs: int, outdir: Path):
    """The Dask runner for ``backend='dask'`` (a context manager), else a null context."""
    if backend != "dask":
        return contextlib.nullcontext()
    from vidfeat.scale import DaskRunner

    return DaskRunner(scheduler, workers=jobs, outdir=outdir)


def sampling_spec(*, frames_per_video: int = 16, fps: float | None = None,
                  keyframes: bool = False, size: int = 256, jpeg_quality: int = 90) -> SamplingSpec:
    """The ``SamplingSpec`` for ingest's options (``fps`` and ``keyframes`` exclude each other)."""
    if fps is not None and keyframes:
        raise ValueError("give fps or keyframes, not both")
    mode = "keyframes" if keyframes else "fps" if fps is not None else "uniform"
    return SamplingSpec(mode=mode, frames_per_video=frames_per_video, fps=fps, size=size,
                        jpeg_quality=jpeg_quality)


class _Run:
    """One ingest run into ``outdir``: runs the phases, journals them, assembles the tables."""

    def __init__(self, outdir: Path, spec: SamplingSpec, *, timeout: float, jobs: int,
                 backend: str, progress: bool, retry_failed: bool):
        self.outdir, self.spec, self.timeout = outdir, spec, float(timeout)
        self.jobs, self.backend, self.progress = jobs, backend, progress
        self.retry_failed = retry_failed
        self.journal = Journal(outdir)
        self.done = self.journal.load()
        self.entries: dict[tuple[str, str], dict] = {}
        self.reused: set[str] = set()   # videos an earlier run had done
        self.worked: set[str] = set()   # videos this run probed or decoded
        self.frames_written = 0
        self.runner = None  # the DaskRunner while backend='dask' runs
        # decoder threads per worker; on Dask each worker sizes them for its own machine
        self.threads = None if backend == "dask" else decode_threads(jobs)

    def execute(self, videos, *, split, seed, balance, max_frames_per_video, max_per_class):
        """Probe every usable video, split, balance, decode; return (videos, frames) tables."""
        from vidfeat.balance import balance as balance_videos
        from vidfeat.split import assign_splits

        videos = videos.set_index(videos["video_id"].rename(None))
        self._phase("probe", [self._probe_task(r) for r in videos.itertuples() if r.status == "ok"])
        videos = _with_outcomes(videos, self.entries, "probe")
        videos = assign_splits(videos, split, seed=seed)
        if balance == "frames":
            videos["capacity"] = [self._capacity(r) for r in videos.itertuples()]
        videos = balance_videos(videos, balance, seed=seed, frames_per_video=self._n(),
                                max_frames_per_video=max_frames_per_video,
                                max_per_class=max_per_class)
        todo = videos[(videos["status"] == "ok") & (videos["repeat"] > 0)]
        self._phase("decode", [self._decode_task(r) for r in todo.itertuples()])
        videos = _with_outcomes(videos, self.entries, "decode")
        return _finish_videos(videos, self.entries), _frames_table(videos, self.entries)

    def _n(self) -> int | None:
        return self.spec.frames_per_video if self.spec.mode == "uniform" else None

    def _capacity(self, row) -> int:
        entry = self.entries.get(("probe", row.video_id))
        if row.status != "ok" or entry is None:
            return 0
        return max_distinct_frames(ProbeResult(**entry["probe"]), self.spec)

    def _probe_task(self, row) -> VideoTask:
        key = f"{row.size_bytes}:{row.mtime_ns}"
        return VideoTask("probe", row.video_id, row.path, str(self.outdir), self.timeout, key,
                         probe_video)

    def _decode_task(self, row) -> VideoTask:
        probe = self.entries["probe", row.video_id]
        n = int(row.n_planned) if self.spec.mode == "uniform" else None
        key = json.dumps([probe["key"], asdict(self.spec), n])
        return VideoTask("decode", row.video_id, row.path, str(self.outdir), self.timeout, key,
                         decode_frames, probe=probe["probe"], spec=self.spec, n=n,
                         threads=self.threads)

    def _reusable(self, task: VideoTask) -> dict | None:
        """The journal entry of an earlier run that did exactly this task, if any."""
        entry = self.done.get((task.phase, task.video_id))
        if entry is None or entry.get("key") != task.key:
            return None
        if entry["status"] != "ok":
            return None if self.retry_failed else entry
        if task.phase == "decode" and not frames_dir(self.outdir, task.video_id).is_dir():
            return None  # its frames were deleted since
        return entry

    def _phase(self, phase: str, tasks: list[VideoTask]) -> None:
        """Run ``tasks`` (reusing finished ones) in parallel, journaling each outcome."""
        from joblib import Parallel, delayed
        from tqdm import tqdm

        todo = []
        for task in tasks:
            entry = self._reusable(task)
            if entry is None:
                todo.append(task)
            else:
                self.entries[phase, task.video_id] = entry
                self.reused.add(task.video_id)
        if not todo:
            return
        self.worked.update(t.video_id for t in todo)
        if self.runner is not None:
            results = self.runner.map(todo)
        else:
            parallel = Parallel(n_jobs=min(self.jobs, len(todo)), backend=self.backend,
                                return_as="generator_unordered")
            results = parallel(delayed(run_video_task)(t) for t in todo)
        with tqdm(total=len(todo), desc=phase, unit="video", disable=not self.progress) as bar:
            for entry in results:
                self.journal.append(entry)
                self.entries[phase, entry["video_id"]] = entry
                self.frames_written += len(entry.get("frames", ()))
                bar.update()

    def info(self, videos, frames, arguments: dict, elapsed: float) -> dict:
        """The ``ingest.json`` content."""
        from vidfeat.manifest import FORMATS

        ok = videos[videos["status"] == "ok"]
        failed = videos[videos["status"] == "failed"]
        times = sorted(((sum(self.entries.get((p, v), {}).get("elapsed_s", 0)
                             for p in ("probe", "decode")), v) for v in ok["video_id"]),
                       reverse=True)
        return {
            "vidfeat_version": _version("vidfeat"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arguments": {k: _jsonable(v) for k, v in arguments.items()},
            "sampling": asdict(self.spec),
            "versions": _versions(),
            "counts": {
                "videos": {"total": len(videos), "ok": len(ok), "failed": len(failed),
                           "dropped": int((ok["repeat"] == 0).sum()), "reused": len(self.reused)},
                "frames": len(frames),
                "videos_per_split": _counts(ok[ok["repeat"] > 0], ["split"]),
                "videos_per_class": _counts(ok[ok["repeat"] > 0], ["label", "split"]),
                "frames_per_class": _counts(frames, ["label", "split"]),
                "weighted_frames_per_class": _counts(frames, ["label", "split"], "repeat"),
            },
            "failures": failure_counts(failed["error"]),
            "elapsed_s": round(elapsed, 3),
            "throughput": {"videos_per_s": round(len(self.worked) / max(elapsed, 1e-9), 3),
                           "frames_per_s": round(self.frames_written / max(elapsed, 1e-9), 3)},
            "slowest_videos": [{"video_id": v, "seconds": round(t, 3)} for t, v in times[:5]],
            "outputs": {"videos": f"videos{FORMATS[arguments['fmt']]}",
                        "frames": f"frames{FORMATS[arguments['fmt']]}",
                        "frames_dir": FRAMES, "journal": JOURNAL},
        }

    def result(self, manifest: Manifest, *, strict: bool) -> IngestResult:
        videos = manifest.videos
        failed = videos[videos["status"] == "failed"]
        return IngestResult(self.outdir, manifest, int((videos["status"] == "ok").sum()),
                            len(failed), len(self.reused), len(manifest.frames),
                            manifest.info["elapsed_s"], failure_counts(failed["error"]),
                            strict=strict)


def _with_outcomes(videos, entries: dict, phase: str):
    """``videos`` (indexed by video_id) with ``phase`` failures marked and probe fields added."""
    import pandas as pd

    out = videos.copy()
    found = {v: entries[phase, v] for v in out.index if (phase, v) in entries}
    failed = [v for v, e in found.items() if e["status"] != "ok"]
    out.loc[failed, "status"] = "failed"
    out.loc[failed, "error"] = [found[v]["error"] for v in failed]
    out.loc[failed, "split"] = ""
    if phase == "probe":
        probes = {v: ProbeResult(**e["probe"]).row() for v, e in found.items() if e["status"] == "ok"}
        columns = [f.name for f in fields(ProbeResult) if f.name != "start_s"]
        out = out.join(pd.DataFrame.from_dict(probes, orient="index", columns=columns))
    return out


def _finish_videos(videos, entries: dict):
    """The videos manifest: contract columns first, failed rows with no split and no frames."""
    from vidfeat.manifest import VIDEO_COLUMNS, VIDEO_OPTIONAL

    out = videos.reset_index(drop=True)
    ok = out["status"] == "ok"
    out["n_frames"] = [len(entries.get(("decode", v), {}).get("frames", ())) for v in out["video_id"]]
    out.loc[~ok, ["repeat", "n_frames"]] = 0
    out.loc[~ok, "split"] = ""
    columns = [c for c in (*VIDEO_COLUMNS, *VIDEO_OPTIONAL) if c in out.columns]
    columns += [c for c in ("size_bytes", "mtime_ns") if c in out.columns]
    return out[columns].sort_values("video_id", kind="stable").reset_index(drop=True)


def _frames_table(videos, entries: dict):
    """The frames manifest: one row per stored JPEG of the ok videos."""
    import pandas as pd

    from vidfeat.manifest import FRAME_COLUMNS

    cols: dict[str, list] = {c: [] for c in FRAME_COLUMNS}
    kept = videos[(videos["status"] == "ok") & (videos["repeat"] > 0)].sort_values("video_id")
    for row in kept.itertuples():
        for index, ts, name in entries["decode", row.video_id]["frames"]:
            cols["frame_id"].append(f"{row.video_id}#{index}")
            cols["frame_index"].append(index)
            cols["timestamp_s"].append(ts)
            cols["path"].append(f"{FRAMES}/{row.video_id}/{name}")
            for c in ("video_id", "label", "split", "repeat"):
                cols[c].append(getattr(row, c))
    return pd.DataFrame(cols).astype(FRAME_COLUMNS)


def failure_reason(error: str) -> str:
    """The kind of a failure: its message up to the first ': ' (drops paths and details)."""
    return error.split(": ")[0].strip() or "unknown"


def failure_counts(errors) -> dict[str, int]:
    """Failed videos per reason, most frequent first."""
    counts: dict[str, int] = {}
    for error in errors:
        reason = failure_reason(str(error))
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _counts(df, by: list[str], weight: str | None = None) -> dict:
    """Nested ``{a: {b: n}}`` counts (or sums of ``weight``) of ``df`` grouped by ``by``."""
    out: dict = {}
    if df.empty:
        return out
    sizes = df.groupby(by)[weight].sum() if weight else df.groupby(by).size()
    for keys, n in sizes.items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(str(k), {})
        node[str(keys[-1])] = int(n)
    return out


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _versions() -> dict:
    import platform

    import av

    libs = {k: ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            for k, v in getattr(av, "library_versions", {}).items()}
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{d: _version(d) for d in ("av", "numpy", "pandas", "pyarrow", "pillow", "joblib")},
            "ffmpeg_libs": libs}


def _jsonable(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    return value
