"""Real synthetic videos from ffmpeg's lavfi sources (libx264): the demo dataset and test media.

Nothing here reads untrusted input; the outputs are ordinary H.264/MP4 files.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import ffmpeg as ffmpeg_lib  # ffmpeg-python: builds the command lines

from vidfeat.media import ffmpeg_exe

# The demo's classes: visually different sources, each with randomised parameters so that the
# task is learnable but not trivial (hue, noise, size, speed and duration vary per video).
DEMO_CLASSES: dict[str, str] = {
    "bars": "smptebars=s={w}x{h}:r={fps}",
    # gradients draws its default colours ("random") from the system RNG, not from seed=
    "gradient": "gradients=s={w}x{h}:r={fps}:seed={seed}:speed={speed}:c0=#{c0}:c1=#{c1}",
    "fractal": "mandelbrot=s={w}x{h}:r={fps}:start_scale={scale}",
    "life": "life=s={w}x{h}:r={fps}:seed={seed}:ratio=0.{ratio}:mold=10:life_color=#{color}",
    "automaton": "cellauto=s={w}x{h}:r={fps}:seed={seed}:rule={rule}",
}
# 8:1 between the largest and the smallest class, 50 videos in all
DEMO_COUNTS: dict[str, int] = {"bars": 24, "gradient": 12, "fractal": 7, "life": 4, "automaton": 3}


# -nostdin: a child that reads the terminal could steal a test runner's input or stop on SIGTTIN
_GLOBAL = ("-hide_banner", "-loglevel", "error", "-nostdin")
# Same command, same bytes: no version strings or copied metadata in the container or streams
# (bitexact), and libx264 on one thread (its output depends on the thread count, which the
# default derives from the machine's cores).
_BITEXACT = {"fflags": "+bitexact", "flags": "+bitexact", "map_metadata": "-1"}


def run_ffmpeg(cmd: list[str], *, timeout: float = 120) -> None:
    """Run the ffmpeg command line ``cmd`` quietly; raise RuntimeError in one line on failure.

    ``cmd``: the full argument list (binary first), e.g. from ``ffmpeg-python``'s ``compile``.
    ``timeout``: seconds before the process is killed (``subprocess.run`` kills it, then waits).
    """
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ffmpeg timed out after {timeout:g} s (killed): {_brief(cmd)}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = " / ".join(lines[-3:]) or "no error output"
        raise RuntimeError(f"ffmpeg failed (exit {proc.returncode}): {reason} [{_brief(cmd)}]")


def _brief(cmd: list[str]) -> str:
    """The command without the binary's path and the quieting options, for error messages."""
    args = cmd[1:]
    text = " ".join(a for a in args if a not in _GLOBAL and a != "-y")
    return "ffmpeg " + (text if len(text) < 300 else text[:297] + "...")


def ffmpeg(*args: str, timeout: float = 120) -> None:
    """Run ffmpeg on the raw command-line arguments ``args`` (for hand-written test media).

    ``args``: everything after ``ffmpeg`` (inputs, options, output); the quieting options and
    ``-y`` are added. ``timeout``: seconds before ffmpeg is killed.
    """
    run_ffmpeg([ffmpeg_exe(), *_GLOBAL, "-y", *args], timeout=timeout)


def _run(stream, *, timeout: float = 120) -> None:
    """Compile an ``ffmpeg-python`` output ``stream`` into a command line and run it."""
    run_ffmpeg(stream.global_args(*_GLOBAL).overwrite_output().compile(cmd=ffmpeg_exe()),
               timeout=timeout)


def _options(extra: tuple[str, ...]) -> dict[str, str | None]:
    """Raw ``("-opt", "value", "-flag", ...)`` output options as ``ffmpeg-python`` keywords."""
    out: dict[str, str | None] = {}
    items = list(extra)
    while items:
        opt = items.pop(0)
        if not opt.startswith("-") or len(opt) < 2:
            raise ValueError(f"extra={extra!r}: expected an option ('-name'), got {opt!r}")
        takes_value = items and (not items[0].startswith("-") or _is_number(items[0]))
        out[opt[1:]] = items.pop(0) if takes_value else None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _lavfi_source(source: str, size: tuple[int, int], fps: float, color: str) -> str:
    if "=" in source:
        return source
    w, h = size
    if source == "color":
        return f"color=c={color}:s={w}x{h}:r={fps}"
    return f"{source}=s={w}x{h}:r={fps}"


def make_video(path: str | os.PathLike, *, duration: float = 2.0, fps: float = 25,
               size: tuple[int, int] = (64, 48), source: str = "testsrc2", gop: int | None = None,
               audio: bool = False, vfr: bool = False, rotation: int | None = None,
               color: str = "red", codec: str = "libx264", vf: str | None = None,
               extra: tuple[str, ...] = ()) -> Path:
    """Write a short real video and return its path.

    ``path``: the output file (its suffix picks the container). ``duration``: seconds.
    ``fps``: frame rate. ``size``: (width, height). ``source``: a lavfi source name or a full
    lavfi source spec (containing ``=``). ``gop``: fixed keyframe interval (frames), else the
    encoder's. ``audio``: add a 440 Hz AAC track. ``vfr``: write the first second at ``fps``
    and the rest at ``fps / 4`` (passthrough timestamps). ``rotation``: a display-matrix rotation
    (degrees). ``color``: the ``color`` source's colour. ``codec``: the video encoder. ``vf``:
    filters before encoding. ``extra``: raw output options, e.g. ``("-bf", "2")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    streams = [ffmpeg_lib.input(_lavfi_source(source, size, fps, color), f="lavfi")]
    if audio:
        streams.append(ffmpeg_lib.input(f"sine=frequency=440:duration={duration}", f="lavfi"))
    # -t is an output option: it binds to no input, so video and audio both stop there
    opts: dict[str, str | None] = {"t": str(duration)}
    filters = [vf] if vf else []
    if vfr:
        n = int(fps)
        filters.insert(0, f"settb=1/1000,setpts='if(lt(N,{n}),N*1000/{fps},1000+(N-{n})*4000/{fps})'")
        opts |= {"fps_mode": "passthrough", "video_track_timescale": "1000"}
    opts |= {"vf": ",".join(filters + ["format=yuv420p"]), "c:v": codec, **_BITEXACT}
    if codec == "libx264":
        opts |= {"preset": "ultrafast", "threads": "1"}
    if gop:
        opts |= {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    if audio:
        opts |= {"c:a": "aac", "shortest": None}
    opts |= _options(extra)
    out = path if rotation is None else path.with_name(f".unrotated-{path.name}")
    _run(ffmpeg_lib.output(*streams, str(out.absolute()), **opts))
    if rotation is not None:
        # -display_rotation is an input option: it sets the side data the copy writes out
        _run(ffmpeg_lib.input(str(out.absolute()), display_rotation=str(rotation))
             .output(str(path.absolute()), c="copy", **_BITEXACT))
        out.unlink()
    return path


def make_audio(path: str | os.PathLike, *, duration: float = 1.0) -> Path:
    """An audio-only file (no video stream) at ``path``, ``duration`` seconds of a 440 Hz tone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(ffmpeg_lib.input(f"sine=frequency=440:duration={duration}", f="lavfi")
         .output(str(path.absolute())))
    return path


def _demo_source(cls: str, rng: random.Random, w: int, h: int, fps: int) -> str:
    return DEMO_CLASSES[cls].format(
        w=w, h=h, fps=fps, seed=rng.randrange(1 << 30), speed=round(rng.uniform(0.005, 0.05), 3),
        scale=rng.choice([1, 2, 3, 4]), ratio=rng.randrange(1, 9), rule=rng.choice([18, 30, 90, 110, 150]),
        color=rng.choice(["30ff30", "ff3030", "3030ff", "ffff30"]),
        c0=f"{rng.randrange(1 << 24):06x}", c1=f"{rng.randrange(1 << 24):06x}")


def make_demo_dataset(root: str | os.PathLike, *, counts: dict[str, int] | None = None,
                      seed: int = 0, fps: int = 10, duration: tuple[float, float] = (1.5, 3.0)) -> Path:
    """Class folders ``root/<class>/<class>_<i>.mp4`` of randomised lavfi videos (imbalanced).

    ``root``: the folder to fill. ``counts``: videos per class (default ``DEMO_COUNTS``; classes
    from ``DEMO_CLASSES``). ``seed``: the same seed gives byte-identical files (every random
    source's seed and colours are drawn from it; see ``_BITEXACT``). ``fps``: frame rate.
    ``duration``: (min, max) seconds, drawn per video.
    """
    root = Path(root)
    rng = random.Random(seed)
    for cls, n in (counts or DEMO_COUNTS).items():
        for i in range(n):
            w, h = rng.choice([(96, 72), (112, 84), (128, 96), (80, 80)])
            vf = (f"hue=h={rng.randint(-40, 40)}:s={rng.uniform(0.6, 1.4):.2f},"
                  f"noise=alls={rng.randint(0, 25)}:allf=t:all_seed={rng.randrange(1 << 30)}")
            make_video(root / cls / f"{cls}_{i:02d}.mp4", source=_demo_source(cls, rng, w, h, fps),
                       duration=round(rng.uniform(*duration), 2), vf=vf)
    return root
