"""Where the ffmpeg binary is, and how untrusted media paths are turned into safe local paths.

Videos come from strangers: only local files are opened, never URLs or ``protocol:`` paths, and
paths are made absolute so that a file named ``-y.mp4`` can never be read as an option.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

# "http://x", "concat:a|b", "pipe:0", "subfile,,start,..." style inputs; a Windows drive ("C:\")
# is the one legitimate colon prefix.
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


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
