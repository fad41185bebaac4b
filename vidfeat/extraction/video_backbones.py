"""Clip backbones: torchvision's video classifiers, classifier removed, and their preprocessing.

A clip backbone's model maps a normalised float batch of clips (B, 3, T, S, S) to pooled
pre-logits features (B, D). Its :class:`ClipPreprocess` is the weights' own
``VideoClassification`` transform (resize without antialias, centre crop, scale, normalise,
(T,C,H,W) -> (C,T,H,W)), split like the 2D one: ``resize_crop`` on uint8 frames where the
pixels are, ``normalize`` where the model is.

This module only describes the models; the registry (:mod:`vidfeat.extraction.backbones`) builds
them, loads weights and dispatches here by name.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from torch import nn

# name -> dotted path of the classifier replaced by Identity. The feature is what feeds it: the
# pooled vector (VideoResNet's avgpool, Swin3d's avgpool, MViT's normed class token). S3D's
# classifier is Dropout + a 1x1x1 Conv3d whose output is averaged over (T, H, W): without it the
# same average runs over the 1024 pooled channels, the pre-logits vector.
VIDEO_HEADS: dict[str, str] = {
    "r3d_18": "fc", "mc3_18": "fc", "r2plus1d_18": "fc", "s3d": "classifier",
    "mvit_v1_b": "head.1", "mvit_v2_s": "head.1",
    "swin3d_t": "head", "swin3d_s": "head", "swin3d_b": "head",
}
# MViT's positional encoding is sized for 16 input frames (8 after its temporal stride 2): it
# takes exactly that many, not merely at least meta["min_temporal_size"].
_FIXED_CLIP_LEN = {"mvit_v1_b": 16, "mvit_v2_s": 16}
# torchvision 0.29's weights meta holds the clip length and frame rate only in its prose
# (meta["_docs"]: "... estimated on video-level with parameters `frame_rate=15`,
# `clips_per_video=5`, and `clip_len=16`."); they are read from there, so a torchvision update
# that changes the documented sampling changes the defaults with it.
_DOC_PARAM = r"`{}=([0-9.]+)`"


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # cached: a fresh host-to-device copy per batch would stall the GPU pipeline
    def as_tensor(v):
        return torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device)
    return as_tensor(mean), as_tensor(std)


@dataclass(frozen=True)
class ClipPreprocess:
    """torchvision's ``VideoClassification``: uint8 clips (B,T,3,H,W) -> float (B,3,T,S,S).

    ``resize_size``: one value (short side) or two (height, width, the aspect ratio ignored), as
    the weights give it; resizing is bilinear without antialias (as torchvision's transform
    hard-codes). ``input_size``: the square centre crop S. ``mean``/``std``: per channel.
    """

    resize_size: tuple
    input_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    kind = "clip"

    @property
    def memory_format(self):
        return torch.channels_last_3d

    def resize_crop(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop frames; (…,3,H,W) uint8 in, (…,3,S,S) uint8 out."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        lead = images_uint8.shape[:-3]  # interpolate takes (N,C,H,W) only: flatten B and T
        flat = images_uint8.reshape(-1, *images_uint8.shape[-3:])
        out = F.resize(flat, list(self.resize_size),
                       interpolation=InterpolationMode(self.interpolation), antialias=False)
        out = F.center_crop(out, [self.input_size])
        return out.reshape(*lead, *out.shape[-3:])

    def normalize(self, clips_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """uint8 (B,T,3,S,S) -> float ``dtype`` (B,3,T,S,S), scaled to [0,1], (x - mean) / std."""
        mean, std = _mean_std(self.mean, self.std, clips_uint8.device)
        x = clips_uint8.to(torch.float32).div_(255)
        return x.sub_(mean).div_(std).to(dtype).permute(0, 2, 1, 3, 4)

    def __call__(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize_crop(clips_uint8))

    def as_attrs(self) -> dict:
        return {"input_kind": "clip", "resize_size": list(self.resize_size),
                "input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "antialias": False}

    @classmethod
    def from_attrs(cls, attrs) -> "ClipPreprocess":
        """The preprocessing ``as_attrs`` recorded (feature-file attributes or config.json).

        ``attrs``: a mapping with ``resize_size`` (a list, or its JSON text as HDF5 keeps it),
        ``input_size``, ``mean``, ``std`` and optionally ``interpolation``.
        """
        import json

        resize = attrs["resize_size"]
        resize = json.loads(resize) if isinstance(resize, str) else resize
        resize = [resize] if isinstance(resize, (int, float)) else resize
        return cls(resize_size=tuple(int(v) for v in resize),
                   input_size=int(attrs["input_size"]),
                   mean=tuple(float(v) for v in attrs["mean"]),
                   std=tuple(float(v) for v in attrs["std"]),
                   interpolation=str(attrs.get("interpolation") or "bilinear"))


@dataclass(frozen=True)
class ClipDefaults:
    """How the weights were evaluated: ``clip_len`` frames at ``clip_fps`` frames per second;
    ``min_len``/``fixed_len``: the fewest frames the model takes / the only count it takes."""

    clip_len: int
    clip_fps: float
    min_len: int = 1
    fixed_len: int | None = None


def is_clip_model(name: str) -> bool:
    """Whether ``name`` is a torchvision video (clip) backbone."""
    return name in VIDEO_HEADS


def clip_defaults(name: str) -> ClipDefaults:
    """The clip length and frame rate the default weights of ``name`` were evaluated with."""
    from torchvision.models import get_model_weights

    meta = get_model_weights(name).DEFAULT.meta
    docs = meta["_docs"]
    found = [re.search(_DOC_PARAM.format(p), docs) for p in ("clip_len", "frame_rate")]
    if not all(found):
        raise RuntimeError(f"torchvision's weights meta of {name} no longer documents "
                           "clip_len/frame_rate in meta['_docs']; vidfeat needs updating")
    return ClipDefaults(clip_len=int(found[0].group(1)), clip_fps=float(found[1].group(1)),
                        min_len=int(meta.get("min_temporal_size", 1)),
                        fixed_len=_FIXED_CLIP_LEN.get(name))


def clip_preprocess_for(name: str) -> ClipPreprocess:
    """The ``VideoClassification`` transform of ``name``'s default weights (no download)."""
    from torchvision.models import get_model_weights

    t = get_model_weights(name).DEFAULT.transforms()
    if t.crop_size[0] != t.crop_size[-1]:
        raise RuntimeError(f"{name}: non-square crop {t.crop_size} is not supported")
    return ClipPreprocess(resize_size=tuple(int(v) for v in t.resize_size),
                          input_size=int(t.crop_size[0]),
                          mean=tuple(float(v) for v in t.mean),
                          std=tuple(float(v) for v in t.std),
                          interpolation=t.interpolation.value)


def split_video_head(model: nn.Module, name: str) -> int:
    """Replace the classifier of video model ``name`` by Identity in place; its input width."""
    path = VIDEO_HEADS[name]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    head = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    layer = head[-1] if isinstance(head, nn.Sequential) else head
    if isinstance(layer, nn.Linear):
        dim = layer.in_features
    elif isinstance(layer, nn.Conv3d) and layer.kernel_size == (1, 1, 1):
        dim = layer.in_channels
    else:
        raise TypeError(f"expected a Linear or 1x1x1 Conv3d at {path}, "
                        f"found {type(layer).__name__}")
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return dim


def check_clip_len(name: str, clip_len: int) -> None:
    """ValueError in one line when clips of ``clip_len`` frames do not fit model ``name``."""
    d = clip_defaults(name)
    if d.fixed_len is not None and clip_len != d.fixed_len:
        raise ValueError(f"backbone {name} takes clips of exactly {d.fixed_len} frames, the "
                         f"ingest made {clip_len}: ingest with --clip-len {d.fixed_len}")
    if clip_len < d.min_len:
        raise ValueError(f"backbone {name} needs clips of at least {d.min_len} frames, the "
                         f"ingest made {clip_len}: ingest with --clip-len {d.clip_len}")
