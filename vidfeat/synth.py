"""Real synthetic videos from ffmpeg's lavfi sources (libx264): the demo dataset and test media.

Nothing here reads untrusted input; the outputs are ordinary H.264/MP4 files.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from vidfeat.media import ffmpeg_exe

# The demo's classes: visually different sources, each with randomised parameters so that the
# task is learnable but not trivial (hue, noise, size, speed and duration vary per video).
DEMO_CLASSES: dict[str, str] = {
    "bars": "smptebars=s={w}x{h}:r={fps}",
    "gradient": "gradients=s={w}x{h}:r={fps}:seed={seed}:speed={speed}",
    "fractal": "mandelbrot=s={w}x{h}:r={fps}:start_scale={scale}",
    "life": "life=s={w}x{h}:r={fps}:seed={seed}:ratio=0.{ratio}:mold=10:life_color=#{color}",
    "automaton": "cellauto=s={w}x{h}:r={fps}:seed={seed}:rule={rule}",
}
# 8:1 between the largest and the smallest class, 50 videos in all
DEMO_COUNTS: dict[str, int] = {"bars": 24, "gradient": 12, "fractal": 7, "life": 4, "automaton": 3}


def ffmpeg(*args: str, timeout: float = 120) -> None:
    """Run ffmpeg quietly; raise RuntimeError with its stderr on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def make_video(path: str | os.PathLike, *, duration: float = 2.0, fps: float = 25,
               size: tuple[int, int] = (64, 48), source: str = "testsrc2", gop: int | None = None,
               audio: bool = False, vfr: bool = False, rotation: int | None = None,
               color: str = "red", codec: str = "libx264", vf: str | None = None,
               extra: tuple[str, ...] = ()) -> Path:
    """Write a short real video and return its path.

    ``source`` is a lavfi source name or a full lavfi source spec (containing ``=``). ``vfr``
    writes the first second at ``fps`` and the rest at ``fps / 4`` (passthrough timestamps).
    ``rotation`` adds a display-matrix rotation (degrees). ``vf`` adds filters before encoding.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if "=" in source:
        src = source
    elif source == "color":
        src = f"color=c={color}:s={w}x{h}:r={fps}"
    else:
        src = f"{source}=s={w}x{h}:r={fps}"
    args = ["-f", "lavfi", "-i", src]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={duration}"]
    args += ["-t", str(duration)]  # an output option: after every -i, so it binds to no input
    filters = [vf] if vf else []
    if vfr:
        n = int(fps)
        filters.insert(0, f"settb=1/1000,setpts='if(lt(N,{n}),N*1000/{fps},1000+(N-{n})*4000/{fps})'")
        args += ["-fps_mode", "passthrough", "-video_track_timescale", "1000"]
    args += ["-vf", ",".join(filters + ["format=yuv420p"]), "-c:v", codec]
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


def _demo_source(cls: str, rng: random.Random, w: int, h: int, fps: int) -> str:
    return DEMO_CLASSES[cls].format(
        w=w, h=h, fps=fps, seed=rng.randrange(1 << 30), speed=round(rng.uniform(0.005, 0.05), 3),
        scale=rng.choice([1, 2, 3, 4]), ratio=rng.randrange(1, 9), rule=rng.choice([18, 30, 90, 110, 150]),
        color=rng.choice(["30ff30", "ff3030", "3030ff", "ffff30"]))


def make_demo_dataset(root: str | os.PathLike, *, counts: dict[str, int] | None = None,
                      seed: int = 0, fps: int = 10, duration: tuple[float, float] = (1.5, 3.0)) -> Path:
    """Class folders ``root/<class>/<class>_<i>.mp4`` of randomised lavfi videos (imbalanced)."""
    root = Path(root)
    rng = random.Random(seed)
    for cls, n in (counts or DEMO_COUNTS).items():
        for i in range(n):
            w, h = rng.choice([(96, 72), (112, 84), (128, 96), (80, 80)])
            vf = (f"hue=h={rng.randint(-40, 40)}:s={rng.uniform(0.6, 1.4):.2f},"
                  f"noise=alls={rng.randint(0, 25)}:allf=t")
            make_video(root / cls / f"{cls}_{i:02d}.mp4", source=_demo_source(cls, rng, w, h, fps),
                       duration=round(rng.uniform(*duration), 2), vf=vf)
    return root
