"""Where the ffmpeg binary is, how untrusted media paths become safe local paths, and the one
place where video containers are opened (``open_video``).

Videos come from strangers: only local files are opened, never URLs or ``protocol:`` paths, and
paths are made absolute so that a file named ``-y.mp4`` can never be read as an option.

What ``open_video`` does with bad input (every case raises ``VideoError`` with a one-line reason,
and nothing but the named file is ever opened):

- URL / ``protocol:`` path / NUL byte: refused before anything is touched.
- missing file, directory, FIFO/device (which could block forever), unreadable file, 0-byte
  file: refused from ``os.stat`` / a 64 KiB read of the head, before FFmpeg sees the file.
- HLS/DASH/M3U/PLS playlists, ffconcat scripts, SDP files (text that tells a demuxer to open other
  files or connect out), whatever the extension: refused by sniffing the head.
- defence in depth, FFmpeg itself is told ``protocol_whitelist=file`` (so a nested open can
  only ever be a local file) and ``format_whitelist`` = real video containers only (no hls,
  concat, image2 pattern, tty, sdp, rtp...): a demuxer outside the list fails before reading.
- MP4 without a ``moov`` box (truncated download): "truncated MP4 (moov atom not found)".
- anything else FFmpeg cannot parse: "not a video container (...)".
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import struct
from pathlib import Path

# "http://x", "concat:a|b", "pipe:0", "subfile,,start,..." style inputs; a Windows drive ("C:\")
# is the one legitimate colon prefix.
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")

# Containers looked for in class folders (lower-case suffixes); anything else there is ignored.
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .qt .mpg .mpeg .m2v .ts .mts .m2ts .flv .wmv .asf .3gp .3g2 "
    ".ogv .ogg .mxf .vob .dv .y4m .nut".split())


class UnsafeMediaPath(ValueError):
    """A path that names a URL or a protocol instead of a local file."""


@functools.lru_cache(maxsize=None)
def ffmpeg_exe() -> str:
    """The ffmpeg binary: $VIDFEAT_FFMPEG, the system one, else imageio-ffmpeg's static build."""
    override = os.environ.get("VIDFEAT_FFMPEG")
    if override:
        return override
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg  # only when there is no system ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def check_local_path(path: str | os.PathLike, *, base: str | os.PathLike | None = None) -> Path:
    """Return ``path`` as an absolute local path, or raise UnsafeMediaPath for URLs/protocols.

    Relative paths resolve against ``base`` (e.g. a labels file's folder) or the working dir.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise UnsafeMediaPath(f"path contains a NUL byte: {text!r}")
    if _PROTOCOL.match(text) and not _DRIVE.match(text):
        raise UnsafeMediaPath(f"not a local file path (URL or protocol): {text!r}")
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = Path(base or os.getcwd()) / p
    return Path(os.path.abspath(p))


class VideoError(Exception):
    """A video that cannot be used; ``str(exc)`` is a one-line human reason (goes to videos.error)."""


# Demuxers allowed to read untrusted files: containers of audio/video samples only. Excluded on
# purpose: hls, dash, concat, image2 (patterns), tty, sdp/rtp/rtsp, and every text format.
VIDEO_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpegts", "mpeg",
    "mpegvideo", "asf", "ogg", "m4v", "h264", "hevc", "vvc", "ivf", "obu", "nut", "mxf", "rm",
    "dv", "gif", "mjpeg", "yuv4mpegpipe", "wtv", "avs2", "cavsvideo",
)
OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(VIDEO_DEMUXERS)}

_HEAD_BYTES = 64 * 1024
# Head signatures of text files that make a demuxer open other inputs: (prefix, what it is).
_SCRIPTS = (
    (b"#EXTM3U", "HLS/M3U playlist"), (b"ffconcat", "ffconcat script"),
    (b"[playlist]", "PLS playlist"), (b"<?xml", "XML (DASH/SMIL playlist)"), (b"<MPD", "DASH manifest"),
    (b"v=0", "SDP session description"), (b"file ", "concat list"),
)


def _stat_regular(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"file not found: {path}") from None
    except OSError as exc:
        raise VideoError(f"cannot stat file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError("not a file: it is a directory")
    if not stat.S_ISREG(st.st_mode):  # FIFOs and devices can block forever or never end
        raise VideoError("not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    return st


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES)
    except PermissionError:
        raise VideoError("permission denied: file is not readable") from None
    except OSError as exc:
        raise VideoError(f"cannot read file: {exc.strerror or exc}") from None


def sniff_script(head: bytes) -> str | None:
    """Name the playlist/script kind if ``head`` is text that points a demuxer at other inputs."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for prefix, kind in _SCRIPTS:
        if text[:len(prefix)].lower() == prefix.lower():
            return kind
    if text[:1] == b"#" and b"\x00" not in text[:1024]:  # other '#' playlists (binary is not one)
        return "text/playlist file"
    return None


def _mp4_top_boxes(path: Path, limit: int = 4096) -> list[bytes]:
    """Types of the top-level ISO-BMFF boxes, walking the size fields (no payload is read)."""
    types, pos, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while pos + 8 <= size and len(types) < limit:
            f.seek(pos)
            n, kind = struct.unpack(">I4s", f.read(8))
            if n == 1:
                n = struct.unpack(">Q", f.read(8))[0]
            elif n == 0:
                n = size - pos
            types.append(kind)
            if n < 8:
                break
            pos += n
    return types


def _explain_open_error(path: Path, head: bytes, exc: Exception) -> str:
    if head[4:8] == b"ftyp" and b"moov" not in _mp4_top_boxes(path):
        return "truncated MP4 (moov atom not found)"
    if "whitelist" in str(exc).lower() or type(exc).__name__ == "ArgumentError":
        return "not a video container (format not allowed: only video demuxers may read input)"
    return f"not a video container ({error_reason(exc)})"


def error_reason(exc: BaseException) -> str:
    """The first line of an FFmpeg/OS error's message, without the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0]


def open_video(path: str | os.PathLike):
    """Open a local video file with PyAV, safely; raise VideoError (one-line reason) if unusable.

    Returns an ``av`` input container (use it as a context manager). Only ``path`` is opened:
    FFmpeg gets a file-only protocol whitelist and a whitelist of real video demuxers, and
    playlists/scripts are refused from their first bytes before FFmpeg sees them.
    """
    import av  # PyAV is light, but keep ``import vidfeat.media`` free of it

    try:
        local = check_local_path(path)
    except UnsafeMediaPath as exc:
        raise VideoError(str(exc)) from None
    _stat_regular(local)
    head = _read_head(local)
    script = sniff_script(head)
    if script:
        raise VideoError(f"{script}, not a video: refused (it would open other files or URLs)")
    try:
        return av.open(str(local), mode="r", options=dict(OPEN_OPTIONS))
    except av.error.FFmpegError as exc:
        raise VideoError(_explain_open_error(local, head, exc)) from None
    except OSError as exc:  # raced deletion / permission change after the checks above
        raise VideoError(f"cannot open file: {exc.strerror or exc}") from None
