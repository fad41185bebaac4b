"""``vidfeat train FEATURES.h5 -o MODEL_DIR``: train a head on cached features."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import add_quiet, choices, defaults, print_summary

HELP = "train a classifier head on cached features (sweeps, imbalance options, unfreezing)"
LIBRARY = ("vidfeat.training._train", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    p.add_argument("features", help="feature file written by 'vidfeat extract'")
    p.add_argument("-o", "--output", dest="model_dir", metavar="MODEL_DIR", required=True,
                   help="output folder for the model")
    p.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                   help="replace an existing model folder")
    p.add_argument("--head", default=d["head"], choices=choices(LIBRARY[0], "HEADS"))
    p.add_argument("--hidden", type=int, nargs="+", default=d["hidden"], help="MLP hidden sizes")
    p.add_argument("--dropout", type=float, default=d["dropout"], help="MLP dropout")
    p.add_argument("--epochs", type=int, default=d["epochs"],
                   help="maximum epochs (early stopping on val)")
    p.add_argument("--patience", type=int, default=d["patience"],
                   help="validation checks without improvement before stopping (checks: each "
                        "epoch's end and every 100 steps)")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help="learning rate (AdamW); default 1e-2 linear, 1e-3 mlp")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="decoupled weight decay")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default=d["device"], choices=choices("vidfeat.system", "DEVICES"))
    p.add_argument("--class-weight", default=d["class_weight"],
                   help="none | balanced | effective:BETA")
    p.add_argument("--sampler", default=d["sampler"],
                   choices=choices("vidfeat.training.stacked", "SAMPLERS"),
                   help="balanced: class-balanced minibatches")
    p.add_argument("--logit-adjust", type=float, default=d["logit_adjust"], metavar="TAU",
                   help="logit-adjusted loss (Menon et al. 2021)")
    p.add_argument("--sweep", nargs="+", default=d["sweep"], metavar="NAME=V1,V2",
                   help="train every combination at once, e.g. lr=1e-3,1e-2 weight_decay=0,1e-4 "
                        "(lr, weight_decay, class_weight, logit_adjust, dropout)")
    p.add_argument("--select-metric", default=d["select_metric"],
                   choices=choices(LIBRARY[0], "SELECT_METRICS"),
                   help="val metric that picks the sweep winner and the best epoch")
    p.add_argument("--max-memory", default=d["max_memory"],
                   help="features held in memory up to this size (e.g. 4GB), else streamed; "
                        "default: half of free memory")
    p.add_argument("--unfreeze", action="store_true", default=d["unfreeze"],
                   help="then fine-tune backbone and head end to end on the stored frames (or clips)")
    p.add_argument("--frames", default=d["frames"], metavar="OUTDIR",
                   help="ingest folder with the stored frames (default: the one recorded)")
    p.add_argument("--unfreeze-epochs", type=int, default=d["unfreeze_epochs"])
    p.add_argument("--unfreeze-batch-size", type=int, default=d["unfreeze_batch_size"],
                   help="frames (clips, for a clip backbone) per fine-tuning step")
    p.add_argument("--unfreeze-lr", type=float, default=d["unfreeze_lr"],
                   help="head lr when unfreezing")
    p.add_argument("--backbone-lr-scale", type=float, default=d["backbone_lr_scale"],
                   help="backbone lr = unfreeze lr * this")
    add_quiet(p, d["progress"])


def run(args: argparse.Namespace) -> int:
    from vidfeat.training import train

    result = train(
        args.features, args.model_dir, head=args.head, hidden=args.hidden, dropout=args.dropout,
        epochs=args.epochs, patience=args.patience, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, seed=args.seed, device=args.device,
        class_weight=args.class_weight, sampler=args.sampler, logit_adjust=args.logit_adjust,
        sweep=args.sweep, select_metric=args.select_metric, max_memory=args.max_memory,
        unfreeze=args.unfreeze, frames=args.frames, unfreeze_epochs=args.unfreeze_epochs,
        unfreeze_batch_size=args.unfreeze_batch_size, unfreeze_lr=args.unfreeze_lr,
        backbone_lr_scale=args.backbone_lr_scale, overwrite=args.overwrite,
        progress=args.progress)
    print_summary(args, result)
    return 0
