"""Manifests: the tables every stage after ingest reads.

``OUTDIR/videos.parquet``  one row per input video, failed ones included.
``OUTDIR/frames.parquet``  one row per stored frame (JPEG under ``OUTDIR/frames/<video_id>/``).
``OUTDIR/ingest.json``     arguments, versions, counts, failures, timing, and provenance.

``--format csv`` writes ``.csv`` instead of ``.parquet``; readers accept either. The column
contract lives in ``contract`` (re-exported here; and in ``manifests/schema.md``);
``read_manifest`` enforces it. The write side (``publish_tables``) takes pyarrow Tables and
never imports pandas (``ingest``'s parent starts without it); ``write_manifest`` takes pandas
DataFrames. Both, and ``read_manifest``, check with ``tables.check_tables``.

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
from typing import TYPE_CHECKING

from vidfeat.files import (
    StorageError,
    atomic_write,
    environment_errors,
    write_exact,
    write_json,
)
from vidfeat.ingestion.contract import (  # the contract, re-exported: its readers import it here
    FORMATS,
    FRAME_CLIP,
    FRAME_COLUMNS,
    FRAME_PROVENANCE,
    INFO,
    MANIFEST_SPLITS,
    SPLITS,
    STATUSES,
    UNLABELLED_SPLIT,
    VIDEO_COLUMNS,
    VIDEO_OPTIONAL,
    ManifestError,
    sampling_clips,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["FORMATS", "FRAME_CLIP", "FRAME_COLUMNS", "FRAME_PROVENANCE", "INFO", "MANIFEST_SPLITS",
           "SPLITS", "STATUSES", "UNLABELLED_SPLIT", "VIDEO_COLUMNS", "VIDEO_OPTIONAL", "Manifest",
           "ManifestError", "coerce", "frame_problems", "manifest_path", "publish_tables",
           "read_info", "read_manifest", "read_table", "unpublish", "validate", "write_manifest"]


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
        return sampling_clips(self.info) or "clip_id" in self.frames.columns

    @property
    def clip_len(self) -> int | None:
        """Rows per clip (the recorded ``clip_len``, else the first clip's); None: not clips."""
        if not self.clips:
            return None
        recorded = (self.info.get("sampling") or {}).get("clip_len")
        if recorded is not None and sampling_clips(self.info):
            return int(recorded)
        ids = self.frames["clip_id"]
        return int((ids == ids.iloc[0]).sum()) if len(ids) else None

    def frame_path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def fingerprint(self) -> str:
        """The content fingerprint recorded by ingest (computed for manifests without one)."""
        if self.info.get("fingerprint"):
            return self.info["fingerprint"]
        from vidfeat.ingestion.tables import content_fingerprint

        return content_fingerprint(_arrow(self.videos), _arrow(self.frames), self.info)


def _arrow(df: pd.DataFrame) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


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


def _write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` atomically to ``path``; return the sha256 of the bytes."""
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
    import pandas as pd
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
    """Validate and publish videos, frames and ``ingest.json`` as one unit (``publish_tables``).

    ``outdir``: the ingest folder. ``videos``/``frames``: the tables, read in the contract's
    dtypes. ``info``: the ``ingest.json`` content (arguments, counts...); ``fingerprint`` and
    ``tables`` are added. ``fmt``: parquet or csv. Returns the manifest as published.
    """
    _check_format(fmt)
    m = _coerced(Manifest(Path(outdir), videos, frames, dict(info or {})))
    info = publish_tables(outdir, _arrow(m.videos), _arrow(m.frames), m.info, fmt=fmt)
    return Manifest(m.root, m.videos, m.frames, info)


def publish_tables(outdir, videos: pa.Table, frames: pa.Table, info: dict | None = None, *,
                   fmt: str = "parquet") -> dict:
    """Check and publish the two tables and ``ingest.json`` as one unit, without pandas.

    ``outdir``: the ingest folder (created if missing). ``videos``/``frames``: the tables as
    ``tables.arrow_table`` builds them (the contract's columns and types). ``info``: the
    ``ingest.json`` content; ``fingerprint`` and ``tables`` are added. ``fmt``: parquet or
    csv. The tables are written first and ``ingest.json`` last, so a kill in between leaves
    tables that ``read_manifest`` refuses, never a silent mix. Returns ``info`` as written.
    """
    from vidfeat.ingestion.tables import check_tables, content_fingerprint, table_bytes

    _check_format(fmt)
    outdir = Path(outdir)
    with environment_errors(outdir):
        outdir.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    check_tables(videos, frames, info)
    unpublish(outdir)
    tables = {}
    for name, table in (("videos", videos), ("frames", frames)):
        path = manifest_path(outdir, name, fmt)
        tables[path.name] = _write_bytes(path, table_bytes(table, fmt))
        _remove_other_formats(outdir, name, keep=path)
    info["fingerprint"] = content_fingerprint(videos, frames, info)
    info["tables"] = tables
    write_json(outdir / INFO, info)
    return info


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {', '.join(map(repr, FORMATS))}")


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
    import pandas as pd

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
    """Check columns, dtypes, allowed values and cross-table consistency; coerce dtypes.

    ``m``: the manifest as read. Returns it with the contract's dtypes (an unlabelled table's
    missing labels as ""); raises ManifestError naming the table, the column and the value.
    """
    from vidfeat.ingestion.tables import check_tables

    m = _coerced(m)
    check_tables(_arrow(m.videos), _arrow(m.frames), m.info)
    return m


def _coerced(m: Manifest) -> Manifest:
    """``m``'s tables in the contract's dtypes: the read side's coercion, the checks left out."""
    try:
        videos = coerce(m.videos, VIDEO_COLUMNS, optional=VIDEO_OPTIONAL)
    except ManifestError as exc:
        raise ManifestError(f"videos manifest: {exc}") from None
    try:
        clips = sampling_clips(m.info) or bool(set(FRAME_CLIP) & set(m.frames.columns))
        frames = coerce(m.frames, {**FRAME_COLUMNS, **(FRAME_CLIP if clips else {})},
                        optional=FRAME_PROVENANCE)
    except ManifestError as exc:
        raise ManifestError(f"frames manifest: {exc}" + (" (a clip manifest has clip_id, "
                            "clip_pos and padded)" if clips else "")) from None
    videos, frames = _unlabelled_labels(videos), _unlabelled_labels(frames)
    return Manifest(m.root, videos.reset_index(drop=True), frames.reset_index(drop=True), m.info)


def _unlabelled_labels(df: pd.DataFrame) -> pd.DataFrame:
    """An unlabelled table's labels as "" (a CSV reads its empty labels back as missing)."""
    if not (df["split"] == UNLABELLED_SPLIT).any():
        return df
    out = df.copy()
    out["label"] = out["label"].fillna("")
    return out
