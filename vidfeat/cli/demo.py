"""``vidfeat demo``: generate a small imbalanced video dataset and run the pipeline on it."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import add_quiet, choices, defaults

HELP = "generate a 5-class imbalanced demo video dataset and run the whole pipeline on it"
LIBRARY = ("vidfeat.pipeline", "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("-o", "--output", default=d["output"], help="output folder")
    parser.add_argument("--weights", default=d["weights"],
                        help="DEFAULT (pretrained; downloads on a connected machine) | none "
                             "(random init) | PATH; default: DEFAULT if cached, else none")
    parser.add_argument("--backbone", default=d["backbone"])
    parser.add_argument("--device", default=d["device"],
                        choices=choices("vidfeat.system", "DEVICES"))
    parser.add_argument("--jobs", type=int, default=d["jobs"], help="ingest videos in parallel")
    parser.add_argument("--seed", type=int, default=d["seed"])
    parser.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                        help="regenerate the videos and rerun every stage")
    add_quiet(parser, d["progress"], what="the pipeline's closing summary is still printed")


def run(args: argparse.Namespace) -> int:
    from vidfeat.pipeline import demo

    result = demo(args.output, weights=args.weights, backbone=args.backbone, device=args.device,
                  jobs=args.jobs, seed=args.seed, overwrite=args.overwrite,
                  progress=args.progress)
    print(result.summary())
    head = result.headline()
    if head:
        f = head["frame"]
        print(f"accuracy {f['accuracy']:.3f}  balanced accuracy {f['balanced_accuracy']:.3f}  "
              f"report {result.paths['report']}")
    return 0
