"""Manifest tables on pyarrow without pandas, with pandas as the reference: types and metadata
(``from_pandas``), CSV bytes (``to_csv``), the content fingerprint (the former pandas code),
every check (the same messages), and ``publish_tables`` never importing pandas."""
import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_manifest import CASES, CLIP_CASES, CLIP_INFO, clip_tables, tables

from vidfeat.ingestion.manifest import (
    FRAME_CLIP,
    FRAME_COLUMNS,
    FRAME_PROVENANCE,
    VIDEO_COLUMNS,
    VIDEO_OPTIONAL,
    ManifestError,
    publish_tables,
    read_manifest,
    write_manifest,
)
from vidfeat.ingestion.tables import arrow_table, check_tables, content_fingerprint, table_bytes

BIG = 1_733_000_000_123_456_789  # an mtime_ns: exact only if it never passes through float
VIDEO_DTYPES = {**VIDEO_COLUMNS, **VIDEO_OPTIONAL}
FRAME_DTYPES = {**FRAME_COLUMNS, **FRAME_PROVENANCE, **FRAME_CLIP}
NASTY = ["plain", 'quo"te', "com,ma", "new\nline", "cr\rlf", "ünïcødé ✓ 日本", "", None,
         " lead space", "007", "1e5", "#", "'", "tab\there"]
FLOATS = [1 / 3, 29.97002997002997, 1e-05, 1e16, 0.1 + 0.2, -0.0, 10.0, None, float("nan"),
          123456789.125, 5e-324, 1.7976931348623157e308, float("inf"), -2.5, 0.0001, 1e15]


def reference(columns: dict, dtypes: dict) -> pd.DataFrame:
    """The DataFrame pandas itself makes of the same lists in the contract's dtypes."""
    return pd.DataFrame({name: pd.array(values, dtype=dtypes[name])
                         for name, values in columns.items()})


def video_columns(n: int) -> dict:
    """Every videos column, with missing values, big ints and awkward strings and floats."""
    cycle = lambda values: [values[i % len(values)] for i in range(n)]  # noqa: E731
    out = {}
    for name, dtype in VIDEO_DTYPES.items():
        if dtype == "string":
            out[name] = [f"{name}{i}" for i in range(n)] if name == "video_id" else cycle(NASTY)
        elif dtype == "float64":
            out[name] = cycle(FLOATS)
        elif dtype == "boolean":
            out[name] = cycle([True, False, None])
        else:
            out[name] = cycle([BIG, None, 0, -7, 2**63 - 1, 64])
    return out


def frame_columns(n: int, *, clip_len: int = 4) -> dict:
    """A clip ingest's frames: n rows, clips of ``clip_len`` rows, all columns filled."""
    return {"frame_id": [f"v{i // 40}#{i}@{i // clip_len}.{i % clip_len}" for i in range(n)],
            "video_id": [f"v{i // 40}" for i in range(n)], "label": ["a,b"] * n,
            "split": ["train"] * n, "frame_index": list(range(n)),
            "timestamp_s": [i / 29.97 for i in range(n)],
            "path": [f"frames/v{i // 40}/{i:06d}.jpg" for i in range(n)], "repeat": [1] * n,
            "file_bytes": [1000 + i for i in range(n)], "file_hash": [f"{i:032x}" for i in range(n)],
            "clip_id": [i // clip_len for i in range(n)], "clip_pos": [i % clip_len for i in range(n)],
            "padded": [i % 7 == 0 for i in range(n)]}


# --- arrow_table ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 17])
@pytest.mark.parametrize("which", ["videos", "frames"])
def test_arrow_table_is_what_from_pandas_makes(which, n):
    columns = video_columns(n) if which == "videos" else frame_columns(n)
    dtypes = VIDEO_DTYPES if which == "videos" else FRAME_DTYPES
    table = arrow_table(columns, dtypes)
    expected = pa.Table.from_pandas(reference(columns, dtypes), preserve_index=False)
    assert table.schema.equals(expected.schema, check_metadata=True)
    assert table.schema.metadata == expected.schema.metadata  # the same bytes, key order too
    assert table.equals(expected)
    assert table.column_names == list(columns)


def test_parquet_round_trip_keeps_the_contract_dtypes_and_exact_big_ints():
    columns = video_columns(12)
    ref = reference(columns, VIDEO_DTYPES)
    data = table_bytes(arrow_table(columns, VIDEO_DTYPES), "parquet")
    back = pd.read_parquet(io.BytesIO(data))
    pd.testing.assert_frame_equal(back, ref)
    assert {c: str(t) for c, t in back.dtypes.items()} == VIDEO_DTYPES
    assert back["mtime_ns"].iloc[0] == BIG and back["mtime_ns"].isna().iloc[1]
    pd.testing.assert_frame_equal(arrow_table(columns, VIDEO_DTYPES).to_pandas(), ref)
    # the very bytes pandas writes for the same DataFrame
    buf = io.BytesIO()
    ref.to_parquet(buf, index=False)
    assert data == buf.getvalue()


@pytest.mark.parametrize("column, values, message", [
    ("duration_s", ["x"], "column 'duration_s' cannot be read as float64"),
    ("mtime_ns", [3.5], "column 'mtime_ns' cannot be read as Int64"),
    ("repeat", [2**64], "column 'repeat' cannot be read as Int64"),
    ("vfr", ["yes"], "column 'vfr' cannot be read as boolean"),
])
def test_arrow_table_refuses_values_the_dtype_cannot_hold(column, values, message):
    with pytest.raises(ManifestError, match=message):
        arrow_table({column: values}, VIDEO_DTYPES)
    with pytest.raises(ValueError, match="column 'x': dtype 'int'"):
        arrow_table({"x": [1]}, {"x": "int"})


def test_integral_floats_and_numpy_ints_are_ints():
    table = arrow_table({"width": [64.0, np.int32(3), None]}, VIDEO_DTYPES)
    assert table.column("width").to_pylist() == [64, 3, None]


# --- table_bytes: CSV -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 40])
def test_csv_is_byte_identical_to_pandas(n):
    for columns, dtypes in ((video_columns(n), VIDEO_DTYPES), (frame_columns(n), FRAME_DTYPES)):
        expected = reference(columns, dtypes).to_csv(index=False).encode()
        assert table_bytes(arrow_table(columns, dtypes), "csv") == expected


@pytest.mark.parametrize("values", [[""], [None], ["a"], ['"'], ["x\n"]])
def test_csv_single_column_edge_cases_match_pandas(values):
    # a one-column row holding "" is written '""' by the csv module: pandas does the same
    columns = {"label": values}
    expected = reference(columns, VIDEO_DTYPES).to_csv(index=False).encode()
    assert table_bytes(arrow_table(columns, VIDEO_DTYPES), "csv") == expected


def test_csv_of_chunked_and_sliced_tables_matches_pandas():
    columns = video_columns(30)
    table = arrow_table(columns, VIDEO_DTYPES)
    chunked = pa.concat_tables([table.slice(0, 7), table.slice(7, 5), table.slice(12)])
    expected = reference(columns, VIDEO_DTYPES).to_csv(index=False).encode()
    assert table_bytes(chunked, "csv") == expected
    assert table_bytes(table.slice(5, 10), "csv") == (
        reference(columns, VIDEO_DTYPES).iloc[5:15].to_csv(index=False).encode())


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="format='xlsx'"):
        table_bytes(arrow_table({"label": ["a"]}, VIDEO_DTYPES), "xlsx")


# --- content_fingerprint ------------------------------------------------------------------------

def pandas_fingerprint(videos: pd.DataFrame, frames: pd.DataFrame, info: dict) -> str:
    """vidfeat's former ``manifest.content_fingerprint``, verbatim: the reference."""
    h = hashlib.sha256(json.dumps(info.get("sampling", {}), sort_keys=True).encode())
    for df in (videos.drop(columns=[c for c in ("elapsed_s",) if c in videos.columns]), frames):
        h.update(json.dumps(list(map(str, df.columns))).encode())
        for start in range(0, len(df), 100_000):
            h.update(df.iloc[start:start + 100_000].to_csv(index=False, header=False).encode())
    return h.hexdigest()[:32]


@pytest.mark.parametrize("n_videos, n_frames", [(0, 0), (3, 0), (25, 41), (5, 100_003)])
def test_fingerprint_is_the_one_pandas_computed(n_videos, n_frames):
    videos, frames = video_columns(n_videos), frame_columns(n_frames)
    for info in ({}, CLIP_INFO, {"sampling": None}):
        expected = pandas_fingerprint(reference(videos, VIDEO_DTYPES),
                                      reference(frames, FRAME_DTYPES), info)
        got = content_fingerprint(arrow_table(videos, VIDEO_DTYPES),
                                  arrow_table(frames, FRAME_DTYPES), info)
        assert got == expected


def test_fingerprint_leaves_out_elapsed_s_only():
    videos, frames = video_columns(4), frame_columns(8)
    fp = lambda v: content_fingerprint(arrow_table(v, VIDEO_DTYPES),  # noqa: E731
                                       arrow_table(frames, FRAME_DTYPES), {})
    assert fp({**videos, "elapsed_s": [9.0] * 4}) == fp(videos)
    assert fp({**videos, "mtime_ns": [1] * 4}) != fp(videos)


def test_manifest_fingerprint_fallback_is_the_recorded_one(tmp_path):
    videos, frames = tables()
    m = write_manifest(tmp_path, videos, frames, {"sampling": {"mode": "uniform"}})
    recorded = m.info.pop("fingerprint")
    assert m.fingerprint == recorded == pandas_fingerprint(m.videos, m.frames, m.info)


# --- check_tables ---------------------------------------------------------------------------------

def arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"bad dtype"}))
def test_check_tables_says_what_validate_said(case):
    change, message = CASES[case]
    videos, frames = tables()
    change(videos, frames)
    videos = videos.astype({c: t for c, t in VIDEO_COLUMNS.items() if c in videos})
    frames = frames.astype({c: t for c, t in FRAME_COLUMNS.items() if c in frames})
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        check_tables(arrow(videos), arrow(frames), {})


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_check_tables_says_what_validate_said_of_clips(case):
    change, message = CLIP_CASES[case]
    videos, frames = clip_tables()
    change(frames)
    with pytest.raises(ManifestError, match=message):
        check_tables(arrow_table(videos.to_dict("list"), VIDEO_DTYPES),
                     arrow_table(frames.to_dict("list"), FRAME_DTYPES), CLIP_INFO)


def test_check_tables_names_missing_and_mistyped_columns():
    videos, frames = tables()
    v, f = arrow(videos.astype(VIDEO_COLUMNS)), arrow(frames.astype(FRAME_COLUMNS))
    check_tables(v, f, {})
    with pytest.raises(ManifestError, match="videos manifest: missing column 'label'"):
        check_tables(v.drop_columns(["label"]), f, {})
    with pytest.raises(ManifestError, match="videos manifest: column 'width' cannot be read as "
                                            "Int64: it holds double"):
        check_tables(v.set_column(8, "width", pa.chunked_array([[1.0, 2.0, None]])), f, {})
    clip_id = pa.chunked_array([[0, None, 1]], type=pa.int64())
    with pytest.raises(ManifestError, match=r"frames manifest: column 'clip_id' cannot be read "
                                            r"as int64: it has missing values \(a clip manifest"):
        check_tables(v, f.append_column("clip_id", clip_id), {})
    with pytest.raises(ManifestError, match=r"missing column 'clip_id' \(a clip manifest"):
        check_tables(v, f, CLIP_INFO)


def test_check_tables_on_a_large_clip_manifest():
    frames = frame_columns(200_000)
    videos = {name: [] for name in VIDEO_COLUMNS}
    for vid in dict.fromkeys(frames["video_id"]):
        row = {"video_id": vid, "path": f"/x/{vid}", "label": "a,b", "split": "train",
               "status": "ok", "error": "", "duration_s": 1.0, "fps": 30.0, "width": 64,
               "height": 48, "n_frames": 40, "repeat": 1}
        for name in VIDEO_COLUMNS:
            videos[name].append(row[name])
    v, f = arrow_table(videos, VIDEO_COLUMNS), arrow_table(frames, FRAME_DTYPES)
    check_tables(v, f, {"sampling": {"clips_per_video": 10, "clip_len": 4}})
    frames["clip_pos"][-1] = 0
    with pytest.raises(ManifestError, match=r"of frame 'v4999#199999@49999.3' is 0, expected 3"):
        check_tables(v, arrow_table(frames, FRAME_DTYPES), CLIP_INFO)


# --- publish_tables -------------------------------------------------------------------------------

PUBLISH = """
import json, sys
from vidfeat.ingestion.manifest import publish_tables, VIDEO_COLUMNS
from vidfeat.ingestion.tables import arrow_table
videos, frames, dtypes, info, out, fmt = json.loads(sys.argv[1])
publish_tables(out, arrow_table(videos, VIDEO_COLUMNS), arrow_table(frames, dtypes), info,
               fmt=fmt)
assert "pandas" not in sys.modules, "publish_tables imported pandas"
"""


def lists(df: pd.DataFrame) -> dict:
    return df.astype(object).where(df.notna(), None).to_dict("list")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("kind", ["frames", "clips", "no frames"])
def test_publish_tables_never_imports_pandas_and_writes_what_write_manifest_writes(tmp_path, fmt,
                                                                                   kind):
    videos, frames = clip_tables() if kind == "clips" else tables()
    frames = frames.iloc[:0] if kind == "no frames" else frames
    videos["error"] = videos["error"].replace("", None)  # missing, not "": the same to pandas
    info = {"k": 1, "sampling": CLIP_INFO["sampling"] if kind == "clips" else {"mode": "uniform"}}
    dtypes = {c: FRAME_DTYPES[c] for c in frames.columns}
    args = [lists(videos), lists(frames), dtypes, info, str(tmp_path / "arrow"), fmt]
    subprocess.run([sys.executable, "-c", PUBLISH, json.dumps(args)], check=True, timeout=120)
    m = write_manifest(tmp_path / "pandas", videos, frames, info, fmt=fmt)
    for name in (f"videos.{fmt}", f"frames.{fmt}", "ingest.json"):
        assert (tmp_path / "arrow" / name).read_bytes() == (tmp_path / "pandas" / name).read_bytes()
    back = read_manifest(tmp_path / "arrow")
    pd.testing.assert_frame_equal(back.frames, m.frames)
    assert back.fingerprint == m.fingerprint == m.info["fingerprint"]


def test_publish_tables_refuses_a_bad_manifest_before_touching_the_folder(tmp_path):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames)
    bad = arrow(videos.astype(VIDEO_COLUMNS).assign(status=["ok", "done", "failed"]))
    with pytest.raises(ManifestError, match="column 'status' has value 'done'"):
        publish_tables(tmp_path, bad, arrow(frames.astype(FRAME_COLUMNS)))
    read_manifest(tmp_path)  # the published unit is still there
    with pytest.raises(ValueError, match="format='xml'"):
        publish_tables(tmp_path, bad, arrow(frames), fmt="xml")
