"""``vidfeat pipeline SRC -o WORKDIR``: the whole job from flags (``vidfeat.run_pipeline``)."""
from __future__ import annotations

import argparse
import ast

HELP = "run every stage on SRC with flags instead of a config file (--set section.key=value)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="?", default=None, help="folder of class folders")
    parser.add_argument("-o", "--workdir", required=True, help="output folder")
    parser.add_argument("--labels", default=None, help="labels CSV/Parquet instead of SRC")
    parser.add_argument("--frames-per-video", type=int, default=None)
    parser.add_argument("--backbone", default=None, help="e.g. resnet50 (see list_backbones)")
    parser.add_argument("--weights", default=None, help="DEFAULT | none | PATH | weights name")
    parser.add_argument("--head", default=None, help="linear | mlp")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda")
    parser.add_argument("--jobs", type=int, default=None, help="ingest videos in parallel")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="any stage option, e.g. --set train.epochs=20 --set ingest.size=160")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


_FLAGS = {"frames_per_video": "ingest", "jobs": "ingest", "backbone": "extract",
          "weights": "extract", "head": "train"}


def config_from_args(args: argparse.Namespace) -> dict:
    """A pipeline config dict from the flags (flags first, then each --set)."""
    config: dict[str, dict] = {"ingest": {}, "extract": {}, "train": {}, "report": {}}
    if args.src:
        config["ingest"]["src"] = args.src
    if args.labels:
        config["ingest"]["labels"] = args.labels
    for flag, section in _FLAGS.items():
        if getattr(args, flag) is not None:
            config[section][flag] = getattr(args, flag)
    if args.device is not None:
        config["extract"]["device"] = config["train"]["device"] = args.device
    for item in args.overrides:
        section, key, value = _parse_override(item)
        config.setdefault(section, {})[key] = value
    return config


def _parse_override(item: str) -> tuple[str, str, object]:
    target, sep, raw = item.partition("=")
    section, dot, key = target.partition(".")
    if not sep or not dot or not key:
        raise ValueError(f"--set {item!r} is not SECTION.KEY=VALUE (e.g. train.epochs=20)")
    try:
        value = ast.literal_eval(raw)  # numbers, lists, booleans (True/False), quoted strings
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    return section, key.replace("-", "_"), value


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidfeat.pipeline import resolve_paths, run_pipeline

    if args.src is None and args.labels is None:
        raise ValueError("give SRC (a folder of class folders) or --labels FILE")
    config = resolve_paths(config_from_args(args), Path.cwd())
    result = run_pipeline(config, args.workdir, force=args.force, progress=args.progress)
    print(result.summary())
    return 0
