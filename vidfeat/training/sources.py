"""One split's training rows: in memory (``ArraySource``) or streamed from the feature file.

Features are held on the training device when they fit the memory budget; otherwise ``H5Source``
streams them from the ``FeatureStore`` in shuffled blocks (bounded memory), so a cache larger than
RAM trains.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from vidfeat.training.stacked import ArraySource, epoch_indices


def open_store(features):
    """A FeatureStore for a path (or the store itself); its own errors name what is wrong.

    Parameters
    ----------
    features : path or FeatureStore
    """
    from vidfeat.extraction.cache import FeatureStore

    return features if isinstance(features, FeatureStore) else FeatureStore(features)


def attr_json(value, default=None):
    """A feature-file attribute as plain JSON data (JSON strings decoded, arrays as lists).

    Parameters
    ----------
    value : attribute value (str, bytes, numpy, None)
    default : returned for None
    """
    if value is None:
        return default
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.tolist() if hasattr(value, "tolist") else value


def auto_memory(device: torch.device) -> int:
    """Default memory budget in bytes for features on ``device``.

    Parameters
    ----------
    device : torch.device
    """
    # half of what is free: the rest is for activations, the optimizer and everyone else
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2 << 30


class H5Source:
    """One split's rows streamed from a FeatureStore in blocks; memory bounded by ``buffer_rows``.

    Each epoch visits the blocks in a random order, ``buffer_rows`` worth at a time, and shuffles
    rows within that buffer: frames of one video (and files sorted by class) still mix well.
    The store stays open while the source is used; ``close`` is a no-op (the store's owner
    closes it).
    """

    def __init__(self, store, split: str, *, buffer_rows: int, device: torch.device):
        self.store = store
        self.rows = np.flatnonzero(np.asarray(store.column("split")).astype(str) == split)
        self.labels = np.asarray(store.column("label"))[self.rows].astype(np.int64)
        self.repeat = np.asarray(store.column("repeat"))[self.rows].astype(np.int64)
        self.video_id = np.asarray(store.column("video_id")).astype(str)[self.rows]
        self.device = device
        # blocks small enough that one buffer mixes at least ~16 places in the file
        self.block = int(max(1, min(4096, buffer_rows // 16)))
        self.per_buffer = max(1, buffer_rows // self.block)
        self.starts = np.arange(0, len(self.rows), self.block)

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        """Nothing to release: the FeatureStore belongs to the caller."""

    def _read(self, start: int) -> np.ndarray:
        rows = self.rows[start:start + self.block]
        # one contiguous read, then keep this split's rows (other splits may sit in between)
        block = self.store.feature_rows(int(rows[0]), int(rows[-1]) + 1)  # checksummed read
        return np.asarray(block[rows - rows[0]], dtype=np.float32)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        total = sq = 0.0
        for start in self.starts:
            x = self._read(start).astype(np.float64)
            total, sq = total + x.sum(0), sq + (x * x).sum(0)
        mean = total / len(self.rows)
        return mean, np.sqrt(np.maximum(sq / len(self.rows) - mean * mean, 0))

    def batches(self, rng, batch_size: int, weights=None) -> Iterator[tuple[torch.Tensor, ...]]:
        order = rng.permutation(len(self.starts))
        for i in range(0, len(order), self.per_buffer):
            starts = np.sort(self.starts[order[i:i + self.per_buffer]])
            pos = np.concatenate([np.arange(s, min(s + self.block, len(self.rows))) for s in starts])
            X = torch.from_numpy(np.concatenate([self._read(s) for s in starts])).to(self.device)
            y = torch.as_tensor(self.labels[pos], device=self.device)
            w = None if weights is None else weights[pos]
            idx = torch.as_tensor(epoch_indices(rng, self.repeat[pos], w), device=self.device)
            for b in range(0, len(idx), batch_size):
                sel = idx[b:b + batch_size]
                yield X[sel], y[sel]

    def chunks(self, rows: int = 65536) -> Iterator[torch.Tensor]:
        for start in self.starts:
            yield torch.from_numpy(self._read(start))


def split_count(store, split: str) -> int:
    """Rows of ``split`` in the store.

    Parameters
    ----------
    store : FeatureStore
    split : str
    """
    return int((np.asarray(store.column("split")).astype(str) == split).sum())


def split_source(store, split: str, *, device: torch.device, budget: int, stream_rows: int):
    """(source, bytes held): the split in memory (``ArraySource``) if it fits, else streamed.

    Parameters
    ----------
    store : FeatureStore
    split : str
    device : torch.device
        Where the rows (or streamed batches) go.
    budget : int
        Bytes the split's float32 features may take in memory.
    stream_rows : int
        Rows buffered at once when streaming.

    Raises
    ------
    ValueError
        The split has no samples.
    """
    n = split_count(store, split)
    if n == 0:
        raise ValueError(f"split {split!r} of {store.path} has no samples")
    need = n * store.feature_dim * 4
    if need <= budget:
        fs = store.load(split)
        src = ArraySource(fs.X, fs.y, fs.repeat, device=device)
        src.video_id, src.streamed = np.asarray(fs.video_id).astype(str), False
        return src, need
    src = H5Source(store, split, buffer_rows=stream_rows, device=device)
    src.streamed = True
    return src, 0
