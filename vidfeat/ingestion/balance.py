"""Class balancing on the train split only (balancing before splitting leaks; val/test never are).

``balance(rows, mode, ...)`` sets two keys of every video record (one dict per video, in place;
no pandas here, so an ingest starts fast):

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

from vidfeat.ingestion.split import rng_for
from vidfeat.ingestion.stats import missing
from vidfeat.options import check_choice, check_positive

# frames mode, no max_frames_per_video given: at most this many times frames_per_video
DEFAULT_MAX_FRAMES_FACTOR = 4

MODES = {
    "none": "keep every video once",
    "undersample": "drop train videos of larger classes down to the smallest",
    "oversample": "repeat minority-class train videos up to the largest class",
    "frames": "sample more distinct frames per video in minority classes",
}


def balance(rows: list[dict], mode: str = "none", *, seed: int = 0,
            frames_per_video: int | None = 16, max_frames_per_video: int | None = None,
            max_per_class: int | None = None, capacity: str = "capacity") -> list[dict]:
    """Set ``repeat`` and ``n_planned`` of every row (train rows balanced); returns ``rows``.

    ``rows``: records with ``video_id, label, split``; ``frames`` mode also the ``capacity`` key
    (distinct frames each video can give). ``mode``: one of ``MODES``. ``seed``: with the
    label, picks each class's random choices. ``frames_per_video``: each video's planned frames
    (``n_planned``; None: not planned, which ``frames`` mode refuses). ``max_frames_per_video``:
    ``frames`` mode's cap per video (default ``DEFAULT_MAX_FRAMES_FACTOR`` x
    ``frames_per_video``). ``max_per_class``: train videos kept per class, in any mode.
    ``capacity``: the key holding each video's capacity.
    """
    check_choice("balance", mode, MODES)
    check_positive("max_per_class", max_per_class)
    cap_limit = _frames_cap(frames_per_video, max_frames_per_video) if mode == "frames" else None
    planned = None if frames_per_video is None else int(frames_per_video)
    groups: dict = {}  # label -> its train rows, sorted by video_id
    for row in rows:
        row["repeat"], row["n_planned"] = 1, planned
        if row["split"] == "train" and not missing(row["label"]):
            groups.setdefault(row["label"], []).append(row)
    groups = {k: sorted(g, key=lambda r: r["video_id"]) for k, g in groups.items()}
    if max_per_class is not None:
        groups = {k: _keep(g, max_per_class, seed, k) for k, g in groups.items()}
    if mode == "undersample" and groups:
        smallest = min(len(g) for g in groups.values())
        groups = {k: _keep(g, smallest, seed, k) for k, g in groups.items()}
    elif mode == "oversample" and groups:
        largest = max(len(g) for g in groups.values())
        for label, group in groups.items():
            alloc = spread(largest, np.full(len(group), largest), seed, label)
            _put(group, "repeat", alloc)
    elif mode == "frames":
        _balance_frames(groups, seed, frames_per_video, cap_limit, capacity)
    return rows


def _put(group: list[dict], key: str, values) -> None:
    for row, value in zip(group, values):
        row[key] = int(value)


def _keep(group: list[dict], n: int, seed: int, label) -> list[dict]:
    """Keep a seeded random ``n`` of ``group``; mark the others dropped (repeat 0, no frames)."""
    if len(group) <= n:
        return group
    order = rng_for(seed, "keep", str(label)).permutation(len(group))
    for i in np.sort(order[n:]):
        group[i]["repeat"] = group[i]["n_planned"] = 0
    return [group[i] for i in np.sort(order[:n])]


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


def _frames_cap(frames_per_video: int | None, max_frames_per_video: int | None) -> int:
    """``frames`` mode's cap on a video's planned frames (checked before any row changes)."""
    if frames_per_video is None:
        raise ValueError("balance='frames' needs uniform sampling (frames_per_video), "
                         "not fps or keyframes")
    cap_limit = max_frames_per_video or DEFAULT_MAX_FRAMES_FACTOR * frames_per_video
    if cap_limit < frames_per_video:
        raise ValueError(f"max_frames_per_video={cap_limit} is below "
                         f"frames_per_video={frames_per_video}")
    return cap_limit


def _balance_frames(groups, seed, frames_per_video, cap_limit, capacity):
    caps = {k: np.minimum(np.array([r[capacity] for r in g], dtype=np.int64), cap_limit)
            for k, g in groups.items()}
    base = {k: np.minimum(c, frames_per_video) for k, c in caps.items()}
    target = max((int(b.sum()) for b in base.values()), default=0)
    for label, group in groups.items():
        alloc = spread(target, caps[label], seed, label, floor=frames_per_video)
        _put(group, "n_planned", np.maximum(alloc, base[label]))
