"""``vidfeat backbones``: the backbone registry, which models are clip models, and their clips."""
from __future__ import annotations

import argparse

HELP = "list the backbones extract takes: frame (2D) or clip (video) models, a clip model's clips"
LIBRARY = ("vidfeat.extraction.backbones", "list_backbones")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("frame", "clip"), default=None,
                   help="only frame (2D image) or only clip (video) models")


def run(args: argparse.Namespace) -> int:
    from vidfeat.extraction.backbones import list_backbones

    for info in list_backbones(kind=args.kind, details=True):
        clips = (f"  {info.clip_len} frames at {info.clip_fps:g} fps (ingest --clips-per-video K "
                 f"--clip-len {info.clip_len} --clip-fps {info.clip_fps:g})"
                 if info.kind == "clip" else "")
        print(f"{info.name:20s}{info.kind:6s}{clips}".rstrip())
    if args.kind != "clip":
        print(f"{'timm:<model>':20s}{'frame':6s}  any timm model (pip install 'vidfeat[timm]')")
    return 0
