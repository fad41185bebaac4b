"""Probe one video in-process with PyAV: duration, rates, frame count, display size, rotation.

``probe_video`` opens the file only through ``media.open_video`` (local files, video demuxers,
no playlists) and, by default, decodes the first frame, so a video that probes fine will decode.

Bad input -> ``VideoError`` whose message is one line (it goes into ``videos.error``):
missing / directory / FIFO / unreadable / 0-byte file, URL or protocol path, playlist or ffconcat
script (whatever its extension), truncated MP4 ("moov atom not found"), random bytes or text
("not a video container"), audio-only file ("no video stream"), a first frame that does not
decode. Nothing here hangs on a FIFO or opens a second file; timeouts are the caller's (ingest
kills the worker).

Durations: the header's duration (stream, Matroska DURATION tag, container) can lie, e.g. an
edited ``mdhd`` box or a re-muxed file's stale tag. The probe also measures where the stream
really ends, cheaply: a seek to the end and a demux (no decode) of the last GOP's packets, the
end being the largest pts + duration. When the two disagree by more than ``duration_tolerance``
the measured duration is used (sampling spreads over the frames that exist), the header's value
is kept in ``duration_header_s``, ``warning`` says so, and a logging warning names the file.
Unless the container's frame count backs the header: then the data stops early (a truncated
download), the header's duration stays and only the warning says so.

``codec`` is the codec's own name (``av1``, ``h264``, ``hevc``), not the decoder's that PyAV
picked (``libdav1d``). ``source_hash`` is ``vidfeat.files.source_hash`` of the file: ingest
takes byte-identical copies under two names as one video.

Conventions: times are absolute stream presentation times in seconds (``start_s`` is where the
stream starts, often 0 but e.g. 1.4 s in MPEG-TS). ``rotation`` is the display-matrix rotation
in degrees counter-clockwise (FFmpeg's ``-display_rotation``), and ``width``/``height`` are the
display size after it: a 64x48 video rotated by 90 is 48x64.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, replace

from vidfeat.files import source_hash
from vidfeat.media import VideoError, check_local_path, error_reason, open_video

__all__ = ["ProbeResult", "VideoError", "probe_video"]

# Relative gap between nominal and average frame rate above which a stream counts as VFR.
VFR_TOLERANCE = 0.02
# Packets read looking for a first frame before deciding none will come (bounds hostile files).
FIRST_FRAME_PACKETS = 512
# Packets demuxed after the seek to the end before giving up measuring (a seek that lands far
# from the end, or one endless GOP): the header's duration is then kept.
TAIL_PACKETS = 4096
# Where "the end" is sought: far past any real video (seconds); seeks land on the last keyframe.
FAR_S = 1e7

log = logging.getLogger(__name__)


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
    source_hash: str = ""                   # vidfeat.files.source_hash of the file
    duration_header_s: float | None = None  # the header's duration when it disagreed, else None
    warning: str = ""                       # why duration_s is not the header's, else ""

    def row(self) -> dict:
        """Columns for the videos manifest (everything but ``start_s``)."""
        row = asdict(self)
        row.pop("start_s")
        return row


def probe_video(path, *, check_decode: bool = True) -> ProbeResult:
    """Probe ``path``; raise VideoError with a one-line reason if it is not a usable video.

    ``path``: a local video file. The first frame is always decoded to read the display
    rotation; with ``check_decode=False`` a failure there is tolerated (rotation 0) instead of
    raised. A header duration the stream contradicts is replaced by the measured one and
    logged as a warning (see the module docstring).
    """
    result = _probe(path, check_decode)
    if result.warning:
        log.warning("%s: %s", path, result.warning)
    return replace(result, source_hash=source_hash(check_local_path(path)))


def _probe(path, check_decode: bool) -> ProbeResult:
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
    fps = _nominal_fps(stream)
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    stamps = [e.timestamp for e in list(stream.index_entries or ())[:2000]]  # before any seek
    header = _header_duration(container, stream)
    end = _stream_end(container, stream, fps)
    duration, header, warning = _checked_duration(
        header, None if end is None else end - start, fps, int(stream.frames or 0))
    count = int(stream.frames or 0) or max(1, round(duration * float(stream.average_rate or fps)))
    avg = count / duration if duration > 0 else fps
    w, h = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
    return ProbeResult(
        duration_s=duration, fps=fps, avg_fps=avg, vfr=_is_vfr(stamps, fps, avg), frame_count=count,
        width=w, height=h, rotation=rotation, codec=codec_name(ctx),
        has_audio=bool(container.streams.audio), start_s=start,
        duration_header_s=header, warning=warning)


def codec_name(ctx) -> str:
    """The codec's own name (``av1``), whichever decoder PyAV opened for it (``libdav1d``).

    ``ctx``: a PyAV codec context.
    """
    return ctx.codec.canonical_name or ctx.name


def duration_tolerance(duration_s: float, fps: float) -> float:
    """Seconds by which header and stream may disagree before the stream wins: two frames, and
    5 % of the duration or 0.5 s, whichever is less (short clips and long videos both count).

    ``duration_s``: the measured duration. ``fps``: the nominal frame rate.
    """
    return max(2.0 / fps, min(0.5, 0.05 * duration_s))


def _checked_duration(header: float | None, measured: float | None, fps: float, frames: int):
    """``(duration, header duration if overruled else None, warning)``: the header's duration
    unless the stream contradicts it. ``frames``: the container's frame count (0: unknown)."""
    if measured is None or measured <= 0:
        if header is None:
            raise VideoError("video duration is unknown")
        return header, None, ""
    if header is None:
        return measured, None, ""
    if abs(header - measured) <= duration_tolerance(measured, fps):
        return header, None, ""
    if frames and abs(frames / fps - header) <= duration_tolerance(header, fps):
        # the sample table backs the header: the data stops early (a cut download), no lie;
        # decoding shows the last good frame from there on, as a player does
        return header, None, (f"the stream's data ends after {measured:.6g} s, before the "
                              f"header's {header:.6g} s (truncated file?)")
    return measured, header, (f"header duration {header:.6g} s but the stream ends after "
                              f"{measured:.6g} s: frames sampled over the stream")


def _stream_end(container, stream, fps: float) -> float | None:
    """Absolute time (s) where the stream's last frame ends, from the packets of its last GOP;
    None when no packet could be read there or the tail is longer than TAIL_PACKETS.

    Seeks far past the end first (indexed containers land on the last keyframe); containers
    whose seek runs off the end (FLV without an index) are read from the start instead.
    """
    import av

    tb = stream.time_base
    if not tb:
        return None
    for target in (int(FAR_S / tb), stream.start_time or 0):
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OverflowError):
            continue
        seen, end = _last_end(container, stream, fps)
        if seen:
            return end
    return None


def _last_end(container, stream, fps: float) -> tuple[int, float | None]:
    """(packets read, largest pts + duration in seconds) from the current position to the end;
    the end is None past TAIL_PACKETS."""
    tb, seen, end = stream.time_base, 0, None
    for packet in _tail_packets(container, stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0 or packet.is_discard:
            continue
        seen += 1
        if seen > TAIL_PACKETS:
            return seen, None
        shown = float(packet.duration * tb) if packet.duration else 1.0 / fps
        stop = float(ts * tb) + shown
        end = stop if end is None else max(end, stop)
    return seen, end


def _tail_packets(container, stream):
    """Packets from the current position; a read error (truncated file) ends them there."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            yield next(packets)
        except (StopIteration, av.error.FFmpegError):
            return


def _nominal_fps(stream) -> float:
    for rate in (stream.base_rate, stream.guessed_rate, stream.average_rate):
        if rate and 0 < float(rate) < 1000:  # 90000 "fps" is a timebase, not a rate
            return float(rate)
    raise VideoError("video stream has no frame rate")


def _header_duration(container, stream) -> float | None:
    """Seconds of video the header claims: stream header, else the Matroska DURATION tag, else
    the container's; None when none says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = _parse_clock(stream.metadata.get("DURATION") or stream.metadata.get("duration") or "")
    if tag:
        return tag
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    return None


def _parse_clock(text: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+):(\d\d):(\d\d(?:\.\d+)?)\s*", text)
    if not m:
        return None
    h, mi, s = m.groups()
    value = int(h) * 3600 + int(mi) * 60 + float(s)
    return value if value > 0 else None


def _is_vfr(stamps: list[int], fps: float, avg_fps: float) -> bool:
    """Flag VFR from the average rate, or from uneven sample durations in the index (MP4)."""
    if abs(avg_fps - fps) > VFR_TOLERANCE * fps:
        return True
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
