import numpy as np
import torch
from featfiles import make_features, write_features
from torch.utils.data import DataLoader

from vidfeat.extraction.cache import FeatureStore
from vidfeat.training.dataset import FeatureDataset


def test_dataset_yields_float_features_and_int_labels(tmp_path):
    data = make_features({"a": 4, "b": 2}, dim=5, frames=2)
    path = write_features(tmp_path / "f.h5", data, dtype="float16")
    ds = FeatureDataset(path, "train")
    mask = data["split"] == "train"
    assert len(ds) == mask.sum() and ds.class_names == ["a", "b"] and ds.feature_dim == 5
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (5,) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), data["features"][mask][0], rtol=1e-3, atol=1e-3)
    xb, yb = next(iter(DataLoader(ds, batch_size=100)))
    assert yb.tolist() == data["label"][mask].tolist()
    with FeatureStore(path) as s:
        videos = FeatureDataset(s, None, level="video")
    assert len(videos) == 6 and videos.frame_id is None and videos.repeat.tolist() == [1] * 6
