"""Synthetic feature files, written through extract's own writer (no backbone run)."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from vidfeat.extraction.cache import FeatureFileBuilder


def make_features(counts: dict[str, int], *, dim: int = 16, frames: int = 4, sep: float = 1.5,
                  noise: float = 1.0, seed: int = 0, splits=(0.6, 0.2, 0.2)):
    """Learnable class clusters: per class ``counts[c]`` videos of ``frames`` frames each.

    Returns a dict of per-frame arrays (features, label, video_id, frame_id, split, repeat).
    Each video has its own offset around its class centre; videos are split by video.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), dim)) * sep
    rows = {k: [] for k in ("features", "label", "video_id", "frame_id", "split", "repeat")}
    for c, (name, n_videos) in enumerate(counts.items()):
        for v in range(n_videos):
            vid = f"{name}/v{v:04d}.mp4"
            split = "train" if v < splits[0] * n_videos else (
                "val" if v < (splits[0] + splits[1]) * n_videos else "test")
            centre = centres[c] + rng.normal(size=dim) * noise * 0.3
            for f in range(frames):
                rows["features"].append(centre + rng.normal(size=dim) * noise)
                rows["label"].append(c)
                rows["video_id"].append(vid)
                rows["frame_id"].append(f"{vid}#{f}")
                rows["split"].append(split)
                rows["repeat"].append(1)
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["features"] = out["features"].astype(np.float32)
    out["class_names"] = list(counts)
    return out


def write_features(path, data: dict, *, backbone: str = "resnet18", weights: str = "none",
                   complete: bool = True, dtype: str = "float16", drop: tuple = (),
                   attrs: dict | None = None) -> Path:
    """Write ``data`` (``make_features`` output) through extract's own ``FeatureFileBuilder``.

    ``path``: the file to write. ``backbone``/``weights``: the recorded attributes. ``dtype``:
    the feature dtype. ``attrs``: attributes added to or overriding the defaults. Two damages
    for tests of the readers, applied to the finished file: ``complete=False`` clears the flag
    a killed writer would leave unset, and ``drop`` deletes those root datasets.
    """
    path = Path(path)
    n, dim = data["features"].shape
    meta = pd.DataFrame({"frame_id": data["frame_id"], "video_id": data["video_id"],
                         "label": data["label"].astype(np.int64), "split": data["split"],
                         "repeat": data["repeat"].astype(np.int64),
                         "row": np.arange(n, dtype=np.int64)})
    base = {"class_names": data["class_names"], "backbone": backbone,
            "weights": weights, "feature_dim": dim, "input_size": 224, "resize_size": 256,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear", "precision": "fp32", "dtype": dtype,
            "vidfeat_version": "0.1.0", "manifest_fingerprint": "f" * 16,
            "ingest_dir": "/nonexistent", "sampling": {"mode": "uniform", "frames_per_video": 4}}
    builder = FeatureFileBuilder(path, meta, dim, dtype=dtype)
    try:
        builder.write(0, data["features"].astype(dtype))
        builder.finish({**base, **(attrs or {})})
    except BaseException:
        builder.abort()
        raise
    if drop or not complete:
        with h5py.File(path, "r+") as f:
            for key in drop:
                del f[key]
            f.attrs["complete"] = complete
    return path


COLOURS = {"red": (210, 40, 40), "blue": (40, 40, 210), "green": (40, 200, 40)}


def write_frames(outdir, data: dict, *, size=(64, 48), seed: int = 0) -> Path:
    """An ingest OUTDIR for ``data``: one noisy JPEG per frame, coloured by class, + manifests."""
    from PIL import Image

    from vidfeat.ingestion.manifest import write_manifest

    outdir = Path(outdir)
    rng = np.random.default_rng(seed)
    frames, videos = [], {}
    for i, (fid, vid) in enumerate(zip(data["frame_id"], data["video_id"])):
        label, split = data["class_names"][data["label"][i]], data["split"][i]
        rel = f"frames/{vid}/{i:06d}.jpg"
        (outdir / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.array(COLOURS[label]) + rng.normal(0, 30, (size[1], size[0], 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(outdir / rel)
        frames.append({"frame_id": fid, "video_id": vid, "label": label, "split": split,
                       "frame_index": i, "timestamp_s": 0.1 * i, "path": rel,
                       "repeat": int(data["repeat"][i])})
        videos[vid] = {"video_id": vid, "path": f"/src/{vid}", "label": label, "split": split,
                       "status": "ok", "error": "", "duration_s": 1.0, "fps": 10.0,
                       "width": size[0], "height": size[1], "n_frames": 0, "repeat": 1}
    write_manifest(outdir, pd.DataFrame(videos.values()), pd.DataFrame(frames))
    return outdir


@contextlib.contextmanager
def small_disk(path, size: str):
    """A tmpfs of ``size`` ("64k", "1m") mounted at ``path`` for a full-disk test; unmounted
    after. Skips the test where mounting is refused (not root, no tmpfs)."""
    import pytest

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize_disk(path, size: str) -> None:
    """Give the tmpfs at ``path`` (from ``small_disk``) ``size`` in all: "free space"."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)
