"""``vidfeat demo``: generate a small imbalanced video dataset and run the pipeline on it."""
from __future__ import annotations

import argparse

HELP = "generate a 5-class imbalanced demo video dataset and run the whole pipeline on it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="demo_out", help="output folder")
    parser.add_argument("--weights", default=None,
                        help="DEFAULT (pretrained; downloads on a connected machine) | none "
                             "(random init) | PATH; default: DEFAULT if cached, else none")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--jobs", type=int, default=2, help="ingest videos in parallel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate and rerun everything")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from vidfeat.pipeline import demo

    result = demo(args.output, weights=args.weights, backbone=args.backbone, device=args.device,
                  jobs=args.jobs, seed=args.seed, force=args.force, progress=args.progress)
    print(result.summary())
    head = result.headline()
    if head:
        f = head["frame"]
        print(f"accuracy {f['accuracy']:.3f}  balanced accuracy {f['balanced_accuracy']:.3f}  "
              f"report {result.paths['report']}")
    return 0
