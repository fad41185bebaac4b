"""Manifest contract: write/read round trip (parquet and csv) and errors naming the culprit."""
import json

import pandas as pd
import pytest

from vidfeat.ingestion.manifest import ManifestError, read_manifest, write_manifest


def tables():
    videos = pd.DataFrame({
        "video_id": ["a/1.mp4", "a/2.mp4", "b/1.mp4"], "path": ["/x/a/1.mp4", "/x/a/2.mp4", "/x/b/1.mp4"],
        "label": ["a", "a", "b"], "split": ["train", "val", ""], "status": ["ok", "ok", "failed"],
        "error": ["", "", "moov atom not found"], "duration_s": [1.0, 2.0, None],
        "fps": [10.0, 10.0, None], "width": [64, 64, None], "height": [48, 48, None],
        "n_frames": [2, 1, 0], "repeat": [2, 1, 0]})
    frames = pd.DataFrame({
        "frame_id": ["a/1.mp4#0", "a/1.mp4#5", "a/2.mp4#3"], "video_id": ["a/1.mp4", "a/1.mp4", "a/2.mp4"],
        "label": ["a", "a", "a"], "split": ["train", "train", "val"], "frame_index": [0, 5, 3],
        "timestamp_s": [0.0, 0.5, 0.3],
        "path": ["frames/a/1.mp4/000000.jpg", "frames/a/1.mp4/000005.jpg", "frames/a/2.mp4/000003.jpg"],
        "repeat": [2, 2, 1]})
    return videos, frames


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_round_trip(tmp_path, fmt):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames, {"k": 1}, fmt=fmt)
    m = read_manifest(tmp_path)
    assert m.videos["video_id"].tolist() == videos["video_id"].tolist()
    assert m.videos["error"].fillna("").tolist() == videos["error"].tolist()
    assert m.frames["timestamp_s"].tolist() == frames["timestamp_s"].tolist()
    assert m.class_names == ["a"] and m.info["k"] == 1 and len(m.fingerprint) == 32
    assert (tmp_path / f"videos.{fmt}").exists()


def test_csv_keeps_numeric_looking_ids_as_text(tmp_path):
    videos, frames = tables()
    videos.loc[0, "video_id"] = "007"
    frames["video_id"] = frames["video_id"].replace("a/1.mp4", "007")
    frames["frame_id"] = frames["video_id"] + "#" + frames["frame_index"].astype(str)
    write_manifest(tmp_path, videos, frames, fmt="csv")
    assert read_manifest(tmp_path).videos["video_id"].iloc[0] == "007"


def broken(change):
    videos, frames = tables()
    change(videos, frames)
    return videos, frames


CASES = {
    "missing column": (lambda v, f: v.pop("label"), "column 'label'"),
    "bad status": (lambda v, f: v.__setitem__("status", ["ok", "done", "failed"]), "'done'"),
    "bad split": (lambda v, f: v.__setitem__("split", ["train", "dev", ""]), "'dev'"),
    "duplicate id": (lambda v, f: v.__setitem__("video_id", ["a/1.mp4", "a/1.mp4", "b/1.mp4"]),
                     "duplicate value 'a/1.mp4'"),
    "no reason": (lambda v, f: v.__setitem__("error", ["", "", ""]), "'error' is empty for failed video 'b/1.mp4'"),
    "bad dtype": (lambda v, f: v.__setitem__("duration_s", ["x", "1", None]), "column 'duration_s'"),
    "unknown video": (lambda v, f: f.__setitem__("video_id", ["a/1.mp4", "a/1.mp4", "b/1.mp4"]),
                      "'b/1.mp4' that is not an ok video"),
    "repeat": (lambda v, f: f.__setitem__("repeat", [2, 0, 1]), "column 'repeat'"),
    "escaping path": (lambda v, f: f.__setitem__("path", ["../x.jpg", "a.jpg", "b.jpg"]), "column 'path'"),
    "split differs": (lambda v, f: f.__setitem__("split", ["train", "test", "val"]), "column 'split' of frame 'a/1.mp4#5'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifest_error_names_column_or_value(tmp_path, case):
    change, message = CASES[case]
    videos, frames = broken(change)
    # written with pandas directly: write_manifest itself refuses to write a bad manifest
    videos.to_parquet(tmp_path / "videos.parquet")
    frames.to_parquet(tmp_path / "frames.parquet")
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        write_manifest(tmp_path / "again", videos, frames)


def test_missing_folder_or_tables(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no videos.parquet or videos.csv"):
        read_manifest(tmp_path)


def test_check_files_finds_missing_jpegs(tmp_path):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames)
    with pytest.raises(ManifestError, match="3 frame files missing"):
        read_manifest(tmp_path, check_files=True)


def test_csv_keeps_numeric_looking_labels_as_text(tmp_path):
    videos, frames = tables()
    videos["label"] = videos["label"].map({"a": "007", "b": "1"})
    frames["label"] = "007"
    write_manifest(tmp_path, videos, frames, fmt="csv")
    m = read_manifest(tmp_path)
    assert m.class_names == ["007"] and m.videos["label"].tolist() == ["007", "007", "1"]


def test_no_frames_at_all_is_a_valid_manifest(tmp_path):
    videos, frames = tables()
    videos["status"], videos["error"], videos["split"] = "failed", "broken", ""
    write_manifest(tmp_path, videos, frames.iloc[:0])
    assert read_manifest(tmp_path).frames.empty


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_corrupt_table_raises_manifest_error_naming_the_file(tmp_path, fmt):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames, fmt=fmt)
    bad = tmp_path / f"videos.{fmt}"
    # not UTF-8 and no consistent row shape: a parse failure for pyarrow and for the CSV reader
    bad.write_bytes(b"video_id,path\n\xff\xfe\x00garbage,\"unterminated\n" + bytes(range(256)))
    kind = "Parquet" if fmt == "parquet" else "CSV"
    with pytest.raises(ManifestError, match=rf"videos\.{fmt}: not a readable {kind} file"):
        read_manifest(tmp_path)


def test_truncated_parquet_raises_manifest_error(tmp_path):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames)
    path = tmp_path / "frames.parquet"
    path.write_bytes(path.read_bytes()[:-20])  # a copy cut short: footer gone
    with pytest.raises(ManifestError, match=r"frames\.parquet: not a readable Parquet file"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text, message", [("{not json", "not readable JSON"),
                                           ("[1, 2]", "expected a JSON object, got list")])
def test_bad_ingest_json_raises_manifest_error(tmp_path, text, message):
    videos, frames = tables()
    write_manifest(tmp_path, videos, frames, {"k": 1})
    (tmp_path / "ingest.json").write_text(text)
    with pytest.raises(ManifestError, match=rf"ingest\.json: {message}"):
        read_manifest(tmp_path)


def test_a_folder_of_videos_says_to_ingest_first(tiny_dataset):
    import subprocess
    import sys

    with pytest.raises(ManifestError, match="holds videos.*run `vidfeat ingest"):
        read_manifest(tiny_dataset)
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "extract", str(tiny_dataset), "-o",
                           str(tiny_dataset.parent / "f.h5"), "--weights", "none",
                           "--backbone", "resnet18"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "vidfeat ingest" in proc.stderr


def unlabelled_tables():
    videos, frames = tables()
    videos["label"], videos["split"] = ["", "", ""], ["all", "all", ""]
    frames["label"], frames["split"] = "", "all"
    return videos, frames


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unlabelled_manifest_round_trip(tmp_path, fmt):
    write_manifest(tmp_path, *unlabelled_tables(), fmt=fmt)
    m = read_manifest(tmp_path)  # csv reads "" labels back as missing: they must come back ""
    assert m.unlabelled and m.class_names == [""]
    assert m.videos["label"].tolist() == ["", "", ""] and set(m.frames["label"]) == {""}


@pytest.mark.parametrize("change, message", [
    (lambda v, f: v.__setitem__("label", ["a", "", ""]),
     "'a/1.mp4' has a label or a split other than 'all'"),
    (lambda v, f: v.__setitem__("split", ["all", "train", ""]),
     "'a/2.mp4' has a label or a split other than 'all'"),
])
def test_unlabelled_split_is_all_or_nothing(tmp_path, change, message):
    videos, frames = unlabelled_tables()
    change(videos, frames)
    with pytest.raises(ManifestError, match=message):
        write_manifest(tmp_path, videos, frames)


def test_empty_label_in_a_labelled_manifest_is_refused(tmp_path):
    videos, frames = tables()
    videos["label"] = ["", "", "b"]
    frames["label"] = ""
    with pytest.raises(ManifestError, match="column 'label' is empty for an ok video"):
        write_manifest(tmp_path, videos, frames)


# --- clip manifests ------------------------------------------------------------------------------

CLIP_INFO = {"sampling": {"mode": "uniform", "clips_per_video": 2, "clip_len": 2,
                          "clip_fps": 5.0, "short_clips": "pad"}}


def clip_tables():
    """Two clips of a/1.mp4 (the second padded at its end) and one of a/2.mp4, clip_len 2."""
    videos, _ = tables()
    rows = [("a/1.mp4", 0, 0, 0, 0), ("a/1.mp4", 2, 0, 1, 0), ("a/1.mp4", 5, 1, 0, 0),
            ("a/1.mp4", 5, 1, 1, 1), ("a/2.mp4", 3, 2, 0, 0), ("a/2.mp4", 4, 2, 1, 0)]
    frames = pd.DataFrame({
        "frame_id": [f"{v}#{i}@{c}.{p}" for v, i, c, p, _ in rows],
        "video_id": [r[0] for r in rows], "label": "a",
        "split": ["train" if r[0] == "a/1.mp4" else "val" for r in rows],
        "frame_index": [r[1] for r in rows], "timestamp_s": [r[1] / 10 for r in rows],
        "path": [f"frames/{r[0]}/{r[1]:06d}.jpg" for r in rows],
        "repeat": [2 if r[0] == "a/1.mp4" else 1 for r in rows],
        "clip_id": [r[2] for r in rows], "clip_pos": [r[3] for r in rows],
        "padded": [bool(r[4]) for r in rows]})
    return videos, frames


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_clip_manifest_round_trip(tmp_path, fmt):
    videos, frames = clip_tables()
    write_manifest(tmp_path, videos, frames, CLIP_INFO, fmt=fmt)
    m = read_manifest(tmp_path)
    assert m.clips and m.clip_len == 2
    assert m.frames["clip_id"].tolist() == [0, 0, 1, 1, 2, 2]
    assert m.frames["padded"].tolist() == [False, False, False, True, False, False]
    videos, frames = tables()
    write_manifest(tmp_path / "frames", videos, frames, {"sampling": {"mode": "uniform"}})
    plain = read_manifest(tmp_path / "frames")
    assert not plain.clips and plain.clip_len is None


CLIP_CASES = {
    "no clip_pos": (lambda f: f.pop("clip_pos"), "frames manifest: missing column 'clip_pos'"),
    "no padded": (lambda f: f.pop("padded"), "frames manifest: missing column 'padded'"),
    "positions out of order": (lambda f: f.__setitem__("clip_pos", [0, 1, 1, 0, 0, 1]),
                               "column 'clip_pos' of frame 'a/1.mp4#5@1.0' is 1, expected 0"),
    "split clip": (lambda f: f.__setitem__("clip_id", [0, 0, 1, 1, 0, 0]),
                   "column 'clip_id': the rows of clip 0 are not consecutive"),
    "short clip": (lambda f: f.__setitem__("clip_id", [0, 0, 1, 2, 2, 2]),
                   "column 'clip_pos' of frame 'a/1.mp4#5@1.1' is 1, expected 0"),
    "clip across videos": (lambda f: f.__setitem__("clip_id", [0, 0, 1, 1, 1, 1]),
                           "column 'clip_pos' of frame 'a/2.mp4#3@2.0' is 0, expected 2"),
    "missing clip_id value": (lambda f: f.__setitem__("clip_id", [0, 0, 1, 1, 2, None]),
                              "column 'clip_id' cannot be read as int64"),
}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_broken_clip_manifest_is_refused_naming_the_column(tmp_path, case):
    change, message = CLIP_CASES[case]
    videos, frames = clip_tables()
    change(frames)
    with pytest.raises(ManifestError, match=message):
        write_manifest(tmp_path, videos, frames, CLIP_INFO)
    videos.to_parquet(tmp_path / "videos.parquet")
    frames.to_parquet(tmp_path / "frames.parquet")
    (tmp_path / "ingest.json").write_text(json.dumps(CLIP_INFO))
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_clip_length_other_than_recorded_is_refused(tmp_path):
    videos, frames = clip_tables()
    info = {"sampling": {**CLIP_INFO["sampling"], "clip_len": 3}}
    with pytest.raises(ManifestError, match=r"column 'clip_pos': clip 0 has 2 rows, expected clip_len=3"):
        write_manifest(tmp_path, videos, frames, info)
    # whole clips in order, but clip 3 holds frames of two videos
    videos, frames = clip_tables()
    frames["clip_pos"] = [0, 1, 0, 1, 0, 1]
    frames["clip_id"] = [0, 0, 1, 1, 3, 3]
    frames["video_id"] = ["a/1.mp4"] * 5 + ["a/2.mp4"]
    frames["split"] = ["train"] * 5 + ["val"]
    frames["repeat"] = [2] * 5 + [1]
    with pytest.raises(ManifestError, match="column 'clip_id': clip 3 holds frames of more than one video"):
        write_manifest(tmp_path, videos, frames, CLIP_INFO)
