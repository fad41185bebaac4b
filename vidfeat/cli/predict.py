"""``vidfeat predict MODEL_DIR VIDEO...``: one JSON line per video (top-k labels)."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import choices, defaults

HELP = "classify videos with a trained model; prints one JSON line per video"
LIBRARY = ("vidfeat.prediction", "predict")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    p.add_argument("model_dir", help="folder written by 'vidfeat train'")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="local video files")
    p.add_argument("--top-k", type=int, default=d["top_k"])
    p.add_argument("--device", default=d["device"], choices=choices("vidfeat.system", "DEVICES"))
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="frames per backbone batch")
    p.add_argument("--timeout", type=float, default=d["timeout"],
                   help="seconds a video's probe or decode may take before it is killed "
                        "(that video gets an error line)")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every video was classified, 1 when some gave an error line."""
    import json

    from vidfeat.prediction import predict

    failed = 0
    for entry in predict(args.model_dir, args.videos, top_k=args.top_k, device=args.device,
                         batch_size=args.batch_size, timeout=args.timeout):
        failed += "error" in entry
        print(json.dumps(entry), flush=True)
    return 1 if failed else 0
