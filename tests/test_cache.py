import hashlib
import json
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from featfiles import make_features, resize_disk, small_disk, write_features

from vidfeat.extraction.cache import FeatureFileBuilder, FeatureStore, merge, output_lock
from vidfeat.extraction.integrity import CorruptFeatureFile
from vidfeat.files import StorageError


@pytest.fixture
def data():
    return make_features({"a": 5, "b": 3}, dim=6, frames=3)


def test_load_by_split_and_level(tmp_path, data):
    path = write_features(tmp_path / "f.h5", data, dtype="float32")
    with FeatureStore(path) as s:
        assert len(s) == 24 and s.feature_dim == 6 and s.class_names == ["a", "b"]
        train = s.load("train")
        mask = data["split"] == "train"
        np.testing.assert_array_equal(train.X, data["features"][mask])
        np.testing.assert_array_equal(train.frame_id, data["frame_id"][mask])
        assert train.X.dtype == np.float32 and train.y.dtype == np.int64
        videos = s.load("val", level="video")
        assert videos.frame_id is None and len(set(videos.video_id)) == len(videos)
        chunks = list(s.iter_chunks("train", rows=5))
        assert max(len(c.y) for c in chunks) <= 5
        np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), train.X)
        with pytest.raises(ValueError, match="level='clip' is not one of"):
            s.load(level="clip")
        with pytest.raises(ValueError, match="split='dev' is not one of"):
            s.load("dev")


def test_store_refuses_what_is_not_a_complete_feature_file(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="feature file not found"):
        FeatureStore(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        FeatureStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a vidfeat feature file .*'class_names' missing"):
        FeatureStore(tmp_path / "other.h5")
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore(write_features(tmp_path / "half.h5", data, complete=False))
    with pytest.raises(ValueError, match="dataset /label missing"):
        FeatureStore(write_features(tmp_path / "nolabel.h5", data, drop=("label",)))


def test_builder_is_invisible_until_finished(tmp_path):
    meta = pd.DataFrame({"frame_id": ["v#0", "v#1", "w#0"], "video_id": ["v", "v", "w"],
                         "label": [0, 0, 1], "split": ["train"] * 3, "repeat": [1, 1, 2],
                         "row": [0, 1, 2]})
    out = tmp_path / "f.h5"
    b = FeatureFileBuilder(out, meta, 2, dtype="float32")
    b.write(0, np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    assert not out.exists()
    b.abort()
    assert not out.exists() and not list(tmp_path.iterdir())
    b = FeatureFileBuilder(out, meta, 2, dtype="float32")
    b.write(0, np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    b.finish({"class_names": ["x", "y"], "backbone": "t", "weights": "none", "feature_dim": 2,
              "manifest_fingerprint": "0"})
    with FeatureStore(out) as s:
        v = s.load(level="video")
        np.testing.assert_array_equal(v.X, [[2, 3], [5, 6]])
        assert v.repeat.tolist() == [1, 2] and s.column("n_frames", level="video").tolist() == [2, 1]


def test_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "f.h5"
    with output_lock(out):
        with pytest.raises(RuntimeError, match="another vidfeat process is writing"):
            output_lock(out).__enter__()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from vidfeat.extraction.cache import output_lock\n"
         f"l = output_lock({str(out)!r}).__enter__(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError, match="lock .* is held"):
        output_lock(out).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with output_lock(out):
        pass


# ----------------------------------------------------------------------------------- integrity
CORRUPT = (r"feature file .*{name} is corrupt \(checksum error in {ds}\): re-extract it "
           r"\(vidfeat extract \.\.\. --overwrite\)$")


@pytest.fixture
def sound(tmp_path):
    """A float16 feature file of 280 frames: /features spans two chunks of 256 rows."""
    data = make_features({"a": 40, "b": 30}, dim=16, frames=4)
    return write_features(tmp_path / "sound.h5", data,
                          attrs={"ingest_dir": "/data/marker-ingest-q7", "manifest_frames": 280})


def chunks_of(path, name):
    """(byte offset, size) in the file of each stored chunk of dataset ``name`` (h5py's view)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        return [(ds.id.get_chunk_info(i).byte_offset, ds.id.get_chunk_info(i).size)
                for i in range(ds.id.get_num_chunks())]


def flipped(src, dst, offset: int, bit: int):
    data = bytearray(src.read_bytes())
    data[offset] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst


def test_every_dataset_is_checksummed_with_fixed_length_strings(sound):
    with h5py.File(sound, "r") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset)
                     else None)
        assert len(datasets) == 13
        for ds in datasets:
            assert ds.fletcher32, ds.name
            info = h5py.check_string_dtype(ds.dtype)
            assert info is None or (info.encoding == "utf-8" and info.length), ds.name
        assert f["video_id"].asstr()[0] == "a/v0000.mp4"
        assert f["video_id"].dtype.itemsize == len("a/v0000.mp4")
    with FeatureStore(sound) as s:
        assert s.column("frame_id")[5] == "a/v0001.mp4#1" and s.verify() == []


def test_random_bit_flips_in_features_fail_every_read(sound, tmp_path):
    rng = np.random.default_rng(7)
    chunks = chunks_of(sound, "features")
    assert len(chunks) == 2
    for trial in range(40):
        offset, size = chunks[rng.integers(len(chunks))]
        bad = flipped(sound, tmp_path / "bad.h5", offset + int(rng.integers(size)),
                      int(rng.integers(8)))
        with FeatureStore(bad) as s:
            match = CORRUPT.format(name="bad.h5", ds="/features")
            with pytest.raises(CorruptFeatureFile, match=match):
                s.load()
            with pytest.raises(CorruptFeatureFile, match=match):
                list(s.iter_chunks("train", rows=64))
            with pytest.raises(CorruptFeatureFile, match=match):
                s.feature_rows(0, len(s))
            assert any("checksum error in /features" in p for p in s.verify())
            assert s.column("label").tolist() == [0] * 160 + [1] * 120  # other data still reads


def test_flips_in_strings_and_video_means_fail_their_reads(sound, tmp_path):
    offset, size = chunks_of(sound, "video_id")[0]
    bad = flipped(sound, tmp_path / "ids.h5", offset + size // 3, 2)
    with FeatureStore(bad) as s:
        with pytest.raises(CorruptFeatureFile, match=CORRUPT.format(name="ids.h5", ds="/video_id")):
            s.column("video_id")
        with pytest.raises(CorruptFeatureFile, match="/video_id"):
            s.load("train")
        s.load(level="video")  # the other datasets still read
    offset, size = chunks_of(sound, "videos/features")[0]
    bad = flipped(sound, tmp_path / "means.h5", offset + size // 2, 5)
    with FeatureStore(bad) as s:
        ds = "/videos/features"
        with pytest.raises(CorruptFeatureFile, match=CORRUPT.format(name="means.h5", ds=ds)):
            s.load(level="video")
        with pytest.raises(CorruptFeatureFile, match=ds):
            s.feature_rows(0, 3, level="video")
        assert s.verify() == [f"feature file {bad} is corrupt (checksum error in {ds}): "
                              "re-extract it (vidfeat extract ... --overwrite)"]


def test_an_edited_attribute_fails_attrs_sha256(sound, tmp_path):
    raw = sound.read_bytes()
    at = raw.find(b"/data/marker-ingest-q7")
    assert at > 0 and raw.find(b"/data/marker-ingest-q7", at + 1) == -1
    bad = flipped(sound, tmp_path / "attr.h5", at + 6, 0)  # "marker" -> "larker"
    with h5py.File(bad, "r") as f:
        assert f.attrs["ingest_dir"] == "/data/larker-ingest-q7"  # h5py itself sees no damage
    with pytest.raises(CorruptFeatureFile, match=r"attr.h5 is corrupt \(attributes do not match "
                                                 r"attrs_sha256\): re-extract it"):
        FeatureStore(bad)


def test_attrs_sha256_and_features_fingerprint_are_the_documented_hashes(sound, tmp_path):
    def sha(data):
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    with h5py.File(sound, "r") as f:
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else
                     v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    settings = ["manifest_fingerprint", "backbone", "weights", "weights_sha256", "resize_size",
                "input_size", "interpolation", "mean", "std", "precision", "dtype",
                "feature_dim"]
    expected = sha({k: attrs.get(k) for k in settings})
    assert attrs.pop("attrs_sha256") == sha(attrs)
    with FeatureStore(sound) as s:
        assert s.features_fingerprint == attrs["features_fingerprint"] == expected
    data = make_features({"a": 3, "b": 2}, dim=16, frames=2, seed=3)
    other = write_features(tmp_path / "other.h5", data)  # other frames, same settings
    with FeatureStore(other) as s:
        assert s.features_fingerprint == expected
    shard = write_features(tmp_path / "shard.h5", data, attrs={"shard_index": 1, "shard_count": 2})
    with FeatureStore(shard) as s:
        assert s.features_fingerprint == sha({**{k: attrs.get(k) for k in settings},
                                              "shard_index": 1, "shard_count": 2})


def test_verify_finds_what_checksums_cannot(sound, tmp_path):
    bad = shutil.copy(sound, tmp_path / "means.h5")
    with h5py.File(bad, "r+") as f:  # rewritten by a tool: valid checksums, wrong values
        means = f["videos/features"][...]
        means[3, 2] += 0.5
        f["videos/features"][...] = means
    with FeatureStore(bad) as s:
        assert s.verify() == [f"{bad}: /videos/features of 1 video(s) (first 'a/v0003.mp4') "
                              "are not the mean of their frames' /features"]
    counts = shutil.copy(sound, tmp_path / "counts.h5")
    with h5py.File(counts, "r+") as f:
        f["videos/n_frames"][0] = 5  # 4 frames in /video_id
    with FeatureStore(counts) as s:
        assert s.verify() == [f"{counts}: /videos/n_frames sum to 281, /features has 280 rows"]
    old = shutil.copy(bad, tmp_path / "old.h5")
    with h5py.File(old, "r+") as f:  # as vidfeat wrote files before checksums
        del f.attrs["attrs_sha256"]
        del f.attrs["features_fingerprint"]
    with FeatureStore(old) as s:
        assert s.features_fingerprint == s.fingerprint == "f" * 16
        assert s.load().X.shape == (280, 16)
        assert [p.split(": ")[1] for p in s.verify()] == [
            "no attrs_sha256 (written before vidfeat checksummed feature files), so its "
            "attributes and data cannot be verified",
            "/videos/features of 1 video(s) (first 'a/v0003.mp4') are not the mean of their "
            "frames' /features"]


def test_train_on_a_corrupt_file_says_one_line(sound, tmp_path):
    offset, size = chunks_of(sound, "features")[0]
    bad = flipped(sound, tmp_path / "bad.h5", offset + 100, 3)
    run = subprocess.run([sys.executable, "-m", "vidfeat", "train", str(bad), "-o",
                          str(tmp_path / "model"), "--epochs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode > 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"vidfeat train: error: feature file {bad} is corrupt (checksum error in /features): "
        "re-extract it (vidfeat extract ... --overwrite)"]


# ----------------------------------------------------------------------------------- full disk
def big(tmp_path, name="shard.h5"):
    """A 2 MB float32 feature file (2000 frames x 256) on the ordinary disk, mergeable alone."""
    data = make_features({"a": 300, "b": 200}, dim=256, frames=4)
    return write_features(tmp_path / name, data, dtype="float32",
                          attrs={"manifest_frames": 2000})


def test_builder_and_merge_on_a_full_disk_raise_storage_error(tmp_path):
    shard = big(tmp_path)
    with FeatureStore(shard) as s:
        meta = pd.DataFrame({c: s.column(c) for c in ("frame_id", "video_id", "split", "label",
                                                      "repeat", "row")})
        X = s.load().X
    with small_disk(tmp_path / "disk", "1m") as disk:
        b = FeatureFileBuilder(disk / "f.h5", meta, 256, dtype="float32")
        with pytest.raises(StorageError, match=f"disk full writing {disk / 'f.h5'}: free space "
                                               "and rerun the same command; nothing was lost"):
            for start in range(0, 2000, 250):
                b.write(start, X[start:start + 250])
            b.finish({"class_names": ["a", "b"], "backbone": "t", "weights": "none",
                      "feature_dim": 256, "manifest_fingerprint": "0"})
        b.abort()  # a second abort is harmless
        assert not list(disk.iterdir())
        with pytest.raises(StorageError, match=f"disk full writing {disk / 'm.h5'}"):
            merge([shard], disk / "m.h5")
        assert not list(disk.iterdir())
        resize_disk(disk, "8m")  # space freed: the same call completes
        merge([shard], disk / "m.h5")
        with FeatureStore(disk / "m.h5") as m:
            np.testing.assert_array_equal(m.load().X, X)
            assert m.verify() == []


def test_merge_cli_on_a_full_disk_exits_1_with_one_line(tmp_path):
    shard = big(tmp_path)
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "merged.h5"
        run = subprocess.run([sys.executable, "-m", "vidfeat", "merge", str(shard), "-o", str(out)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, run.stderr  # not a crash (negative), not bad input (2)
        assert run.stderr.strip().splitlines() == [
            f"vidfeat merge: error: disk full writing {out}: free space and rerun the same "
            "command; nothing was lost"]
        assert not list(disk.iterdir())


def test_the_wrong_kind_of_input_says_which_stage_comes_first(tmp_path):
    import subprocess
    import sys

    from vidfeat.ingestion.manifest import write_manifest

    from vidfeat.ingestion.manifest import FRAME_COLUMNS, VIDEO_COLUMNS

    ingest_dir = tmp_path / "ingest"
    write_manifest(ingest_dir, pd.DataFrame(columns=list(VIDEO_COLUMNS)),
                   pd.DataFrame(columns=list(FRAME_COLUMNS)))
    with pytest.raises(ValueError, match="is an ingest folder.*vidfeat extract"):
        FeatureStore(ingest_dir)
    (tmp_path / "f.h5.partial").mkdir()
    with pytest.raises(FileNotFoundError, match="interrupted.*rerun the same `vidfeat extract`"):
        FeatureStore(tmp_path / "f.h5")
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "train", str(ingest_dir), "-o",
                           str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "vidfeat extract" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_train_into_a_file_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    path = write_features(tmp_path / "f.h5", make_features({"a": 4, "b": 4}, dim=8))
    (tmp_path / "taken").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "train", str(path), "-o",
                           str(tmp_path / "taken")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file, but the output must be a folder" in lines[0]
    assert "Trained" not in proc.stdout


def test_clip_rows_are_checksummed_verified_and_merged(tmp_path):
    """A clip file's own datasets (clip_id, start_s, end_s): fletcher32 like the rest, their row
    counts verified, carried through a merge of shards."""
    meta = pd.DataFrame({"frame_id": ["v@clip0", "v@clip1", "w@clip0"], "video_id": ["v", "v", "w"],
                         "label": [0, 0, 1], "split": ["train"] * 3, "repeat": [1, 1, 1],
                         "row": [0, 1, 2], "clip_id": [0, 1, 2], "start_s": [0.0, 0.5, 0.0],
                         "end_s": [0.4, 0.9, 0.4]})
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    attrs = {"class_names": ["x", "y"], "backbone": "r3d_18", "weights": "none",
             "feature_dim": 2, "manifest_fingerprint": "0", "manifest_frames": 48,
             "manifest_clips": 3}
    shards = []
    for i, rows in enumerate(([0, 1], [2])):
        b = FeatureFileBuilder(tmp_path / f"s{i}.h5", meta.iloc[rows], 2, dtype="float32")
        b.write(0, X[rows])
        shards.append(b.finish({**attrs, "shard": f"{i}/2", "shard_index": i, "shard_count": 2}))
    merged = merge(shards, tmp_path / "m.h5")
    with h5py.File(merged, "r") as f:
        for name, dtype in (("clip_id", np.int64), ("start_s", np.float64), ("end_s", np.float64)):
            assert f[name].fletcher32 and f[name].dtype == dtype
            np.testing.assert_array_equal(f[name][...], meta[name].to_numpy())
        assert f["videos/n_frames"][...].tolist() == [2, 1]
    with FeatureStore(merged) as s:
        assert s.verify() == []
    short = shutil.copy(merged, tmp_path / "short.h5")
    with h5py.File(short, "r+") as f:
        del f["end_s"]
        f.create_dataset("end_s", data=[0.4, 0.9], chunks=True, fletcher32=True)
    with FeatureStore(short) as s:
        assert s.verify() == [f"{short}: /end_s has 2 rows, /features has 3"]
