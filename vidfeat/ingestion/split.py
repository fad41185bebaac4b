"""Train/val/test split at the video level, stratified by class, reproducible from a seed.

Every frame of a video lands in its video's split, so no video (and no frame) is in two splits.
Each class is shuffled by its own generator, derived from ``(seed, label)``: adding a class, or
videos of another class, does not move the videos of this one. Videos that already carry a split
(the labels file's ``split`` column) keep it; failed videos get none.

Videos are records (one dict per video, changed in place): no pandas here, so an ingest starts
fast.
"""
from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np

from vidfeat.ingestion.contract import SPLITS, UNLABELLED_SPLIT
from vidfeat.ingestion.stats import missing


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (stable across runs and machines)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode("utf-8")) for k in keys)])


def parse_ratios(split: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a 3-sequence -> train/val/test fractions (non-negative, summing to 1)."""
    parts = split.split(",") if isinstance(split, str) else list(split)
    try:
        ratios = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"split={split!r} must be three numbers train,val,test") from None
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise ValueError(f"split={split!r} must be three non-negative numbers train,val,test")
    if abs(sum(ratios) - 1) > 1e-6 or ratios[0] == 0:
        raise ValueError(f"split={split!r} must sum to 1 with a non-zero train fraction")
    return ratios  # type: ignore[return-value]


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """``n`` videos shared out by ``ratios`` with largest remainders (ties go to train first)."""
    exact = [n * r for r in ratios]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(rows: list[dict], split: str | Sequence[float] = (0.8, 0.1, 0.1), *,
                  seed: int = 0) -> list[dict]:
    """Fill ``split`` of the ok rows that have none (None or ""), stratified by label; failed
    rows get ``split=""``. In place; returns ``rows``.

    ``rows``: records with ``video_id, label, split, status``. ``split``: train,val,test
    fractions (``parse_ratios``). ``seed``: with the label, picks each class's shuffle.
    Per label, its rows sorted by ``video_id`` are permuted by ``rng_for(seed, "split", label)``
    and dealt out in ``split_counts``; rows with no label (None/NaN) are left unassigned.
    """
    ratios = parse_ratios(split)
    todo: dict = {}
    for row in rows:
        ok = row["status"] == "ok"
        row["split"] = "" if not ok or missing(row["split"]) else str(row["split"])
        if ok and not row["split"] and not missing(row["label"]):
            todo.setdefault(row["label"], []).append(row)
    for label, group in todo.items():
        group.sort(key=lambda r: r["video_id"])
        order = rng_for(seed, "split", str(label)).permutation(len(group))
        names = np.repeat(SPLITS, split_counts(len(group), ratios))
        for i, name in zip(order, names):
            group[i]["split"] = str(name)
    return rows


def assign_unlabelled(rows: list[dict]) -> list[dict]:
    """Put every ok row in the one split ``all`` (an unlabelled ingest: no classes to stratify,
    nothing to hold out); failed rows get ``split=""``. In place; returns ``rows``.

    ``rows``: records with ``split, status``.
    """
    for row in rows:
        row["split"] = UNLABELLED_SPLIT if row["status"] == "ok" else ""
    return rows
