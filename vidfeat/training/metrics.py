"""Classification metrics shared by train, evaluate and report (numpy only).

Layout of one result (what ``metrics.json`` holds per split and level)::

    {"n": int, "accuracy": float, "balanced_accuracy": float, "macro_f1": float,
     "per_class": {name: {"precision", "recall", "f1", "support"}},
     "confusion_matrix": [[int]]}   # rows: true class, columns: predicted, in class_names order

Conventions follow scikit-learn: a ratio with a zero denominator is 0; balanced accuracy and macro
F1 average over the classes that occur in ``y_true`` (balanced accuracy) or in either (macro F1).
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class P/R/F1/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    either = present | (predicted > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[either].mean()) if either.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def video_level(logits: np.ndarray, video_ids, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean row (frame or clip) logits per video -> (video_logits, video_labels, unique_video_ids), sorted by id."""
    video_ids = np.asarray(video_ids)
    uniq, inverse = np.unique(video_ids, return_inverse=True)
    sums = np.zeros((len(uniq), logits.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, logits)
    counts = np.bincount(inverse, minlength=len(uniq))[:, None]
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(video_ids))[::-1]
    return sums / counts, np.asarray(labels)[first], uniq
