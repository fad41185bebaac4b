"""Which frames to take from a video: the sampling spec and the target times it plans.

Modes (``SamplingSpec.mode``):

- ``uniform``: ``frames_per_video`` frames at the centres of equal segments of the duration
  (segment centres never fall on the very first/last instant, which are often black or cut).
- ``fps``: ``fps`` frames per second of video, at ``start + k / fps`` (FFmpeg's fps filter grid).
- ``keyframes``: every keyframe; nothing is planned (the decoder finds them), see ``decode``.

Clips (``clips_per_video`` set; uniform mode only): ``clips_per_video`` clips, each centred in one
of as many equal segments of the duration, each of ``clip_len`` targets ``1 / clip_fps`` s apart
(the clip lasts ``clip_len / clip_fps`` s). A clip that would reach past either end of the video is
shifted inside it (clips may then overlap). A video shorter than one clip follows
``short_clips``: ``pad`` (one clip from its start; targets past its end show its last frame and
are marked padded) or ``drop`` (the video fails with ``short_clip_reason``).

A target time ``t`` selects the frame the video shows at ``t``: the last frame with pts <= t.
All times are absolute stream times in seconds (``ProbeResult.start_s`` included). Planning is
pure arithmetic on the probe: corrupt input never reaches here (probe raised already).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vidfeat.ingestion.probe import ProbeResult
from vidfeat.options import check_choice, check_positive

MODES = ("uniform", "fps", "keyframes")
SHORT_CLIPS = {
    "pad": "one clip from the start; its targets past the end repeat the last frame (padded)",
    "drop": "the video fails with the reason 'shorter than one clip'",
}
_CLIP_FIELDS = ("clips_per_video", "clip_len", "clip_fps", "short_clips")


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample and store frames; invalid values raise ValueError naming the option."""

    mode: str = "uniform"
    frames_per_video: int = 16
    fps: float | None = None
    size: int = 256
    jpeg_quality: int = 90
    clips_per_video: int | None = None
    clip_len: int = 16
    clip_fps: float = 15.0
    short_clips: str = "pad"

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        for name in ("frames_per_video", "fps", "size", "clips_per_video", "clip_len", "clip_fps"):
            check_positive(name, getattr(self, name))
        check_choice("short_clips", self.short_clips, SHORT_CLIPS)
        if self.mode == "fps" and self.fps is None:
            raise ValueError("mode='fps' needs fps= (frames per second of video)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        if self.clips and self.mode != "uniform":
            other = "fps" if self.mode == "fps" else "keyframes"
            raise ValueError(f"clips_per_video and {other} exclude each other: clips are "
                             "sampled uniformly over the video (give one of them)")

    @property
    def clips(self) -> bool:
        """Whether this spec samples clips (``clips_per_video`` is set)."""
        return self.clips_per_video is not None

    @property
    def clip_s(self) -> float:
        """How long one clip lasts: ``clip_len / clip_fps`` seconds."""
        return self.clip_len / self.clip_fps

    def record(self) -> dict:
        """The spec as recorded (``ingest.json``'s ``sampling``, journal keys): every field,
        less the clip fields when no clips are sampled, so a frame ingest's record (and the
        fingerprints made from it) is what it was before clips existed."""
        out = asdict(self)
        if not self.clips:
            for name in _CLIP_FIELDS:
                del out[name]
        return out


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


def short_clip_reason(probe: ProbeResult, spec: SamplingSpec) -> str | None:
    """Why this video cannot give one whole clip (``shorter than one clip: 0.8 s < 1.07 s``),
    or None when it can (or no clips are sampled)."""
    duration = max(probe.duration_s, 0.0)
    if not spec.clips or duration >= spec.clip_s - 1e-9:
        return None
    return (f"shorter than one clip: {duration:.3g} s < {spec.clip_s:.3g} s "
            f"({spec.clip_len} frames at {spec.clip_fps:g} fps)")


def plan_clips(probe: ProbeResult, spec: SamplingSpec, *,
               n: int | None = None) -> list[list[tuple[float, bool]]]:
    """Per clip, its ``clip_len`` ``(target time, padded)`` pairs (absolute seconds, sorted).

    ``probe``: the video. ``spec``: a clip spec. ``n`` overrides ``clips_per_video``
    (balancing asks for more). Clip k is centred on the centre of segment k of ``n`` equal
    segments, shifted inside the video where it would overrun an end. A video shorter than a
    clip gives one clip from its start whose targets at or past its end are ``padded``
    (``short_clips='drop'``: the caller fails the video with ``short_clip_reason``).
    """
    check_positive("n", n)
    if not spec.clips:
        raise ValueError("plan_clips needs a spec with clips_per_video")
    start, duration = probe.start_s, max(probe.duration_s, 0.0)
    step, end = 1.0 / spec.clip_fps, start + duration
    if short_clip_reason(probe, spec):
        return [[(start + j * step, start + j * step >= end - 1e-9) for j in range(spec.clip_len)]]
    count = n or spec.clips_per_video
    latest = end - spec.clip_s  # the last start that keeps the whole clip inside the video
    clips = []
    for k in range(count):
        centre = start + (k + 0.5) * duration / count
        first = min(max(centre - spec.clip_s / 2, start), latest)
        clips.append([(first + j * step, False) for j in range(spec.clip_len)])
    return clips


def max_distinct_frames(probe: ProbeResult, spec: SamplingSpec) -> int:
    """How many distinct frames this video can give (uniform: its frame count), for balancing;
    with clips, how many clips it holds without overlap (at least 1)."""
    if spec.clips:
        return max(1, math.floor(max(probe.duration_s, 0.0) / spec.clip_s + 1e-9))
    if spec.mode == "fps":
        return min(probe.frame_count, len(plan_times(probe, spec)))
    return max(1, probe.frame_count)
