"""Train heads on cached features (``vidfeat train``) and evaluate them (``vidfeat evaluate``).

``train`` reads an extract HDF5 file (``FeatureStore``), trains on the train split, early-stops on
val, evaluates on val and test at row level (frames, or clips for clip features: metrics.json's
``row_level``) and video level, and writes MODEL_DIR (its files are
described and written by ``vidfeat.training.model_dir``). Features come from
``vidfeat.training.sources`` (in memory, or streamed when they exceed ``max_memory``); ``unfreeze``
is ``vidfeat.training.finetune``.

Bad input: a missing file -> FileNotFoundError; not a vidfeat file, an incomplete file, a split with
no samples, fewer than two classes in train, or an unknown option -> ValueError naming it. A
MODEL_DIR that already holds a model -> FileExistsError unless ``overwrite=True``. The new model
is written into a staging folder beside MODEL_DIR and swapped in whole at the end
(``model_dir.publish``): a run killed at any moment leaves the old model or the new one. Fine-
tuning keeps its best weights and a checkpoint each epoch there, and a rerun resumes from it.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from vidfeat.files import check_output
from vidfeat.options import check_choice, check_positive, checked
from vidfeat.system import resolve_device
from vidfeat.training import model_dir as md
from vidfeat.training.finetune import (
    unfreeze_stage,
)
from vidfeat.training.model_dir import load_head
from vidfeat.training.scoring import (
    SELECTION_RULE,
    flat,
    level_name,
    log_loss,
    metric_fn,
    recorded_row_level,
    row_level,
    select_config,
    split_metrics,
)
from vidfeat.training.sources import (
    attr_json,
    auto_memory,
    open_store,
    split_source,
)
from vidfeat.training.stacked import (
    DEFAULT_LR,
    HeadConfig,
    StackedHead,
    TrainSpec,
    fit_heads,
    head_spec,
    predict_logits,
    validation_scorer,
)

log = logging.getLogger(__name__)

HEADS = {"linear": (), "mlp": None}
# preprocessing attributes a model copies from its feature file only where the file records
# them (older files lack them: predict then uses their defaults, as the features were made)
_WHERE_RECORDED = ("crop_mode", "input_kind", "resample")
SELECT_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "video_balanced_accuracy",
                  "video_accuracy", "video_macro_f1")
SWEEPABLE = {"lr": float, "weight_decay": float, "logit_adjust": float, "dropout": float,
             "class_weight": str}


# ----------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What ``train`` returns; ``metrics`` is what ``metrics.json`` holds (its ``row_level``,
    "frame" or "clip", names what its "frame" metrics count)."""
    model_dir: Path
    metrics: dict
    config: dict
    selected: dict                       # the chosen configuration's hyperparameters
    sweep: list[dict] | None = None      # the sweep table (one row per configuration)
    elapsed_s: float = 0.0
    streamed: bool = False               # True when features were streamed from disk
    note: str = ""                       # how a sweep's tie at the top was broken

    def summary(self) -> str:
        rows = level_name("frame", recorded_row_level(self.metrics))

        def head(split):
            m = (self.metrics.get(split) or {}).get("frame")
            v = (self.metrics.get(split) or {}).get("video")
            if not m:
                return f"{split}: no samples"
            return (f"{split} {rows} accuracy {m['accuracy']:.3f}, balanced "
                    f"{m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} (video balanced "
                    f"{v['balanced_accuracy']:.3f})")
        n = len(self.sweep) if self.sweep else 1
        chosen = ", ".join(f"{k}={v}" for k, v in self.selected.items() if k != "best_epoch")
        chosen = f"selected {chosen}, " if chosen else ""
        ft = self.config.get("unfreeze")
        tuned = f" then fine-tuned end to end (kept epoch {ft['best_epoch']})" if ft else ""
        note = f" {self.note}." if self.note else ""
        return (f"Trained {n} head configuration(s) in {self.elapsed_s:.1f} s{tuned}"
                f"{' (features streamed from disk)' if self.streamed else ''}; {chosen}"
                f"best epoch {self.selected.get('best_epoch')}.{note} "
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



# ----------------------------------------------------------------------------------- config
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
        "backbone": attr_json(a.get("backbone")),
        "weights": attr_json(a.get("weights")),
        "feature_dim": int(store.feature_dim),
        "precision": attr_json(a.get("precision")),
        "preprocessing": {k: attr_json(a.get(k)) for k in
                          ("resize_size", "input_size", "mean", "std", "interpolation",
                           *_WHERE_RECORDED) if k not in _WHERE_RECORDED or k in a},
        "sampling": attr_json(a.get("sampling"), {}),
        "ingest_dir": attr_json(a.get("ingest_dir")),
        "features": md.features_record(store),
        "files": {"head": md.HEAD_FILE, "backbone": None},
        "unfreeze": None,
    }



# ----------------------------------------------------------------------------------- train
@checked
def train(features, model_dir, *, head: str = "linear", hidden: Sequence[int] = (512,),
          dropout: float = 0.2, epochs: int = 50, lr: float | None = None, weight_decay: float = 1e-4,
          batch_size: int = 256, seed: int = 0, device: str = "auto", class_weight: str = "none",
          sampler: str | None = None, logit_adjust: float | None = None,
          sweep: Mapping | Sequence[str] | str | None = None,
          select_metric: str = "balanced_accuracy", max_memory: int | str | None = None,
          patience: int = 5, unfreeze: bool = False,
          frames: str | Path | None = None, unfreeze_epochs: int = 3,
          unfreeze_batch_size: int = 32, unfreeze_lr: float = 1e-3, backbone_lr_scale: float = 0.1,
          progress: bool = True, overwrite: bool = False) -> TrainResult:
    """Train a head on FEATURES' train split, early-stop on val, write MODEL_DIR (module doc).

    Parameters
    ----------
    features : path or FeatureStore -- the extract HDF5 file.
    model_dir : path -- output folder. One that already holds a model (config.json or head.pt) is
        refused before any training unless ``overwrite``. A killed ``unfreeze`` run leaves its
        checkpoint in the staging folder beside it: the same run resumes from it.
    head : 'linear' or 'mlp'; hidden, dropout : the MLP's hidden sizes and dropout.
    epochs, batch_size, seed, patience : head training's maximum epochs, minibatch rows, seed,
        and val checks without improvement before stopping.
    lr : head learning rate (None: 1e-2 linear, 1e-3 MLP); weight_decay : AdamW weight decay.
    class_weight : 'none', 'balanced' or 'effective:BETA'; sampler : None or 'balanced'.
    logit_adjust : tau of the logit-adjusted loss (None/0: off).
    sweep : e.g. ``{"lr": [1e-3, 1e-2]}`` or ``["lr=1e-3,1e-2", "weight_decay=0,1e-4"]``: every
        combination trains in one batched pass; the best by ``select_metric`` on val is kept.
    select_metric : one of ``SELECT_METRICS``.
    max_memory : bytes of features held in memory (e.g. '2GB'; None: half the free memory);
        beyond it, features are streamed from the file.
    unfreeze : then fine-tune backbone and head end to end on the stored frames from the
        selected head; epoch 0 (the probe itself) is kept if no epoch beats it on val.
    frames : the stored frames' ingest folder (None: the one recorded in the feature file).
    unfreeze_epochs, unfreeze_batch_size, unfreeze_lr : fine-tuning epochs, batch, head lr;
        backbone_lr_scale : the backbone's lr is ``unfreeze_lr * backbone_lr_scale``.
    device : 'auto', 'cpu', 'cuda' or 'cuda:N'; progress : progress bars and a summary.
    overwrite : replace a model already in ``model_dir``; its files this run does not rewrite
        (evaluations, sweep table, backbone) go with it; other files (a user's) are kept.
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
    tune = {"epochs": check_positive("unfreeze_epochs", unfreeze_epochs),
            "lr": check_positive("unfreeze_lr", unfreeze_lr),
            "backbone_lr_scale": check_positive("backbone_lr_scale", backbone_lr_scale),
            "batch_size": check_positive("unfreeze_batch_size", unfreeze_batch_size),
            "frames": frames} if unfreeze else None
    dev = resolve_device(device)
    model_dir = check_output(model_dir, kind="folder")  # before any work, not after it
    # a bad feature file is the first error to report; the lock keeps a second run out
    with open_store(features) as store, md.lock(model_dir):
        if store.class_names == [""]:  # the one label of an unlabelled ingest
            raise ValueError(f"{store.path} has no labels (ingested with --unlabelled): train "
                             "needs labelled videos")
        md.check_target(model_dir, overwrite=overwrite)
        result = _train_store(store, model_dir, configs, grid, spec, tune, head=head,
                              select_metric=select_metric, dev=dev, budget=budget,
                              progress=progress)
    result.elapsed_s = time.perf_counter() - t0
    if progress:
        print(result.summary())
    return result


def _train_store(store, model_dir: Path, configs: list[HeadConfig], grid: dict, spec: TrainSpec,
                 tune: dict | None, *, head: str, select_metric: str, dev, budget: int | None,
                 progress: bool) -> TrainResult:
    """``train`` on an open store: fit heads, optionally fine-tune, write MODEL_DIR."""
    budget = budget or auto_memory(dev)
    stream_rows = max(spec.batch_size, budget // 2 // (4 * store.feature_dim))
    fit = _fit_configs(store, configs, spec, select_metric=select_metric, dev=dev,
                       budget=budget, stream_rows=stream_rows, progress=progress)
    cfg, model = configs[fit.best], fit.model
    selected = {**{k: getattr(cfg, k) for k in grid}, "best_epoch": fit.best_epoch}
    hyper = {"head": head, "hidden": list(spec.hidden), "epochs": spec.epochs,
             "batch_size": spec.batch_size, "seed": spec.seed, "sampler": spec.sampler,
             "patience": spec.patience, "select_metric": select_metric, **asdict(cfg),
             "sweep": grid or None,
             "selection": SELECTION_RULE.format(metric=select_metric) if grid else None}
    config = model_config(store, head=head, spec=head_spec(model), hyper=hyper,
                          selected=selected, best_epoch=fit.best_epoch)
    sweep_table = fit.table if len(configs) > 1 else None
    # head training succeeded: the new model goes into the staging folder, then replaces the old
    # (a staging folder left by the same fine-tuning run is resumed)
    stage = md.open_staging(model_dir, resume=tune is not None)
    try:
        if tune is not None:
            model, metrics = unfreeze_stage(store, model, cfg, spec, config, hyper, tune,
                                            model_dir=stage, select_metric=select_metric,
                                            dev=dev, progress=progress)
        else:
            metrics = {s: _evaluate_split(model, store, s, fit.names, dev, budget, stream_rows)
                       for s in ("val", "test")}
        metrics = {"row_level": row_level(config["preprocessing"]), **metrics}
        md.save_head(stage, model.state_dict())
        if sweep_table:
            md.write_sweep(stage, sweep_table)
        md.write_metrics(stage, metrics)
        config = md.publish(model_dir, stage, config)
    except BaseException:
        md.discard_staging(model_dir, keep_checkpoint=True)   # a rerun resumes from one
        raise
    return TrainResult(model_dir, metrics, config, selected, sweep_table, 0.0, fit.streamed,
                       fit.note)


@dataclass
class _Fit:
    """The head stage's outcome: the selected head and the sweep table."""
    model: StackedHead
    best: int
    best_epoch: int
    table: list[dict]
    names: list[str]
    streamed: bool
    note: str = ""      # how a tie at the top was broken, if there was one


def _fit_configs(store, configs, spec: TrainSpec, *, select_metric: str, dev, budget: int,
                 stream_rows: int, progress: bool) -> _Fit:
    """Train every config in one batched pass; pick the best by val ``select_metric``."""
    train_src, used = split_source(store, "train", device=dev, budget=budget,
                                   stream_rows=stream_rows)
    val_src, _ = split_source(store, "val", device=dev, budget=budget - used,
                              stream_rows=stream_rows)
    names = list(store.class_names)
    _check_classes(train_src.labels, names)
    metric = metric_fn(select_metric, names, val_src.video_id)
    validate = validation_scorer(val_src.chunks, val_src.labels, metric)
    results = fit_heads(train_src, len(names), configs, spec, device=dev, validate=validate,
                        progress=progress, desc=f"train {len(configs)} head(s)")
    table = _sweep_table(results, configs, val_src, names, dev)
    best, note = select_config(table, select_metric)
    return _Fit(results[best].model, best, results[best].best_epoch, table, names,
                bool(train_src.streamed or val_src.streamed), note)


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
        logits = _logits(res.model, val_src, dev)
        m = split_metrics(logits, val_src.labels, val_src.video_id, names)
        rows.append({"config": i, **asdict(cfg), "best_epoch": res.best_epoch,
                     **flat(m, "val_"), "val_log_loss": log_loss(logits, val_src.labels),
                     "tied": False, "selected": False, "selected_by": ""})
    return rows


def _logits(model: StackedHead, src, dev) -> np.ndarray:
    logits = predict_logits(model.to(dev), src.chunks())[0].numpy()
    model.cpu()
    return logits


def _evaluate_source(model: StackedHead, src, names: list[str], dev) -> dict:
    return split_metrics(_logits(model, src, dev), src.labels, src.video_id, names)


def _evaluate_split(model, store, split, names, dev, budget, stream_rows) -> dict | None:
    try:
        src, _ = split_source(store, split, device=dev, budget=budget, stream_rows=stream_rows)
    except ValueError:
        log.warning("split %r of %s has no samples: no %s metrics", split, store.path, split)
        return None
    return _evaluate_source(model, src, names, dev)


# ----------------------------------------------------------------------------------- evaluate
@checked
def evaluate(model_dir, features, *, split: str = "test", device: str = "auto",
             output: str | Path | None = None, max_memory: int | str | None = None) -> dict:
    """Metrics of MODEL_DIR's head on FEATURES' ``split``: ``{"row_level": "frame" | "clip",
    "frame": M, "video": M}`` ("frame": the row level, frames or clips for clip features).

    Written to ``output`` (default ``MODEL_DIR/evaluate_<split>.json``). The feature file must come
    from the same backbone, feature size and classes as the model's training features. When it
    is the file the model was trained from and has changed since (re-extracted), a warning
    says so.
    """
    from vidfeat.ingestion.manifest import SPLITS

    check_choice("split", split, SPLITS)
    dev = resolve_device(device)
    config, model = load_head(model_dir)
    with open_store(features) as store:
        _check_compatible(config, store)
        md.warn_features_changed(model_dir, config, store=store)
        budget = parse_size(max_memory) or auto_memory(dev)
        stream_rows = max(1024, budget // 2 // (4 * store.feature_dim))
        src, _ = split_source(store, split, device=dev, budget=budget, stream_rows=stream_rows)
        metrics = {"row_level": row_level(store.attrs),
                   **_evaluate_source(model, src, config["class_names"], dev)}
        out = {"features": str(Path(store.path).resolve()), "fingerprint": store.fingerprint,
               "split": split, **metrics}
    md.write_evaluation(Path(output) if output else md.evaluation_path(model_dir, split), out)
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
    backbone = attr_json(store.attrs.get("backbone"))
    if config.get("backbone") and backbone != config["backbone"]:
        raise ValueError(f"{store.path} was extracted with backbone {backbone!r}; the model "
                         f"expects {config['backbone']!r}")

