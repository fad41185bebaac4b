"""Frame- and video-level metrics of a split, and the select-metric callbacks of training."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vidfeat.training.metrics import classification_metrics, video_level


def split_metrics(logits: np.ndarray, y: np.ndarray, video_id: np.ndarray,
                  class_names: list[str]) -> dict:
    """``{"frame": M, "video": M}`` for one split (video: mean of a video's frame logits).

    Parameters
    ----------
    logits : (n, C) array
    y : (n,) int array of class indices
    video_id : (n,) str array
    class_names : list of str
    """
    frame = classification_metrics(y, logits.argmax(1), class_names)
    v_logits, v_y, _ = video_level(logits, video_id, y)
    return {"frame": frame, "video": classification_metrics(v_y, v_logits.argmax(1), class_names)}


def metric_fn(select_metric: str, class_names: list[str],
              video_id: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    """``metric(y, logits)`` computing ``select_metric`` (``video_*``: at video level).

    Parameters
    ----------
    select_metric : str
        A frame metric name (``balanced_accuracy``…) or ``video_`` + one.
    class_names : list of str
    video_id : (n,) str array
        The videos of the rows the metric will be called on.
    """
    level, name = ("video", select_metric[6:]) if select_metric.startswith("video_") else \
        ("frame", select_metric)

    def metric(y: np.ndarray, logits: np.ndarray) -> float:
        if level == "video":
            logits, y, _ = video_level(logits, video_id, y)
        return classification_metrics(y, logits.argmax(1), class_names)[name]
    return metric


def flat(metrics: dict, prefix: str) -> dict:
    """Headline numbers of ``split_metrics`` output as one flat row (the sweep table's columns).

    Parameters
    ----------
    metrics : dict
    prefix : str
        Prepended to every key (e.g. ``val_``).
    """
    return {f"{prefix}{lvl}_{k}".replace("frame_", ""): metrics[lvl][k]
            for lvl in ("frame", "video") for k in ("accuracy", "balanced_accuracy", "macro_f1")}
