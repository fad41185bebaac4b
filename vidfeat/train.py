"""Train heads on cached features (``vidfeat train``) and evaluate them (``vidfeat evaluate``).

``train`` reads an extract HDF5 file (``FeatureStore``), trains on the train split, early-stops on
val, evaluates on val and test at frame and video level, and writes MODEL_DIR:

- ``head.pt``      the head's tensors (``torch.load(weights_only=True)``; no pickled code)
- ``backbone.pt``  the fine-tuned backbone's tensors (only after ``unfreeze``)
- ``config.json``  head architecture, hyperparameters, backbone, weights, preprocessing, ingest
                   sampling settings, class names, the feature file's fingerprint
- ``metrics.json`` ``{"val": {"frame": M, "video": M}, "test": {...}}`` (``vidfeat.metrics``)
- ``sweep.csv``/``sweep.json`` one row per configuration, when ``sweep`` is given

Features are held on the training device when they fit in ``max_memory``; otherwise they are
streamed from the HDF5 file in shuffled blocks (bounded memory), so a cache larger than RAM trains.

Bad input: a missing file -> FileNotFoundError; not a vidfeat file, an incomplete file, a split with
no samples, fewer than two classes in train, or an unknown option -> ValueError naming it. Nothing
in MODEL_DIR is replaced until head training has succeeded (files are written atomically); fine-
tuning writes its best weights and a checkpoint each epoch, and a rerun resumes from it.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from vidfeat.heads import (DEFAULT_LR, ArraySource, HeadConfig, StackedHead, TrainSpec, build_head, fit_heads,
                           head_spec, predict_logits, resolve_device, validation_scorer)
from vidfeat.manifest import atomic_write, write_json
from vidfeat.metrics import classification_metrics, video_level
from vidfeat.options import check_choice, check_positive

log = logging.getLogger(__name__)

HEADS = {"linear": (), "mlp": None}
SELECT_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "video_balanced_accuracy",
                  "video_accuracy", "video_macro_f1")
SWEEPABLE = {"lr": float, "weight_decay": float, "logit_adjust": float, "dropout": float,
             "class_weight": str}
HEAD_FILE, BACKBONE_FILE = "head.pt", "backbone.pt"


# ----------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What ``train`` returns; ``metrics`` is what ``metrics.json`` holds."""
    model_dir: Path
    metrics: dict
    config: dict
    selected: dict                       # the chosen configuration's hyperparameters
    sweep: list[dict] | None = None      # the sweep table (one row per configuration)
    elapsed_s: float = 0.0
    streamed: bool = False               # True when features were streamed from disk

    def summary(self) -> str:
        def head(split):
            m = (self.metrics.get(split) or {}).get("frame")
            v = (self.metrics.get(split) or {}).get("video")
            if not m:
                return f"{split}: no samples"
            return (f"{split} accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}, "
                    f"macro-F1 {m['macro_f1']:.3f} (video balanced {v['balanced_accuracy']:.3f})")
        n = len(self.sweep) if self.sweep else 1
        chosen = ", ".join(f"{k}={v}" for k, v in self.selected.items() if k != "best_epoch")
        chosen = f"selected {chosen}, " if chosen else ""
        ft = self.config.get("unfreeze")
        tuned = f" then fine-tuned end to end (kept epoch {ft['best_epoch']})" if ft else ""
        return (f"Trained {n} head configuration(s) in {self.elapsed_s:.1f} s{tuned}"
                f"{' (features streamed from disk)' if self.streamed else ''}; {chosen}"
                f"best epoch {self.selected.get('best_epoch')}. "
                f"{head('val')}; {head('test')}. Model written to {self.model_dir}.")


# ----------------------------------------------------------------------------------- options
def parse_size(value: int | str | None) -> int | None:
    """Bytes from 123, '512MB', '2GiB', '1.5G' (None stays None)."""
    if value is None or isinstance(value, (int, np.integer)):
        return check_positive("max_memory", value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(value))
    if not m:
        raise ValueError(f"max_memory={value!r} is not a size like 512MB or 4GB")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return check_positive("max_memory", int(float(m.group(1)) * scale))


def parse_sweep(sweep, *, head: str) -> dict[str, list]:
    """``{"lr": [..]}``, ``["lr=1e-3,1e-2", "weight_decay=0,1e-4"]`` or one such string -> dict."""
    if sweep is None:
        return {}
    if isinstance(sweep, str):
        sweep = sweep.split()
    items = sweep.items() if isinstance(sweep, Mapping) else (_sweep_item(s) for s in sweep)
    grid = {}
    for name, values in items:
        cast = check_choice("sweep parameter", name, SWEEPABLE)
        if name == "dropout" and head != "mlp":
            raise ValueError("sweep parameter 'dropout' needs head='mlp'")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        try:
            grid[name] = [cast(v) for v in values]
        except ValueError:
            raise ValueError(f"sweep {name}={values!r}: values must be {cast.__name__}") from None
        if not grid[name]:
            raise ValueError(f"sweep {name} has no values")
    return grid


def _sweep_item(text: str) -> tuple[str, list[str]]:
    name, sep, values = str(text).partition("=")
    if not sep or not values:
        raise ValueError(f"sweep item {text!r} is not NAME=V1,V2,... (e.g. lr=1e-3,1e-2)")
    return name.strip(), [v.strip() for v in values.split(",") if v.strip()]


def expand_configs(base: HeadConfig, grid: dict[str, list]) -> list[HeadConfig]:
    """Every combination of the grid's values over ``base`` (base alone for an empty grid)."""
    names = list(grid)
    return [replace(base, **dict(zip(names, combo)))
            for combo in itertools.product(*(grid[n] for n in names))]


def _auto_memory(device: torch.device) -> int:
    # half of what is free: the rest is for activations, the optimizer and everyone else
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2 << 30


# ----------------------------------------------------------------------------------- data
def open_store(features):
    """A FeatureStore for a path (or the store itself); its own errors name what is wrong."""
    from vidfeat.cache import FeatureStore

    return features if isinstance(features, FeatureStore) else FeatureStore(features)


def _strings(ds) -> np.ndarray:
    data = ds.asstr()[()] if ds.dtype.kind in "OS" else ds[()]
    return np.asarray(data).astype(str)


class H5Source:
    """One split's rows streamed from the HDF5 file in blocks; memory bounded by ``buffer_rows``.

    Each epoch visits the blocks in a random order, ``buffer_rows`` worth at a time, and shuffles
    rows within that buffer: frames of one video (and files sorted by class) still mix well.
    """

    def __init__(self, path: Path, split: str, *, buffer_rows: int, device: torch.device):
        import h5py

        self.file = h5py.File(path, "r")
        self.features = self.file["features"]
        self.rows = np.flatnonzero(_strings(self.file["split"]) == split)
        self.labels = self.file["label"][()][self.rows].astype(np.int64)
        self.repeat = self.file["repeat"][()][self.rows].astype(np.int64)
        self.video_id = _strings(self.file["video_id"])[self.rows]
        self.device = device
        # blocks small enough that one buffer mixes at least ~16 places in the file
        self.block = int(max(1, min(4096, buffer_rows // 16)))
        self.per_buffer = max(1, buffer_rows // self.block)
        self.starts = np.arange(0, len(self.rows), self.block)

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        self.file.close()

    def _read(self, start: int) -> np.ndarray:
        rows = self.rows[start:start + self.block]
        # one contiguous read, then keep this split's rows (other splits may sit in between)
        block = self.features[rows[0]:rows[-1] + 1]
        return np.asarray(block[rows - rows[0]], dtype=np.float32)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        total = sq = 0.0
        for start in self.starts:
            x = self._read(start).astype(np.float64)
            total, sq = total + x.sum(0), sq + (x * x).sum(0)
        mean = total / len(self.rows)
        return mean, np.sqrt(np.maximum(sq / len(self.rows) - mean * mean, 0))

    def batches(self, rng, batch_size: int, weights=None) -> Iterator[tuple[torch.Tensor, ...]]:
        from vidfeat.heads import epoch_indices

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


def split_source(store, split: str, *, device: torch.device, budget: int, stream_rows: int):
    """The split's rows in memory (``ArraySource``) if they fit ``budget`` bytes, else streamed."""
    n = _split_count(store, split)
    if n == 0:
        raise ValueError(f"split {split!r} of {store.path} has no samples")
    need = n * store.feature_dim * 4
    if need <= budget:
        fs = store.load(split)
        src = ArraySource(fs.X, fs.y, fs.repeat, device=device)
        src.video_id, src.streamed = np.asarray(fs.video_id).astype(str), False
        return src, need
    src = H5Source(Path(store.path), split, buffer_rows=stream_rows, device=device)
    src.streamed = True
    return src, 0


def _split_count(store, split: str) -> int:
    return int((np.asarray(store.column("split")).astype(str) == split).sum())


# ----------------------------------------------------------------------------------- metrics
def split_metrics(logits: np.ndarray, y: np.ndarray, video_id: np.ndarray,
                  class_names: list[str]) -> dict:
    """``{"frame": M, "video": M}`` for one split (video: mean of a video's frame logits)."""
    frame = classification_metrics(y, logits.argmax(1), class_names)
    v_logits, v_y, _ = video_level(logits, video_id, y)
    return {"frame": frame, "video": classification_metrics(v_y, v_logits.argmax(1), class_names)}


def _metric_fn(select_metric: str, class_names: list[str], video_id: np.ndarray):
    level, name = ("video", select_metric[6:]) if select_metric.startswith("video_") else \
        ("frame", select_metric)

    def metric(y: np.ndarray, logits: np.ndarray) -> float:
        if level == "video":
            logits, y, _ = video_level(logits, video_id, y)
        return classification_metrics(y, logits.argmax(1), class_names)[name]
    return metric


def _flat(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}{lvl}_{k}".replace("frame_", ""): metrics[lvl][k]
            for lvl in ("frame", "video") for k in ("accuracy", "balanced_accuracy", "macro_f1")}


# ----------------------------------------------------------------------------------- saving
def _save_tensors(state: dict, path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def _write_sweep(model_dir: Path, rows: list[dict]) -> None:
    write_json(model_dir / "sweep.json", {"configs": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(model_dir / "sweep.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))


def _attr_json(value, default=None):
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


def model_config(store, *, head: str, spec: dict, hyper: dict, selected: dict,
                 best_epoch: int) -> dict:
    """``config.json``: everything predict needs to redo extraction and run the head."""
    from vidfeat import __version__

    a = store.attrs
    return {
        "vidfeat_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "head": {"type": head, **spec},
        "hyperparameters": hyper,
        "selected": selected,
        "best_epoch": best_epoch,
        "class_names": list(store.class_names),
        "backbone": _attr_json(a.get("backbone")),
        "weights": _attr_json(a.get("weights")),
        "feature_dim": int(store.feature_dim),
        "precision": _attr_json(a.get("precision")),
        "preprocessing": {k: _attr_json(a.get(k)) for k in
                          ("resize_size", "input_size", "mean", "std", "interpolation")},
        "sampling": _attr_json(a.get("sampling"), {}),
        "ingest_dir": _attr_json(a.get("ingest_dir")),
        "features": {"path": str(Path(store.path).resolve()), "fingerprint": store.fingerprint},
        "files": {"head": HEAD_FILE, "backbone": None},
        "unfreeze": None,
    }


def load_head(model_dir) -> tuple[dict, StackedHead]:
    """(config, head) from MODEL_DIR; tensors only (``weights_only=True``)."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir} (not a vidfeat model folder)")
    config = json.loads(cfg_path.read_text())
    state = torch.load(model_dir / config["files"]["head"], map_location="cpu", weights_only=True)
    return config, build_head(config["head"], state)


# ----------------------------------------------------------------------------------- train
def train(features, model_dir, *, head: str = "linear", hidden: Sequence[int] = (512,),
          dropout: float = 0.2, epochs: int = 50, lr: float | None = None, weight_decay: float = 1e-4,
          batch_size: int = 256, seed: int = 0, device: str = "auto", class_weight: str = "none",
          sampler: str | None = None, logit_adjust: float | None = None, sweep=None,
          select_metric: str = "balanced_accuracy", max_memory: int | str | None = None,
          patience: int = 5, unfreeze: bool = False, frames=None, unfreeze_epochs: int = 3,
          unfreeze_batch_size: int = 32, unfreeze_lr: float = 1e-3, backbone_lr_scale: float = 0.1,
          progress: bool = True) -> TrainResult:
    """Train a head on FEATURES' train split, early-stop on val, write MODEL_DIR (module doc).

    ``lr`` defaults to 1e-2 for a linear head, 1e-3 for an MLP. ``sweep`` (e.g.
    ``{"lr": [1e-3, 1e-2], "weight_decay": [0, 1e-4]}`` or ``["lr=1e-3,1e-2", ...]``) trains
    every combination in one batched pass and selects by
    ``select_metric`` on val. ``unfreeze`` then fine-tunes backbone and head end to end on the
    stored frames of ``frames`` (default: the ingest folder recorded in the feature file), from
    the selected head, with ``unfreeze_lr`` for the head and ``unfreeze_lr * backbone_lr_scale``
    for the backbone; epoch 0 (the probe itself) is kept if no epoch beats it on val.
    """
    t0 = time.perf_counter()
    check_choice("head", head, HEADS)
    check_choice("select_metric", select_metric, SELECT_METRICS)
    grid = parse_sweep(sweep, head=head)
    base = HeadConfig(lr=lr or DEFAULT_LR[head], weight_decay=weight_decay,
                      class_weight=class_weight,
                      logit_adjust=logit_adjust or 0.0, dropout=dropout if head == "mlp" else 0.0)
    configs = expand_configs(base, grid)
    spec = TrainSpec(hidden=tuple(hidden) if head == "mlp" else (), epochs=epochs,
                     batch_size=batch_size, seed=seed, sampler=sampler, patience=patience)
    budget = parse_size(max_memory)
    check_positive("unfreeze_epochs", unfreeze_epochs)
    check_positive("unfreeze_batch_size", unfreeze_batch_size)
    check_positive("unfreeze_lr", unfreeze_lr)
    check_positive("backbone_lr_scale", backbone_lr_scale)
    dev = resolve_device(device)
    model_dir = Path(model_dir)
    with open_store(features) as store:
        budget = budget or _auto_memory(dev)
        stream_rows = max(batch_size, budget // 2 // (4 * store.feature_dim))
        fit = _fit_configs(store, configs, spec, select_metric=select_metric, dev=dev,
                           budget=budget, stream_rows=stream_rows, progress=progress)
        cfg, model = configs[fit.best], fit.model
        selected = {**{k: getattr(cfg, k) for k in grid}, "best_epoch": fit.best_epoch}
        hyper = {"head": head, "hidden": list(spec.hidden), "epochs": epochs,
                 "batch_size": batch_size, "seed": seed, "sampler": spec.sampler,
                 "patience": patience, "select_metric": select_metric, **asdict(cfg),
                 "sweep": grid or None}
        config = model_config(store, head=head, spec=head_spec(model), hyper=hyper,
                              selected=selected, best_epoch=fit.best_epoch)
        model_dir.mkdir(parents=True, exist_ok=True)
        if unfreeze:
            tune = {"epochs": unfreeze_epochs, "lr": unfreeze_lr,
                    "backbone_lr_scale": backbone_lr_scale, "batch_size": unfreeze_batch_size,
                    "frames": frames}
            model, metrics = _unfreeze_stage(store, model, cfg, spec, config, hyper, tune,
                                             model_dir=model_dir, select_metric=select_metric,
                                             dev=dev, progress=progress)
        else:
            metrics = {s: _evaluate_split(model, store, s, fit.names, dev, budget, stream_rows)
                       for s in ("val", "test")}
    _save_tensors(model.state_dict(), model_dir / HEAD_FILE)
    sweep_table = fit.table if len(configs) > 1 else None
    if sweep_table:
        _write_sweep(model_dir, sweep_table)
    else:   # a table left by an earlier sweep into this folder would describe another model
        for name in ("sweep.csv", "sweep.json"):
            (model_dir / name).unlink(missing_ok=True)
    write_json(model_dir / "config.json", config)
    write_json(model_dir / "metrics.json", metrics)
    result = TrainResult(model_dir, metrics, config, selected, sweep_table,
                         time.perf_counter() - t0, fit.streamed)
    if progress:
        print(result.summary())
    return result


@dataclass
class _Fit:
    """The head stage's outcome: the selected head and the sweep table."""
    model: StackedHead
    best: int
    best_epoch: int
    table: list[dict]
    names: list[str]
    streamed: bool


def _fit_configs(store, configs, spec: TrainSpec, *, select_metric: str, dev, budget: int,
                 stream_rows: int, progress: bool) -> _Fit:
    """Train every config in one batched pass; pick the best by val ``select_metric``."""
    train_src, used = split_source(store, "train", device=dev, budget=budget,
                                   stream_rows=stream_rows)
    val_src, _ = split_source(store, "val", device=dev, budget=budget - used,
                              stream_rows=stream_rows)
    try:
        names = list(store.class_names)
        _check_classes(train_src.labels, names)
        metric = _metric_fn(select_metric, names, val_src.video_id)
        validate = validation_scorer(val_src.chunks, val_src.labels, metric)
        results = fit_heads(train_src, len(names), configs, spec, device=dev, validate=validate,
                            progress=progress, desc=f"train {len(configs)} head(s)")
        table = _sweep_table(results, configs, val_src, names, dev)
    finally:
        for src in (train_src, val_src):
            if isinstance(src, H5Source):
                src.close()
    # ties go to the first configuration in the grid
    best = max(range(len(results)), key=lambda i: (table[i][f"val_{select_metric}"], -i))
    table[best]["selected"] = True
    return _Fit(results[best].model, best, results[best].best_epoch, table, names,
                bool(train_src.streamed or val_src.streamed))


def _unfreeze_stage(store, model, cfg: HeadConfig, spec: TrainSpec, config: dict, hyper: dict,
                    tune: dict, *, model_dir: Path, select_metric: str, dev,
                    progress: bool) -> tuple[StackedHead, dict]:
    """Fine-tune end to end from ``model``; record it in ``config``; return (head, metrics)."""
    names = list(store.class_names)
    ft = _prepare_unfreeze(store, model, tune["frames"],
                           {**hyper, **{f"unfreeze_{k}": v for k, v in tune.items()
                                        if k not in ("frames", "epochs")}})
    info = fine_tune(ft, replace(cfg, lr=tune["lr"]), replace(spec, batch_size=tune["batch_size"]),
                     epochs=tune["epochs"], backbone_lr_scale=tune["backbone_lr_scale"],
                     model_dir=model_dir, names=names, select_metric=select_metric, dev=dev,
                     progress=progress)
    metrics = {s: _ft_metrics(ft, s, tune["batch_size"], dev, names) for s in ("val", "test")}
    _save_tensors(ft.backbone.state_dict(), model_dir / BACKBONE_FILE)
    config["files"]["backbone"] = BACKBONE_FILE
    frames = tune["frames"] or store.attrs["ingest_dir"]
    config["unfreeze"] = {**tune, "frames": str(Path(frames).resolve()), **info}
    return ft.head.cpu(), metrics


def _check_classes(labels: np.ndarray, names: list[str]) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        only = ", ".join(repr(names[i]) for i in present) or "none"
        raise ValueError(f"the train split has {len(present)} class(es) ({only}); "
                         "a classifier needs at least 2")
    missing = sorted(set(range(len(names))) - set(present.tolist()))
    if missing:
        log.warning("classes with no training samples (never predicted well): %s",
                    ", ".join(names[i] for i in missing))


def _sweep_table(results, configs, val_src, names, dev) -> list[dict]:
    rows = []
    for i, (res, cfg) in enumerate(zip(results, configs)):
        m = _evaluate_source(res.model, val_src, names, dev)
        rows.append({"config": i, **asdict(cfg), "best_epoch": res.best_epoch,
                     **_flat(m, "val_"), "selected": False})
    return rows


def _ft_metrics(ft, split: str, batch_size: int, dev, names: list[str]) -> dict | None:
    ds, _, video_id = ft.data[split]
    if len(ds) == 0:
        log.warning("no stored %s frames: no %s metrics", split, split)
        return None
    return split_metrics(_ft_logits(ft, split, batch_size, dev), ds.labels, video_id, names)


def _evaluate_source(model: StackedHead, src, names: list[str], dev) -> dict:
    logits = predict_logits(model.to(dev), src.chunks())[0].numpy()
    model.cpu()
    return split_metrics(logits, src.labels, src.video_id, names)


def _evaluate_split(model, store, split, names, dev, budget, stream_rows) -> dict | None:
    try:
        src, _ = split_source(store, split, device=dev, budget=budget, stream_rows=stream_rows)
    except ValueError:
        log.warning("split %r of %s has no samples: no %s metrics", split, store.path, split)
        return None
    try:
        return _evaluate_source(model, src, names, dev)
    finally:
        if isinstance(src, H5Source):
            src.close()


# ----------------------------------------------------------------------------------- evaluate
def evaluate(model_dir, features, *, split: str = "test", device: str = "auto",
             output=None, max_memory: int | str | None = None) -> dict:
    """Metrics of MODEL_DIR's head on FEATURES' ``split``: ``{"frame": M, "video": M}``.

    Written to ``output`` (default ``MODEL_DIR/evaluate_<split>.json``). The feature file must come
    from the same backbone, feature size and classes as the model's training features.
    """
    from vidfeat.manifest import SPLITS

    check_choice("split", split, SPLITS)
    dev = resolve_device(device)
    config, model = load_head(model_dir)
    with open_store(features) as store:
        _check_compatible(config, store)
        budget = parse_size(max_memory) or _auto_memory(dev)
        stream_rows = max(1024, budget // 2 // (4 * store.feature_dim))
        src, _ = split_source(store, split, device=dev, budget=budget, stream_rows=stream_rows)
        try:
            metrics = _evaluate_source(model, src, config["class_names"], dev)
        finally:
            if isinstance(src, H5Source):
                src.close()
        out = {"features": str(Path(store.path).resolve()), "fingerprint": store.fingerprint,
               "split": split, **metrics}
    write_json(Path(output) if output else Path(model_dir) / f"evaluate_{split}.json", out)
    return metrics


def _check_compatible(config: dict, store) -> None:
    if config.get("unfreeze"):
        raise ValueError("this model fine-tuned its backbone (unfreeze): features cached from the "
                         "original backbone do not apply; its metrics.json holds its evaluation")
    if int(store.feature_dim) != int(config["head"]["in_dim"]):
        raise ValueError(f"{store.path} has {store.feature_dim}-d features; the model expects "
                         f"{config['head']['in_dim']}-d")
    if list(store.class_names) != list(config["class_names"]):
        raise ValueError(f"{store.path} has classes {list(store.class_names)}; the model was "
                         f"trained on {config['class_names']}")
    backbone = _attr_json(store.attrs.get("backbone"))
    if config.get("backbone") and backbone != config["backbone"]:
        raise ValueError(f"{store.path} was extracted with backbone {backbone!r}; the model "
                         f"expects {config['backbone']!r}")


# ----------------------------------------------------------------------------------- unfreeze
CHECKPOINT_FILE = "unfreeze_checkpoint.pt"


class _FrameImages(torch.utils.data.Dataset):
    """Stored JPEG frames -> resized, centre-cropped uint8 tensors (normalised on the device)."""

    def __init__(self, root: Path, paths: Sequence[str], labels: np.ndarray, preprocess):
        self.root, self.paths, self.labels, self.preprocess = root, list(paths), labels, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from vidfeat.backbones import load_image

        img = self.preprocess.resize_crop(load_image(self.root / self.paths[i])[None])[0]
        return img, int(self.labels[i])


@dataclass
class _FineTune:
    """Everything one end-to-end fine-tuning run needs (built by ``_prepare_unfreeze``)."""
    backbone: torch.nn.Module
    head: StackedHead
    preprocess: object
    data: dict                      # split -> (Dataset, repeat, video_id)
    run_key: str
    history: list = field(default_factory=list)


def _recorded_preprocess(store):
    from vidfeat.backbones import Preprocess

    a = store.attrs
    try:
        return Preprocess(resize_size=int(a["resize_size"]), input_size=int(a["input_size"]),
                          mean=tuple(_attr_json(a["mean"])), std=tuple(_attr_json(a["std"])),
                          interpolation=str(_attr_json(a.get("interpolation")) or "bilinear"))
    except KeyError as exc:
        raise ValueError(f"{store.path} lacks preprocessing attribute {exc}; cannot unfreeze") from None


def _frame_splits(frames_dir, names: list[str], preprocess) -> dict:
    from vidfeat.manifest import read_manifest

    m = read_manifest(frames_dir, check_files=True)
    index = {n: i for i, n in enumerate(names)}
    frames = m.frames[m.frames["label"].isin(index)]
    if len(frames) < len(m.frames):
        log.warning("%d stored frames have labels unknown to the feature file; skipped",
                    len(m.frames) - len(frames))
    data = {}
    for split in ("train", "val", "test"):
        f = frames[frames["split"] == split]
        labels = f["label"].map(index).to_numpy(np.int64)
        data[split] = (_FrameImages(m.root, f["path"].tolist(), labels, preprocess),
                       f["repeat"].to_numpy(np.int64), f["video_id"].to_numpy().astype(str))
    for split in ("train", "val"):
        if len(data[split][0]) == 0:
            raise ValueError(f"split {split!r} of the stored frames in {frames_dir} has no samples")
    return data


def _prepare_unfreeze(store, head: StackedHead, frames, hyper: dict) -> _FineTune:
    from vidfeat.backbones import create_backbone

    frames = frames or _attr_json(store.attrs.get("ingest_dir"))
    if not frames:
        raise ValueError("unfreeze needs frames=OUTDIR (the ingest folder of the stored frames)")
    name, weights = store.backbone, _attr_json(store.attrs.get("weights"))
    bb = create_backbone(name, weights)
    if bb.feature_dim != store.feature_dim:
        raise ValueError(f"backbone {name} gives {bb.feature_dim}-d features; {store.path} holds "
                         f"{store.feature_dim}-d")
    pre = _recorded_preprocess(store)
    key = json.dumps({"features": store.fingerprint, "backbone": name, "weights": weights,
                      "hyper": hyper}, sort_keys=True, default=str)
    return _FineTune(bb.model, head, pre, _frame_splits(Path(frames), list(store.class_names), pre),
                     key)


def _amp(dev: torch.device):
    """Autocast context and grad scaler: bf16 where supported, else fp16 with scaling; off on CPU."""
    import contextlib

    if dev.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _loader(dataset, indices, batch_size: int, dev: torch.device):
    workers = 0 if len(indices) < 512 else min(4, max(1, (os.cpu_count() or 2) - 1))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=list(indices),
                                       num_workers=workers, pin_memory=dev.type == "cuda")


def _ft_logits(ft: _FineTune, split: str, batch_size: int, dev) -> np.ndarray:
    ds = ft.data[split][0]
    ft.backbone.eval()
    ft.head.eval()
    autocast, _ = _amp(dev)
    out = []
    with torch.inference_mode(), autocast():
        for img, _ in _loader(ds, range(len(ds)), batch_size, dev):
            x = ft.preprocess.normalize(img.to(dev, non_blocking=True))
            out.append(ft.head(ft.backbone(x).float())[0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, ft.head.dims[-1]), np.float32)


def fine_tune(ft: _FineTune, cfg: HeadConfig, spec: TrainSpec, *, epochs: int, backbone_lr_scale: float,
              model_dir: Path, names: list[str], select_metric: str, dev: torch.device,
              progress: bool) -> dict:
    """Fine-tune backbone and head end to end; checkpoint each epoch; resume from a checkpoint.

    The best by val ``select_metric`` among the starting probe (epoch 0) and the fine-tuned
    epochs is what stays in ``ft`` and in MODEL_DIR; returns its epoch and the history.
    """
    from tqdm.auto import tqdm

    from vidfeat.heads import class_counts, epoch_indices, loss_terms, stacked_loss

    train_ds, repeat, _ = ft.data["train"]
    counts = class_counts(train_ds.labels, repeat, len(names))
    cw, offset = loss_terms([cfg], counts, dev)
    ft.backbone.to(dev).requires_grad_(True)
    ft.head.to(dev).requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": list(ft.backbone.parameters()), "lr": cfg.lr * backbone_lr_scale},
        {"params": list(ft.head.parameters()), "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    autocast, scaler = _amp(dev)
    state = _resume(model_dir, ft, opt, scaler)
    weights = repeat / np.maximum(counts, 1)[train_ds.labels] if spec.sampler == "balanced" else None
    metric = _metric_fn(select_metric, names, ft.data["val"][2])
    bar = tqdm(range(state["epoch"] + 1, epochs + 1), desc="unfreeze", unit="epoch",
               disable=not progress)
    if state["epoch"] == 0:   # the linear probe itself is the score to beat
        start = metric(ft.data["val"][0].labels, _ft_logits(ft, "val", spec.batch_size, dev))
        state.update(best_score=start, best_epoch=0,
                     history=[{"epoch": 0, "train_loss": None, "val_" + select_metric: start}])
        _save_tensors(ft.backbone.state_dict(), model_dir / BACKBONE_FILE)
        _save_tensors(ft.head.state_dict(), model_dir / HEAD_FILE)
    for epoch in bar:
        _train_mode(ft)
        rng = np.random.default_rng([spec.seed, epoch])   # per epoch: a resumed run matches
        total, steps = 0.0, 0
        for img, y in _loader(train_ds, epoch_indices(rng, repeat, weights), spec.batch_size, dev):
            with autocast():
                x = ft.preprocess.normalize(img.to(dev, non_blocking=True))
                loss = stacked_loss(ft.head(ft.backbone(x).float()), y.to(dev), cw, offset)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            scaler.step(opt) if scaler else opt.step()
            if scaler:
                scaler.update()
            total, steps = total + loss.item(), steps + 1
        logits = _ft_logits(ft, "val", spec.batch_size, dev)
        score = metric(ft.data["val"][0].labels, logits)
        state["history"].append({"epoch": epoch, "train_loss": total / max(steps, 1),
                                 "val_" + select_metric: score})
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch
            _save_tensors(ft.backbone.state_dict(), model_dir / BACKBONE_FILE)
            _save_tensors(ft.head.state_dict(), model_dir / HEAD_FILE)
        state["epoch"] = epoch
        _checkpoint(model_dir, ft, opt, scaler, state)
        bar.set_postfix(loss=f"{total / max(steps, 1):.4f}", val=f"{score:.4f}")
    bar.close()
    ft.history = state["history"]
    ft.backbone.load_state_dict(torch.load(model_dir / BACKBONE_FILE, weights_only=True))
    ft.head.load_state_dict(torch.load(model_dir / HEAD_FILE, weights_only=True))
    return {"best_epoch": state["best_epoch"], "history": state["history"]}


def _train_mode(ft: _FineTune) -> None:
    ft.backbone.train()
    ft.head.train()
    # BatchNorm keeps the statistics the cached features (and the probe) were computed with:
    # small fine-tuning batches would otherwise replace them with noisy ones
    for m in ft.backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _checkpoint(model_dir: Path, ft: _FineTune, opt, scaler, state: dict) -> None:
    ckpt = {"run_key": ft.run_key, "backbone": ft.backbone.state_dict(),
            "head": ft.head.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler else {}, **state}
    atomic_write(model_dir / CHECKPOINT_FILE, lambda tmp: torch.save(ckpt, tmp))


def _resume(model_dir: Path, ft: _FineTune, opt, scaler) -> dict:
    fresh = {"epoch": 0, "best_score": None, "best_epoch": 0, "history": []}
    path = model_dir / CHECKPOINT_FILE
    if not path.is_file():
        return fresh
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated or foreign file: start over rather than fail
        log.warning("ignoring unreadable checkpoint %s (%s); starting over", path, exc)
        return fresh
    if ckpt.get("run_key") != ft.run_key:
        log.warning("checkpoint %s is from a different run (features, backbone or "
                    "hyperparameters differ); starting over", path)
        return fresh
    ft.backbone.load_state_dict(ckpt["backbone"])
    ft.head.load_state_dict(ckpt["head"])
    opt.load_state_dict(ckpt["optimizer"])
    if scaler and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    log.info("resuming fine-tuning from %s after epoch %d", path, ckpt["epoch"])
    return {k: ckpt[k] for k in fresh}
