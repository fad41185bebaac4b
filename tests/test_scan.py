"""Scanning a source: class folders and labels files -> one row per video, bad rows failed."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vidfeat.ingestion.scan import SCAN_COLUMNS, mark_duplicates, scan_rows, scan_source


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_class_folders(tmp_path):
    for rel in ["cat/a.mp4", "cat/sub/a.mp4", "dog/-rm -rf é.MKV", "dog/notes.txt", "dog/.hidden.mp4",
                "top.mp4", ".git/x.mp4"]:
        touch(tmp_path / rel)
    touch(tmp_path / "dog/empty.webm", b"")
    df = scan_source(tmp_path)
    assert df["video_id"].tolist() == ["cat/a.mp4", "cat/sub/a.mp4", "dog/-rm -rf é.MKV",
                                       "dog/empty.webm"]
    assert df["label"].tolist() == ["cat", "cat", "dog", "dog"]
    assert df["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert df["error"].iloc[3] == "file is empty (0 bytes)"
    assert all(Path(p).is_absolute() and Path(p).exists() for p in df["path"])


def test_scan_refuses_missing_or_empty_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        scan_source(tmp_path / "nope")
    with pytest.raises(ValueError, match="no videos found"):
        scan_source(tmp_path)


def test_scan_labels_file(tmp_path):
    root = tmp_path / "data"
    touch(root / "v/a.mp4")
    touch(root / "w/a.mp4")
    outside = touch(tmp_path / "elsewhere/b.mp4")
    os.mkfifo(root / "fifo.mp4")
    labels = pd.DataFrame({"path": ["v/a.mp4", "w/a.mp4", "http://example.com/x.mp4",
                                    "concat:v/a.mp4|w/a.mp4", "missing.mp4", str(outside),
                                    "../elsewhere/b.mp4", "fifo.mp4", "v/a.mp4", "w/a.mp4"],
                           "label": ["x", "y", "x", "x", "y", "y", "y", "x", "x", ""],
                           "split": ["train", "", "", "", "", "Test", "", "", "val", "bogus"]})
    labels.to_csv(root / "labels.csv", index=False)
    df = scan_source(None, labels=root / "labels.csv").set_index("video_id")
    assert df.loc["v/a.mp4", "status"] == "ok" and df.loc["v/a.mp4", "split"] == "train"
    assert df.loc["w/a.mp4", "path"] == str(root / "w/a.mp4")
    ext = df.loc[f"_external{outside}"]
    assert ext["status"] == "ok" and ext["split"] == "test"
    for vid, reason in [("_rejected/line4", "URL or protocol"), ("_rejected/line5", "URL or protocol"),
                        ("missing.mp4", "file not found"), ("fifo.mp4", "not a regular file"),
                        (f"_external{outside}~dup8", "same file as line 7"),
                        ("v/a.mp4~dup10", "same file as line 2"), ("w/a.mp4~dup11", "same file as line 3")]:
        assert df.loc[vid, "status"] == "failed" and reason in df.loc[vid, "error"], vid
    for vid in df.index:  # safe as a relative folder under frames/
        assert not vid.startswith("/") and ".." not in Path(vid).parts


def test_labels_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        scan_source(None, labels=tmp_path / "nope.csv")
    (tmp_path / "l.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(ValueError, match="missing column 'path'"):
        scan_source(None, labels=tmp_path / "l.csv")
    (tmp_path / "l.json").write_text("{}")
    with pytest.raises(ValueError, match="must be .csv or .parquet"):
        scan_source(None, labels=tmp_path / "l.json")


# A CSV labels file as people write them: BOM, CRLF, quoted commas and quotes, blank lines, a
# short row, a header in capitals with spaces, an extra column, a repeated column name.
AWKWARD_CSV = ('\ufeff Path ,LABEL, Split ,note,label\r\n'
               '"a, b.mp4", cat ,train,x,dog\r\n'
               '\r\n'
               '"say ""hi"".mp4",dog,,"two\nlines",\r\n'
               'é.mp4,cat\r\n'
               '  ,,  ,,\r\n')


def test_a_labels_csv_reads_as_pandas_read_csv_did(tmp_path):
    """The labels CSV is read without pandas, yet gives the rows pandas' ``read_csv(dtype=str,
    keep_default_na=False)`` gave (the reference here), stripped, the first of a repeated
    column kept."""
    from vidfeat.ingestion.scan import read_labels

    path = tmp_path / "l.csv"
    path.write_bytes(AWKWARD_CSV.encode())
    ref = pd.read_csv(path, dtype=str, keep_default_na=False).fillna("")
    ref.columns = [c.strip().lower() for c in ref.columns]
    expected = [tuple(v.strip() for v in row) for row in
                ref.loc[:, ~ref.columns.duplicated()][["path", "label", "split"]].itertuples(
                    index=False)]
    assert read_labels(path) == expected
    assert expected[0] == ("a, b.mp4", "cat", "train") and len(expected) == 4


@pytest.mark.parametrize("data, message", [
    (b"path,label\na.mp4,x,extra\n", "row 2 has 3 cells, the header 2"),
    ("path,label\nd\xe9j\xe0.mp4,x\n".encode("latin-1"), "not UTF-8 text"),
    (b"", "is empty"),
])
def test_a_bad_labels_csv_is_one_line_naming_the_file(tmp_path, data, message):
    (tmp_path / "l.csv").write_bytes(data)
    with pytest.raises(ValueError, match=f"labels file l.csv.*{message}"):
        scan_rows(None, labels=tmp_path / "l.csv")


def test_scan_rows_of_a_labels_csv_imports_no_pandas(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "l.csv").write_text("path,label\nv/a.mp4,cat\nv/gone.mp4,dog\n")
    code = ("import sys; from vidfeat.ingestion.scan import scan_rows; "
            "rows = scan_rows(None, labels=sys.argv[1]); "
            "print([r['status'] for r in rows], 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['ok',", "'failed']", "False"]


# --- one video, one row: the same file under two names ----------------------------------------

def test_symlink_and_hard_link_fail_as_duplicates_at_scan_time(tmp_path):
    real = touch(tmp_path / "cat/a.mp4", b"video bytes")
    other = touch(tmp_path / "cat/b.mp4", b"other bytes")
    os.link(real, tmp_path / "cat/hard.mp4")
    (tmp_path / "dog").mkdir()
    os.symlink(real, tmp_path / "dog/link.mp4")
    os.symlink("../cat/b.mp4", tmp_path / "dog/a-rel-link.mp4")  # a relative link
    os.symlink(other, tmp_path / "ant-link.mp4")  # no class folder: ignored, never a row
    (tmp_path / "bee").mkdir()
    os.symlink(other, tmp_path / "bee/first.mp4")  # 'bee/...' sorts first: it is the one kept
    df = scan_source(tmp_path).set_index("video_id")
    assert df["status"].to_dict() == {
        "bee/first.mp4": "ok", "cat/a.mp4": "ok", "cat/b.mp4": "failed", "cat/hard.mp4": "failed",
        "dog/a-rel-link.mp4": "failed", "dog/link.mp4": "failed"}
    assert df.loc["cat/b.mp4", "error"] == "duplicate of bee/first.mp4"
    assert df.loc["dog/a-rel-link.mp4", "error"] == "duplicate of bee/first.mp4"
    assert df.loc["cat/hard.mp4", "error"] == "duplicate of cat/a.mp4"
    assert df.loc["dog/link.mp4", "error"] == "duplicate of cat/a.mp4"
    st = os.stat(real)  # os.stat follows the symlink: the target's device and inode
    link = df.loc["dog/link.mp4"]
    assert (link["device"], link["inode"]) == (st.st_dev, st.st_ino)
    assert df.loc["cat/hard.mp4", "inode"] == st.st_ino


def test_labels_file_rows_naming_one_file_twice(tmp_path):
    real = touch(tmp_path / "v/a.mp4", b"video bytes")
    os.link(real, tmp_path / "v/hard.mp4")
    (tmp_path / "w").mkdir()
    os.symlink(real, tmp_path / "w/link.mp4")
    pd.DataFrame({"path": ["w/link.mp4", "v/hard.mp4", "v/a.mp4"], "label": ["x", "y", "x"],
                  "split": ["test", "train", "val"]}).to_csv(tmp_path / "l.csv", index=False)
    df = scan_source(None, labels=tmp_path / "l.csv").set_index("video_id")
    assert df["status"].to_dict() == {"v/a.mp4": "ok", "v/hard.mp4": "failed",
                                      "w/link.mp4": "failed"}
    assert (df.loc[["v/hard.mp4", "w/link.mp4"], "error"] == "duplicate of v/a.mp4").all()
    assert (df.loc[["v/hard.mp4", "w/link.mp4"], "split"] == "").all()  # in no split
    assert df.loc["v/a.mp4", "split"] == "val"


def test_mark_duplicates_fails_later_identical_bytes():
    rows = [dict(video_id=v, status=st, error=e, split=sp, source_hash=h) for v, st, e, sp, h in [
        ("b", "ok", "", "train", "h1"), ("a", "ok", "", "val", "h1"), ("c", "ok", "", "test", "h2"),
        ("d", "failed", "truncated", "", "h2"), ("e", "ok", "", "train", "h2"),
        ("f", "ok", "", "train", None)]]
    out = mark_duplicates(rows)
    assert out is rows  # in place
    assert [r["video_id"] for r in out] == ["b", "a", "c", "d", "e", "f"]  # same order
    assert [r["status"] for r in out] == ["failed", "ok", "ok", "failed", "failed", "ok"]
    assert [r["error"] for r in out] == ["duplicate of a", "", "", "truncated", "duplicate of c", ""]
    assert [r["split"] for r in out] == ["", "val", "test", "", "", "train"]


def test_mark_duplicates_leaves_rows_without_a_hash_alone():
    rows = [dict(video_id=v, status="ok", error="", split="train") for v in "ab"]
    rows[1]["source_hash"] = ""
    assert mark_duplicates(rows) == [dict(video_id="a", status="ok", error="", split="train"),
                                     dict(video_id="b", status="ok", error="", split="train",
                                          source_hash="")]


def old_mark_duplicates(videos):
    """The pandas implementation records replaced: the reference."""
    out = videos.copy()
    if "source_hash" not in out.columns:
        return out
    ids, status, digests = (out[c].to_numpy() for c in ("video_id", "status", "source_hash"))
    first: dict[str, str] = {}
    dups: dict[int, str] = {}
    for pos in ids.argsort(kind="stable"):
        digest = digests[pos]
        if status[pos] != "ok" or not isinstance(digest, str) or not digest:
            continue
        vid = first.setdefault(digest, ids[pos])
        if vid != ids[pos]:
            dups[int(pos)] = vid
    if dups:
        rows = list(dups)
        out.iloc[rows, out.columns.get_loc("status")] = "failed"
        out.iloc[rows, out.columns.get_loc("split")] = ""
        out.iloc[rows, out.columns.get_loc("error")] = [f"duplicate of {v}" for v in dups.values()]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_mark_duplicates_matches_the_pandas_version(seed):
    rnd = random.Random(seed)
    n = rnd.randint(0, 30)
    ids = rnd.sample([f"{c}/{i}.mp4" for c in "xyz" for i in range(20)], n)
    rows = [dict(video_id=v, status=rnd.choice(["ok", "ok", "failed"]), error="",
                 split=rnd.choice(["train", "val", ""]),
                 source_hash=rnd.choice(["h1", "h2", "h3", "", None, float("nan")]))
            for v in ids]
    want = old_mark_duplicates(pd.DataFrame(rows, columns=["video_id", "status", "error", "split",
                                                           "source_hash"]))
    got = mark_duplicates([dict(r) for r in rows])
    for column in ("video_id", "status", "error", "split"):
        assert [r[column] for r in got] == want[column].tolist(), column


def test_scan_rows_are_the_records_of_scan_source(tmp_path):
    touch(tmp_path / "cat/b.mp4")
    touch(tmp_path / "cat/a.mp4")
    touch(tmp_path / "dog/empty.mp4", b"")
    os.symlink(tmp_path / "nowhere.mp4", tmp_path / "dog/gone.mp4")  # no stats
    os.symlink(tmp_path / "cat/a.mp4", tmp_path / "dog/link.mp4")
    rows = scan_rows(tmp_path)
    assert all(list(r) == list(SCAN_COLUMNS) for r in rows)
    df = scan_source(tmp_path)
    assert [r["video_id"] for r in rows] == df["video_id"].tolist()  # sorted
    as_records = df.astype(object).where(df.notna(), None).to_dict("records")
    assert rows == as_records
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "failed"]
    assert rows[3]["error"] == "file not found" and rows[3]["inode"] is None
    assert rows[4]["error"] == "duplicate of cat/a.mp4"
    assert isinstance(rows[0]["inode"], int) and rows[0]["size_bytes"] == 1
    assert df["inode"].dtype == "UInt64" and df["mtime_ns"].dtype == "Int64"
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        scan_rows(tmp_path / "none")


def test_scan_rows_of_folders_and_path_lists_import_no_pandas(tmp_path):
    touch(tmp_path / "src/cat/a.mp4")
    (tmp_path / "src/list.txt").write_text("cat/a.mp4\nmissing.mp4\n")
    code = ("import sys; from vidfeat.ingestion.scan import scan_rows; "
            "rows = scan_rows(sys.argv[1]) + scan_rows(sys.argv[1] + '/list.txt', unlabelled=True); "
            "print([r['status'] for r in rows], 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['ok',", "'ok',", "'failed']", "False"]


def test_ingest_keeps_one_video_per_file(tmp_path):
    """Symlink, hard link and byte-identical copy under other class folders: one ok video each,
    the others failed 'duplicate of', and no content in two splits or stored twice."""
    import shutil

    from videos import make_video

    from vidfeat.ingestion._ingest import ingest

    src = tmp_path / "src"
    a = make_video(src / "cat" / "a.mp4", duration=1, fps=5)
    b = make_video(src / "cat" / "b.mp4", duration=1, fps=5, source="smptebars")
    make_video(src / "dog" / "own.mp4", duration=1, fps=5, source="mandelbrot")
    shutil.copyfile(a, src / "dog" / "copy.mp4")
    os.link(b, src / "dog" / "hard.mp4")
    os.symlink(a, src / "dog" / "link.mp4")
    result = ingest(src, tmp_path / "out", frames_per_video=2, size=32, split=(0.4, 0.3, 0.3),
                    progress=False)
    v = result.manifest.videos.set_index("video_id")
    assert v["status"].to_dict() == {"cat/a.mp4": "ok", "cat/b.mp4": "ok", "dog/copy.mp4": "failed",
                                     "dog/hard.mp4": "failed", "dog/link.mp4": "failed",
                                     "dog/own.mp4": "ok"}
    copies = v.loc[["dog/copy.mp4", "dog/link.mp4"], "error"].tolist()
    assert copies == ["duplicate of cat/a.mp4"] * 2
    assert v.loc["dog/hard.mp4", "error"] == "duplicate of cat/b.mp4"
    assert (v.loc[v["status"] == "failed", ["split", "n_frames"]] == ["", 0]).all().all()
    frames = result.manifest.frames
    assert set(frames["video_id"]) == {"cat/a.mp4", "cat/b.mp4", "dog/own.mp4"}
    # content (independent of vidfeat: sha256 of the source bytes) -> splits it was stored in
    import hashlib
    content = {vid: hashlib.sha256((src / vid).read_bytes()).hexdigest() for vid in v.index}
    splits = frames.assign(content=frames["video_id"].map(content)).groupby("content")["split"]
    assert splits.nunique().max() == 1 and splits.ngroups == 3
    probed = ["cat/a.mp4", "cat/b.mp4", "dog/copy.mp4", "dog/own.mp4"]  # links: failed at scan
    assert v.loc[probed, "source_hash"].str.len().gt(0).all()
    assert (v["inode"] == [os.stat(src / vid).st_ino for vid in v.index]).all()


# --- unlabelled sources ----------------------------------------------------------------------

def test_unlabelled_folder_takes_videos_at_every_depth(tmp_path):
    for rel in ["top.mp4", "a/mid.MKV", "a/b/deep.webm", "a/notes.txt", ".hidden/x.mp4",
                "a/.dot.mp4"]:
        touch(tmp_path / rel)
    df = scan_source(tmp_path, unlabelled=True)
    assert df["video_id"].tolist() == ["a/b/deep.webm", "a/mid.MKV", "top.mp4"]
    assert df["label"].tolist() == ["", "", ""]
    assert df["status"].tolist() == ["ok", "ok", "ok"]
    # labelled, the same tree keeps its class folders' videos only (top.mp4 has none)
    assert scan_source(tmp_path)["video_id"].tolist() == ["a/b/deep.webm", "a/mid.MKV"]


def test_unlabelled_text_list_resolves_against_its_folder_and_fails_bad_lines(tmp_path):
    touch(tmp_path / "list/v1.mp4")
    touch(tmp_path / "elsewhere/v2.mp4")
    touch(tmp_path / "list/-name.mp4")
    lines = ["# a comment", "", "v1.mp4", f"  {tmp_path / 'elsewhere/v2.mp4'}  ",
             "https://example.com/v.mp4", "-name.mp4", "missing.mp4", "v1.mp4"]
    listing = tmp_path / "list/videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    df = scan_source(listing, unlabelled=True).set_index("video_id")
    ext = f"_external{tmp_path}/elsewhere/v2.mp4"
    assert sorted(df.index) == sorted(["v1.mp4", ext, "_rejected/line5", "-name.mp4",
                                       "missing.mp4", "v1.mp4~dup8"])
    assert df.loc["v1.mp4", "status"] == "ok" and df.loc[ext, "status"] == "ok"
    assert df.loc["-name.mp4", "status"] == "ok"  # a file named -name, never an option
    assert df.loc["_rejected/line5", "error"].startswith("not a local file path")
    assert df.loc["missing.mp4", "error"] == "file not found"
    assert df.loc["v1.mp4~dup8", "error"] == "same file as line 3 of the list file"
    assert set(df["label"]) == {""}
    # given as labels= too, the same rows
    assert scan_source(None, labels=listing, unlabelled=True)["video_id"].tolist() == \
        sorted(df.index)


def test_unlabelled_table_needs_a_path_column_only(tmp_path):
    touch(tmp_path / "v.mp4")
    (tmp_path / "paths.csv").write_text("path\nv.mp4\n\n")
    df = scan_source(tmp_path / "paths.csv", unlabelled=True)
    assert df[["video_id", "label", "status"]].values.tolist() == [["v.mp4", "", "ok"]]
    pd.DataFrame({"path": ["v.mp4"], "label": ["cat"]}).to_parquet(tmp_path / "l.parquet")
    with pytest.raises(ValueError, match="has a 'label' column: an unlabelled ingest"):
        scan_source(None, labels=tmp_path / "l.parquet", unlabelled=True)
    (tmp_path / "s.csv").write_text("path,split\nv.mp4,train\n")
    with pytest.raises(ValueError, match="has a 'split' column"):
        scan_source(tmp_path / "s.csv", unlabelled=True)
    (tmp_path / "bin.lst").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        scan_source(tmp_path / "bin.lst", unlabelled=True)
    with pytest.raises(FileNotFoundError, match="source not found"):
        scan_source(tmp_path / "nope.txt", unlabelled=True)


def test_an_empty_label_still_fails_in_a_labelled_file(tmp_path):
    touch(tmp_path / "v.mp4")
    (tmp_path / "l.csv").write_text("path,label\nv.mp4,\n")
    df = scan_source(None, labels=tmp_path / "l.csv")
    assert df["error"].tolist() == ["empty label"]
