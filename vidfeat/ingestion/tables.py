"""Manifest tables as pyarrow Tables without pandas: build, serialise, fingerprint, check.

``ingest``'s parent process publishes its manifests through here without importing pandas; the
Parquet and CSV bytes and the fingerprint are the ones the former pandas code wrote.

pyarrow imports pandas the first time ``pa.array``, ``pa.scalar``, ``to_numpy`` or a compute
function given a Python scalar runs; this module goes through buffers (``Array.from_buffers``,
``np.frombuffer``) and arrow-only arguments instead, and the tests check pandas stays out.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidfeat.ingestion.contract import (
    FRAME_CLIP,
    FRAME_COLUMNS,
    FRAME_PROVENANCE,
    MANIFEST_SPLITS,
    STATUSES,
    UNLABELLED_SPLIT,
    VIDEO_COLUMNS,
    VIDEO_OPTIONAL,
    ManifestError,
    sampling_clips,
)

# contract dtype -> (arrow type, pandas_type, numpy_type), as pa.Table.from_pandas records a
# DataFrame column of that dtype (pandas 3: "string" is Arrow-backed, stored as large_string)
DTYPES = {
    "string": (pa.large_string(), "object", "string"),
    "float64": (pa.float64(), "float64", "float64"),
    "Int64": (pa.int64(), "int64", "Int64"),
    "int64": (pa.int64(), "int64", "int64"),
    "boolean": (pa.bool_(), "bool", "boolean"),
}
# rows formatted or hashed at a time: bounded memory for millions of frames
SLICE_ROWS = 100_000
# video columns that change with timing, not content: left out of the content fingerprint
_VOLATILE = ("elapsed_s",)
_CLIP_HINT = " (a clip manifest has clip_id, clip_pos and padded)"


def arrow_table(columns: Mapping[str, Sequence], dtypes: Mapping[str, str]) -> pa.Table:
    """A table of Python column lists, typed and annotated as ``pa.Table.from_pandas`` would
    type a DataFrame of those contract dtypes (so ``pd.read_parquet`` gives them back).

    ``columns``: name -> values, in table order; None (or NaN) is missing. ``dtypes``: name ->
    contract dtype (``string``, ``float64``, ``Int64``, ``int64``, ``boolean``) for every
    column. A value the dtype cannot hold raises ManifestError naming the column.
    """
    arrays, fields = [], []
    for name, values in columns.items():
        dtype = dtypes.get(name)
        if dtype not in DTYPES:
            raise ValueError(f"column {name!r}: dtype {dtype!r} is not one of "
                             f"{', '.join(DTYPES)}")
        try:
            arrays.append(_BUILDERS[dtype](list(values)))
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
            raise ManifestError(f"column {name!r} cannot be read as {dtype}: {exc}") from None
        fields.append(pa.field(name, DTYPES[dtype][0]))
    meta = _pandas_metadata([(name, dtypes[name]) for name in columns])
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={b"pandas": meta}))


@cache
def _versions() -> tuple[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return pa.__version__, version("pandas")
    except PackageNotFoundError:
        return pa.__version__, None


def _pandas_metadata(columns: list[tuple[str, str]]) -> bytes:
    """The ``pandas`` schema metadata ``from_pandas(df, preserve_index=False)`` writes."""
    meta = {"index_columns": [], "column_indexes": [], "columns": [
        {"name": name, "field_name": name, "pandas_type": DTYPES[dtype][1],
         "numpy_type": DTYPES[dtype][2], "metadata": None} for name, dtype in columns],
        "attributes": {}, "creator": {"library": "pyarrow", "version": _versions()[0]}}
    if _versions()[1] is not None:
        meta["pandas_version"] = _versions()[1]
    return json.dumps(meta).encode()


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _from_numpy(data: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    data = np.ascontiguousarray(data)
    buf = (pa.py_buffer(np.packbits(data, bitorder="little")) if data.dtype == bool
           else pa.py_buffer(data))
    return pa.Array.from_buffers(type_, len(data), [_validity(valid), buf],
                                 null_count=int((~valid).sum()))


def _floats(values: list) -> pa.Array:
    data = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return _from_numpy(data, ~np.isnan(data), pa.float64())


def _int(v) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return operator.index(v)  # never through float: 3.5 is refused, big ints stay exact


def _ints(values: list) -> pa.Array:
    fast = np.array(values) if values else np.zeros(0, np.int64)
    if fast.dtype.kind in "ib" and fast.ndim == 1:  # the common case: ints, none missing
        return _from_numpy(fast.astype(np.int64), np.ones(len(fast), bool), pa.int64())
    valid = np.array([not _missing(v) for v in values], dtype=bool)
    data = np.array([_int(v) if ok else 0 for v, ok in zip(values, valid)], dtype=np.int64)
    return _from_numpy(data, valid, pa.int64())


def _bools(values: list) -> pa.Array:
    fast = np.array(values) if values else np.zeros(0, bool)
    if fast.dtype.kind == "b" and fast.ndim == 1:
        return _from_numpy(fast, np.ones(len(fast), bool), pa.bool_())
    valid = np.array([not _missing(v) for v in values], dtype=bool)
    data = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if valid[i]:
            if v not in (True, False):
                raise ValueError(f"{v!r} is not a boolean")
            data[i] = bool(v)
    return _from_numpy(data, valid, pa.bool_())


def _strings(values: list) -> pa.Array:
    valid = np.array([not _missing(v) for v in values], dtype=bool)
    parts = [(v if isinstance(v, str) else str(v)).encode() if ok else b""
             for v, ok in zip(values, valid)]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string(), len(parts),
                                 [_validity(valid), pa.py_buffer(offsets),
                                  pa.py_buffer(b"".join(parts))],
                                 null_count=int((~valid).sum()))


_BUILDERS = {"string": _strings, "float64": _floats, "Int64": _ints, "int64": _ints,
             "boolean": _bools}


# --- reading arrays back without to_numpy (which imports pandas) ---------------------------------

def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little", count=offset + n)[offset:].astype(bool)


def valid_mask(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row: True where ``col`` holds a value (not null)."""
    parts = [np.ones(len(c), bool) if c.null_count == 0 or c.buffers()[0] is None
             else _bits(c.buffers()[0], c.offset, len(c)) for c in _chunks(col)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def numpy_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The values of a numeric or boolean ``col`` as numpy (a null's slot: unspecified)."""
    parts = []
    for c in _chunks(col):
        if pa.types.is_boolean(c.type):
            parts.append(_bits(c.buffers()[1], c.offset, len(c)) if len(c) else
                         np.zeros(0, bool))
            continue
        dtype = _numpy_dtype(c.type)
        parts.append(np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c),
                                   offset=c.offset * dtype.itemsize) if len(c) else
                     np.zeros(0, dtype))
    return np.concatenate(parts) if parts else np.zeros(0, _numpy_dtype(col.type))


def _numpy_dtype(t: pa.DataType) -> np.dtype:
    # not DataType.to_pandas_dtype: that may import pandas
    if pa.types.is_boolean(t):
        return np.dtype(bool)
    kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
    return np.dtype(f"{kind}{t.bit_width // 8}")


def _chunks(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def true_mask(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per row of a boolean ``col``: True where it is true (null counts as false)."""
    return numpy_values(col) & valid_mask(col) if len(col) else np.zeros(0, bool)


# --- CSV ------------------------------------------------------------------------------------------

def table_bytes(table: pa.Table, fmt: str) -> bytes:
    """``table`` as the bytes of a ``fmt`` file: ``parquet``, or ``csv`` byte for byte as pandas
    ``to_csv(index=False)`` writes the same table read as a DataFrame.

    ``table``: the table (its schema metadata goes into a Parquet file). ``fmt``: the format.
    """
    if fmt == "parquet":
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    if fmt == "csv":
        return "".join(_csv_slices(table, header=True)).encode()
    raise ValueError(f"format={fmt!r} is not one of 'parquet', 'csv'")


def _csv_slices(table: pa.Table, *, header: bool) -> Iterator[str]:
    """CSV text of ``table`` (header first if asked), ``SLICE_ROWS`` rows at a time."""
    if header:
        yield _csv_text([table.column_names])
    for start in range(0, table.num_rows, SLICE_ROWS):
        part = table.slice(start, SLICE_ROWS)
        yield _csv_text(zip(*(_csv_cells(part.column(i)) for i in range(part.num_columns))))


def _csv_text(rows) -> str:
    # the writer pandas' to_csv uses: minimal quoting as Python's csv module, "\n" line ends
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _csv_cells(col: pa.ChunkedArray) -> list:
    """Each value of ``col`` as pandas' ``to_csv`` prints it; missing values as ""."""
    t = col.type
    if pa.types.is_floating(t):
        values = numpy_values(col)
        cells = values.astype(str).astype(object)  # pandas prints floats with astype(str)
        cells[~valid_mask(col) | np.isnan(values)] = ""
        return cells.tolist()
    if pa.types.is_boolean(t):
        return ["" if v is None else str(v) for v in col.to_pylist()]
    if pa.types.is_integer(t):
        col = pc.cast(col, pa.large_string())
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return ["" if v is None else str(v) for v in col.to_pylist()]
    return ["" if v is None else v for v in col.to_pylist()]


def content_fingerprint(videos: pa.Table, frames: pa.Table, info: dict) -> str:
    """sha256 (32 hex) of what the frames were made from and what they are: the sampling
    settings, every video row (source identity, label, split, status) and every frame row
    (ids, paths, lengths, hashes); timings (``elapsed_s``) left out.

    ``videos``/``frames``: the manifest tables. ``info``: the ``ingest.json`` content (its
    ``sampling``). The value is the one vidfeat has always recorded (the tables' CSV body as
    pandas writes it), so recorded fingerprints stay valid.
    """
    h = hashlib.sha256(json.dumps(info.get("sampling", {}), sort_keys=True).encode())
    kept = videos.select([c for c in videos.column_names if c not in _VOLATILE])
    for table in (kept, frames):
        h.update(json.dumps(list(map(str, table.column_names))).encode())
        for text in _csv_slices(table, header=False):
            h.update(text.encode())
    return h.hexdigest()[:32]


# --- checks ---------------------------------------------------------------------------------------

def check_tables(videos: pa.Table, frames: pa.Table, info: dict) -> None:
    """Check the contract on the two tables: columns and types, allowed values, unique ids,
    frames agreeing with their videos, clips whole and in order. Raises ManifestError naming
    the table, the column and the value.

    ``videos``/``frames``: the manifest tables. ``info``: the ``ingest.json`` content (its
    ``sampling`` says whether this is a clip ingest, and the clip length).
    """
    _check_columns(videos, VIDEO_COLUMNS, VIDEO_OPTIONAL, "videos")
    clips = sampling_clips(info) or bool(set(FRAME_CLIP) & set(frames.column_names))
    _check_columns(frames, {**FRAME_COLUMNS, **(FRAME_CLIP if clips else {})}, FRAME_PROVENANCE,
                   "frames", hint=_CLIP_HINT if clips else "")
    _check_videos(videos)
    _check_frames(frames, videos)
    if clips:
        _check_clips(frames, info)


def _check_columns(table: pa.Table, columns: dict, optional: dict, name: str, *,
                   hint: str = "") -> None:
    for column, dtype in {**columns, **optional}.items():
        if column not in table.column_names:
            if column in columns:
                raise ManifestError(f"{name} manifest: missing column {column!r}{hint}")
            continue
        problem = _type_problem(table.column(column), dtype)
        if problem:
            raise ManifestError(f"{name} manifest: column {column!r} cannot be read as {dtype}: "
                                f"{problem}{hint}")


def _type_problem(col: pa.ChunkedArray, dtype: str) -> str:
    t = col.type
    fits = (pa.types.is_string(t) or pa.types.is_large_string(t) if dtype == "string"
            else t == DTYPES[dtype][0])
    if not fits:
        return f"it holds {t}"
    if dtype == "int64" and col.null_count:
        return "it has missing values"
    return ""


def _is(col: pa.ChunkedArray, *values: str) -> np.ndarray:
    """Per row: True where ``col`` is one of ``values`` (null: False)."""
    return true_mask(pc.is_in(col, value_set=_strings(list(values)).cast(col.type)))


def _check_values(col: pa.ChunkedArray, allowed, table: str, column: str, mask=None) -> None:
    if mask is not None:
        col = col.filter(_from_numpy(mask, np.ones(len(mask), bool), pa.bool_()))
    bad = sorted(set(pc.unique(col.drop_null()).to_pylist()) - set(allowed))
    if bad:
        raise ManifestError(f"{table} manifest: column {column!r} has value {bad[0]!r}; "
                            f"allowed: {', '.join(allowed)}")


def first_duplicate(values: np.ndarray) -> int | None:
    """Index of the first element of ``values`` equal to an earlier one; None if all differ."""
    _, first = np.unique(values, return_index=True)
    if len(first) == len(values):
        return None
    seen = np.zeros(len(values), bool)
    seen[first] = True
    return int(np.flatnonzero(~seen)[0])


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Per row, a number that is equal exactly where the values are (null equal to null)."""
    encoded = col.combine_chunks().dictionary_encode(null_encoding="encode")
    return numpy_values(encoded.indices)


def _check_unique(table: pa.Table, column: str, name: str) -> None:
    col = table.column(column)
    if len(pc.unique(col)) == len(col):
        return
    i = first_duplicate(_codes(col))
    raise ManifestError(f"{name} manifest: column {column!r} has duplicate value "
                        f"{col[i].as_py()!r}")


def _check_videos(videos: pa.Table) -> None:
    _check_unique(videos, "video_id", "videos")
    status, split, label = videos["status"], videos["split"], videos["label"]
    _check_values(status, STATUSES, "videos", "status")
    ok = _is(status, "ok")
    failed = valid_mask(status) & ~ok  # a missing status is neither
    _check_values(split, MANIFEST_SPLITS, "videos", "split", mask=ok)
    _check_unlabelled(videos, ok)
    labelled_empty = _is(label, "")
    no_label = ok & ~valid_mask(label)  # "" is the label of unlabelled ingests only
    unlabelled = (ok & _is(split, UNLABELLED_SPLIT)).any()
    if no_label.any() or (not unlabelled and (ok & labelled_empty).any()):
        raise ManifestError("videos manifest: column 'label' is empty for an ok video")
    no_reason = failed & (~valid_mask(videos["error"]) | _is(videos["error"], ""))
    if no_reason.any():
        vid = videos["video_id"][int(np.flatnonzero(no_reason)[0])].as_py()
        raise ManifestError(f"videos manifest: column 'error' is empty for failed video {vid!r}")


def _check_unlabelled(videos: pa.Table, ok: np.ndarray) -> None:
    """Split ``all`` is all or nothing, and goes with the label "" and only with it."""
    split, label = videos["split"], videos["label"]
    if not (ok & _is(split, UNLABELLED_SPLIT)).any():
        return
    # a missing split or label is no evidence either way (pandas' three-valued logic)
    other_split = valid_mask(split) & ~_is(split, UNLABELLED_SPLIT)
    other_label = valid_mask(label) & ~_is(label, "")
    mixed = ok & (other_split | other_label)
    if mixed.any():
        vid = videos["video_id"][int(np.flatnonzero(mixed)[0])].as_py()
        raise ManifestError(f"videos manifest: video {vid!r} has a label or a split other than "
                            f"{UNLABELLED_SPLIT!r} in an unlabelled manifest (split "
                            f"{UNLABELLED_SPLIT!r}, label '' for every ok video)")


def _check_frames(frames: pa.Table, videos: pa.Table) -> None:
    _check_unique(frames, "frame_id", "frames")
    _check_values(frames["split"], MANIFEST_SPLITS, "frames", "split")
    ok_ids = videos["video_id"].filter(_from_numpy(_is(videos["status"], "ok"),
                                                   np.ones(len(videos), bool), pa.bool_()))
    seen = pc.unique(frames["video_id"])
    unknown = seen.filter(pc.invert(pc.is_in(seen, value_set=ok_ids.combine_chunks()
                                             .cast(seen.type))))
    if len(unknown):
        first = sorted(v for v in unknown.to_pylist() if v is not None) or [None]
        raise ManifestError(f"frames manifest: column 'video_id' has value {first[0]!r} "
                            "that is not an ok video in the videos manifest")
    if len(frames) and (numpy_values(frames["repeat"]) < 1).any():
        raise ManifestError("frames manifest: column 'repeat' must be >= 1")
    path = frames["path"]
    unsafe = (true_mask(pc.starts_with(path, pattern="/"))
              | true_mask(pc.match_substring_regex(path, pattern=r"(^|/)\.\.(/|$)")))
    if unsafe.any():
        raise ManifestError(f"frames manifest: column 'path' has value "
                            f"{path[int(np.flatnonzero(unsafe)[0])].as_py()!r}; "
                            "paths must be relative to OUTDIR without '..'")
    row = pc.index_in(frames["video_id"], value_set=videos["video_id"].combine_chunks()
                      .cast(frames["video_id"].type))
    for col in ("label", "split"):
        # a missing value on either side is no difference (pandas' three-valued logic)
        bad = true_mask(pc.not_equal(frames[col], videos[col].take(row)))
        if bad.any():
            frame = frames["frame_id"][int(np.flatnonzero(bad)[0])].as_py()
            raise ManifestError(f"frames manifest: column {col!r} of frame {frame!r} "
                                "differs from its video's")


def _check_clips(frames: pa.Table, info: dict) -> None:
    """Each clip's rows consecutive, in one video, ``clip_pos`` 0..T-1 in order, T rows each."""
    if not len(frames):
        return
    ids, pos = numpy_values(frames["clip_id"]), numpy_values(frames["clip_pos"])
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    dup = first_duplicate(ids[starts])
    if dup is not None:
        raise ManifestError(f"frames manifest: column 'clip_id': the rows of clip "
                            f"{int(ids[starts[dup]])} are not consecutive")
    lengths = np.diff(np.r_[starts, len(ids)])
    expected = np.arange(len(ids)) - np.repeat(starts, lengths)
    bad = np.flatnonzero(pos != expected)
    if bad.size:
        i = int(bad[0])
        raise ManifestError(f"frames manifest: column 'clip_pos' of frame "
                            f"{frames['frame_id'][i].as_py()!r} is {int(pos[i])}, expected "
                            f"{int(expected[i])} (a clip's rows are its positions "
                            "0..clip_len-1 in order)")
    recorded = (info.get("sampling") or {}).get("clip_len") if sampling_clips(info) else None
    want = int(recorded) if recorded is not None else int(lengths[0])
    short = np.flatnonzero(lengths != want)
    if short.size:
        raise ManifestError(f"frames manifest: column 'clip_pos': clip "
                            f"{int(ids[starts[short[0]]])} has {int(lengths[short[0]])} rows, "
                            f"expected clip_len={want}")
    videos = _codes(frames["video_id"])
    across = np.flatnonzero(videos != np.repeat(videos[starts], lengths))
    if across.size:
        raise ManifestError(f"frames manifest: column 'clip_id': clip {int(ids[across[0]])} "
                            "holds frames of more than one video")
