"""Manifests: the tables every stage after ingest reads.

``OUTDIR/videos.parquet``  one row per input video, failed ones included.
``OUTDIR/frames.parquet``  one row per stored frame (JPEG under ``OUTDIR/frames/<video_id>/``).
``OUTDIR/ingest.json``     arguments, versions, counts, failures, timing, and provenance.

``--format csv`` writes ``.csv`` instead of ``.parquet``; readers accept either. The column
contract lives here (and in ``manifests/schema.md``); ``read_manifest`` enforces it.

The three files are published as one unit: the two tables first, ``ingest.json`` last, holding
the hash of each table's bytes (``tables``) and the content ``fingerprint`` of the whole ingest
(sampling, each source's identity, each frame's length and hash). ``read_manifest`` refuses
tables whose bytes differ from what ``ingest.json`` recorded (a run killed between two renames)
and a folder without ``ingest.json`` (an ingest that is rewriting frames removes it first, so a
killed rerun never leaves old manifests describing new frames).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vidfeat.files import (
    StorageError,
    atomic_write,
    environment_errors,
    write_exact,
    write_json,
)

SPLITS = ("train", "val", "test")
# the one split of an unlabelled ingest; its videos' label is "" (scan.UNLABELLED)
UNLABELLED_SPLIT = "all"
MANIFEST_SPLITS = (*SPLITS, UNLABELLED_SPLIT)
STATUSES = ("ok", "failed")
FORMATS = {"parquet": ".parquet", "csv": ".csv"}

# column -> pandas dtype. Required columns first; optional ones may be absent.
VIDEO_COLUMNS: dict[str, str] = {
    "video_id": "string",   # POSIX relative path derived from the source path; unique
    "path": "string",       # absolute path of the source video
    "label": "string",
    "split": "string",      # train | val | test, or all (unlabelled); empty for failed videos
    "status": "string",     # ok | failed
    "error": "string",      # one-line reason when failed, else empty
    "duration_s": "float64",
    "fps": "float64",       # nominal (r_frame_rate)
    "width": "Int64",       # display size, rotation applied
    "height": "Int64",
    "n_frames": "Int64",    # frames stored for this video
    "repeat": "Int64",      # oversampling factor; 0 = dropped by undersampling, 1 = as is
}
VIDEO_OPTIONAL: dict[str, str] = {
    "avg_fps": "float64",
    "vfr": "boolean",
    "frame_count": "Int64",
    "rotation": "Int64",
    "codec": "string",
    "has_audio": "boolean",
    "source_hash": "string",          # vidfeat.files.source_hash of the source file
    "duration_header_s": "float64",   # the header's duration when the stream contradicted it
    "warning": "string",              # e.g. why duration_s is not the header's
    "elapsed_s": "float64",
    "size_bytes": "Int64",   # the source file's identity when it was ingested
    "mtime_ns": "Int64",
    "device": "Int64",
    "inode": "Int64",
}
FRAME_COLUMNS: dict[str, str] = {
    "frame_id": "string",     # f"{video_id}#{frame_index}"; unique
    "video_id": "string",
    "label": "string",
    "split": "string",
    "frame_index": "int64",   # index of the frame in the video's decode order
    "timestamp_s": "float64", # presentation time of that frame
    "path": "string",         # JPEG path relative to OUTDIR
    "repeat": "int64",        # copy of the video's repeat (oversampling weight)
}
# written by every ingest; optional when reading (hand-made manifests, older vidfeat)
FRAME_PROVENANCE: dict[str, str] = {
    "file_bytes": "Int64",    # length of the stored JPEG
    "file_hash": "string",    # vidfeat.files.hash_bytes of its bytes, taken before writing
}
# a clip ingest's frames (ingest.json's sampling has clips_per_video); absent otherwise
FRAME_CLIP: dict[str, str] = {
    "clip_id": "int64",       # unique in the dataset; a clip's rows are consecutive
    "clip_pos": "int64",      # 0 .. clip_len - 1, in order
    "padded": "boolean",      # the row repeats the last frame of a video shorter than a clip
}
INFO = "ingest.json"
# video columns that change with timing, not content: left out of the content fingerprint
_VOLATILE = ("elapsed_s",)


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or inconsistent; the message names the culprit."""


@dataclass
class Manifest:
    root: Path
    videos: pd.DataFrame
    frames: pd.DataFrame
    info: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Sorted labels of the videos that were ingested successfully."""
        ok = self.videos[self.videos["status"] == "ok"]
        return sorted(ok["label"].dropna().unique().tolist())

    @property
    def unlabelled(self) -> bool:
        """Whether this is an unlabelled ingest (split ``all``, label "": ``class_names [""]``)."""
        return bool((self.videos["split"] == UNLABELLED_SPLIT).any())

    @property
    def clips(self) -> bool:
        """Whether the frames are clips (``clip_id``, ``clip_pos``, ``padded`` columns)."""
        return _sampling_clips(self.info) or "clip_id" in self.frames.columns

    @property
    def clip_len(self) -> int | None:
        """Rows per clip (the recorded ``clip_len``, else the first clip's); None: not clips."""
        if not self.clips:
            return None
        recorded = (self.info.get("sampling") or {}).get("clip_len")
        if recorded is not None and _sampling_clips(self.info):
            return int(recorded)
        ids = self.frames["clip_id"]
        return int((ids == ids.iloc[0]).sum()) if len(ids) else None

    def frame_path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def fingerprint(self) -> str:
        """The content fingerprint recorded by ingest (computed for manifests without one)."""
        return self.info.get("fingerprint") or content_fingerprint(self.videos, self.frames,
                                                                   self.info)


def content_fingerprint(videos: pd.DataFrame, frames: pd.DataFrame, info: dict) -> str:
    """sha256 (32 hex) of what the frames were made from and what they are: the sampling
    settings, every video row (source identity, label, split, status) and every frame row
    (ids, paths, lengths, hashes). ``info``: the ``ingest.json`` content (its ``sampling``)."""
    h = hashlib.sha256(json.dumps(info.get("sampling", {}), sort_keys=True).encode())
    for df in (videos.drop(columns=[c for c in _VOLATILE if c in videos.columns]), frames):
        h.update(json.dumps(list(map(str, df.columns))).encode())
        for start in range(0, len(df), 100_000):  # bounded memory for millions of frames
            h.update(df.iloc[start:start + 100_000].to_csv(index=False, header=False).encode())
    return h.hexdigest()[:32]


def manifest_path(outdir: str | os.PathLike, name: str, fmt: str | None = None) -> Path:
    """Path of ``videos``/``frames`` in ``outdir``; with no ``fmt``, whichever exists."""
    outdir = Path(outdir)
    if fmt is not None:
        return outdir / f"{name}{FORMATS[fmt]}"
    for ext in FORMATS.values():
        if (outdir / f"{name}{ext}").exists():
            return outdir / f"{name}{ext}"
    raise ManifestError(_not_ingested(outdir, name))


def _not_ingested(outdir: Path, name: str) -> str:
    """What to say about a folder that has no manifest: which kind it is, what comes first."""
    from itertools import islice

    from vidfeat.media import VIDEO_EXTENSIONS

    entries = list(islice(outdir.rglob("*"), 10_000)) if outdir.is_dir() else []
    if any(p.suffix.lower() in VIDEO_EXTENSIONS for p in entries):
        return (f"{outdir} holds videos, not ingested frames (no {name}.parquet): run "
                f"`vidfeat ingest {outdir} -o INGEST_DIR` first and give INGEST_DIR here")
    if (outdir / "head.pt").exists():
        return f"{outdir} is a model folder (written by `vidfeat train`), not an ingest folder"
    return (f"no {name}.parquet or {name}.csv in {outdir}: not an ingest output; run "
            f"`vidfeat ingest SRC -o {outdir}` first")


def coerce(df: pd.DataFrame, columns: dict[str, str], *, optional: dict[str, str] | None = None):
    """Return ``df`` with the contract's columns (added empty if optional) in their dtypes."""
    out = df.copy()
    for name, dtype in {**columns, **(optional or {})}.items():
        if name not in out.columns:
            if name in columns:
                raise ManifestError(f"missing column {name!r}")
            continue
        try:
            out[name] = out[name].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"column {name!r} cannot be read as {dtype}: {exc}") from None
    return out


def write_table(df: pd.DataFrame, path: Path) -> str:
    """Write ``df`` atomically to ``path`` (format by suffix); return the hash of its bytes."""
    buf = io.BytesIO()
    if path.suffix == ".csv":
        buf.write(df.to_csv(index=False).encode())
    else:
        df.to_parquet(buf, index=False)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: write_exact(tmp, data))
    return hashlib.sha256(data).hexdigest()


def read_table(path: Path) -> pd.DataFrame:
    """Read one manifest table (``.csv`` or ``.parquet`` by suffix) from ``path``.

    ``path``: the table's file. A file that cannot be read or parsed raises ManifestError
    naming it, never the parser's own exception type (callers catch one error type).
    """
    return _read_table(path)[0]


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """The table at ``path`` and the sha256 of the bytes it was parsed from (one read)."""
    import pyarrow as pa

    kind = "CSV" if path.suffix == ".csv" else "Parquet"
    try:
        with environment_errors(path, "reading"):
            data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if path.suffix == ".csv":
            # keep "" as "" (error column), not NaN; keep ids and labels as text ("007" stays "007")
            text = {c: str for c, t in {**VIDEO_COLUMNS, **VIDEO_OPTIONAL, **FRAME_COLUMNS,
                                        **FRAME_PROVENANCE}.items() if t == "string"}
            return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""],
                               dtype=text), digest
        return pd.read_parquet(io.BytesIO(data)), digest
    except StorageError:
        raise  # the disk failed, not the manifest
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        # ArrowInvalid is a ValueError, but a truncated file can also surface as OSError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"{path}: not a readable {kind} file ({reason})") from None


def read_info(path: Path) -> dict:
    """``ingest.json`` at ``path`` as a dict; ``{}`` when it does not exist.

    ``path``: the file. Unreadable or non-object JSON raises ManifestError naming the file.
    """
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def write_manifest(outdir, videos: pd.DataFrame, frames: pd.DataFrame, info: dict | None = None,
                   *, fmt: str = "parquet") -> Manifest:
    """Validate and publish videos, frames and ``ingest.json`` as one unit.

    ``outdir``: the ingest folder. ``videos``/``frames``: the tables. ``info``: the
    ``ingest.json`` content (arguments, counts...); ``fingerprint`` and ``tables`` are added.
    ``fmt``: parquet or csv. The tables are written first and ``ingest.json`` last, so a kill
    in between leaves tables that ``read_manifest`` refuses, never a silent mix.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {', '.join(map(repr, FORMATS))}")
    outdir = Path(outdir)
    with environment_errors(outdir):
        outdir.mkdir(parents=True, exist_ok=True)
    m = validate(Manifest(outdir, videos, frames, dict(info or {})))
    unpublish(outdir)
    tables = {}
    for name, df in (("videos", m.videos), ("frames", m.frames)):
        path = manifest_path(outdir, name, fmt)
        tables[path.name] = write_table(df, path)
        _remove_other_formats(outdir, name, keep=path)
    m.info["fingerprint"] = content_fingerprint(m.videos, m.frames, m.info)
    m.info["tables"] = tables
    write_json(outdir / INFO, m.info)
    return m


def _remove_other_formats(outdir: Path, name: str, *, keep: Path) -> None:
    # a rerun with another --format must not leave the old table for readers to find first
    for ext in FORMATS.values():
        other = outdir / f"{name}{ext}"
        if other != keep:
            with environment_errors(other):
                other.unlink(missing_ok=True)


def unpublish(outdir) -> None:
    """Withdraw the manifests of ``outdir`` before its frames change (removes ``ingest.json``,
    the unit's commit record): until the next ``write_manifest`` readers are told to rerun."""
    with environment_errors(Path(outdir) / INFO):
        (Path(outdir) / INFO).unlink(missing_ok=True)


def read_manifest(outdir: str | os.PathLike, *, check_files: bool = False,
                  verify: bool = False) -> Manifest:
    """Load and validate an ingest OUTDIR as published by one ``write_manifest``.

    ``outdir``: the ingest folder. ``check_files``: also check every frame JPEG exists with its
    recorded length. ``verify``: also re-hash every frame (reads them all). Raises
    ManifestError naming what is wrong and what to do.
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise ManifestError(f"ingest output folder not found: {outdir}")
    videos, videos_hash = _read_table(manifest_path(outdir, "videos"))
    frames, frames_hash = _read_table(manifest_path(outdir, "frames"))
    info = read_info(outdir / INFO)
    m = validate(Manifest(outdir, videos, frames, info))
    _check_unit(outdir, info, {manifest_path(outdir, "videos").name: videos_hash,
                               manifest_path(outdir, "frames").name: frames_hash})
    if check_files or verify:
        problems = frame_problems(m, verify=verify)
        if problems:
            raise ManifestError(f"{len(problems)} frame files missing or changed since ingest, "
                                f"e.g. {problems[0]}; rerun the same ingest command to re-make "
                                "them")
    return m


def _check_unit(outdir: Path, info: dict, found: dict[str, str]) -> None:
    """Refuse tables that are not the ones ``ingest.json`` published (or no ``ingest.json``)."""
    if not (outdir / INFO).exists():
        raise ManifestError(f"{outdir / INFO} is missing: the ingest into {outdir} did not "
                            "finish (interrupted, or still running); rerun the same ingest command")
    recorded = info.get("tables")
    if recorded is None:
        return  # written by an older vidfeat: nothing recorded to check against
    for name, digest in found.items():
        if recorded.get(name) != digest:
            raise ManifestError(f"{outdir / name} is not the table {INFO} recorded (an ingest "
                                "was interrupted while publishing); rerun the same ingest command")


def frame_problems(m: Manifest, *, verify: bool = False, limit: int | None = None) -> list[str]:
    """Stored frames that are missing, of the wrong length, or (``verify``) of the wrong hash.

    ``m``: the manifest. ``verify``: re-hash every file. ``limit``: stop after this many.
    Returns one line per bad frame (empty when all are sound).
    """
    from vidfeat.files import hash_bytes

    problems: list[str] = []
    cols = [c for c in ("path", *FRAME_PROVENANCE) if c in m.frames.columns]
    for row in m.frames[cols].itertuples(index=False):
        problem = _frame_problem(m.root, row, verify, hash_bytes)
        if problem:
            problems.append(problem)
            if limit is not None and len(problems) >= limit:
                break
    return problems


def _frame_problem(root: Path, row, verify: bool, hash_bytes) -> str:
    path = root / row.path
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return f"frame file missing: {row.path}"
    nbytes = getattr(row, "file_bytes", None)
    if nbytes is not None and not pd.isna(nbytes) and size != nbytes:
        return f"frame file {row.path} has {size} bytes, ingest wrote {nbytes}"
    digest = getattr(row, "file_hash", None)
    if verify and isinstance(digest, str) and digest:
        with environment_errors(path, "reading"):
            if hash_bytes(path.read_bytes()) != digest:
                return f"frame file {row.path} differs from what ingest wrote (hash mismatch)"
    return ""


def validate(m: Manifest) -> Manifest:
    """Check columns, dtypes, allowed values and cross-table consistency; coerce dtypes."""
    try:
        videos = coerce(m.videos, VIDEO_COLUMNS, optional=VIDEO_OPTIONAL)
    except ManifestError as exc:
        raise ManifestError(f"videos manifest: {exc}") from None
    try:
        clips = _sampling_clips(m.info) or bool(set(FRAME_CLIP) & set(m.frames.columns))
        frames = coerce(m.frames, {**FRAME_COLUMNS, **(FRAME_CLIP if clips else {})},
                        optional=FRAME_PROVENANCE)
    except ManifestError as exc:
        raise ManifestError(f"frames manifest: {exc}" + (" (a clip manifest has clip_id, "
                            "clip_pos and padded)" if clips else "")) from None
    videos, frames = _unlabelled_labels(videos), _unlabelled_labels(frames)
    _check_videos(videos)
    _check_frames(frames, videos)
    if clips:
        _check_clips(frames, m.info)
    return Manifest(m.root, videos.reset_index(drop=True), frames.reset_index(drop=True), m.info)


def _check_values(df: pd.DataFrame, column: str, allowed, table: str, mask=None) -> None:
    values = df.loc[mask, column] if mask is not None else df[column]
    bad = sorted(set(values.dropna()) - set(allowed))
    if bad:
        raise ManifestError(f"{table} manifest: column {column!r} has value {bad[0]!r}; "
                            f"allowed: {', '.join(allowed)}")


def _check_unique(df: pd.DataFrame, column: str, table: str) -> None:
    dup = df[column][df[column].duplicated()]
    if len(dup):
        raise ManifestError(f"{table} manifest: column {column!r} has duplicate value {dup.iloc[0]!r}")


def _unlabelled_labels(df: pd.DataFrame) -> pd.DataFrame:
    """An unlabelled table's labels as "" (a CSV reads its empty labels back as missing)."""
    if not (df["split"] == UNLABELLED_SPLIT).any():
        return df
    out = df.copy()
    out["label"] = out["label"].fillna("")
    return out


def _check_unlabelled(videos: pd.DataFrame, ok: pd.Series) -> None:
    """Split ``all`` is all or nothing, and goes with the label "" and only with it."""
    unlabelled = videos["split"] == UNLABELLED_SPLIT
    if not unlabelled[ok].any():
        return
    mixed = ok & (~unlabelled | (videos["label"] != ""))
    if mixed.any():
        vid = videos.loc[mixed, "video_id"].iloc[0]
        raise ManifestError(f"videos manifest: video {vid!r} has a label or a split other than "
                            f"{UNLABELLED_SPLIT!r} in an unlabelled manifest (split "
                            f"{UNLABELLED_SPLIT!r}, label '' for every ok video)")


def _check_videos(videos: pd.DataFrame) -> None:
    _check_unique(videos, "video_id", "videos")
    _check_values(videos, "status", STATUSES, "videos")
    ok = videos["status"] == "ok"
    _check_values(videos, "split", MANIFEST_SPLITS, "videos", mask=ok)
    _check_unlabelled(videos, ok)
    labels = videos.loc[ok, "label"]  # "" is the label of unlabelled ingests only
    unlabelled = (videos.loc[ok, "split"] == UNLABELLED_SPLIT).any()
    if labels.isna().any() or (not unlabelled and (labels == "").any()):
        raise ManifestError("videos manifest: column 'label' is empty for an ok video")
    no_reason = (~ok) & (videos["error"].isna() | (videos["error"] == ""))
    if no_reason.any():
        vid = videos.loc[no_reason, "video_id"].iloc[0]
        raise ManifestError(f"videos manifest: column 'error' is empty for failed video {vid!r}")


def _check_frames(frames: pd.DataFrame, videos: pd.DataFrame) -> None:
    _check_unique(frames, "frame_id", "frames")
    _check_values(frames, "split", MANIFEST_SPLITS, "frames")
    ok_ids = set(videos.loc[videos["status"] == "ok", "video_id"])
    unknown = sorted(set(frames["video_id"]) - ok_ids)
    if unknown:
        raise ManifestError(f"frames manifest: column 'video_id' has value {unknown[0]!r} "
                            "that is not an ok video in the videos manifest")
    if (frames["repeat"] < 1).any():
        raise ManifestError("frames manifest: column 'repeat' must be >= 1")
    # a list, not Series.map: on an empty string column map keeps the string dtype
    unsafe = [p for p in frames["path"] if p.startswith("/") or ".." in Path(p).parts]
    if unsafe:
        raise ManifestError(f"frames manifest: column 'path' has value {unsafe[0]!r}; "
                            "paths must be relative to OUTDIR without '..'")
    per_video = videos.set_index("video_id")[["label", "split"]]
    joined = frames.join(per_video.add_suffix("_video"), on="video_id")
    for col in ("label", "split"):
        bad = joined[joined[col] != joined[f"{col}_video"]]
        if len(bad):
            raise ManifestError(f"frames manifest: column {col!r} of frame {bad['frame_id'].iloc[0]!r} "
                                "differs from its video's")


def _sampling_clips(info: dict) -> bool:
    return (info.get("sampling") or {}).get("clips_per_video") is not None


def _check_clips(frames: pd.DataFrame, info: dict) -> None:
    """Each clip's rows consecutive, in one video, ``clip_pos`` 0..T-1 in order, T rows each."""
    import numpy as np

    if not len(frames):
        return
    ids, pos = frames["clip_id"].to_numpy(), frames["clip_pos"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    seen = pd.Series(ids[starts])
    if seen.duplicated().any():
        raise ManifestError(f"frames manifest: column 'clip_id': the rows of clip "
                            f"{seen[seen.duplicated()].iloc[0]} are not consecutive")
    lengths = np.diff(np.r_[starts, len(ids)])
    expected = np.arange(len(ids)) - np.repeat(starts, lengths)
    bad = np.flatnonzero(pos != expected)
    if bad.size:
        i = bad[0]
        raise ManifestError(f"frames manifest: column 'clip_pos' of frame "
                            f"{frames['frame_id'].iloc[i]!r} is {pos[i]}, expected {expected[i]} "
                            "(a clip's rows are its positions 0..clip_len-1 in order)")
    recorded = (info.get("sampling") or {}).get("clip_len") if _sampling_clips(info) else None
    want = int(recorded) if recorded is not None else int(lengths[0])
    short = np.flatnonzero(lengths != want)
    if short.size:
        raise ManifestError(f"frames manifest: column 'clip_pos': clip {ids[starts[short[0]]]} "
                            f"has {lengths[short[0]]} rows, expected clip_len={want}")
    spans = frames.groupby("clip_id", sort=False)["video_id"].nunique()
    if (spans > 1).any():
        raise ManifestError(f"frames manifest: column 'clip_id': clip {spans[spans > 1].index[0]} "
                            "holds frames of more than one video")
