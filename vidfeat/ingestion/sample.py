"""Which frames to take from a video: the sampling spec and the target times it plans.

Modes (``SamplingSpec.mode``):

- ``uniform``: ``frames_per_video`` frames at the centres of equal segments of the duration
  (segment centres never fall on the very first/last instant, which are often black or cut).
- ``fps``: ``fps`` frames per second of video, at ``start + k / fps`` (FFmpeg's fps filter grid).
- ``keyframes``: every keyframe; nothing is planned (the decoder finds them), see ``decode``.

A target time ``t`` selects the frame the video shows at ``t``: the last frame with pts <= t.
All times are absolute stream times in seconds (``ProbeResult.start_s`` included). Planning is
pure arithmetic on the probe: corrupt input never reaches here (probe raised already).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vidfeat.ingestion.probe import ProbeResult
from vidfeat.options import check_choice, check_positive

MODES = ("uniform", "fps", "keyframes")


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample and store frames; invalid values raise ValueError naming the option."""

    mode: str = "uniform"
    frames_per_video: int = 16
    fps: float | None = None
    size: int = 256
    jpeg_quality: int = 90

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_positive("frames_per_video", self.frames_per_video)
        check_positive("fps", self.fps)
        check_positive("size", self.size)
        if self.mode == "fps" and self.fps is None:
            raise ValueError("mode='fps' needs fps= (frames per second of video)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")


def plan_times(probe: ProbeResult, spec: SamplingSpec, *, n: int | None = None) -> list[float]:
    """Target display times (absolute seconds, sorted) for uniform and fps modes; [] for keyframes.

    ``n`` overrides ``frames_per_video`` in uniform mode (balancing asks for more or fewer).
    Several targets may land on the same frame (n > frame count); decode keeps one record.
    """
    check_positive("n", n)
    start, duration = probe.start_s, max(probe.duration_s, 0.0)
    if spec.mode == "uniform":
        count = n or spec.frames_per_video
        return [start + (i + 0.5) * duration / count for i in range(count)]
    if spec.mode == "fps":
        count = max(1, math.ceil(duration * spec.fps - 1e-9))
        return [start + k / spec.fps for k in range(count)]
    return []


def max_distinct_frames(probe: ProbeResult, spec: SamplingSpec) -> int:
    """How many distinct frames this video can give (uniform: its frame count), for balancing."""
    if spec.mode == "fps":
        return min(probe.frame_count, len(plan_times(probe, spec)))
    return max(1, probe.frame_count)
