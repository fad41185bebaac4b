"""``vidfeat pipeline SRC -o WORKDIR``: the whole job from flags (``vidfeat.run_pipeline``)."""
from __future__ import annotations

import argparse
import ast
import sys

from vidfeat.cli._options import add_quiet, arg_type, choices, defaults

HELP = "run every stage on SRC with flags instead of a config file (--set section.key=value)"
LIBRARY = ("vidfeat.pipeline", "run_pipeline")
# the stage library function behind each config section (its defaults are the flags')
STAGES = {"ingest": ("vidfeat.ingestion._ingest", "ingest"),
          "extract": ("vidfeat.extraction._extract", "extract"),
          "train": ("vidfeat.training._train", "train")}
# flag dest -> the config section it sets
_FLAGS = {"frames_per_video": "ingest", "jobs": "ingest", "backbone": "extract",
          "weights": "extract", "head": "train"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    stage = {section: defaults(*where) for section, where in STAGES.items()}
    parser.add_argument("src", nargs="?", default=None, help="folder of class folders")
    parser.add_argument("-o", "--output", dest="workdir", metavar="WORKDIR", required=True,
                        help="output folder")
    parser.add_argument("--labels", default=stage["ingest"]["labels"],
                        help="labels CSV/Parquet instead of SRC")
    parser.add_argument("--frames-per-video", type=arg_type(*STAGES["ingest"], "frames_per_video"),
                        default=stage["ingest"]["frames_per_video"])
    parser.add_argument("--backbone", default=stage["extract"]["backbone"],
                        help="a torchvision name (vidfeat.list_backbones()) or timm:<model>")
    parser.add_argument("--weights", default=stage["extract"]["weights"],
                        help="DEFAULT | none | PATH | weights name")
    parser.add_argument("--head", default=stage["train"]["head"],
                        choices=choices(STAGES["train"][0], "HEADS"))
    parser.add_argument("--device", default=stage["extract"]["device"],
                        choices=choices("vidfeat.system", "DEVICES"),
                        help="extract's and train's device")
    parser.add_argument("--jobs", type=arg_type(*STAGES["ingest"], "jobs"),
                        default=stage["ingest"]["jobs"],
                        help="ingest videos in parallel")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="any stage option as a TOML value, e.g. --set train.epochs=20 "
                             "--set ingest.keyframes=true --set extract.backbone=resnet18")
    parser.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                        help="rerun every stage, replacing its outputs")
    add_quiet(parser, d["progress"], what="the pipeline's closing summary is still printed")


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
    return section, key.replace("-", "_"), _value(raw)


def _value(raw: str):
    """A --set value as in a config file (``8``, ``2.5``, ``true``, ``[0.8, 0.1, 0.1]``,
    ``"text"``); else a Python literal (``True``, ``0.8,0.1,0.1``); else a bare word's text."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidfeat.pipeline import resolve_paths, run_pipeline

    if args.src is None and args.labels is None:
        raise ValueError("give SRC (a folder of class folders) or --labels FILE")
    config = resolve_paths(config_from_args(args), Path.cwd())
    result = run_pipeline(config, args.workdir, overwrite=args.overwrite, progress=args.progress)
    print(result.summary())
    return 0
