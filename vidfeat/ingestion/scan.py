"""Scanning the source: a folder of class folders or a labels file -> one row per input video.

Unlabelled (``unlabelled=True``): a folder tree of videos at any depth, a CSV/Parquet file with a
``path`` column (no ``label``), or a text file of paths, one per line; every row's label is
``UNLABELLED`` (the empty string, which a labelled source can never give: it fails there as
"empty label").

Rows that cannot be used (URL or ``protocol:`` path, missing/empty/non-regular file, bad split,
the same file listed twice or reached under two names) are ``failed`` rows with a reason; nothing
is opened here. One video, one row: a symlink or hard link to a file already scanned fails as
"duplicate of <video_id>" here, a byte-identical copy after probing (``mark_duplicates``).

Rows are records (``scan_rows``: one dict per video) so that an ingest plans without pandas;
``scan_source`` gives them as a DataFrame. Only reading a Parquet labels table imports pandas.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path, PurePosixPath

from vidfeat.media import VIDEO_EXTENSIONS, UnsafeMediaPath, check_local_path

log = logging.getLogger(__name__)


SCAN_COLUMNS = ("video_id", "path", "label", "split", "status", "error", "size_bytes", "mtime_ns",
                "device", "inode")
# os.stat fields kept per row (Int64 for sizes and times; device and inode are unsigned 64-bit)
_STAT_DTYPES = {"size_bytes": "Int64", "mtime_ns": "Int64", "device": "UInt64", "inode": "UInt64"}
# video_id prefix for labels-file rows outside the labels file's folder (absolute path follows)
EXTERNAL_PREFIX = "_external"
# the label of every video of an unlabelled ingest ("" is refused as a label in labelled sources)
UNLABELLED = ""
# files of paths read as tables; any other file given to an unlabelled scan is a list of paths
TABLE_SUFFIXES = (".csv", ".parquet")


def scan_rows(src, *, labels: str | os.PathLike | None = None,
              unlabelled: bool = False) -> list[dict]:
    """One record (dict) per input video, sorted by ``video_id``, with keys ``SCAN_COLUMNS``:
    ``video_id, path, label, split, status, error`` and the file's stats ``size_bytes, mtime_ns,
    device, inode`` (None when it could not be stat'ed).

    ``src`` is a folder of class folders (``src/<label>/**/<video>``), or, with ``labels``, a
    CSV/Parquet file with ``path,label`` and optionally ``split`` whose relative paths resolve
    against the labels file's folder (``src`` is then ignored and may be None). ``video_id`` is
    the POSIX path relative to that root: unique, and safe as a relative folder (no '..', never
    absolute). Rows that cannot be used (URL or ``protocol:`` path, missing/empty/non-regular
    file, bad split value, same file listed twice) get ``status='failed'`` and a reason; nothing
    is opened here. A row whose file (``device, inode``, after symlinks) an earlier row already
    has fails as ``duplicate of <that video_id>``.

    ``unlabelled``: no labels wanted (module doc): ``src`` (or ``labels``) may also be a file,
    CSV/Parquet with a ``path`` column only or a text file of paths; labels are ``UNLABELLED``.
    Only a Parquet labels table imports pandas (to read it).
    """
    if unlabelled:
        rows = _scan_unlabelled(src, labels)
    else:
        rows = _scan_labels(Path(labels)) if labels is not None else _scan_folders(src)
    if not rows:
        where = labels if labels is not None else src
        raise ValueError(f"no videos found in {where}")
    return _fail_same_files(sorted(rows, key=lambda r: r["video_id"]))


def scan_source(src, *, labels: str | os.PathLike | None = None, unlabelled: bool = False):
    """``scan_rows(src, labels=labels, unlabelled=unlabelled)`` as a DataFrame: text columns and
    nullable integer file stats (``Int64`` size and mtime, ``UInt64`` device and inode).

    ``src``, ``labels``, ``unlabelled``: as for ``scan_rows``.
    """
    import pandas as pd  # lazily: an ingest plans on records and must start fast

    rows = scan_rows(src, labels=labels, unlabelled=unlabelled)
    df = pd.DataFrame(rows, columns=list(SCAN_COLUMNS))
    for column, dtype in _STAT_DTYPES.items():  # built directly: via float64, ns would round
        df[column] = pd.array([r[column] for r in rows], dtype=dtype)
    return df


def _fail_same_files(rows: list[dict]) -> list[dict]:
    """Fail every ok row whose file (device, inode) an earlier ok row has: one video, one row."""
    first: dict[tuple[int, int], str] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        vid = first.setdefault((row["device"], row["inode"]), row["video_id"])
        if vid != row["video_id"]:
            row.update(status="failed", error=f"duplicate of {vid}", split="")
    return rows


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Fail every ok row whose ``source_hash`` an earlier ok row has (in ``video_id`` order) as
    ``duplicate of <that video_id>`` (split ""): byte-identical copies are one video.

    ``rows``: records with ``video_id, status, error, split`` and the probe's ``source_hash``;
    rows without a usable one (missing, None, empty, not a string) are left alone. Changed in
    place, order kept; returns ``rows``.
    """
    first: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["video_id"]):
        digest = row.get("source_hash")
        if row["status"] != "ok" or not isinstance(digest, str) or not digest:
            continue
        vid = first.setdefault(digest, row["video_id"])
        if vid != row["video_id"]:
            row.update(status="failed", split="", error=f"duplicate of {vid}")
    return rows


def _row(video_id, path, label, split="", error="", st=None) -> dict:
    return {"video_id": video_id, "path": str(path), "label": label, "split": split,
            "status": "failed" if error else "ok", "error": error,
            "size_bytes": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None,
            "device": st.st_dev if st else None, "inode": st.st_ino if st else None}


def _scan_folders(src, *, unlabelled: bool = False) -> list[dict]:
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
            if unlabelled:
                rows.append(_file_row(str(rel_dir / name), Path(dirpath) / name, UNLABELLED))
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


def read_labels(path: Path, *, unlabelled: bool = False) -> list[tuple[str, str, str]]:
    """The labels table (CSV or Parquet) as ``(path, label, split)`` rows of stripped text.

    ``path``: the table. ``unlabelled``: the table must have ``path`` and neither ``label`` nor
    ``split`` (a file that has them is refused rather than its labels silently dropped); the
    label is ``UNLABELLED``. Header names are read stripped and lower-cased; a missing
    ``split`` column or cell is "".
    """
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        columns = _parquet_columns(path)
    elif suffix == ".csv":
        columns = _csv_columns(path)
    else:
        raise ValueError(f"labels file must be .csv or .parquet, got {path.name!r}")
    if unlabelled:
        _check_unlabelled_columns(path, columns)
        columns["label"] = [UNLABELLED] * len(next(iter(columns.values()), []))
    for column in ("path", "label"):
        if column not in columns:
            raise ValueError(f"labels file {path.name}: missing column {column!r} "
                             f"(has {', '.join(map(repr, columns))})")
    return list(zip(columns["path"], columns["label"],
                    columns.get("split", [""] * len(columns["path"]))))


def _csv_columns(path: Path) -> dict[str, list[str]]:
    """A CSV table's columns as text, as pandas ``read_csv(dtype=str, keep_default_na=False)``
    reads them (without pandas: an ingest starts without it): blank lines skipped, a UTF-8 BOM
    dropped, a short row's missing cells ""; a row longer than the header is refused."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
    except UnicodeDecodeError:
        raise ValueError(f"labels file {path.name}: not UTF-8 text") from None
    except csv.Error as exc:
        raise ValueError(f"labels file {path.name}: not a readable CSV file ({exc})") from None
    if not rows:
        raise ValueError(f"labels file {path.name} is empty (no header line)")
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) > len(header):
            raise ValueError(f"labels file {path.name}: row {i} has {len(row)} cells, the header "
                             f"{len(header)} ({','.join(row)[:80]!r})")
    return _named(header, [[row[j].strip() if j < len(row) else "" for row in body]
                           for j in range(len(header))])


def _parquet_columns(path: Path) -> dict[str, list[str]]:
    """A Parquet table's columns as text (missing values ""); pyarrow's reader would import
    pandas for a pandas-written file anyway, so pandas reads it."""
    import pandas as pd

    from vidfeat.ingestion.stats import missing

    df = pd.read_parquet(path)
    return _named(list(df.columns), [["" if missing(v) else str(v).strip() for v in df.iloc[:, j]]
                                     for j in range(df.shape[1])])


def _named(header: list, columns: list[list[str]]) -> dict[str, list[str]]:
    """``{name: column}``, names stripped and lower-cased; of a repeated name the first wins."""
    out: dict[str, list[str]] = {}
    for name, column in zip(header, columns):
        out.setdefault(str(name).strip().lower(), column)
    return out


def _check_unlabelled_columns(path: Path, columns: dict) -> None:
    for column in ("label", "split"):
        if column in columns:
            raise ValueError(f"labels file {path.name} has a {column!r} column: an unlabelled "
                             f"ingest takes a file with a 'path' column only (drop --unlabelled "
                             f"to use its labels)")


def _scan_labels(labels: Path, *, unlabelled: bool = False) -> list[dict]:
    labels = check_local_path(labels)
    table = read_labels(labels, unlabelled=unlabelled)
    return _list_rows(enumerate(table, start=2), labels.parent,
                      "the labels file", unlabelled=unlabelled)


def _list_rows(numbered, base: Path, where: str, *, unlabelled: bool = False) -> list[dict]:
    """Rows for ``(line, (path, label, split))`` items of a list file whose folder is ``base``."""
    rows, seen = [], {}
    for i, (raw, label, split) in numbered:
        row = _labels_row(i, raw, label, split.lower(), base, unlabelled=unlabelled)
        first = seen.setdefault(row["video_id"], i)
        if first != i:  # the same file listed twice: keep the first, report the rest
            row.update(video_id=f"{row['video_id']}~dup{i}", status="failed",
                       error=f"same file as line {first} of {where}")
        rows.append(row)
    return rows


def _scan_unlabelled(src, labels) -> list[dict]:
    """Rows of an unlabelled source: a folder tree, a path table, or a text file of paths."""
    given = labels if labels is not None else src
    if given is None:
        raise ValueError("give a source folder of videos, or a file listing them")
    path = check_local_path(given)
    if labels is None and path.is_dir():
        return _scan_folders(path, unlabelled=True)
    if not path.is_file():
        raise FileNotFoundError(f"source not found: {given}")
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _scan_labels(path, unlabelled=True)
    return _list_rows(_text_lines(path), path.parent, "the list file", unlabelled=True)


def _text_lines(path: Path):
    """``(line number, (path, UNLABELLED, ""))`` per path line (blank, '#' lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: not a UTF-8 text file of video paths, one per line "
                         "(or a .csv/.parquet table)") from None
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield i, (line, UNLABELLED, "")


def _labels_row(line: int, raw: str, label: str, split: str, base: Path, *,
                unlabelled: bool = False) -> dict:
    """Row for labels-file line ``line`` (1 is the header)."""
    from vidfeat.ingestion.contract import SPLITS

    rejected = f"_rejected/line{line}"
    if not raw:
        return _row(rejected, raw, label, split, "empty path")
    try:
        path = check_local_path(raw, base=base)
    except UnsafeMediaPath as exc:
        return _row(rejected, raw, label, split, str(exc))
    vid = video_id_for(path, base)
    if not label and not unlabelled:
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

