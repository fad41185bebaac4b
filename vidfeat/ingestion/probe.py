"""Probe one video in-process with PyAV: duration, rates, frame count, display size, rotation.

``probe_video`` opens the file only through ``media.open_video`` (local files, video demuxers,
no playlists) and, by default, decodes the first frame, so a video that probes fine will decode.

Bad input -> ``VideoError`` whose message is one line (it goes into ``videos.error``):
missing / directory / FIFO / unreadable / 0-byte file, URL or protocol path, playlist or ffconcat
script (whatever its extension), truncated MP4 ("moov atom not found"), random bytes or text
("not a video container"), audio-only file ("no video stream"), a first frame that does not
decode. Nothing here hangs on a FIFO or opens a second file; timeouts are the caller's (ingest
kills the worker).

Conventions: times are absolute stream presentation times in seconds (``start_s`` is where the
stream starts, often 0 but e.g. 1.4 s in MPEG-TS). ``rotation`` is the display-matrix rotation
in degrees counter-clockwise (FFmpeg's ``-display_rotation``), and ``width``/``height`` are the
display size after it: a 64x48 video rotated by 90 is 48x64.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from vidfeat.media import VideoError, error_reason, open_video

__all__ = ["ProbeResult", "VideoError", "probe_video"]

# Relative gap between nominal and average frame rate above which a stream counts as VFR.
VFR_TOLERANCE = 0.02
# Packets read looking for a first frame before deciding none will come (bounds hostile files).
FIRST_FRAME_PACKETS = 512


@dataclass(frozen=True)
class ProbeResult:
    """What a video is, as the ingest stage needs it (see the module docstring for conventions)."""

    duration_s: float
    fps: float
    avg_fps: float
    vfr: bool
    frame_count: int
    width: int
    height: int
    rotation: int
    codec: str
    has_audio: bool
    start_s: float = 0.0

    def row(self) -> dict:
        """Columns for the videos manifest (everything but ``start_s``)."""
        row = asdict(self)
        row.pop("start_s")
        return row


def probe_video(path, *, check_decode: bool = True) -> ProbeResult:
    """Probe ``path``; raise VideoError with a one-line reason if it is not a usable video.

    The first frame is always decoded to read the display rotation; with ``check_decode=False``
    a failure there is tolerated (rotation 0) instead of raised.
    """
    with open_video(path) as container:
        if not container.streams.video:
            kind = "audio-only file" if container.streams.audio else "no streams"
            raise VideoError(f"no video stream ({kind})")
        stream = container.streams.video[0]
        try:
            rotation = _first_frame_rotation(container, stream)
        except VideoError:
            if check_decode:
                raise
            rotation = 0
        return _describe(container, stream, rotation)


def _describe(container, stream, rotation: int) -> ProbeResult:
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:
        raise VideoError("video stream has no frame size")
    duration = _duration(container, stream)
    fps = _nominal_fps(stream)
    count = int(stream.frames or 0) or max(1, round(duration * float(stream.average_rate or fps)))
    avg = count / duration if duration > 0 else fps
    w, h = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return ProbeResult(
        duration_s=duration, fps=fps, avg_fps=avg, vfr=_is_vfr(stream, fps, avg), frame_count=count,
        width=w, height=h, rotation=rotation, codec=ctx.name, has_audio=bool(container.streams.audio),
        start_s=start)


def _nominal_fps(stream) -> float:
    for rate in (stream.base_rate, stream.guessed_rate, stream.average_rate):
        if rate and 0 < float(rate) < 1000:  # 90000 "fps" is a timebase, not a rate
            return float(rate)
    raise VideoError("video stream has no frame rate")


def _duration(container, stream) -> float:
    """Seconds of video: stream header, else the Matroska DURATION tag, else the container's."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = _parse_clock(stream.metadata.get("DURATION") or stream.metadata.get("duration") or "")
    if tag:
        return tag
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    raise VideoError("video duration is unknown")


def _parse_clock(text: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+):(\d\d):(\d\d(?:\.\d+)?)\s*", text)
    if not m:
        return None
    h, mi, s = m.groups()
    value = int(h) * 3600 + int(mi) * 60 + float(s)
    return value if value > 0 else None


def _is_vfr(stream, fps: float, avg_fps: float) -> bool:
    """Flag VFR from the average rate, or from uneven sample durations in the index (MP4)."""
    if abs(avg_fps - fps) > VFR_TOLERANCE * fps:
        return True
    stamps = [e.timestamp for e in list(stream.index_entries or ())[:2000]]
    deltas = sorted(b - a for a, b in zip(stamps, stamps[1:]) if b > a)
    if len(deltas) < 3:
        return False
    median = deltas[len(deltas) // 2]
    # A tick or two of jitter is rounding (30000/1001 fps in a 1/1000 timebase), not VFR.
    return deltas[-1] - deltas[0] > max(2, 0.25 * median)


def _first_frame_rotation(container, stream) -> int:
    """Decode the first frame (raising VideoError if none decodes); return its display rotation."""
    import av

    stream.thread_type = "SLICE"
    try:
        for i, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return normalize_rotation(frame.rotation)
            if i >= FIRST_FRAME_PACKETS:
                break
    except av.error.FFmpegError as exc:
        raise VideoError(f"first frame does not decode ({error_reason(exc)})") from None
    raise VideoError("first frame does not decode (no frame in the stream)")


def normalize_rotation(degrees) -> int:
    """Snap a display-matrix angle to 0/90/180/270 (counter-clockwise)."""
    if degrees is None or (isinstance(degrees, float) and math.isnan(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) * 90 % 360
