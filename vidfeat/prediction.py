"""Classify new videos with a trained MODEL_DIR (``vidfeat predict``).

Each video is probed, sampled and decoded exactly as ingest did for training (the sampling
settings recorded in ``config.json``: same frame count, or the same clips, short side and JPEG
quality; a clip ingest's short videos padded or refused as it did), its frames
go through the recorded preprocessing, the backbone (the fine-tuned one when the model was
unfrozen) and the head; the video's score is the mean of its frame logits, as in training's
video-level metrics. A clip model's video is sampled into clips as its ingest was (the recorded
clips per video, clip length and rate) and scored by the mean of its clip logits.

Bad input: a missing, unreadable, hostile (URL, playlist) or undecodable video gives an entry with
``error`` set and no ``top_k``; the other videos go on. As in ingest, each video's probe and
decode run in a sandbox child process killed after ``timeout`` seconds or when it crashes, so a
hung decoder or one that eats the machine's memory ends as that video's error entry. A missing
or malformed MODEL_DIR raises; so does a full disk (``StorageError``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from vidfeat.options import check_positive, checked
from vidfeat.system import resolve_device
from vidfeat.training.stacked import StackedHead

log = logging.getLogger(__name__)


def load_model(model_dir, device: torch.device):
    """(config, backbone, head, preprocess, sampling spec) of ``model_dir``, on ``device``.

    ``model_dir``: a trained MODEL_DIR. ``device``: the torch device to load onto.
    """
    from vidfeat.extraction.backbones import create_backbone, preprocess_from_attrs
    from vidfeat.ingestion.sample import SamplingSpec
    from vidfeat.training.model_dir import load_head, warn_features_changed

    config, head = load_head(model_dir)
    warn_features_changed(model_dir, config)
    if not config.get("backbone"):
        raise ValueError(f"{model_dir}/config.json names no backbone; cannot run on videos")
    bb_file = config["files"].get("backbone")
    weights = str(Path(model_dir) / bb_file) if bb_file else config.get("weights")
    backbone = create_backbone(config["backbone"], weights).model.to(device).eval()
    preprocess = preprocess_from_attrs(config["preprocessing"])  # a clip model's: clips
    known = set(SamplingSpec.__dataclass_fields__)
    spec = SamplingSpec(**{k: v for k, v in (config.get("sampling") or {}).items() if k in known})
    return config, backbone, head.to(device).eval(), preprocess, spec


@checked
def predict(model_dir, videos: Iterable[str | os.PathLike] | str | os.PathLike, *, top_k: int = 3,
            device: str = "auto", batch_size: int = 64, timeout: float = 600.0) -> Iterator[dict]:
    """Yield one dict per video, in order: ``{"video", "top_k": [{"label", "probability"}],
    "n_frames"}``, or ``{"video", "error"}`` for a video that cannot be used. A clip model's
    entry adds ``"n_clips"``, the clips scored; its ``n_frames`` is the same number (the rows
    the head scored, as before ``n_clips`` existed), not the frames in those clips.

    ``model_dir``: a trained MODEL_DIR. ``videos``: one video path or several. ``top_k``: how
    many labels per video (capped at the number of classes). ``device``: "auto", "cpu",
    "cuda", ... ``batch_size``: frames per backbone pass. ``timeout``: seconds each video's
    probe and each decode may take before its child process is killed (ingest's default). The
    model is loaded before this returns (a bad MODEL_DIR raises at once).
    """
    check_positive("top_k", top_k)
    check_positive("batch_size", batch_size)
    check_positive("timeout", timeout)
    dev = resolve_device(device)
    model = load_model(model_dir, dev)
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    return _predict_all(model, list(videos), top_k=top_k, batch_size=batch_size, dev=dev,
                        timeout=float(timeout))


def _predict_all(model, videos: list, *, top_k: int, batch_size: int, dev,
                 timeout: float) -> Iterator[dict]:
    from vidfeat.files import StorageError
    from vidfeat.ingestion.probe import VideoError
    from vidfeat.sandbox import Sandbox

    config = model[0]
    names = config["class_names"]
    sandbox = Sandbox()  # one child for this call's videos, killed when the call ends
    try:
        for video in videos:
            try:
                logits = _video_logits(model, video, batch_size=batch_size, dev=dev,
                                       sandbox=sandbox, timeout=timeout)
            except StorageError:
                raise  # the disk, not the video: stop
            except (VideoError, ValueError, OSError, RuntimeError) as exc:
                log.debug("predict failed for %s", video, exc_info=True)
                yield {"video": str(video), "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                continue
            rows = {"n_frames": int(len(logits))}
            if model[3].kind == "clip":  # the rows are clips: say so, keep n_frames for readers
                rows["n_clips"] = rows["n_frames"]
            yield {"video": str(video), **rows, "top_k": _top_k(logits.mean(0), names, top_k)}
    finally:
        sandbox.close()


def _top_k(logits: np.ndarray, names: list[str], k: int) -> list[dict]:
    prob = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 0).numpy()
    order = np.argsort(-prob, kind="stable")[:k]
    # 4 decimals: what a reader can use; float32 noise digits are not information
    return [{"label": names[i], "probability": round(float(prob[i]), 4)} for i in order]


def _video_logits(model, video, *, batch_size: int, dev, sandbox, timeout: float) -> np.ndarray:
    # looked up at call time (not imported at the top): tests swap in slow or crashing versions
    from vidfeat.extraction.backbones import load_image
    from vidfeat.ingestion.decode import decode_frames
    from vidfeat.ingestion.probe import VideoError, probe_video
    from vidfeat.media import check_local_path

    _, backbone, head, preprocess, spec = model
    path = str(check_local_path(video))
    probe = _in_child(sandbox, timeout, probe_video, path)
    with tempfile.TemporaryDirectory(prefix="vidfeat-predict-") as tmp:
        records = _in_child(sandbox, timeout, decode_frames, path, probe, spec, tmp)
        if not records:
            raise VideoError("no frames decoded")
        # same route as training: stored JPEG -> load_image -> recorded preprocessing
        images = torch.stack([preprocess.resize_crop(load_image(Path(tmp) / r.filename)[None])[0]
                              for r in records])
    if preprocess.kind == "clip":  # ClipRecords, clip after clip in clip_pos order: (n, T, ...)
        if not spec.clips:
            raise ValueError("the model is a clip model but its recorded sampling has no clips")
        images = images.view(-1, spec.clip_len, *images.shape[1:])
        batch_size = max(1, batch_size // spec.clip_len)  # batch_size counts frames
    return _run(backbone, head, preprocess, images, batch_size, dev)


def _in_child(sandbox, timeout: float, fn, *args):
    """``fn(*args)`` in the sandbox child; its failure (error, timeout, crash) as a VideoError."""
    from vidfeat.ingestion.probe import VideoError

    ok, value = sandbox.call(fn, args, timeout=timeout)
    if not ok:
        raise VideoError(value)
    return value


def _run(backbone, head: StackedHead, preprocess, images: torch.Tensor, batch_size: int,
         dev) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for batch in images.split(batch_size):
            x = preprocess.normalize(batch.to(dev))
            out.append(head(backbone(x).float())[0].cpu())
    return torch.cat(out).numpy()
