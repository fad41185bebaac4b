"""Class balancing on the train split only (balancing before splitting leaks; val/test never are).

``balance(videos, mode, ...)`` adds two columns to the ok videos:

* ``repeat``: how many times a video counts; 0 = dropped (no frames stored), > 1 = oversampled
  (frames are stored once; ``frames.repeat`` carries the weight).
* ``n_planned``: frames to sample from the video (uniform sampling), which ``frames`` mode raises
  for minority classes. A clip ingest plans in clips: ``frames_per_video`` is then clips per
  video, ``capacity`` the clips a video holds and ``max_frames_per_video`` a cap in clips
  (ingest converts), so minority classes get more clips, never longer ones.

Modes: ``none``; ``undersample`` (drop train videos of larger classes down to the smallest);
``oversample`` (repeat minority-class train videos up to the largest class); ``frames`` (more
distinct frames per video for minority classes, up to ``max_frames_per_video`` and the video's
``capacity``, so class frame totals come as close to equal as possible without duplicates).
``max_per_class`` caps every class's train videos first, in any mode. Random choices depend
only on ``seed`` and the class (see ``split.rng_for``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vidfeat.ingestion.split import rng_for
from vidfeat.options import check_choice, check_positive

# frames mode, no max_frames_per_video given: at most this many times frames_per_video
DEFAULT_MAX_FRAMES_FACTOR = 4

MODES = {
    "none": "keep every video once",
    "undersample": "drop train videos of larger classes down to the smallest",
    "oversample": "repeat minority-class train videos up to the largest class",
    "frames": "sample more distinct frames per video in minority classes",
}


def balance(videos: pd.DataFrame, mode: str = "none", *, seed: int = 0,
            frames_per_video: int | None = 16, max_frames_per_video: int | None = None,
            max_per_class: int | None = None, capacity: str = "capacity") -> pd.DataFrame:
    """Return ``videos`` with ``repeat`` and ``n_planned`` set (train rows balanced).

    Needs ``video_id, label, split``; ``frames`` mode also the ``capacity`` column (distinct
    frames each video can give) and a ``frames_per_video``.
    """
    check_choice("balance", mode, MODES)
    check_positive("max_per_class", max_per_class)
    out = videos.copy()
    out["repeat"] = 1
    out["n_planned"] = pd.array([frames_per_video] * len(out), dtype="Int64")
    train = out[out["split"] == "train"]
    groups = {label: g.sort_values("video_id").index for label, g in train.groupby("label")}
    if max_per_class is not None:
        groups = {k: _keep(out, ids, max_per_class, seed, k) for k, ids in groups.items()}
    if mode == "undersample" and groups:
        smallest = min(len(ids) for ids in groups.values())
        groups = {k: _keep(out, ids, smallest, seed, k) for k, ids in groups.items()}
    elif mode == "oversample" and groups:
        largest = max(len(ids) for ids in groups.values())
        for label, ids in groups.items():
            out.loc[ids, "repeat"] = spread(largest, np.ones(len(ids), int) * largest, seed, label)
    elif mode == "frames":
        _balance_frames(out, groups, seed, frames_per_video, max_frames_per_video, capacity)
    return out


def _keep(out: pd.DataFrame, ids: pd.Index, n: int, seed: int, label: str) -> pd.Index:
    """Keep a seeded random ``n`` of ``ids``; mark the others dropped (repeat 0, no frames)."""
    if len(ids) <= n:
        return ids
    order = rng_for(seed, "keep", str(label)).permutation(len(ids))
    dropped = ids[np.sort(order[n:])]
    out.loc[dropped, ["repeat", "n_planned"]] = 0
    return ids[np.sort(order[:n])]


def spread(total: int, caps: np.ndarray, seed: int, label: str, *, floor: int = 0) -> np.ndarray:
    """Share ``total`` out over slots as evenly as ``caps`` allow (each slot gets >= ``floor``).

    Water-filling: the highest level L with sum(min(L, caps)) <= total, then the remainder one
    each to seeded-random slots that still have room. Returns integers summing to
    min(total, caps.sum()) when that exceeds sum(min(floor, caps)).
    """
    caps = np.asarray(caps, dtype=np.int64)
    lo, hi = floor, int(caps.max(initial=0))
    while lo < hi:  # largest L in [floor, max cap] with sum(min(L, caps)) <= total
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(mid, caps).sum() <= total else (lo, mid - 1)
    alloc = np.minimum(lo, caps)
    room = np.flatnonzero(caps > lo)
    extra = max(0, min(total - int(alloc.sum()), len(room)))
    alloc[rng_for(seed, "spread", str(label)).permutation(room)[:extra]] += 1
    return alloc


def _balance_frames(out, groups, seed, frames_per_video, max_frames_per_video, capacity):
    if frames_per_video is None:
        raise ValueError("balance='frames' needs uniform sampling (frames_per_video), "
                         "not fps or keyframes")
    cap_limit = max_frames_per_video or DEFAULT_MAX_FRAMES_FACTOR * frames_per_video
    if cap_limit < frames_per_video:
        raise ValueError(f"max_frames_per_video={cap_limit} is below "
                         f"frames_per_video={frames_per_video}")
    caps = {k: np.minimum(out.loc[ids, capacity].to_numpy(np.int64), cap_limit)
            for k, ids in groups.items()}
    base = {k: np.minimum(c, frames_per_video) for k, c in caps.items()}
    target = max((int(b.sum()) for b in base.values()), default=0)
    for label, ids in groups.items():
        alloc = spread(target, caps[label], seed, label, floor=frames_per_video)
        out.loc[ids, "n_planned"] = np.maximum(alloc, base[label])
