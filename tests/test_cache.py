import signal
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from featfiles import make_features, write_features

from vidfeat.extraction.cache import FeatureFileBuilder, FeatureStore, output_lock


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
