"""Export a feature file as one ``.npy`` + ``.json`` pair per video (``vidfeat export``).

For users who want one file per video rather than one HDF5: ``DIR/<video_id>.npy`` holds the
video's frame features (rows x D, in time order, the file's stored dtype, so every value is the
one the feature file holds), ``DIR/<video_id>.json`` the frame ids, frame indices and timestamps
of those rows (a clip backbone's file: one row per clip, in time order, and the JSON holds each
clip's ``clip_id``, ``start_s`` and ``end_s``, from the feature file itself). ``video_id`` is a
relative POSIX path (``class/clip.mp4``): its folders become
folders under DIR; an id that would leave DIR (absolute, ``..``, a symlinked folder pointing
out) is refused for that video, never written. Timestamps come from the ingest manifest the
feature file records (``ingest_dir``); when it is gone the JSON says timestamps are unavailable.
Every file is written atomically (``vidfeat.files``); a rerun skips files whose bytes would not
change, so an interrupted export resumes and a repeated one writes nothing.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from vidfeat.files import (
    atomic_write,
    check_output,
    environment_errors,
    is_environmental,
    write_exact,
)
from vidfeat.options import checked

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What ``export`` did; ``exit_code`` is the CLI's (1 when a video could not be exported)."""

    outdir: Path
    n_videos: int
    n_written: int                # files written this run (.npy and .json)
    n_unchanged: int              # files already there with the same bytes
    n_rows: int
    dtype: str
    timestamps: bool              # whether the ingest manifest gave the frames' timestamps
    elapsed_s: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # video_id -> one-line reason

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def summary(self) -> str:
        """One paragraph: videos, files written and unchanged, failures, where."""
        failed = ""
        if self.failures:
            vid, reason = next(iter(self.failures.items()))
            failed = f" {len(self.failures)} video(s) not exported (e.g. {vid!r}: {reason})."
        when = ("with timestamps" if self.timestamps
                else "timestamps unavailable (ingest folder gone)")
        return (f"Exported {self.n_videos - len(self.failures)} of {self.n_videos} videos "
                f"({self.n_rows} rows, {self.dtype}, {when}) to {self.outdir}/: "
                f"{self.n_written} files written, {self.n_unchanged} unchanged, in "
                f"{self.elapsed_s:.1f} s.{failed}")


@checked
def export(features, outdir, *, progress: bool = True) -> ExportResult:
    """Write ``outdir/<video_id>.npy`` and ``.json`` for every video of ``features``.

    ``features``: an extract HDF5 file (labelled or unlabelled). ``outdir``: the export folder
    (created; files of other videos in it are left alone). ``progress``: a tqdm bar and the
    closing summary on stderr. Raises for a missing or bad feature file; a video whose id is
    unsafe as a path, or whose files cannot be written for a reason that is not the
    environment's, is a failure in the result, not an exception.
    """
    import sys

    from tqdm import tqdm

    from vidfeat.extraction.cache import FeatureStore

    started = time.monotonic()
    out = check_output(outdir, kind="folder")
    with FeatureStore(features) as store:
        plan = _Plan(store)
        with environment_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        result = ExportResult(out, len(plan.videos), 0, 0, len(store),
                              str(store.feature_rows(0, 0).dtype), plan.timestamps is not None)
        for vid, rows in tqdm(plan.videos.items(), desc="export", unit="video",
                              disable=not progress):
            _export_video(store, plan, out, vid, rows, result)
    result.elapsed_s = time.monotonic() - started
    if progress:
        print(result.summary(), file=sys.stderr)
    return result


class _Plan:
    """Each video's rows in time order, and the frames' timestamps (None: unavailable)."""

    def __init__(self, store):
        import pandas as pd

        video_id = store.column("video_id").astype(str)
        self.frame_id = store.column("frame_id").astype(str)
        self.ingest_dir = str(store.attrs.get("ingest_dir", ""))
        self.clips = _clip_columns(store)
        if self.clips is not None:  # a clip file holds its own times: no manifest needed
            self.index, self.timestamps = self.clips["clip_id"], self.clips["start_s"]
        else:
            self.index = np.array([_frame_index(f) for f in self.frame_id], dtype=np.int64)
            self.timestamps = _timestamps(self.ingest_dir, self.frame_id)
        ts = self.timestamps if self.timestamps is not None else np.zeros(len(video_id))
        codes, uniques = pd.factorize(video_id, sort=False)
        # stable: by video (first-frame order), then timestamp, then frame index
        order = np.lexsort((self.index, np.nan_to_num(ts, nan=np.inf), codes))
        bounds = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0, True])
        self.videos = {str(uniques[codes[order[a]]]): order[a:b]
                       for a, b in zip(bounds[:-1], bounds[1:]) if b > a}


def _frame_index(frame_id: str) -> int:
    """The frame's index in its video (``frame_id`` is ``<video_id>#<index>``, a clip ingest's
    row ``<video_id>#<index>@<clip_id>.<clip_pos>``; -1 if not)."""
    tail = frame_id.rpartition("#")[2].partition("@")[0]
    return int(tail) if tail.isdigit() else -1


def _clip_columns(store) -> dict | None:
    """A clip file's ``clip_id``, ``start_s``, ``end_s`` per row; None for a frame file."""
    clip_id = store.optional_column("clip_id")
    if clip_id is None:
        return None
    return {"clip_id": clip_id.astype(np.int64), "start_s": store.column("start_s"),
            "end_s": store.column("end_s")}


def _timestamps(ingest_dir: str, frame_id: np.ndarray) -> np.ndarray | None:
    """Each frame's ``timestamp_s`` from the ingest manifest (NaN where a frame is not in it);
    None when the manifest cannot be read (moved, deleted, damaged)."""
    from vidfeat.ingestion.manifest import ManifestError, read_manifest

    if not ingest_dir:
        return None
    try:
        frames = read_manifest(ingest_dir).frames
    except (ManifestError, OSError) as exc:
        log.warning("timestamps unavailable: %s", str(exc).splitlines()[0])
        return None
    by_id = dict(zip(frames["frame_id"].astype(str), frames["timestamp_s"].astype(float)))
    return np.array([by_id.get(f, np.nan) for f in frame_id], dtype=np.float64)


def safe_target(outdir: Path, video_id: str) -> Path:
    """``outdir/<video_id>`` (no suffix yet), or ValueError when the id would leave ``outdir``.

    ``outdir``: the export folder. ``video_id``: a relative POSIX path; absolute ids, empty,
    ``.`` or ``..`` parts, backslashes and NUL are refused, and so is a path whose existing
    folders (a symlink among them) resolve outside ``outdir``.
    """
    rel = PurePosixPath(video_id)
    if (not video_id or rel.is_absolute() or "\\" in video_id or "\x00" in video_id
            or any(p in ("", ".", "..") for p in video_id.split("/"))):
        raise ValueError("video_id is not a safe relative path")
    target = outdir.joinpath(*rel.parts)
    root = outdir.resolve()
    if not target.parent.resolve().is_relative_to(root):
        raise ValueError("video_id's folder resolves outside the export folder")
    return target


def _export_video(store, plan: _Plan, out: Path, vid: str, rows: np.ndarray,
                  result: ExportResult) -> None:
    """Write ``vid``'s two files (skipping unchanged ones); failures go into ``result``."""
    try:
        target = safe_target(out, vid)
        with environment_errors(target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
        safe_target(out, vid)  # again, now that every folder exists and resolves fully
        files = {".npy": _npy_bytes(_rows(store, rows)), ".json": _json_bytes(plan, vid, rows)}
        for suffix, data in files.items():
            written = _write_if_changed(target.with_name(target.name + suffix), data)
            result.n_written += written
            result.n_unchanged += not written
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError) and is_environmental(exc):
            raise  # a full disk is not this video's fault: stop with one line
        result.failures[vid] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _rows(store, rows: np.ndarray) -> np.ndarray:
    """The feature rows ``rows`` (in that order) with one bounded read of their span."""
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return np.ascontiguousarray(store.feature_rows(lo, hi)[rows - lo])


def _npy_bytes(block: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, block, allow_pickle=False)
    return buf.getvalue()


def _json_bytes(plan: _Plan, vid: str, rows: np.ndarray) -> bytes:
    entry = {"video_id": vid, "rows": len(rows), "frame_id": plan.frame_id[rows].tolist(),
             "frame_index": plan.index[rows].tolist(), "ingest_dir": plan.ingest_dir}
    if plan.clips is not None:  # rows are clips: their ids and spans, no frame indices
        del entry["frame_index"]
        entry.update({k: v[rows].tolist() for k, v in plan.clips.items()})
    elif plan.timestamps is None:
        entry["timestamp_s"] = None
        entry["note"] = (f"timestamps unavailable: the ingest folder {plan.ingest_dir} could not "
                         "be read; rows are in frame-index order")
    else:
        entry["timestamp_s"] = [None if np.isnan(t) else float(t) for t in plan.timestamps[rows]]
    return (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly those bytes."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path.name} exists and is not a regular file")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, lambda tmp: write_exact(tmp, data))  # the length that landed is checked
    return True
