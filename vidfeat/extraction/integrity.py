"""Integrity of feature files: the checksums over their attributes, the fingerprint of the
settings that made their features, and the one error a damaged file is reported as.

The data itself is covered by HDF5's fletcher32 filter on every dataset (``cache`` writes it);
attributes are not, so ``attrs_sha256`` holds the sha256 of the canonical JSON of all the other
attributes. ``features_fingerprint`` identifies what decided the feature values, so that models
can record which features they were trained on.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from vidfeat.files import ENVIRONMENT_ERRNOS, HASH_HEX, StorageError, is_environmental

# the settings that decide the feature values: equal fingerprints, interchangeable features
FINGERPRINT_ATTRS = ("manifest_fingerprint", "backbone", "weights", "weights_sha256",
                     "resize_size", "input_size", "interpolation", "mean", "std", "precision",
                     "dtype", "feature_dim")
DERIVED_ATTRS = ("complete", "features_fingerprint", "attrs_sha256")  # set by finish itself
RE_EXTRACT = "re-extract it (vidfeat extract ... --overwrite)"
FRAME_DATASETS = ("features", "frame_id", "video_id", "label", "split", "repeat", "row")
VIDEO_DATASETS = ("features", "video_id", "label", "split", "repeat", "n_frames")
# a clip file's rows (one per clip, ``extraction.clips``) carry these too; their numpy dtypes
CLIP_DATASETS = {"clip_id": "int64", "start_s": "float64", "end_s": "float64"}


class CorruptFeatureFile(ValueError):
    """A feature file whose stored bytes fail their checksum (or cannot be read at all).

    ``str()`` is one line naming the file, what failed and what to do.
    """

    def __init__(self, path, what: str):
        self.path, self.what = str(path), what
        super().__init__(f"feature file {path} is corrupt ({what}): {RE_EXTRACT}")

    def __reduce__(self):  # crosses process boundaries (sandbox children, DataLoader workers)
        return type(self), (self.path, self.what)


def plain_attr(value):
    """An attribute value as h5py reads it back, as plain JSON data."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [plain_attr(v) for v in value.tolist()]
    return value.item() if isinstance(value, np.generic) else value


def _digest(data) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_HEX]


def attrs_digest(attrs: Mapping) -> str:
    """``attrs_sha256`` of raw h5py attributes: sha256 of the canonical JSON of all but itself.

    ``attrs``: ``h5py`` attributes (or a dict of them, as read back from the file).
    """
    return _digest({k: plain_attr(v) for k, v in attrs.items() if k != "attrs_sha256"})


def features_fingerprint(attrs: Mapping) -> str:
    """sha256 (32 hex) of the settings that decide the features (``FINGERPRINT_ATTRS``).

    ``attrs``: the file's attributes. A shard's own index and count are included, so a merged
    file (shard 0/1) gets the value that one unsharded run of the same settings gets.
    """
    data = {k: plain_attr(attrs.get(k)) for k in FINGERPRINT_ATTRS}
    if plain_attr(attrs.get("compile", False)):  # not bit-identical to eager; eager files
        data["compile"] = True  # (and those made before the option) keep their value
    resample = plain_attr(attrs.get("resample") or "float")
    if resample != "float":  # files made before it was recorded resized in float: theirs stays
        data["resample"] = resample
    if int(plain_attr(attrs.get("shard_count", 1))) > 1:
        data.update(shard_index=plain_attr(attrs["shard_index"]),
                    shard_count=plain_attr(attrs["shard_count"]))
    return _digest(data)


def storage_errno(exc: BaseException) -> int | None:
    """The errno of an environmental failure, else None. h5py raises OSError or RuntimeError
    (a failed flush) and sometimes names the errno only in HDF5's message."""
    if is_environmental(exc):
        return exc.errno
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    found = re.search(r"errno = (\d+)", str(exc))
    code = int(found.group(1)) if found else None
    return code if code in ENVIRONMENT_ERRNOS else None


def read_error(path: Path, name: str, exc: BaseException) -> Exception:
    """What a failed h5py read of ``name`` is: the disk failing, else a corrupt file."""
    code = storage_errno(exc)
    if code is not None:
        return StorageError(code, path, "reading")
    text = str(exc).lower()
    damaged = any(word in text for word in ("filter", "fletcher", "data error", "checksum"))
    return CorruptFeatureFile(path, f"{'checksum error' if damaged else 'unreadable data'} in "
                                    f"{name}")


def table_problems(path: Path, cols: dict, n: int, n_classes: int) -> list[str]:
    """Row counts of the frame and video tables, labels in range, videos listed as framed."""
    out = [f"{path}: /{name} has {len(cols[name])} rows, /features has {n}"
           for name in (*FRAME_DATASETS, *CLIP_DATASETS) if name in cols and len(cols[name]) != n]
    lengths = {f"videos/{d}": len(cols[f"videos/{d}"]) for d in VIDEO_DATASETS
               if f"videos/{d}" in cols}
    if len(set(lengths.values())) > 1:
        out.append(f"{path}: the /videos datasets have different row counts {lengths}")
    if "videos/n_frames" in cols and int(cols["videos/n_frames"].sum()) != n:
        out.append(f"{path}: /videos/n_frames sum to {int(cols['videos/n_frames'].sum())}, "
                   f"/features has {n} rows")
    for name in ("label", "videos/label"):
        if name in cols and len(cols[name]) and not 0 <= cols[name].min() <= cols[name].max() \
                < n_classes:
            out.append(f"{path}: /{name} holds values outside 0..{n_classes - 1}")
    if "video_id" in cols and "videos/video_id" in cols and not np.array_equal(
            pd.unique(cols["video_id"]), cols["videos/video_id"]):
        out.append(f"{path}: /videos/video_id is not the videos of /video_id in first-frame order")
    return out


def mean_problems(path: Path, cols: dict, sums: np.ndarray, counts: np.ndarray) -> list[str]:
    """/videos/features against the means of the frames, within the stored dtype's rounding."""
    stored = cols["videos/features"]
    if stored.shape != sums.shape or not np.array_equal(counts, cols["videos/n_frames"]):
        return [f"{path}: /videos/features or /videos/n_frames do not match the frame table"]
    finfo = np.finfo(stored.dtype)
    means = sums / np.maximum(counts, 1)[:, None]
    bad = ~np.isclose(stored.astype(np.float64), means, rtol=float(finfo.eps),
                      atol=float(finfo.smallest_normal))
    if not bad.any():
        return []
    rows = np.flatnonzero(bad.any(axis=1))
    return [f"{path}: /videos/features of {len(rows)} video(s) (first "
            f"{cols['videos/video_id'][rows[0]]!r}) are not the mean of their frames' /features"]


