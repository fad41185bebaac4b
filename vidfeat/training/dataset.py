"""``FeatureDataset``: a torch Dataset over one split of a feature file, held in memory."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.extraction.cache import FeatureSet, FeatureStore


class FeatureDataset(Dataset):
    """Rows of ``split`` (None: all) at ``level`` ("frame" or "video") as (features, label).

    ``store`` is a FeatureStore or a path to a feature file. Features come back as float32
    tensors of shape (D,), labels as int64 indices into ``class_names``. ``repeat`` holds each
    row's oversampling weight, e.g. for a ``WeightedRandomSampler``.
    """

    def __init__(self, store: FeatureStore | str | os.PathLike, split: str | None = None, *,
                 level: str = "frame"):
        if isinstance(store, FeatureStore):
            fs = store.load(split, level=level)
            self.class_names, self.feature_dim = list(store.class_names), store.feature_dim
        else:
            with FeatureStore(store) as s:
                fs = s.load(split, level=level)
                self.class_names, self.feature_dim = list(s.class_names), s.feature_dim
        self.split, self.level = split, level
        self.features = torch.from_numpy(np.ascontiguousarray(fs.X))
        self.labels = torch.from_numpy(fs.y.astype(np.int64))
        self.video_id, self.frame_id = fs.video_id, fs.frame_id
        self.repeat = torch.from_numpy(fs.repeat.astype(np.int64))

    @property
    def feature_set(self) -> FeatureSet:
        return FeatureSet(self.features.numpy(), self.labels.numpy(), self.video_id,
                          self.frame_id, self.repeat.numpy())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]
