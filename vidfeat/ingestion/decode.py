"""Decode the planned frames of one video and store them as JPEGs (short side ``spec.size``).

How (PyAV, in-process, one frame in memory at a time whatever the video's length):

- ``uniform``/``fps``: targets are visited in time order; for each, the cursor either keeps
  decoding (the next target is in the current GOP, or close) or seeks to the keyframe before it.
  The container's index (MP4, MKV cues...) says where keyframes are, so a 16-frame sample of an
  hour-long video decodes 16 short GOP prefixes, never the whole video. A target ``t`` gets
  the last frame with pts <= t (what a player shows at t); a seek that lands after ``t`` (some
  containers, e.g. MPEG-TS) is retried further back. B-frames are handled by the decoder
  (frames come out in presentation order) and non-zero start times by using absolute pts.
  In MP4, whose packets carry their real dts, a target that the next seek will leave behind
  feeds the decoder only the packets up to it and drains it: no frame after it is decoded.
- ``keyframes``: only keyframe packets reach the decoder (``skip_frame="NONKEY"`` too). In MP4/MOV,
  whose sample table lists every keyframe, each is reached by a seek and nothing else is read;
  elsewhere every packet is demuxed and the keyframes kept.
- clips (``spec.clips``): the cursor decides once per clip, at its first target, whether to seek
  (as above); within a clip it only decodes forward, so K sparse clips cost at most K seeks (more
  only where a seek lands late and is retried) and K short decodes. Each row of a clip is the
  frame shown at its target; a frame shown by several rows (clip_fps above the video's rate,
  overlapping clips, padding) is stored once and its JPEG shared (``ClipRecord``).

Frames are resized with swscale (``reformat``) to a short side of ``spec.size`` in the JPEG's own
colour space (full-range YUV 4:2:0), rotated by the display matrix, and encoded from those planes
by libjpeg-turbo (simplejpeg) at ``spec.jpeg_quality`` into memory: the byte length and
content hash are taken there (no re-read), the bytes written under a temporary name, the written
length checked (a full disk can make a library's save return after a short write) and the file
renamed into place. A write that fails for the environment (disk full, read-only...) raises
``vidfeat.files.StorageError``: the run stops, the video is not recorded as failed. Targets landing on the same frame
give one record. Failure -> ``VideoError`` (one line) and the JPEGs this call wrote are removed;
undecodable packets in mid-stream are skipped (up to ``MAX_BAD_PACKETS`` in a row) and a read
error mid-file ends the stream there, as a player would; the caller's timeout bounds the time.
"""
from __future__ import annotations

import bisect
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from vidfeat.files import StorageError, environment_errors, hash_bytes, write_exact
from vidfeat.ingestion.probe import ProbeResult, normalize_rotation
from vidfeat.ingestion.sample import (
    SamplingSpec,
    plan_clips,
    plan_times,
    short_clip_reason,
)
from vidfeat.media import VideoError, error_reason, open_video

__all__ = ["ClipRecord", "FrameRecord", "decode_frames"]

MAX_BAD_PACKETS = 64      # consecutive undecodable packets before the video is declared broken
KEY_BATCH = 8            # keyframe packets sought and read before they are decoded together
NO_INDEX_GAP_S = 1.0      # without a keyframe index, keep decoding across gaps up to this long
TIME_EPS = 1e-6          # float slack when a target is meant to hit a frame time exactly
_LOCAL = threading.local()  # per-thread swscale reformatter


@dataclass(frozen=True)
class FrameRecord:
    """One stored frame: its index in the video, the pts time it is shown at, its JPEG name,
    the JPEG's length in bytes and the hash of those bytes (``vidfeat.files.hash_bytes``)."""

    frame_index: int
    timestamp_s: float
    filename: str
    file_bytes: int = 0
    file_hash: str = ""

    def row(self) -> list:
        """The record as the ingest journal stores it (a JSON list)."""
        return [self.frame_index, self.timestamp_s, self.filename, self.file_bytes, self.file_hash]


@dataclass(frozen=True)
class ClipRecord(FrameRecord):
    """One row of a clip: a ``FrameRecord`` (its JPEG may be shared with other rows), the clip's
    number in the video (0-based), the row's position in it, and whether it pads a short video."""

    clip: int = 0
    pos: int = 0
    padded: bool = False

    def row(self) -> list:
        return [*super().row(), self.clip, self.pos, self.padded]


def decode_frames(path, probe: ProbeResult, spec: SamplingSpec, out_dir, *, n: int | None = None,
                  threads: int | None = None) -> list[FrameRecord]:
    """Write the frames ``spec`` asks for into ``out_dir`` as JPEGs; return their records.

    ``n`` overrides ``spec.frames_per_video`` (uniform). ``threads`` caps the decoder's threads
    (default ``$VIDFEAT_DECODE_THREADS``, else min(4, cores)); ingest lowers it per worker.
    Raises VideoError on failure, leaving ``out_dir`` as it found it; StorageError when the
    environment fails while writing (disk full...), also leaving it as it found it.
    A clip spec (``spec.clips``) gives ``ClipRecord``s, ``n`` clips (default ``clips_per_video``).
    """
    import av

    if spec.clips:
        return decode_clips(path, probe, spec, out_dir, n=n, threads=threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with open_video(path) as container:
            stream = _video_stream(container, threads)
            if spec.mode == "keyframes":
                frames = _keyframes(container, stream)
            else:
                frames = _Cursor(container, stream).frames_at(plan_times(probe, spec, n=n))
            return _store(frames, probe, spec, out, written)
    except (VideoError, av.error.FFmpegError, OSError) as exc:
        for p in written:
            p.unlink(missing_ok=True)
        if isinstance(exc, (VideoError, StorageError)):
            raise
        raise VideoError(f"decode failed ({error_reason(exc)})") from None


def _video_stream(container, threads: int | None):
    """The container's first video stream, its decoder threads set; VideoError when it has none."""
    if not container.streams.video:
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    _configure(stream, threads)
    return stream


def _configure(stream, threads: int | None) -> None:
    if threads is None:
        from vidfeat.system import decode_threads

        threads = decode_threads()
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = max(0, threads)


def _store(frames, probe: ProbeResult, spec: SamplingSpec, out: Path, written: list) -> list:
    records, last_index, last_time = [], -1, None
    for time_s, frame in frames:
        if time_s == last_time:
            continue  # several targets on one frame: one record
        # Presentation index at the nominal rate: exact for CFR; for VFR kept unique and ordered.
        index = max(last_index + 1, round((time_s - probe.start_s) * probe.fps))
        path = out / f"{index:06d}.jpg"
        written.append(path)
        data = encode_jpeg(frame, size=spec.size, quality=spec.jpeg_quality)
        publish_bytes(path, data)
        records.append(FrameRecord(index, time_s, path.name, len(data), hash_bytes(data)))
        last_index, last_time = index, time_s
    if not records:
        raise VideoError("no frame decodes")
    return records


def publish_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, its length checked, then rename.

    ``path``: the final file. ``data``: its whole content. Raises StorageError (nothing left
    behind) when the environment fails.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    write_exact(tmp, data)
    with environment_errors(path):
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def encode_jpeg(frame, *, size: int, quality: int) -> bytes:
    """``frame`` resized to short side ``size``, display rotation applied, as JPEG bytes.

    ``frame``: a decoded PyAV video frame. ``size``: the short side in pixels. ``quality``:
    the JPEG quality (1-100). One swscale call scales and converts to full-range BT.601 YUV
    4:2:0, the JPEG's own colour space, and libjpeg-turbo (simplejpeg) encodes those planes
    as they are: no RGB image is made (7x faster than scaling to RGB for Pillow).
    """
    import numpy as np
    import simplejpeg

    w, h = frame.width, frame.height
    scale = size / min(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    small = _reformatter().reformat(
        frame, width=tw, height=th, format="yuv420p", interpolation="AREA" if scale < 1 else "BICUBIC",
        src_color_range=frame.color_range or None, dst_color_range="JPEG", dst_colorspace="ITU601")
    turns = normalize_rotation(frame.rotation) // 90  # counter-clockwise quarter turns
    y, u, v = (np.rot90(_plane(p), turns) for p in small.planes)
    return simplejpeg.encode_jpeg_yuv_planes(_mcu_padded(y, 16), _mcu_padded(u, 8),
                                             _mcu_padded(v, 8), quality=quality)


def _plane(plane):
    """A frame plane as a (height, width) uint8 view (rows padded to ``line_size`` in memory)."""
    import numpy as np

    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return rows[:plane.height, :plane.width]


def _mcu_padded(plane, block: int):
    """``plane`` as a view into a copy whose rows and columns are extended (edge pixels repeated)
    to a multiple of ``block``: libjpeg-turbo reads whole MCUs, and past an odd-sized plane it
    would read whatever lies in memory there (different JPEG bytes for the same frame)."""
    import numpy as np

    h, w = plane.shape
    return np.pad(plane, ((0, -h % block), (0, -w % block)), mode="edge")[:h, :w]


def _reformatter():
    """This thread's swscale reformatter: its cached context is reused from frame to frame
    (a frame's own ``reformat`` builds a new one every time, half the cost of the resize)."""
    if getattr(_LOCAL, "reformatter", None) is None:
        from av.video.reformatter import VideoReformatter

        _LOCAL.reformatter = VideoReformatter()
    return _LOCAL.reformatter


def _packets(container, stream):
    """Demuxed packets; a read error mid-file ends the stream there (truncated downloads)."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return
        yield packet


def _decode(packets):
    """Decoded frames of ``packets``, skipping undecodable packets up to MAX_BAD_PACKETS in a row."""
    import av

    bad = 0
    for packet in packets:
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as exc:
            bad += 1
            if bad > MAX_BAD_PACKETS:
                raise VideoError(f"stream does not decode ({error_reason(exc)})") from None
            continue
        bad = 0
        yield from frames


def _keyframes(container, stream):
    stream.codec_context.skip_frame = "NONKEY"
    tb = stream.time_base
    keys = _sample_table_keys(container, stream)
    if keys:
        packets = _indexed_key_packets(container, stream, keys)
    else:
        packets = (p for p in _packets(container, stream) if p.is_keyframe or p.size == 0)
    for frame in _decode(packets):
        if frame.pts is not None:
            yield float(frame.pts * tb), frame


def _sample_table_keys(container, stream) -> list[int]:
    """Keyframe dts (stream time base) from an MP4/MOV sample table, which lists every sample;
    empty for other containers, whose index may name only some keyframes (Matroska cues)."""
    if "mp4" not in container.format.name.split(","):
        return []
    entries = list(stream.index_entries or ())
    return [e.timestamp for e in entries if e.is_keyframe] if len(entries) >= 2 else []


def _indexed_key_packets(container, stream, keys: list[int]):
    """The keyframe packets at ``keys``, each found by a seek: the frames between them are never
    read (all 7,500 packets of a 5-minute video demuxed cost more than decoding its 30
    keyframes). Read KEY_BATCH at a time, then fed to the decoder with a drain packet: the next
    seek flushes the decoder, so nothing may be left in flight when it comes."""
    import av

    drain = av.Packet()
    drain.stream = stream
    for start in range(0, len(keys), KEY_BATCH):
        batch = []  # all read before any is decoded: a seek drops the frames in flight
        for ts in keys[start:start + KEY_BATCH]:
            container.seek(ts, stream=stream, backward=True, any_frame=False)
            found = next((p for p in _packets(container, stream) if p.dts is not None
                          and p.dts >= ts and (p.is_keyframe or p.dts > ts)), None)
            if found is not None and found.is_keyframe:
                batch.append(found)
        yield from batch
        yield drain


class _Cursor:
    """Frames shown at sorted target times, seeking only when that beats decoding on."""

    def __init__(self, container, stream):
        import av

        self.container, self.stream, self.tb = container, stream, stream.time_base
        # int / int is correctly rounded: float(pts * tb) bit for bit, without a Fraction a frame
        self.tb_num, self.tb_den = self.tb.numerator, self.tb.denominator
        self.start = float(stream.start_time * self.tb) if stream.start_time is not None else 0.0
        self.keys = _index_keyframes(stream)
        # MP4's sample table gives every packet its real dts, <= its pts (libavformat shifts dts
        # for negative composition offsets). Elsewhere dts may be missing, equal to pts out of
        # decode order (Matroska) or made up (AVI), so no packet is known to be past a target.
        self.dts_exact = bool(self.keys) and "mp4" in container.format.name.split(",")
        self.drain = av.Packet()  # an empty packet: the decoder gives out all it holds
        self.drain.stream = stream
        self.frames = None            # decoded-frame iterator since the last seek
        self.prev = self.next = None  # (time, frame): last shown <= target, first one after it
        self.ended = False            # the iterator reached the end of the stream
        self.cut = None               # set: packets after this time are not fed (see _show)
        self.was_cut = False          # the feeder stopped at ``cut`` and drained the decoder

    def frames_at(self, targets):
        ts = sorted(targets)
        for t, then in zip(ts, [*ts[1:], None]):
            self._show(t, may_seek=True, then=then)
            if self.prev is not None:
                yield self.prev

    def clip_frames(self, targets, *, then: float | None = None):
        """(time, frame) shown at each of one clip's sorted ``targets``, one item per target:
        seeks (if at all) for the first target only, then decodes forward within the clip.
        ``then``: the first target of the next clip (None: this is the last)."""
        last = len(targets) - 1
        for i, t in enumerate(targets):
            self._show(t, may_seek=i == 0, then=then, may_cut=i == last)
            yield self.prev

    def _show(self, t: float, *, may_seek: bool, then: float | None, may_cut: bool = True):
        """Make ``prev`` the frame shown at ``t``. When the next target ``then`` will seek anyway
        (a keyframe lies between; None: no next target), only packets that can be shown at
        ``t`` are decoded and the decoder is drained: the frame after ``t`` that decoding on
        would need to prove ``prev`` is the one shown, and the frames in flight that the seek
        would throw away, are never decoded (~2 frames a seek with 2 frame threads)."""
        self.cut = t if may_cut and self._seek_follows(t, then) else None
        self.was_cut = False
        if may_seek and self._should_seek(t):
            self._seek_covering(t)
        else:
            self._advance(t)
        if self.was_cut:  # the decoder was drained: it takes no more packets until a seek
            self.frames = None

    def _seek_follows(self, t: float, then: float | None) -> bool:
        if not self.dts_exact:
            return False
        keys = bisect.bisect_right
        return then is None or keys(self.keys, then) > keys(self.keys, t)  # a keyframe in (t, then]

    def _feed(self):
        """Packets since the last seek; with ``cut`` set, up to the first whose dts is after it
        (its pts, and every later packet's, are later still), then the drain packet."""
        for packet in _packets(self.container, self.stream):
            cut, dts = self.cut, packet.dts
            if cut is not None and dts is not None and self._seconds(dts) > cut + TIME_EPS:
                self.was_cut = True
                yield self.drain
                return
            yield packet

    def _position(self) -> float | None:
        cur = self.next or self.prev
        return None if cur is None else cur[0]

    def _should_seek(self, t: float) -> bool:
        pos = self._position()
        if self.frames is None or pos is None or (self.prev is not None and t < self.prev[0]):
            return True
        if self.ended:  # past the last frame (or a truncated file's last good one): it stays shown
            return False
        if self.keys:  # seek only if a keyframe lies between where we are and the target
            i = bisect.bisect_right(self.keys, t) - 1
            return i >= 0 and self.keys[i] > pos
        return t - pos > NO_INDEX_GAP_S

    def _seek_covering(self, t: float) -> None:
        """Seek so that the frame shown at ``t`` is decoded, backing off while seeks land late.

        Seeks may land after the target (MPEG-TS seeks by dts, MP4 indexes hold dts): retry
        from 1, 2, 4... s earlier; once a seek from before the stream start still lands after
        ``t``, no frame precedes it and the first frame is the one shown.
        """
        back = 0.0
        while True:
            at = t - back
            self._seek(at)
            self._advance(t)
            if self.prev is not None:
                return
            if at < self.start - 1.0:
                if self.next is None and self.cut is not None:  # the cut stopped before it
                    self.cut = None
                    self._seek(at)
                    self._advance(t)
                self.prev, self.next = self.next, None
                return
            back = max(1.0, back * 2)

    def _seek(self, at: float) -> None:
        offset = math.floor(at / self.tb)
        self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        self.frames = _decode(self._feed())
        self.prev = self.next = None
        self.ended = self.was_cut = False

    def _advance(self, t: float) -> None:
        """Decode on until the next frame is after ``t``; ``prev`` is then the frame shown at t."""
        while True:
            if self.next is None:
                frame = next(self.frames, None)
                if frame is None:
                    self.ended = True
                    return
                self.next = (self._time(frame), frame)
            if self.next[0] > t + TIME_EPS:
                return
            self.prev, self.next = self.next, None

    def _seconds(self, ticks: int) -> float:
        return ticks * self.tb_num / self.tb_den

    def _time(self, frame) -> float:
        if frame.pts is not None:
            return self._seconds(frame.pts)
        prev = self.prev[0] if self.prev else self.start
        return prev + 1e-6  # no pts: keep order, right after the previous frame


def _index_keyframes(stream) -> list[float]:
    """Sorted keyframe times from the container index; empty when there is no usable index.

    A single entry (e.g. Matroska before its cues are read) says nothing about later keyframes.
    """
    tb = stream.time_base
    entries = list(stream.index_entries or ())
    if len(entries) < 2:
        return []
    return sorted(float(e.timestamp * tb) for e in entries if e.is_keyframe)


# --------------------------------------------------------------------------------------------
# Clips: one row per clip target, one seek at most per clip.
# --------------------------------------------------------------------------------------------

def decode_clips(path, probe: ProbeResult, spec: SamplingSpec, out_dir, *, n: int | None = None,
                 threads: int | None = None) -> list[ClipRecord]:
    """The clips ``spec`` asks for (``sample.plan_clips``), as ``ClipRecord``s in clip order.

    Arguments as ``decode_frames``'s; ``n`` clips. A video shorter than one clip with
    ``short_clips='drop'`` raises VideoError (``shorter than one clip: ...``) before decoding.
    """
    import av

    reason = short_clip_reason(probe, spec)
    if reason and spec.short_clips == "drop":
        raise VideoError(reason)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _ClipStore(probe, spec, out)
    try:
        with open_video(path) as container:
            cursor = _Cursor(container, _video_stream(container, threads))
            plan = plan_clips(probe, spec, n=n)
            for k, clip in enumerate(plan):
                then = plan[k + 1][0][0] if k + 1 < len(plan) else None
                shown = cursor.clip_frames([t for t, _ in clip], then=then)
                for pos, ((_, padded), item) in enumerate(zip(clip, shown)):
                    store.add(item, k, pos, padded)
        return store.records
    except (VideoError, av.error.FFmpegError, OSError) as exc:
        store.remove()
        if isinstance(exc, (VideoError, StorageError)):
            raise
        raise VideoError(f"decode failed ({error_reason(exc)})") from None


class _ClipStore:
    """Clip rows as they come; each distinct frame encoded and written once (by its time)."""

    def __init__(self, probe: ProbeResult, spec: SamplingSpec, out: Path):
        self.probe, self.spec, self.out = probe, spec, out
        self.records: list[ClipRecord] = []
        self.stored: dict[float, FrameRecord] = {}  # frame time -> its stored JPEG
        self.indexes: set[int] = set()

    def add(self, item, clip: int, pos: int, padded: bool) -> None:
        if item is None:
            raise VideoError("no frame decodes")
        time_s, frame = item
        rec = self.stored.get(time_s)
        if rec is None:
            rec = self.stored[time_s] = self._write(time_s, frame)
        self.records.append(ClipRecord(rec.frame_index, time_s, rec.filename, rec.file_bytes,
                                       rec.file_hash, clip=clip, pos=pos, padded=padded))

    def _write(self, time_s: float, frame) -> FrameRecord:
        # presentation index at the nominal rate (exact for CFR); kept unique for VFR
        index = max(0, round((time_s - self.probe.start_s) * self.probe.fps))
        while index in self.indexes:
            index += 1
        self.indexes.add(index)
        path = self.out / f"{index:06d}.jpg"
        data = encode_jpeg(frame, size=self.spec.size, quality=self.spec.jpeg_quality)
        publish_bytes(path, data)
        return FrameRecord(index, time_s, path.name, len(data), hash_bytes(data))

    def remove(self) -> None:
        for rec in self.stored.values():
            (self.out / rec.filename).unlink(missing_ok=True)
