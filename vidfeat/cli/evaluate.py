"""``vidfeat evaluate MODEL_DIR FEATURES.h5``: metrics of a trained head on one split."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import choices, defaults

HELP = "evaluate a trained model on a feature file's split (frame and video level)"
LIBRARY = ("vidfeat.training._train", "evaluate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    p.add_argument("model_dir", help="folder written by 'vidfeat train'")
    p.add_argument("features", help="feature file written by 'vidfeat extract'")
    p.add_argument("--split", default=d["split"], choices=choices("vidfeat.ingestion.manifest",
                                                                  "SPLITS"))
    p.add_argument("--device", default=d["device"], choices=choices("vidfeat.system", "DEVICES"))
    p.add_argument("-o", "--output", default=d["output"], metavar="JSON",
                   help="JSON to write (default MODEL_DIR/evaluate_<split>.json)")
    p.add_argument("--max-memory", default=d["max_memory"],
                   help="hold features up to this size, else stream")


def run(args: argparse.Namespace) -> int:
    import json

    from vidfeat.training import evaluate

    metrics = evaluate(args.model_dir, args.features, split=args.split, device=args.device,
                       output=args.output, max_memory=args.max_memory)
    for level in ("frame", "video"):
        m = metrics[level]
        print(f"{args.split} {level}: n={m['n']} accuracy={m['accuracy']:.4f} "
              f"balanced_accuracy={m['balanced_accuracy']:.4f} macro_f1={m['macro_f1']:.4f}")
        for name, pc in m["per_class"].items():
            print(f"  {name}: " + json.dumps(pc))
    return 0
