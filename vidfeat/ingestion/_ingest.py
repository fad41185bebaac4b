"""Ingest: a folder of labelled videos -> stored JPEG frames + validated manifests.

Stages, each a plain function over rows (one dict per video; no pandas, whose import alone
would double the command's start-up): ``scan.scan_rows`` -> probe every video ->
``split.assign_splits`` -> ``balance.balance`` (train only) -> decode the planned frames ->
the tables as Arrow -> ``manifest.publish_tables``.

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

import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from vidfeat.files import FileLock, check_output
from vidfeat.ingestion.contract import UNLABELLED_SPLIT
from vidfeat.ingestion.decode import decode_frames
from vidfeat.ingestion.probe import ProbeResult, probe_video
from vidfeat.ingestion.sample import SamplingSpec, max_distinct_frames
from vidfeat.ingestion.scan import mark_duplicates, scan_rows
from vidfeat.ingestion.stats import (
    failure_counts,
    jsonable,
    nested_counts,
)
from vidfeat.ingestion.tasks import (
    FRAMES,
    INGEST_LOCK,
    JOURNAL,
    PARTIAL,
    Journal,
    VideoTask,
    cached_library_versions,
    frames_intact,
    in_threads,
    run_video_task,
    warm_workers,
    worker_library_versions,
)
from vidfeat.media import check_local_path
from vidfeat.options import check_choice, check_positive, checked
from vidfeat.sandbox import close_sandboxes
from vidfeat.system import decode_threads

if TYPE_CHECKING:
    from vidfeat.ingestion.manifest import Manifest

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The stage: scan -> probe (all) -> split -> balance -> decode -> manifests.
# --------------------------------------------------------------------------------------------

# in the probe's journal key: probes of an older vidfeat (no source hash, no check of the
# header's duration against the stream) are done again, not reused
PROBE_VERSION = "probe-2"

BACKENDS = {
    "threading": "threads in this process, each borrowing a warm sandbox child (default)",
    "loky": "joblib's process pool; each worker drives its own sandbox child",
    "multiprocessing": "multiprocessing pool; each worker drives its own sandbox child",
    "dask": "a Dask cluster: scheduler=ADDRESS or scheduler file, else a local cluster of "
            "`jobs` worker processes (vidfeat.scale)",
}


@dataclass
class IngestResult:
    """What ``ingest`` did; ``exit_code`` is the CLI's. ``manifest`` is read from ``outdir`` on
    first use (pandas DataFrames), so a command that only wants the summary never imports pandas."""

    outdir: Path
    n_ok: int
    n_failed: int
    n_reused: int                 # videos whose work an earlier run into OUTDIR had done
    n_frames: int
    elapsed_s: float
    failures: dict[str, int] = field(default_factory=dict)  # reason -> videos
    strict: bool = False
    info: dict = field(default_factory=dict)  # the ``ingest.json`` written
    n_classes: int | None = None  # None: an unlabelled ingest
    n_clips: int | None = None    # None: frames, not clips
    _manifest: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def manifest(self) -> Manifest:
        """The published manifests (``read_manifest(outdir)``, read once)."""
        if self._manifest is None:
            from vidfeat.ingestion.manifest import read_manifest

            self._manifest = read_manifest(self.outdir)
        return self._manifest

    @property
    def exit_code(self) -> int:
        """0 when at least one video is ok (and, with ``strict``, none failed); else 1."""
        return 1 if self.n_ok == 0 or (self.strict and self.n_failed) else 0

    def _classes(self) -> str:
        return "unlabelled" if self.n_classes is None else f"{self.n_classes} classes"

    def _clips(self) -> str:
        if self.n_clips is None:
            return ""
        return f" ({self.n_clips} clips of {self.info['sampling']['clip_len']})"

    def summary(self) -> str:
        """One paragraph: counts, failures by reason, frames, throughput, outputs."""
        info = self.info
        failed = "; ".join(f"{n} {reason}" for reason, n in self.failures.items())
        splits = ", ".join(f"{s} {n}" for s, n in info["counts"]["videos_per_split"].items())
        fps = info["throughput"]["frames_per_s"]
        return (f"Ingested {self.n_ok} of {self.n_ok + self.n_failed} videos "
                f"({self._classes()}; splits: {splits or 'none'}), "
                f"{self.n_failed} failed{f' ({failed})' if failed else ''}, "
                f"{self.n_reused} reused from an earlier run. Stored {self.n_frames} frames"
                f"{self._clips()} in {self.elapsed_s:.1f} s ({fps:.1f} frames/s written this run). "
                f"Outputs: {self.outdir}/ (videos/frames manifests, ingest.json, {FRAMES}/).")


# split= when none is given (an unlabelled ingest refuses any other)
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
# options an unlabelled ingest refuses (name -> its default): no classes, one split
UNLABELLED_REFUSES = {"split": DEFAULT_SPLIT, "seed": 0, "balance": "none",
                      "max_frames_per_video": None, "max_per_class": None}


@checked
def ingest(src, outdir, *, labels: str | Path | None = None, unlabelled: bool = False,
           frames_per_video: int = 16,
           fps: float | None = None, keyframes: bool = False, size: int = 256,
           jpeg_quality: int = 90, clips_per_video: int | None = None, clip_len: int = 16,
           clip_fps: float = 15.0, short_clips: str = "pad",
           split: str | tuple[float, float, float] = DEFAULT_SPLIT,
           seed: int = 0, balance: str = "none",
           max_frames_per_video: int | None = None, max_per_class: int | None = None,
           fmt: str = "parquet", jobs: int = 1, timeout: float = 600.0, strict: bool = False,
           retry_failed: bool = False, backend: str = "threading", scheduler=None,
           progress: bool = True) -> IngestResult:
    """Probe, split, balance and store frames of the videos in ``src`` into ``outdir``.

    ``src`` is a folder of class folders, or use ``labels`` (CSV/Parquet ``path,label[,split]``).
    ``unlabelled``: no labels: ``src`` is a folder tree of videos (any depth), a CSV/Parquet with
    a ``path`` column only, or a text file of paths (one per line, relative to its folder; blank
    and ``#`` lines skipped); every video goes to split ``all`` with label "" and
    ``split``/``seed``/``balance``/``max_*`` are refused (``UNLABELLED_REFUSES``).
    Sampling: ``frames_per_video`` uniform (default), ``fps`` frames per second, or
    ``keyframes``; frames resized to short side ``size``. Clips instead (``clips_per_video``
    set): that many clips per video, centred in as many equal segments, each of ``clip_len``
    frames ``1 / clip_fps`` s apart (frames.parquet gains ``clip_id``, ``clip_pos``,
    ``padded``); a video shorter than a clip is padded or fails (``short_clips`` pad | drop);
    ``balance='frames'`` then gives minority classes more clips per video (``max_frames_per_video``
    caps clips x ``clip_len``). ``split`` is train,val,test fractions
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
        from vidfeat.ingestion.cluster import describe

        arguments["scheduler"] = describe(scheduler)
    if backend == "threading":
        warm_workers(1)  # its child starts (PyAV...) while this process scans and plans
    try:
        spec = _checked_spec(arguments)
        videos = scan_rows(src, labels=labels, unlabelled=unlabelled)
        out = check_output(check_local_path(outdir), kind="folder")
        out.mkdir(parents=True, exist_ok=True)
    except BaseException:
        close_sandboxes()  # no run: the warm child goes too
        raise
    if balance == "frames":  # the only mode that reads it
        max_frames_per_video = _clip_cap(spec, max_frames_per_video)
    run = _Run(out, spec, timeout=timeout, jobs=jobs, backend=backend, progress=progress,
               retry_failed=retry_failed)
    with FileLock(out / INGEST_LOCK, what=f"into {out}"):
        shutil.rmtree(out / PARTIAL, ignore_errors=True)  # leftovers of a killed run
        try:
            with _runner(backend, scheduler, jobs, out) as run.runner:
                videos, frames = run.execute(videos, split=None if unlabelled else split,
                                             seed=seed, balance=balance,
                                             max_frames_per_video=max_frames_per_video,
                                             max_per_class=max_per_class)
        finally:
            run.journal.close()
            close_sandboxes()
        # a worker killed mid-decode leaves its partial folder behind; nothing else writes now
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        info = run.info(videos, frames, arguments, time.monotonic() - started)
        info = _publish(out, videos, frames, info, fmt=fmt)
    result = run.result(videos, frames, info, strict=strict)
    if progress:
        print(result.summary(), file=sys.stderr)
    return result


def _checked_spec(a: dict) -> SamplingSpec:
    """The sampling spec of ``ingest``'s arguments ``a``, after checking every option."""
    from vidfeat.ingestion.balance import MODES as BALANCE_MODES
    from vidfeat.ingestion.manifest import FORMATS
    from vidfeat.ingestion.split import parse_ratios

    spec = sampling_spec(frames_per_video=a["frames_per_video"], fps=a["fps"],
                         keyframes=a["keyframes"], size=a["size"], jpeg_quality=a["jpeg_quality"],
                         clips_per_video=a["clips_per_video"], clip_len=a["clip_len"],
                         clip_fps=a["clip_fps"], short_clips=a["short_clips"])
    check_choice("fmt", a["fmt"], FORMATS)
    check_choice("balance", a["balance"], BALANCE_MODES)
    check_choice("backend", a["backend"], BACKENDS)
    check_positive("jobs", a["jobs"])
    check_positive("timeout", a["timeout"])
    if a["backend"] == "dask":
        from vidfeat.system import require_extra

        require_extra("distributed", "dask", needed_for="backend='dask' (--backend dask)")
    if a["scheduler"] is not None and a["backend"] != "dask":
        raise ValueError(f"scheduler= needs backend='dask' (backend is {a['backend']!r})")
    parse_ratios(a["split"])
    if a["unlabelled"]:
        _refuse_for_unlabelled({k: a[k] for k in UNLABELLED_REFUSES})
    if a["balance"] == "frames" and spec.mode != "uniform":
        raise ValueError("balance='frames' needs uniform sampling (frames_per_video), "
                         "not fps or keyframes")
    return spec


def _refuse_for_unlabelled(given: dict) -> None:
    """One OptionError for the first option an unlabelled ingest cannot honour."""
    from vidfeat.options import OptionError

    for name, default in UNLABELLED_REFUSES.items():
        value = given[name]
        if value != default and not (name == "split" and _same_ratios(value, default)):
            raise OptionError(name, value, "left at its default for an unlabelled ingest "
                              "(no classes to split, stratify or balance: every video goes "
                              "to split 'all')")


def _same_ratios(value, default) -> bool:
    from vidfeat.ingestion.split import parse_ratios

    return parse_ratios(value) == tuple(default)


def _runner(backend: str, scheduler, jobs: int, outdir: Path):
    """The Dask runner for ``backend='dask'`` (a context manager), else a null context."""
    if backend != "dask":
        return contextlib.nullcontext()
    from vidfeat.ingestion.cluster import DaskRunner

    return DaskRunner(scheduler, workers=jobs, outdir=outdir)


def sampling_spec(*, frames_per_video: int = 16, fps: float | None = None,
                  keyframes: bool = False, size: int = 256, jpeg_quality: int = 90,
                  clips_per_video: int | None = None, clip_len: int = 16, clip_fps: float = 15.0,
                  short_clips: str = "pad") -> SamplingSpec:
    """The ``SamplingSpec`` for ingest's options (``fps``, ``keyframes`` and
    ``clips_per_video`` exclude each other)."""
    if fps is not None and keyframes:
        raise ValueError("give fps or keyframes, not both")
    mode = "keyframes" if keyframes else "fps" if fps is not None else "uniform"
    return SamplingSpec(mode=mode, frames_per_video=frames_per_video, fps=fps, size=size,
                        jpeg_quality=jpeg_quality, clips_per_video=clips_per_video,
                        clip_len=clip_len, clip_fps=clip_fps, short_clips=short_clips)


def _clip_cap(spec: SamplingSpec, max_frames_per_video: int | None) -> int | None:
    """``max_frames_per_video`` in the unit balancing plans in: clips when sampling clips."""
    if not spec.clips or max_frames_per_video is None:
        return max_frames_per_video
    check_positive("max_frames_per_video", max_frames_per_video)
    if max_frames_per_video < spec.clips_per_video * spec.clip_len:
        raise ValueError(f"max_frames_per_video={max_frames_per_video} is below one video's "
                         f"clips: clips_per_video x clip_len = "
                         f"{spec.clips_per_video * spec.clip_len}")
    return max_frames_per_video // spec.clip_len


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
        self.versions: dict | None = None  # tasks.cached_library_versions, from a warm child
        # decoder threads per worker; on Dask each worker sizes them for its own machine
        self.threads = None if backend == "dask" else decode_threads(jobs)

    def execute(self, videos: list[dict], *, split, seed, balance, max_frames_per_video,
                max_per_class) -> tuple[dict, dict]:
        """Probe every usable video, split, balance, decode; return the videos and frames
        tables as columns (``{name: list}``)."""
        from vidfeat.ingestion.balance import balance as balance_videos
        from vidfeat.ingestion.split import assign_splits, assign_unlabelled

        self._phase("probe", [self._probe_task(r) for r in videos if r["status"] == "ok"])
        _apply_outcomes(videos, self.entries, "probe")
        mark_duplicates(videos)  # byte-identical copies under two names: one video
        # split None: unlabelled, every ok video in split 'all' (balance 'none' then keeps all)
        if split is None:
            assign_unlabelled(videos)
        else:
            assign_splits(videos, split, seed=seed)
        if balance == "frames":
            for row in videos:
                row["capacity"] = self._capacity(row)
        balance_videos(videos, balance, seed=seed, frames_per_video=self._n(),
                       max_frames_per_video=max_frames_per_video, max_per_class=max_per_class)
        todo = [r for r in videos if r["status"] == "ok" and r["repeat"] > 0]
        self._phase("decode", [self._decode_task(r) for r in todo])
        if self.backend == "threading":  # its children have PyAV loaded: ask one (0.07 s here)
            self.versions = worker_library_versions(self.timeout)
        _apply_outcomes(videos, self.entries, "decode")
        frames = _frames_columns(videos, self.entries, clips=self.spec.clips)
        return _videos_columns(videos, self.entries), frames

    def _n(self) -> int | None:
        """Frames (clips, when sampling clips) per video before balancing; None: not planned."""
        if self.spec.clips:
            return self.spec.clips_per_video
        return self.spec.frames_per_video if self.spec.mode == "uniform" else None

    def _capacity(self, row: dict) -> int:
        entry = self.entries.get(("probe", row["video_id"]))
        if row["status"] != "ok" or entry is None:
            return 0
        return max_distinct_frames(ProbeResult(**entry["probe"]), self.spec)

    def _probe_task(self, row: dict) -> VideoTask:
        # the file's identity: a replaced video (same name, new inode/size/mtime) is probed anew
        key = ":".join([PROBE_VERSION, *(str(row.get(c, "")) for c in (
            "size_bytes", "mtime_ns", "device", "inode"))])
        return VideoTask("probe", row["video_id"], row["path"], str(self.outdir), self.timeout,
                         key, probe_video)

    def _decode_task(self, row: dict) -> VideoTask:
        probe = self.entries["probe", row["video_id"]]
        n = int(row["n_planned"]) if self.spec.mode == "uniform" else None
        key = json.dumps([probe["key"], self.spec.record(), n])
        return VideoTask("decode", row["video_id"], row["path"], str(self.outdir), self.timeout,
                         key,
                         decode_frames, probe=probe["probe"], spec=self.spec, n=n,
                         threads=self.threads)

    def _reusable(self, task: VideoTask) -> dict | None:
        """The journal entry of an earlier run that did exactly this task, if any."""
        entry = self.done.get((task.phase, task.video_id))
        if entry is None or entry.get("key") != task.key:
            return None
        if entry["status"] != "ok":
            return None if self.retry_failed else entry
        if task.phase == "decode" and not frames_intact(self.outdir, task.video_id,
                                                        entry.get("frames", ())):
            return None  # a frame was deleted or changed since: re-make the video's frames
        return entry

    def _phase(self, phase: str, tasks: list[VideoTask]) -> None:
        """Run ``tasks`` (reusing finished ones) in parallel, journaling each outcome."""
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
        if phase == "decode":
            # frames are about to change: the manifests on disk must stop describing the folder
            from vidfeat.ingestion.manifest import unpublish

            unpublish(self.outdir)
        self.worked.update(t.video_id for t in todo)
        results = self._results(todo)
        with _bar(total=len(todo), desc=phase, unit="video", disable=not self.progress) as bar:
            for entry in results:
                self.journal.append(entry)
                self.entries[phase, entry["video_id"]] = entry
                self.frames_written += len(entry.get("frames", ()))
                bar.update()

    def _results(self, todo: list[VideoTask]):
        """Journal entries of ``todo`` as they finish: on the Dask cluster, on this process's
        threads (each borrowing a warm sandbox child; no joblib, whose import alone costs
        0.07 s), or on joblib's process pools (loky, multiprocessing)."""
        jobs = min(self.jobs, len(todo))
        if self.runner is not None:
            return self.runner.map(todo)
        if self.backend == "threading":
            warm_workers(jobs)
            return in_threads(run_video_task, todo, jobs=jobs)
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=jobs, backend=self.backend, return_as="generator_unordered")
        return parallel(delayed(run_video_task)(t) for t in todo)

    def info(self, videos: dict, frames: dict, arguments: dict, elapsed: float) -> dict:
        """The ``ingest.json`` content, from the videos and frames columns."""
        from vidfeat.ingestion.manifest import FORMATS

        versions = self.versions or cached_library_versions()
        status, repeat = videos["status"], videos["repeat"]
        ok_ids = [v for v, s in zip(videos["video_id"], status) if s == "ok"]
        kept = _where(videos, [s == "ok" and r > 0 for s, r in zip(status, repeat)])
        times = sorted(((sum(self.entries.get((p, v), {}).get("elapsed_s", 0)
                             for p in ("probe", "decode")), v) for v in ok_ids), reverse=True)
        return {
            "vidfeat_version": versions["vidfeat"],
            "unlabelled": bool(arguments.get("unlabelled")),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arguments": {k: jsonable(v) for k, v in arguments.items()},
            "sampling": self.spec.record(),
            "versions": versions["libraries"],
            "counts": {
                "videos": {"total": len(status), "ok": len(ok_ids),
                           "failed": len(status) - len(ok_ids),
                           "dropped": sum(s == "ok" and r == 0 for s, r in zip(status, repeat)),
                           "reused": len(self.reused)},
                "frames": len(frames["frame_id"]),
                "videos_per_split": nested_counts(kept, ["split"]),
                "videos_per_class": nested_counts(kept, ["label", "split"]),
                "frames_per_class": nested_counts(frames, ["label", "split"]),
                "weighted_frames_per_class": nested_counts(frames, ["label", "split"], "repeat"),
            },
            "failures": failure_counts(_failed_errors(videos)),
            "elapsed_s": round(elapsed, 3),
            "throughput": {"videos_per_s": round(len(self.worked) / max(elapsed, 1e-9), 3),
                           "frames_per_s": round(self.frames_written / max(elapsed, 1e-9), 3)},
            "slowest_videos": [{"video_id": v, "seconds": round(t, 3)} for t, v in times[:5]],
            "outputs": {"videos": f"videos{FORMATS[arguments['fmt']]}",
                        "frames": f"frames{FORMATS[arguments['fmt']]}",
                        "frames_dir": FRAMES, "journal": JOURNAL},
        }

    def result(self, videos: dict, frames: dict, info: dict, *, strict: bool) -> IngestResult:
        """What the run did, from the published tables (as columns) and ``ingest.json``."""
        counts = info["counts"]["videos"]
        ok_labels = {lab for lab, s in zip(videos["label"], videos["status"]) if s == "ok"}
        unlabelled = any(s == UNLABELLED_SPLIT for s in videos["split"])
        return IngestResult(self.outdir, counts["ok"], counts["failed"], len(self.reused),
                            len(frames["frame_id"]), info["elapsed_s"], info["failures"],
                            strict=strict, info=info,
                            n_classes=None if unlabelled else len(ok_labels - {None}),
                            n_clips=len(set(frames["clip_id"])) if self.spec.clips else None)


def _bar(**kwargs):
    """A tqdm progress bar, or (``disable=True``) a no-op one without importing tqdm."""
    if kwargs.get("disable"):
        return contextlib.nullcontext(type("NoBar", (), {"update": lambda self, n=1: None})())
    from tqdm import tqdm

    return tqdm(**kwargs)


def _where(columns: dict, keep: list[bool]) -> dict:
    """The rows of ``columns`` (``{name: list}``) where ``keep`` is true."""
    return {name: [v for v, k in zip(values, keep) if k] for name, values in columns.items()}


def _failed_errors(videos: dict) -> list[str]:
    return [e for e, s in zip(videos["error"], videos["status"]) if s == "failed"]


def _apply_outcomes(videos: list[dict], entries: dict, phase: str) -> None:
    """Mark the rows whose ``phase`` failed; after the probe, add its fields to every row
    (None where there was no ok probe)."""
    probe_fields = [f.name for f in fields(ProbeResult) if f.name != "start_s"]
    for row in videos:
        entry = entries.get((phase, row["video_id"]))
        if entry is not None and entry["status"] != "ok":
            row.update(status="failed", error=entry["error"], split="")
        if phase == "probe":
            ok = entry is not None and entry["status"] == "ok"
            row.update(ProbeResult(**entry["probe"]).row() if ok else dict.fromkeys(probe_fields))


def _videos_columns(videos: list[dict], entries: dict) -> dict:
    """The videos manifest as columns: the contract's columns in its order, rows by
    ``video_id``, failed rows with no split, no repeat and no frames."""
    from vidfeat.ingestion.contract import VIDEO_COLUMNS, VIDEO_OPTIONAL

    for row in videos:
        frames = entries.get(("decode", row["video_id"]), {}).get("frames", ())
        if row["status"] == "ok":
            row["n_frames"] = len(frames)
        else:
            row.update(n_frames=0, repeat=0, split="")
    rows = sorted(videos, key=lambda r: r["video_id"])
    present = set().union(*rows)
    return {c: [r.get(c) for r in rows] for c in (*VIDEO_COLUMNS, *VIDEO_OPTIONAL) if c in present}


def _frames_columns(videos: list[dict], entries: dict, *, clips: bool = False) -> dict:
    """The frames manifest as columns: one row per stored JPEG of the ok videos; with
    ``clips``, one row per clip position (``frame_id`` ``<video_id>#<frame_index>@<clip_id>.<clip_pos>``,
    ``clip_id`` numbered across the dataset in ``video_id`` order)."""
    from vidfeat.ingestion.contract import FRAME_CLIP, FRAME_COLUMNS, FRAME_PROVENANCE

    names = [*FRAME_COLUMNS, *FRAME_PROVENANCE, *(FRAME_CLIP if clips else ())]
    cols: dict[str, list] = {c: [] for c in names}
    kept = sorted((r for r in videos if r["status"] == "ok" and r["repeat"] > 0),
                  key=lambda r: r["video_id"])
    next_clip = 0
    for row in kept:
        first_clip = next_clip
        for index, ts, name, nbytes, digest, *clip in entries["decode", row["video_id"]]["frames"]:
            frame_id = f"{row['video_id']}#{index}"
            if clips:
                clip_id, pos, padded = first_clip + clip[0], clip[1], clip[2]
                frame_id += f"@{clip_id}.{pos}"
                next_clip = max(next_clip, clip_id + 1)
                cols["clip_id"].append(clip_id)
                cols["clip_pos"].append(pos)
                cols["padded"].append(padded)
            cols["frame_id"].append(frame_id)
            cols["frame_index"].append(index)
            cols["timestamp_s"].append(ts)
            cols["path"].append(f"{FRAMES}/{row['video_id']}/{name}")
            cols["file_bytes"].append(nbytes)
            cols["file_hash"].append(digest)
            for c in ("video_id", "label", "split", "repeat"):
                cols[c].append(row[c])
    return cols


def _publish(outdir: Path, videos: dict, frames: dict, info: dict, *, fmt: str) -> dict:
    """Publish the two tables (columns) and ``ingest.json``; return the info as written."""
    from vidfeat.ingestion import contract as c
    from vidfeat.ingestion.manifest import publish_tables
    from vidfeat.ingestion.tables import arrow_table

    video_dtypes = {**c.VIDEO_COLUMNS, **c.VIDEO_OPTIONAL}  # per table: repeat is Int64 here,
    frame_dtypes = {**c.FRAME_COLUMNS, **c.FRAME_PROVENANCE, **c.FRAME_CLIP}  # int64 there
    return publish_tables(outdir, arrow_table(videos, {k: video_dtypes[k] for k in videos}),
                          arrow_table(frames, {k: frame_dtypes[k] for k in frames}), info, fmt=fmt)
