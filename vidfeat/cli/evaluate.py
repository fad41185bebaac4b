"""``vidfeat evaluate MODEL_DIR FEATURES.h5``: metrics of a trained head on one split."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import choices, defaults

HELP = "evaluate a trained model on a feature file's split (frame or clip, and video level)"
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
    from pathlib import Path

    from vidfeat.training import evaluate
    from vidfeat.training.model_dir import evaluation_path
    from vidfeat.training.scoring import level_name

    metrics = evaluate(args.model_dir, args.features, split=args.split, device=args.device,
                       output=args.output, max_memory=args.max_memory)
    rows = metrics["row_level"]  # the "frame" metrics count clips for clip features
    print("\n\n".join(summary_table(f"{args.split}, {level_name(level, rows)} level",
                                    metrics[level])
                      for level in ("frame", "video")))
    out = Path(args.output) if args.output else evaluation_path(args.model_dir, args.split)
    print(f"wrote {out.absolute()}")
    return 0


def summary_table(title: str, m: dict) -> str:
    """``title`` and the overall numbers of metrics ``m`` on one line, then its per-class table:
    aligned columns, 3 decimals, n/a where a class has no examples (support 0: no recall, so
    no F1, and a precision that says nothing about the class)."""
    head = (f"{title}: n={m['n']:,}  accuracy {m['accuracy']:.3f}  balanced accuracy "
            f"{m['balanced_accuracy']:.3f}  macro F1 {m['macro_f1']:.3f}")
    rows = [["class", "precision", "recall", "F1", "support"]]
    for name, pc in m["per_class"].items():
        scores = [f"{pc[k]:.3f}" if pc["support"] else "n/a" for k in ("precision", "recall", "f1")]
        rows.append([name if name.isprintable() else repr(name), *scores, f"{pc['support']:,}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                         zip(r[1:], widths[1:])]).rstrip()
             for r in rows]
    return "\n".join([head, *lines])
