"""Manifests: the tables every stage after ingest reads.

``OUTDIR/videos.parquet``  one row per input video, failed ones included.
``OUTDIR/frames.parquet``  one row per stored frame (JPEG under ``OUTDIR/frames/<video_id>/``).
``OUTDIR/ingest.json``     arguments, versions, counts, failures, timing.

``--format csv`` writes ``.csv`` instead of ``.parquet``; readers accept either. The column
contract lives here (and in ``manifests/schema.md``); ``read_manifest`` enforces it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vidfeat.files import atomic_write, write_json

SPLITS = ("train", "val", "test")
STATUSES = ("ok", "failed")
FORMATS = {"parquet": ".parquet", "csv": ".csv"}

# column -> pandas dtype. Required columns first; optional ones may be absent.
VIDEO_COLUMNS: dict[str, str] = {
    "video_id": "string",   # POSIX relative path derived from the source path; unique
    "path": "string",       # absolute path of the source video
    "label": "string",
    "split": "string",      # train | val | test (empty for failed videos)
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

    def frame_path(self, rel: str) -> Path:
        return self.root / rel


def manifest_path(outdir: str | os.PathLike, name: str, fmt: str | None = None) -> Path:
    """Path of ``videos``/``frames`` in ``outdir``; with no ``fmt``, whichever exists."""
    outdir = Path(outdir)
    if fmt is not None:
        return outdir / f"{name}{FORMATS[fmt]}"
    for ext in FORMATS.values():
        if (outdir / f"{name}{ext}").exists():
            return outdir / f"{name}{ext}"
    raise ManifestError(f"no {name}.parquet or {name}.csv in {outdir}")


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


def write_table(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame:
    """Read one manifest table (``.csv`` or ``.parquet`` by suffix) from ``path``.

    ``path``: the table's file. A file that cannot be read or parsed raises ManifestError
    naming it, never the parser's own exception type (callers catch one error type).
    """
    import pyarrow as pa

    kind = "CSV" if path.suffix == ".csv" else "Parquet"
    try:
        if path.suffix == ".csv":
            # keep "" as "" (error column), not NaN; keep ids and labels as text ("007" stays "007")
            text = {c: str for c, t in {**VIDEO_COLUMNS, **VIDEO_OPTIONAL, **FRAME_COLUMNS}.items()
                    if t == "string"}
            return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text)
        return pd.read_parquet(path)
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
    """Validate and atomically write videos/frames (and ``ingest.json`` when ``info`` is given)."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {', '.join(map(repr, FORMATS))}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    m = validate(Manifest(outdir, videos, frames, info or {}))
    write_table(m.videos, manifest_path(outdir, "videos", fmt))
    write_table(m.frames, manifest_path(outdir, "frames", fmt))
    if info is not None:
        write_json(outdir / "ingest.json", info)
    return m


def read_manifest(outdir: str | os.PathLike, *, check_files: bool = False) -> Manifest:
    """Load and validate an ingest OUTDIR; ``check_files`` also checks every frame JPEG exists."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise ManifestError(f"ingest output folder not found: {outdir}")
    videos = read_table(manifest_path(outdir, "videos"))
    frames = read_table(manifest_path(outdir, "frames"))
    info = read_info(outdir / "ingest.json")
    m = validate(Manifest(outdir, videos, frames, info))
    if check_files:
        missing = [p for p in m.frames["path"] if not (outdir / p).is_file()]
        if missing:
            raise ManifestError(f"{len(missing)} frame files missing, e.g. {missing[0]!r}")
    return m


def validate(m: Manifest) -> Manifest:
    """Check columns, dtypes, allowed values and cross-table consistency; coerce dtypes."""
    try:
        videos = coerce(m.videos, VIDEO_COLUMNS, optional=VIDEO_OPTIONAL)
    except ManifestError as exc:
        raise ManifestError(f"videos manifest: {exc}") from None
    try:
        frames = coerce(m.frames, FRAME_COLUMNS)
    except ManifestError as exc:
        raise ManifestError(f"frames manifest: {exc}") from None
    _check_videos(videos)
    _check_frames(frames, videos)
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


def _check_videos(videos: pd.DataFrame) -> None:
    _check_unique(videos, "video_id", "videos")
    _check_values(videos, "status", STATUSES, "videos")
    ok = videos["status"] == "ok"
    _check_values(videos, "split", SPLITS, "videos", mask=ok)
    if videos.loc[ok, "label"].isna().any():
        raise ManifestError("videos manifest: column 'label' is empty for an ok video")
    no_reason = (~ok) & (videos["error"].isna() | (videos["error"] == ""))
    if no_reason.any():
        vid = videos.loc[no_reason, "video_id"].iloc[0]
        raise ManifestError(f"videos manifest: column 'error' is empty for failed video {vid!r}")


def _check_frames(frames: pd.DataFrame, videos: pd.DataFrame) -> None:
    _check_unique(frames, "frame_id", "frames")
    _check_values(frames, "split", SPLITS, "frames")
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
