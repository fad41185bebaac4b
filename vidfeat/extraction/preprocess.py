"""A frame backbone's preprocessing: uint8 RGB frames -> the normalised batch its model takes.

Split in two halves so that the uint8 half (resize, crop) runs where the pixels are (DataLoader
workers on the CPU, the GPU after ``decode_jpeg``) and only uint8 travels; recorded in feature
files and model folders (``as_attrs``), and rebuilt from them (``from_attrs``) by predict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vidfeat.extraction.video_backbones import (
    _mean_std,  # one cached copy of the normalisation constants per device, frames and clips
)

__all__ = ["RESAMPLE", "RESAMPLES", "Preprocess", "recorded_resample"]

# How ``Preprocess.resize_crop`` computes on the CPU (``resample`` attribute). Feature files and
# models made before it was recorded say nothing: theirs was "float".
RESAMPLES = {
    "uint8": "torchvision.transforms.v2's uint8 kernels: Pillow's fixed-point antialiased "
             "resize (equal to the PIL images the weights were evaluated on for 99.9% of "
             "pixels, the rest 1 grey level apart) and 4 to 9x faster than float",
    "float": "torchvision.transforms v1 on tensors: resized in float, then rounded (3% of "
             "pixels 1 to 4 grey levels from PIL's)",
}
RESAMPLE = "uint8"  # what new feature files and models use


def recorded_resample(attrs) -> str:
    """The ``resample`` that ``attrs`` (feature-file attributes or a model's config) record:
    "float" where absent (made before vidfeat recorded it)."""
    return str(attrs.get("resample") or "float")


@dataclass(frozen=True)
class Preprocess:
    """The one documented transform: uint8 RGB (N,3,H,W) -> normalised float (N,3,S,S).

    ``resize_crop`` resizes the short side to ``resize_size`` (antialiased; with ``crop_mode``
    "squash" both sides, ignoring the aspect ratio) and centre-crops ``input_size``, staying
    uint8; ``normalize`` scales to [0, 1] and applies mean/std. This is torchvision's
    ``weights.transforms()`` (or timm's eval transform) on the PIL images they were evaluated
    with, computed on uint8 tensors as ``resample`` says (``RESAMPLES``). On CUDA tensors
    (``decode='gpu'``) torchvision resizes in float whatever ``resample`` says.
    """

    resize_size: int
    input_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    crop_mode: str = "center"
    resample: str = RESAMPLE
    kind = "frame"  # what it takes: frames (N,3,H,W); a ClipPreprocess takes clips

    def __post_init__(self):
        from vidfeat.options import check_choice

        check_choice("resample", self.resample, RESAMPLES)

    @property
    def memory_format(self):
        return torch.channels_last

    def resize_crop(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Resize short side and centre-crop; (…,3,H,W) uint8 in, (…,3,S,S) uint8 out."""
        from torchvision.transforms import InterpolationMode

        if self.resample == "uint8":
            from torchvision.transforms.v2 import functional as F
        else:
            from torchvision.transforms import functional as F
        mode = InterpolationMode(self.interpolation)
        size = [self.resize_size] * (2 if self.crop_mode == "squash" else 1)
        out = F.resize(images_uint8, size, interpolation=mode, antialias=True)
        return F.center_crop(out, [self.input_size])

    def normalize(self, images_uint8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """uint8 (N,3,S,S) -> float ``dtype``, scaled to [0,1] then (x - mean) / std."""
        mean, std = _mean_std(self.mean, self.std, images_uint8.device)
        x = images_uint8.to(torch.float32).div_(255)
        return x.sub_(mean).div_(std).to(dtype)

    def __call__(self, images_uint8_nchw: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize_crop(images_uint8_nchw))

    def as_attrs(self) -> dict:
        # crop_mode only when not the default: files and fingerprints of "center" stay as they were
        extra = {"crop_mode": self.crop_mode} if self.crop_mode != "center" else {}
        return {"resize_size": self.resize_size, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, **extra, "resample": self.resample}

    @classmethod
    def from_attrs(cls, attrs) -> "Preprocess":
        """The preprocessing ``as_attrs`` recorded (feature-file attributes or config.json).

        ``attrs``: a mapping with ``resize_size``, ``input_size``, ``mean``, ``std`` and
        optionally ``interpolation``, ``crop_mode`` and ``resample`` (absent: "float", what
        files and models made before it was recorded used); a missing key raises KeyError
        naming it.
        """
        return cls(resize_size=int(attrs["resize_size"]), input_size=int(attrs["input_size"]),
                   mean=tuple(float(v) for v in attrs["mean"]),
                   std=tuple(float(v) for v in attrs["std"]),
                   interpolation=str(attrs.get("interpolation") or "bilinear"),
                   crop_mode=str(attrs.get("crop_mode") or "center"),
                   resample=recorded_resample(attrs))
