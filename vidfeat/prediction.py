"""Classify new videos with a trained MODEL_DIR (``vidfeat predict``).

Each video is probed, sampled and decoded exactly as ingest did for training (the sampling
settings recorded in ``config.json``: same frame count, short side and JPEG quality), its frames
go through the recorded preprocessing, the backbone (the fine-tuned one when the model was
unfrozen) and the head; the video's score is the mean of its frame logits, as in training's
video-level metrics.

Bad input: a missing, unreadable, hostile (URL, playlist) or undecodable video gives an entry with
``error`` set and no ``top_k``; the other videos go on. A missing or malformed MODEL_DIR raises.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from vidfeat.options import check_positive
from vidfeat.system import resolve_device
from vidfeat.training.stacked import StackedHead

log = logging.getLogger(__name__)


def load_model(model_dir, device: torch.device):
    """(config, backbone, head, preprocess, sampling spec) of ``model_dir``, on ``device``.

    ``model_dir``: a trained MODEL_DIR. ``device``: the torch device to load onto.
    """
    from vidfeat.extraction.backbones import Preprocess, create_backbone
    from vidfeat.ingestion.sample import SamplingSpec
    from vidfeat.training.model_dir import load_head, warn_features_changed

    config, head = load_head(model_dir)
    warn_features_changed(model_dir, config)
    if not config.get("backbone"):
        raise ValueError(f"{model_dir}/config.json names no backbone; cannot run on videos")
    bb_file = config["files"].get("backbone")
    weights = str(Path(model_dir) / bb_file) if bb_file else config.get("weights")
    backbone = create_backbone(config["backbone"], weights).model.to(device).eval()
    preprocess = Preprocess.from_attrs(config["preprocessing"])
    known = set(SamplingSpec.__dataclass_fields__)
    spec = SamplingSpec(**{k: v for k, v in (config.get("sampling") or {}).items() if k in known})
    return config, backbone, head.to(device).eval(), preprocess, spec


def predict(model_dir, videos: Iterable[str | os.PathLike] | str | os.PathLike, *, top_k: int = 3,
            device: str = "auto", batch_size: int = 64) -> Iterator[dict]:
    """Yield one dict per video, in order: ``{"video", "top_k": [{"label", "probability"}],
    "n_frames"}``, or ``{"video", "error"}`` for a video that cannot be used.

    ``model_dir``: a trained MODEL_DIR. ``videos``: one video path or several. ``top_k``: how
    many labels per video (capped at the number of classes). ``device``: "auto", "cpu",
    "cuda", ... ``batch_size``: frames per backbone pass. The model is loaded before this
    returns (a bad MODEL_DIR raises at once).
    """
    check_positive("top_k", top_k)
    check_positive("batch_size", batch_size)
    dev = resolve_device(device)
    model = load_model(model_dir, dev)
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    return _predict_all(model, list(videos), top_k=top_k, batch_size=batch_size, dev=dev)


def _predict_all(model, videos: list, *, top_k: int, batch_size: int, dev) -> Iterator[dict]:
    from vidfeat.ingestion.probe import VideoError

    config = model[0]
    names = config["class_names"]
    for video in videos:
        try:
            logits = _video_logits(model, video, batch_size=batch_size, dev=dev)
        except (VideoError, ValueError, OSError, RuntimeError) as exc:
            log.debug("predict failed for %s", video, exc_info=True)
            yield {"video": str(video), "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue
        yield {"video": str(video), "n_frames": int(len(logits)),
               "top_k": _top_k(logits.mean(0), names, top_k)}


def _top_k(logits: np.ndarray, names: list[str], k: int) -> list[dict]:
    prob = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 0).numpy()
    order = np.argsort(-prob, kind="stable")[:k]
    return [{"label": names[i], "probability": float(prob[i])} for i in order]


def _video_logits(model, video, *, batch_size: int, dev) -> np.ndarray:
    from vidfeat.extraction.backbones import load_image
    from vidfeat.ingestion.decode import decode_frames
    from vidfeat.ingestion.probe import VideoError, probe_video
    from vidfeat.media import check_local_path

    _, backbone, head, preprocess, spec = model
    path = check_local_path(video)
    probe = probe_video(path)
    with tempfile.TemporaryDirectory(prefix="vidfeat-predict-") as tmp:
        records = decode_frames(path, probe, spec, tmp)
        if not records:
            raise VideoError("no frames decoded")
        # same route as training: stored JPEG -> load_image -> recorded preprocessing
        images = [preprocess.resize_crop(load_image(Path(tmp) / r.filename)[None])[0]
                  for r in records]
    return _run(backbone, head, preprocess, torch.stack(images), batch_size, dev)


def _run(backbone, head: StackedHead, preprocess, images: torch.Tensor, batch_size: int,
         dev) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for batch in images.split(batch_size):
            x = preprocess.normalize(batch.to(dev))
            out.append(head(backbone(x).float())[0].cpu())
    return torch.cat(out).numpy()
