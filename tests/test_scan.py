"""Scanning a source: class folders and labels files -> one row per video, bad rows failed."""
import os
from pathlib import Path

import pandas as pd
import pytest

from vidfeat.ingestion.scan import scan_source


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
