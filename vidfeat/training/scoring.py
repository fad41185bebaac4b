"""Row- and video-level metrics of a split, and the select-metric callbacks of training.

A feature file's rows are frames, or clips for clip features (a clip backbone on a clip ingest:
its ``input_kind`` attribute is "clip"). The metrics keep the key ``"frame"`` for the row level
either way (existing readers index it); ``metrics.json``, ``evaluate_<split>.json`` and the
report's model section add ``"row_level": "clip" | "frame"``, and every display names the row
level by it (``level_name``). Files written before it existed have no field: frames.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vidfeat.training.metrics import classification_metrics, video_level

ROW_LEVELS = ("frame", "clip")


def row_level(preprocessing) -> str:
    """"clip" when ``preprocessing`` (feature-file attributes or config.json's ``preprocessing``)
    records ``input_kind`` "clip", else "frame".

    Parameters
    ----------
    preprocessing : mapping
    """
    kind = preprocessing.get("input_kind")
    return "clip" if (kind.decode() if isinstance(kind, bytes) else kind) == "clip" else "frame"


def recorded_row_level(record) -> str:
    """The ``row_level`` a metrics record (metrics.json, an evaluation, the report's model
    section) holds; "frame" where it has none (written before clip features) or an unknown one.

    Parameters
    ----------
    record : dict (anything else reads as "frame")
    """
    level = record.get("row_level") if isinstance(record, dict) else None
    return level if level in ROW_LEVELS else "frame"


def level_name(level: str, row_level: str = "frame") -> str:
    """What a user reads for the metrics key ``level``: the row level ("frame" or "clip") for
    the key "frame", the key itself otherwise ("video").

    Parameters
    ----------
    level : str
        A metrics key: "frame" (the row level) or "video".
    row_level : str
        "frame" or "clip" (``row_level`` / ``recorded_row_level``).
    """
    return row_level if level == "frame" else level


def split_metrics(logits: np.ndarray, y: np.ndarray, video_id: np.ndarray,
                  class_names: list[str]) -> dict:
    """``{"frame": M, "video": M}`` for one split: "frame" is the row level (frames, or clips for
    clip features), "video" scores each video by the mean of its rows' logits.

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
        A row-level (frame or clip) metric name (``balanced_accuracy``…) or ``video_`` + one.
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


# How a sweep picks its configuration, said once: here, in sweep.csv (tied, selected) and in the
# summary. A metric on a small val set ties often (several configs at 1.000); the plain log loss
# of the val logits (the same objective for every config, unlike each head's weighted training
# loss) says which one is more confidently right; then the more regularised config generalises
# better; grid order last.
SELECTION_RULE = ("highest val {metric}; ties broken by the lowest val log loss (to 4 "
                  "decimals), then the more regularised configuration (higher weight_decay, "
                  "then higher dropout, then lower lr), then grid order")
TIE_EPS = 1e-9
LOSS_DECIMALS = 4


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (n, C) against class indices ``y`` (plain, unweighted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean()) if len(y) else float("nan")


def select_config(table: list[dict], metric: str) -> tuple[int, str]:
    """The row of ``table`` that ``SELECTION_RULE`` picks, and a note when a tie was broken.

    ``table``: one dict per configuration with ``val_<metric>``, ``val_log_loss``,
    ``weight_decay``, ``dropout`` and ``lr``. Marks each row's ``tied`` (in the top group),
    ``selected`` and ``selected_by`` (the reason, on the selected row), as sweep.csv shows them.
    """
    key = f"val_{metric}"
    top = max(row[key] for row in table)
    tied = [i for i, row in enumerate(table) if row[key] >= top - TIE_EPS]
    for i, row in enumerate(table):
        row["tied"] = i in tied
    # losses equal to 4 decimals are a tie too: the next rule decides, not float noise
    best = min(tied, key=lambda i: (round(table[i]["val_log_loss"], LOSS_DECIMALS),
                                    -table[i]["weight_decay"], -table[i]["dropout"],
                                    table[i]["lr"], i))
    note = "" if len(tied) == 1 else (
        f"{len(tied)} configurations tied at val {metric} {top:.3f}; picked configuration "
        f"{best} by the lowest val log loss ({table[best]['val_log_loss']:.4f}), then "
        "regularisation, then grid order")
    for i, row in enumerate(table):
        row["selected"] = i == best
        row["selected_by"] = (note or f"highest val {metric}") if i == best else ""
    return best, note
