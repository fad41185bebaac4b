"""Real test videos, made with ffmpeg's lavfi sources and libx264 (no files checked in)."""
from __future__ import annotations

import os
from pathlib import Path

from vidfeat import synth
from vidfeat.synth import ffmpeg, make_audio  # noqa: F401  (re-exported for tests)

SOURCES = ("testsrc2", "testsrc", "smptebars", "mandelbrot", "rgbtestsrc", "color", "life", "cellauto")


def make_video(path: str | os.PathLike, **options) -> Path:
    """``vidfeat.synth.make_video`` with the file's folder and name in its ``title`` tag.

    Ingest takes byte-identical files as one video; the tag keeps two test videos made with the
    same options two videos (same frames, different bytes). ``options``: as synth's.
    """
    tag = "/".join(Path(path).parts[-2:])
    extra = (*options.pop("extra", ()), "-metadata", f"title={tag}")
    return synth.make_video(path, extra=extra, **options)


def make_dataset(root: str | os.PathLike, counts: dict[str, int], *, duration: float = 1.0,
                 fps: float = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """Class folders ``root/<label>/<label>_<i>.mp4``; each class a visually different source."""
    root = Path(root)
    for k, (label, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            make_video(root / label / f"{label}_{i}.mp4", duration=duration, fps=fps, size=size,
                       source=SOURCES[k % len(SOURCES)], color="blue")
    return root
