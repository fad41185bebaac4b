"""vidfeat export, and the unlabelled path end to end: ingest --unlabelled -> extract -> report,
export; train refused. Real tiny videos, a real resnet18 (random weights) on the CPU, real HDF5."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from featfiles import make_features, resize_disk, small_disk, write_features
from videos import make_video

from vidfeat.cli import main as cli_main
from vidfeat.exporting import export, safe_target
from vidfeat.files import StorageError
from vidfeat.extraction._extract import extract
from vidfeat.ingestion._ingest import ingest
from vidfeat.reporting._report import report

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """An unlabelled ingest of three videos at three depths and its resnet18 feature file."""
    root = tmp_path_factory.mktemp("unlabelled")
    for rel, source in (("src/top.mp4", "testsrc2"), ("src/a/mid.mp4", "smptebars"),
                        ("src/a/b/deep.mp4", "mandelbrot")):
        make_video(root / rel, duration=0.6, fps=5, size=(32, 24), source=source)
    ingest(root / "src", root / "ingest", unlabelled=True, frames_per_video=2, progress=False)
    extract(root / "ingest", root / "f.h5", backbone="resnet18", weights="none", device="cpu",
            progress=False)
    return root


def _independent_rows(h5, frames_table, vid):
    """``vid``'s rows read with h5py, ordered by the manifest's timestamps (read with pandas)."""
    with h5py.File(h5, "r") as f:
        video_id = f["video_id"].asstr()[:]
        frame_id = f["frame_id"].asstr()[:]
        feats = f["features"][:]
    rows = np.flatnonzero(video_id == vid)
    ts = frames_table.set_index("frame_id").loc[frame_id[rows], "timestamp_s"].to_numpy()
    order = np.argsort(ts, kind="stable")
    return feats[rows[order]], frame_id[rows[order]].tolist(), ts[order].tolist()


def test_unlabelled_extract_report_and_export_end_to_end(unlabelled, tmp_path):
    h5 = unlabelled / "f.h5"
    with h5py.File(h5, "r") as f:
        assert json.loads(f.attrs["class_names"]) == [""]
        assert set(f["label"][:]) == {0} and set(f["split"].asstr()[:]) == {"all"}
    rep = report(unlabelled / "ingest", tmp_path / "report", progress=False)
    data = json.loads((tmp_path / "report/report.json").read_text())
    assert data["totals"]["ok"] == 3 and data["totals"]["failed"] == 0
    assert data["splits"] == ["all"] and data["classes"] == []
    assert rep is not None
    res = export(h5, tmp_path / "out", progress=False)
    assert (res.n_videos, res.n_written, res.n_unchanged, res.failures) == (3, 6, 0, {})
    assert res.timestamps and res.exit_code == 0
    frames = pd.read_parquet(unlabelled / "ingest/frames.parquet")
    for vid in ("top.mp4", "a/mid.mp4", "a/b/deep.mp4"):
        expected, fids, ts = _independent_rows(h5, frames, vid)
        got = np.load(tmp_path / "out" / f"{vid}.npy")
        assert got.dtype == np.float16 and got.shape == (2, 512)
        assert np.array_equal(got, expected)
        meta = json.loads((tmp_path / "out" / f"{vid}.json").read_text())
        assert meta["frame_id"] == fids and meta["timestamp_s"] == ts
        assert ts == sorted(ts)
    assert sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "a/b/deep.mp4.json", "a/b/deep.mp4.npy", "a/mid.mp4.json", "a/mid.mp4.npy",
        "top.mp4.json", "top.mp4.npy"]


def test_rerun_skips_unchanged_files_and_rewrites_a_changed_one(unlabelled, tmp_path):
    h5 = unlabelled / "f.h5"
    export(h5, tmp_path, progress=False)
    stamp = os.stat(tmp_path / "top.mp4.npy").st_mtime_ns
    again = export(h5, tmp_path, progress=False)
    assert (again.n_written, again.n_unchanged) == (0, 6)
    assert os.stat(tmp_path / "top.mp4.npy").st_mtime_ns == stamp
    good = (tmp_path / "a/mid.mp4.npy").read_bytes()
    (tmp_path / "a/mid.mp4.npy").write_bytes(good[:-2] + b"\0\0")
    fixed = export(h5, tmp_path, progress=False)
    assert (fixed.n_written, fixed.n_unchanged) == (1, 5)
    assert (tmp_path / "a/mid.mp4.npy").read_bytes() == good
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_ingest_folder_gone_exports_frame_ids_without_timestamps(unlabelled, tmp_path):
    moved = unlabelled.with_name(unlabelled.name + "-moved")
    (unlabelled / "ingest").rename(moved)
    try:
        res = export(unlabelled / "f.h5", tmp_path, progress=False)
    finally:
        moved.rename(unlabelled / "ingest")
    assert not res.timestamps and res.exit_code == 0
    assert "timestamps unavailable" in res.summary()
    meta = json.loads((tmp_path / "a/b/deep.mp4.json").read_text())
    assert meta["timestamp_s"] is None and "timestamps unavailable" in meta["note"]
    assert [f.rpartition("#")[0] for f in meta["frame_id"]] == ["a/b/deep.mp4"] * 2
    assert meta["frame_index"] == sorted(meta["frame_index"])


def test_train_refuses_unlabelled_features_in_one_line(unlabelled, tmp_path):
    done = subprocess.run([sys.executable, "-m", "vidfeat", "train", str(unlabelled / "f.h5"),
                           "-o", str(tmp_path / "model")], capture_output=True, text=True,
                          cwd=TESTS.parent)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"vidfeat train: error: {unlabelled / 'f.h5'} has no labels (ingested with "
        "--unlabelled): train needs labelled videos"]
    assert not (tmp_path / "model").exists()


def test_labelled_file_exports_every_video(tmp_path):
    data = make_features({"cat": 2, "dog": 1}, dim=8, frames=3)
    order = np.arange(len(data["frame_id"]))[::-1]  # rows stored out of frame order
    data = {k: (v[order] if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    h5 = write_features(tmp_path / "f.h5", data, dtype="float32")
    res = export(h5, tmp_path / "out", progress=False)
    assert res.n_videos == 3 and not res.timestamps and res.dtype == "float32"
    for vid in ("cat/v0000.mp4", "cat/v0001.mp4", "dog/v0000.mp4"):
        rows = [i for i in range(len(order)) if data["video_id"][i] == vid]
        rows.sort(key=lambda i: int(data["frame_id"][i].rpartition("#")[2]))
        expected = data["features"][rows]
        assert np.array_equal(np.load(tmp_path / "out" / f"{vid}.npy"), expected)


@pytest.mark.parametrize("vid", ["../evil", "/etc/evil", "a/../../evil", "a\\..\\evil", "",
                                 "a//b", "./a", "a/./b", "a/..", "x\x00y"])
def test_unsafe_video_ids_are_refused(tmp_path, vid):
    with pytest.raises(ValueError, match="not a safe relative path"):
        safe_target(tmp_path, vid)


def test_hostile_ids_in_a_feature_file_never_leave_dir(tmp_path):
    data = make_features({"cat": 3}, dim=4, frames=1)
    data["video_id"] = np.array(["../escape", "link/inside", "ok/v.mp4"])
    data["frame_id"] = np.array([f"{v}#0" for v in data["video_id"]])
    h5 = write_features(tmp_path / "f.h5", data, dtype="float32")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside)  # a folder in DIR that points out of it
    res = export(h5, out, progress=False)
    assert set(res.failures) == {"../escape", "link/inside"} and res.exit_code == 1
    assert res.failures["link/inside"] == "video_id's folder resolves outside the export folder"
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape.npy").exists()
    assert (out / "ok/v.mp4.npy").is_file()
    assert cli_main(["export", str(h5), "-o", str(out), "-q"]) == 1


def test_export_cli_on_a_missing_file_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vidfeat", "export", str(tmp_path / "no.h5"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=TESTS.parent)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        yield disk


def test_full_disk_stops_with_one_line_and_a_rerun_completes(tmp_path, tiny_disk):
    data = make_features({"cat": 4}, dim=2048, frames=4)  # 4 videos of 32 KiB: > 64 KiB
    h5 = write_features(tmp_path / "f.h5", data, dtype="float32")
    with pytest.raises(StorageError, match=r"^disk full writing .*\.npy: free space and rerun"):
        export(h5, tiny_disk / "out", progress=False)
    written = sorted((tiny_disk / "out/cat").glob("*"))
    assert [p for p in written if p.name.startswith(".")] == []  # no temp file left
    for npy in (p for p in written if p.suffix == ".npy"):  # whatever landed is whole
        vid = f"cat/{npy.name[:-4]}"
        assert np.array_equal(np.load(npy), data["features"][data["video_id"] == vid])
    resize_disk(tiny_disk, "1m")
    res = export(h5, tiny_disk / "out", progress=False)
    assert res.n_written + res.n_unchanged == 8 and res.n_unchanged == len(written)
    assert res.exit_code == 0


def test_clip_file_exports_one_row_per_clip_with_its_span(tmp_path):
    """An unlabelled clip ingest, r3d_18 clip features: per video, its clips in time order with
    clip ids and start/end times (checked against frames.parquet read with pandas)."""
    import warnings

    for name, source in (("one.mp4", "testsrc2"), ("two.mp4", "smptebars")):
        make_video(tmp_path / "src" / name, duration=1.2, fps=10, size=(32, 24), source=source)
    ingest(tmp_path / "src", tmp_path / "ingest", unlabelled=True, clips_per_video=3,
           clip_len=2, clip_fps=5.0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(tmp_path / "ingest", tmp_path / "c.h5", backbone="r3d_18", weights="none",
                device="cpu", progress=False, workers=0)
    result = export(tmp_path / "c.h5", tmp_path / "out", progress=False)
    assert result.exit_code == 0 and result.n_rows == 6 and result.timestamps
    frames = pd.read_parquet(tmp_path / "ingest" / "frames.parquet")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        X, vids = f["features"][...], f["video_id"].asstr()[...]
    for vid in ("one.mp4", "two.mp4"):
        clips = frames[frames["video_id"] == vid].groupby("clip_id", sort=True)["timestamp_s"]
        meta = json.loads((tmp_path / "out" / f"{vid}.json").read_text())
        assert meta["rows"] == 3 and meta["clip_id"] == sorted(clips.groups)
        assert meta["start_s"] == pytest.approx(clips.first().tolist())
        assert meta["end_s"] == pytest.approx((clips.last() + 1 / 5.0).tolist())
        assert meta["start_s"] == sorted(meta["start_s"])
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{vid}.npy"), X[vids == vid])


def test_frame_index_of_a_clip_ingests_rows():
    from vidfeat.exporting import _frame_index

    # a 2D backbone on a clip ingest: rows are <video_id>#<frame_index>@<clip_id>.<clip_pos>
    assert [_frame_index(f) for f in ("a/b.mp4#12", "a/b.mp4#12@3.1", "x#y@1.0", "v@clip0")] \
        == [12, 12, -1, -1]
