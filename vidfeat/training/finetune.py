"""``train --unfreeze``: fine-tune backbone and head end to end on the stored frames.

Starts from the selected head (the linear probe) and checkpoints after every epoch into the
staging folder the new model is written in (``model_dir.open_staging``); a rerun of the same run
resumes from that checkpoint, any other run starts over.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vidfeat.system import usable_cores
from vidfeat.training import model_dir as md
from vidfeat.training.scoring import metric_fn, split_metrics
from vidfeat.training.sources import attr_json
from vidfeat.training.stacked import (
    HeadConfig,
    StackedHead,
    TrainSpec,
    class_counts,
    epoch_indices,
    loss_terms,
    stacked_loss,
)

log = logging.getLogger(__name__)
CHECKPOINT_FILE = md.CHECKPOINT_FILE


class _FrameImages(torch.utils.data.Dataset):
    """Stored JPEG frames -> resized, centre-cropped uint8 tensors (normalised on the device).

    An item of ``paths`` is one frame's path, or a clip's list of paths (a clip backbone):
    then the item is the clip's (T,3,S,S) stack."""

    def __init__(self, root: Path, paths: Sequence[str], labels: np.ndarray, preprocess):
        self.root, self.paths, self.labels, self.preprocess = root, list(paths), labels, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from vidfeat.extraction.backbones import load_image

        paths = self.paths[i]
        one = isinstance(paths, str)
        # a clip's frames come from one video: one size, resized together
        images = torch.stack([load_image(self.root / p) for p in ([paths] if one else paths)])
        out = self.preprocess.resize_crop(images)
        return (out[0] if one else out), int(self.labels[i])


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
    from vidfeat.extraction.backbones import preprocess_from_attrs

    try:
        return preprocess_from_attrs(store.attrs)
    except KeyError as exc:
        raise ValueError(f"{store.path} lacks preprocessing attribute {exc}; cannot unfreeze") from None


def _frame_splits(frames_dir, names: list[str], preprocess) -> dict:
    from vidfeat.ingestion.manifest import read_manifest

    m = read_manifest(frames_dir, check_files=True)
    index = {n: i for i, n in enumerate(names)}
    frames = m.frames[m.frames["label"].isin(index)]
    if len(frames) < len(m.frames):
        log.warning("%d stored frames have labels unknown to the feature file; skipped",
                    len(m.frames) - len(frames))
    rows = _clip_rows(m, frames, index) if preprocess.kind == "clip" else \
        frames.assign(label=frames["label"].map(index), paths=frames["path"])
    data = {}
    for split in ("train", "val", "test"):
        f = rows[rows["split"] == split]
        data[split] = (_FrameImages(m.root, f["paths"].tolist(), f["label"].to_numpy(np.int64),
                                    preprocess),
                       f["repeat"].to_numpy(np.int64), f["video_id"].to_numpy().astype(str))
    for split in ("train", "val"):
        if len(data[split][0]) == 0:
            raise ValueError(f"split {split!r} of the stored frames in {frames_dir} has no samples")
    return data


def _clip_rows(m, frames, index: dict):
    """One row per clip of clip ingest ``m`` (its frames with known labels): split, label,
    repeat, video_id and ``paths`` (the clip's JPEGs in order), as extraction reads them."""
    from vidfeat.extraction.clips import clip_meta, clip_table
    from vidfeat.ingestion.manifest import Manifest

    known = Manifest(m.root, m.videos, frames.reset_index(drop=True), m.info)
    meta = clip_meta(known, np.arange(len(clip_table(known))), index)
    return meta.assign(paths=[list(p) for p in meta["paths"]])


def _prepare_unfreeze(store, head: StackedHead, frames, hyper: dict) -> _FineTune:
    from vidfeat.extraction.backbones import create_backbone

    frames = frames or attr_json(store.attrs.get("ingest_dir"))
    if not frames:
        raise ValueError("unfreeze needs frames=OUTDIR (the ingest folder of the stored frames)")
    name, weights = store.backbone, attr_json(store.attrs.get("weights"))
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
    workers = 0 if len(indices) < 512 else min(4, max(1, usable_cores() - 1))
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


def _ft_metrics(ft, split: str, batch_size: int, dev, names: list[str]) -> dict | None:
    ds, _, video_id = ft.data[split]
    if len(ds) == 0:
        log.warning("no stored %s frames: no %s metrics", split, split)
        return None
    return split_metrics(_ft_logits(ft, split, batch_size, dev), ds.labels, video_id, names)


@dataclass
class _Step:
    """One epoch's training machinery (what ``_train_epoch`` needs besides ``ft``)."""
    opt: torch.optim.Optimizer
    scaler: object
    autocast: object
    cw: torch.Tensor
    offset: torch.Tensor
    weights: np.ndarray | None


def _train_epoch(ft: _FineTune, step: _Step, spec: TrainSpec, epoch: int, dev) -> float:
    """One pass over the train frames; returns the mean training loss."""
    train_ds, repeat, _ = ft.data["train"]
    _train_mode(ft)
    rng = np.random.default_rng([spec.seed, epoch])   # per epoch: a resumed run matches
    total, steps = 0.0, 0
    for img, y in _loader(train_ds, epoch_indices(rng, repeat, step.weights), spec.batch_size, dev):
        with step.autocast():
            x = ft.preprocess.normalize(img.to(dev, non_blocking=True))
            loss = stacked_loss(ft.head(ft.backbone(x).float()), y.to(dev), step.cw, step.offset)
        step.opt.zero_grad(set_to_none=True)
        (step.scaler.scale(loss) if step.scaler else loss).backward()
        step.scaler.step(step.opt) if step.scaler else step.opt.step()
        if step.scaler:
            step.scaler.update()
        total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def _setup(ft: _FineTune, cfg: HeadConfig, spec: TrainSpec, n_classes: int,
           backbone_lr_scale: float, dev) -> _Step:
    train_ds, repeat, _ = ft.data["train"]
    counts = class_counts(train_ds.labels, repeat, n_classes)
    cw, offset = loss_terms([cfg], counts, dev)
    ft.backbone.to(dev).requires_grad_(True)
    ft.head.to(dev).requires_grad_(True)
    opt = torch.optim.AdamW([
        {"params": list(ft.backbone.parameters()), "lr": cfg.lr * backbone_lr_scale},
        {"params": list(ft.head.parameters()), "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    autocast, scaler = _amp(dev)
    weights = repeat / np.maximum(counts, 1)[train_ds.labels] if spec.sampler == "balanced" else None
    return _Step(opt, scaler, autocast, cw, offset, weights)


def _save_best(model_dir: Path, ft: _FineTune) -> dict:
    """Write the best weights; their sha256 goes into the checkpoint (see ``_resume``)."""
    return {md.BACKBONE_FILE: md.save_backbone(model_dir, ft.backbone.state_dict()),
            md.HEAD_FILE: md.save_head(model_dir, ft.head.state_dict())}


def fine_tune(ft: _FineTune, cfg: HeadConfig, spec: TrainSpec, *, epochs: int, backbone_lr_scale: float,
              model_dir: Path, names: list[str], select_metric: str, dev: torch.device,
              progress: bool) -> dict:
    """Fine-tune backbone and head end to end; checkpoint each epoch; resume from a checkpoint.

    The best by val ``select_metric`` among the starting probe (epoch 0) and the fine-tuned
    epochs is what stays in ``ft`` and in MODEL_DIR; returns its epoch and the history.

    Parameters
    ----------
    ft : _FineTune
        Backbone, head (the probe to start from), frames and run key.
    cfg : HeadConfig
        Loss options; ``cfg.lr`` is the head's learning rate.
    spec : TrainSpec
        ``batch_size``, ``seed`` and ``sampler`` are used.
    epochs : int
        Fine-tuning epochs in all (a resumed run does only the rest).
    backbone_lr_scale : float
        The backbone's learning rate is ``cfg.lr * backbone_lr_scale``.
    model_dir : Path
        Where best weights and the checkpoint go (the staging folder).
    names : list of str
        Class names.
    select_metric : str
        Val metric that picks the kept epoch.
    dev : torch.device
    progress : bool
        Show a progress bar.
    """
    from tqdm.auto import tqdm

    step = _setup(ft, cfg, spec, len(names), backbone_lr_scale, dev)
    state = _resume(model_dir, ft, step.opt, step.scaler)
    metric = metric_fn(select_metric, names, ft.data["val"][2])
    val_y = ft.data["val"][0].labels
    if state["epoch"] == 0:   # the linear probe itself is the score to beat
        start = metric(val_y, _ft_logits(ft, "val", spec.batch_size, dev))
        state.update(best_score=start, best_epoch=0, best_sha256=_save_best(model_dir, ft),
                     history=[{"epoch": 0, "train_loss": None, "val_" + select_metric: start}])
    bar = tqdm(range(state["epoch"] + 1, epochs + 1), desc="unfreeze", unit="epoch",
               disable=not progress)
    for epoch in bar:
        loss = _train_epoch(ft, step, spec, epoch, dev)
        score = metric(val_y, _ft_logits(ft, "val", spec.batch_size, dev))
        state["history"].append({"epoch": epoch, "train_loss": loss, "val_" + select_metric: score})
        if score > state["best_score"]:
            state["best_score"], state["best_epoch"] = score, epoch
            state["best_sha256"] = _save_best(model_dir, ft)
        state["epoch"] = epoch
        _checkpoint(model_dir, ft, step.opt, step.scaler, state)
        bar.set_postfix(loss=f"{loss:.4f}", val=f"{score:.4f}")
    bar.close()
    ft.history = state["history"]
    ft.backbone.load_state_dict(md.load_tensors(model_dir, md.BACKBONE_FILE))
    ft.head.load_state_dict(md.load_tensors(model_dir, md.HEAD_FILE))
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
    md.save_checkpoint(model_dir, {
        "run_key": ft.run_key, "backbone": ft.backbone.state_dict(),
        "head": ft.head.state_dict(), "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler else {}, **state})


def _resume(model_dir: Path, ft: _FineTune, opt, scaler) -> dict:
    fresh = {"epoch": 0, "best_score": None, "best_epoch": 0, "best_sha256": {}, "history": []}
    path = md.checkpoint_path(model_dir)
    try:
        ckpt = md.load_checkpoint(model_dir)
    except Exception as exc:   # truncated or foreign file: start over rather than fail
        ckpt, why = None, f"ignoring unreadable checkpoint {path} ({exc}); starting over"
    else:
        why = _cannot_resume(model_dir, ckpt, ft.run_key)
    if why or ckpt is None:
        if why:
            log.warning("%s", why)
        md.restart(model_dir)   # nothing of another run may end up in this one's model
        return fresh
    ft.backbone.load_state_dict(ckpt["backbone"])
    ft.head.load_state_dict(ckpt["head"])
    opt.load_state_dict(ckpt["optimizer"])
    if scaler and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    log.info("resuming fine-tuning from %s after epoch %d", path, ckpt["epoch"])
    return {k: ckpt[k] for k in fresh}


def _cannot_resume(model_dir: Path, ckpt: dict | None, run_key: str) -> str | None:
    """Why the checkpoint in ``model_dir`` cannot be resumed from (None: it can, or none is)."""
    if ckpt is None:
        return None
    path = md.checkpoint_path(model_dir)
    if ckpt.get("run_key") != run_key:
        return (f"checkpoint {path} is from a different run (features, backbone or "
                "hyperparameters differ); starting over")
    # the best weights are written just before the checkpoint: a kill between the two leaves
    # files the checkpoint does not describe (another epoch's, or half of one)
    best = ckpt.get("best_sha256") or {}
    files = [md.BACKBONE_FILE, md.HEAD_FILE]
    if any(not (model_dir / f).is_file() or md.file_sha256(model_dir / f) != best.get(f)
           for f in files):
        return (f"the best weights beside checkpoint {path} are not the ones it records; "
                "starting over")
    return None


def unfreeze_stage(store, model, cfg: HeadConfig, spec: TrainSpec, config: dict, hyper: dict,
                   tune: dict, *, model_dir: Path, select_metric: str, dev,
                   progress: bool) -> tuple[StackedHead, dict]:
    """Fine-tune end to end from ``model``; record it in ``config``; return (head, metrics).

    Parameters
    ----------
    store : FeatureStore
        The features the probe was trained on (backbone, preprocessing, ingest folder).
    model : StackedHead
        The selected probe (K=1).
    cfg, spec : HeadConfig, TrainSpec
        The probe's options (``lr`` and ``batch_size`` are replaced by ``tune``'s).
    config : dict
        ``config.json`` content; gains ``unfreeze`` and ``files.backbone``.
    hyper : dict
        Hyperparameters of the probe (part of the run key that decides resuming).
    tune : dict
        ``epochs``, ``lr``, ``backbone_lr_scale``, ``batch_size``, ``frames``.
    model_dir : Path
    select_metric : str
    dev : torch.device
    progress : bool
    """
    names = list(store.class_names)
    ft = _prepare_unfreeze(store, model, tune["frames"],
                           {**hyper, **{f"unfreeze_{k}": v for k, v in tune.items()
                                        if k not in ("frames", "epochs")}})
    info = fine_tune(ft, replace(cfg, lr=tune["lr"]), replace(spec, batch_size=tune["batch_size"]),
                     epochs=tune["epochs"], backbone_lr_scale=tune["backbone_lr_scale"],
                     model_dir=model_dir, names=names, select_metric=select_metric, dev=dev,
                     progress=progress)
    metrics = {s: _ft_metrics(ft, s, tune["batch_size"], dev, names) for s in ("val", "test")}
    md.save_backbone(model_dir, ft.backbone.state_dict())
    config["files"]["backbone"] = md.BACKBONE_FILE
    frames = tune["frames"] or store.attrs["ingest_dir"]
    config["unfreeze"] = {**tune, "frames": str(Path(frames).resolve()), **info}
    return ft.head.cpu(), metrics
