"""The report's model section: evaluation from MODEL_DIR/metrics.json and config.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat.reporting.data import _names, _num, _warn


def add_model(data: dict, model_dir, table: pd.DataFrame) -> None:
    """Add ``data["model"]`` from MODEL_DIR/metrics.json (+ config.json) and its warnings.

    ``data``: the report dict, changed in place. ``model_dir``: the MODEL_DIR. ``table``: the
    report's ``video_table`` (the training frequency when config.json has no train_counts).
    """
    model_dir = Path(model_dir).expanduser().absolute()
    metrics_path = model_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.json in model folder {model_dir}")
    metrics = _read_json(metrics_path)
    config_path = model_dir / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    class_names = _model_classes(metrics, config, metrics_path)
    freq_source, freq = _train_frequency(config, class_names, table)
    results = {split: {level: _evaluation(m, class_names, freq, metrics_path, f"{split}.{level}")
                       for level, m in levels.items() if level in ("frame", "video")}
               for split, levels in metrics.items() if isinstance(levels, dict)}
    results = {s: r for s, r in results.items() if r}
    if not results:
        raise ValueError(f"{metrics_path}: no split with 'frame' or 'video' metrics "
                         "(expected {\"val\": {\"frame\": ..., \"video\": ...}, ...})")
    from vidfeat.training.scoring import recorded_row_level

    data["model"] = {"path": str(model_dir), "class_names": class_names,
                     "row_level": recorded_row_level(metrics),  # what "frame" results count
                     "train_frequency": {"source": freq_source, "counts": freq},
                     "features": config.get("features"),  # what the model was trained from
                     "results": results}
    data["warnings"] += _model_warnings(data)
    data["warnings"] += _provenance_warnings(model_dir, config)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _model_classes(metrics: dict, config: dict, where: Path) -> list[str]:
    names = config.get("class_names")
    if names is None:  # fall back to the per-class order of the first result
        for levels in metrics.values():
            for m in (levels.values() if isinstance(levels, dict) else ()):
                if isinstance(m, dict) and isinstance(m.get("per_class"), dict):
                    return [str(c) for c in m["per_class"]]
        raise ValueError(f"{where.parent}: no class_names in config.json or metrics.json")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where.parent / 'config.json'}: 'class_names' must be a non-empty list")
    return [str(c) for c in names]


def _train_frequency(config: dict, class_names: list[str], table: pd.DataFrame):
    given = config.get("train_counts")
    if isinstance(given, list) and len(given) == len(class_names):
        given = dict(zip(class_names, given))
    if isinstance(given, dict):
        return "config", {c: int(given.get(c, 0)) for c in class_names}
    train = table[table["ok"] & (table["split"] == "train")]
    if train.empty or not train["frames_after"].any():
        return None, {}
    per_class = train.groupby("label")["frames_after"].sum()
    return "manifest", {c: int(per_class.get(c, 0)) for c in class_names}


def _evaluation(m, class_names: list[str], freq: dict, where: Path, key: str) -> dict:
    if not isinstance(m, dict):
        raise ValueError(f"{where}: {key} must be an object of metrics")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        if name not in m:
            raise ValueError(f"{where}: {key} lacks {name!r}")
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"{where}: {key}.confusion_matrix is {cm.shape}, expected {k}x{k} "
                         f"for the {k} classes in config.json")
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    total = sum(freq.values())
    per_class = {c: _undefined_without_support(v) for c, v in m["per_class"].items()}
    curve = [{"class": c, "train_count": freq.get(c),
              "train_fraction": freq[c] / total if c in freq and total else None,
              "recall": _num(per_class.get(c, {}).get("recall")),
              "support": int(per_class.get(c, {}).get("support", 0))} for c in class_names]
    return {**m, "per_class": per_class, "confusion_matrix_normalized": normalized.tolist(),
            "recall_vs_train_frequency": curve}


def _undefined_without_support(scores) -> dict:
    """A class without examples in the split has no recall (0/0), so no F1 either, and its
    precision says nothing about the class: null (n/a), never the 0 metrics.json stores, which
    would read as a class the model fails."""
    scores = dict(scores) if isinstance(scores, dict) else {}
    if int(scores.get("support", 0) or 0) == 0:
        scores |= {"precision": None, "recall": None, "f1": None}
    return scores


def _model_warnings(data: dict) -> list:
    from vidfeat.training.scoring import level_name

    model, out = data["model"], []
    unknown = [c for c in model["class_names"] if data["classes"] and c not in data["classes"]]
    if unknown:
        out.append(_warn("model_classes", f"model {_names(unknown)} no video in the report "
                         "source: was the model trained on other data?", unknown))
    for split, levels in model["results"].items():
        for level, m in levels.items():
            zero = [c for c, v in m["per_class"].items()
                    if v.get("support", 0) > 0 and v.get("recall", 0) == 0]
            if zero:
                names = ", ".join(map(repr, zero[:8])) + (", ..." if len(zero) > 8 else "")
                out.append(_warn("zero_recall", f"{split} {level_name(level, model['row_level'])} "
                                 f"level: the model never recognises {names} (recall 0)", zero))
    return out


def _provenance_warnings(model_dir: Path, config: dict) -> list:
    """The feature file the model was trained from has changed since (logged once, reported)."""
    from vidfeat.training.model_dir import warn_features_changed

    message = warn_features_changed(model_dir, config)
    return [_warn("features_changed", message)] if message else []
