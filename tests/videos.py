"""Real test videos, made with ffmpeg's lavfi sources and libx264 (no files checked in)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vidfeat.media import ffmpeg_exe

SOURCES = ("testsrc2", "testsrc", "smptebars", "mandelbrot", "rgbtestsrc", "color", "life", "cellauto")


def ffmpeg(*args: str, timeout: float = 120) -> None:
    """Run ffmpeg quietly; raise with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def make_video(path: str | os.PathLike, *, duration: float = 2.0, fps: float = 25,
               size: tuple[int, int] = (64, 48), source: str = "testsrc2", gop: int | None = None,
               audio: bool = False, vfr: bool = False, rotation: int | None = None,
               color: str = "red", codec: str = "libx264", extra: tuple[str, ...] = ()) -> Path:
    """Write a short real video and return its path.

    ``vfr`` writes the first second at ``fps`` and the rest at ``fps / 4`` (true variable frame
    rate, passthrough timestamps). ``rotation`` adds a display-matrix rotation (degrees).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    src = f"color=c={color}:s={w}x{h}:r={fps}:d={duration}" if source == "color" else \
        f"{source}=s={w}x{h}:r={fps}:d={duration}"
    args = ["-f", "lavfi", "-i", src]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={duration}"]
    vf = "format=yuv420p"
    if vfr:
        n = int(fps)
        vf = f"settb=1/1000,setpts='if(lt(N,{n}),N*1000/{fps},1000+(N-{n})*4000/{fps})',{vf}"
        args += ["-fps_mode", "passthrough", "-video_track_timescale", "1000"]
    args += ["-vf", vf, "-c:v", codec]
    if codec == "libx264":
        args += ["-preset", "ultrafast"]
    if gop:
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    out = path if rotation is None else path.with_name(f".unrotated-{path.name}")
    ffmpeg(*args, *extra, str(out.absolute()))
    if rotation is not None:
        ffmpeg("-display_rotation", str(rotation), "-i", str(out.absolute()), "-c", "copy",
               str(path.absolute()))
        out.unlink()
    return path


def make_audio(path: str | os.PathLike, *, duration: float = 1.0) -> Path:
    """An audio-only file (no video stream)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={duration}", str(path.absolute()))
    return path


def make_dataset(root: str | os.PathLike, counts: dict[str, int], *, duration: float = 1.0,
                 fps: float = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """Class folders ``root/<label>/<label>_<i>.mp4``; each class a visually different source."""
    root = Path(root)
    for k, (label, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            make_video(root / label / f"{label}_{i}.mp4", duration=duration, fps=fps, size=size,
                       source=SOURCES[k % len(SOURCES)], color="blue")
    return root
