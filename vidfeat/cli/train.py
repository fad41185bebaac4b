"""``vidfeat train FEATURES.h5 -o MODEL_DIR``: train a head on cached features."""
from __future__ import annotations

import argparse

HELP = "train a classifier head on cached features (sweeps, imbalance options, unfreezing)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", help="feature file written by 'vidfeat extract'")
    p.add_argument("-o", "--model-dir", required=True, help="output folder for the model")
    p.add_argument("--head", default="linear", help="linear | mlp")
    p.add_argument("--hidden", type=int, nargs="+", default=[512], help="MLP hidden sizes")
    p.add_argument("--dropout", type=float, default=0.2, help="MLP dropout")
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs (early stopping on val)")
    p.add_argument("--patience", type=int, default=5,
                   help="validation checks without improvement before stopping (checks: each "
                        "epoch's end and every 100 steps)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (AdamW); default 1e-2 linear, 1e-3 mlp")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled weight decay")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--class-weight", default="none", help="none | balanced | effective:BETA")
    p.add_argument("--sampler", default=None, help="balanced: class-balanced minibatches")
    p.add_argument("--logit-adjust", type=float, default=None, metavar="TAU",
                   help="logit-adjusted loss (Menon et al. 2021)")
    p.add_argument("--sweep", nargs="+", default=None, metavar="NAME=V1,V2",
                   help="train every combination at once, e.g. lr=1e-3,1e-2 weight_decay=0,1e-4 "
                        "(lr, weight_decay, class_weight, logit_adjust, dropout)")
    p.add_argument("--select-metric", default="balanced_accuracy",
                   help="val metric that picks the sweep winner and the best epoch")
    p.add_argument("--max-memory", default=None,
                   help="features held in memory up to this size (e.g. 4GB), else streamed; "
                        "default: half of free memory")
    p.add_argument("--unfreeze", action="store_true",
                   help="then fine-tune backbone and head end to end on the stored frames")
    p.add_argument("--frames", default=None, metavar="OUTDIR",
                   help="ingest folder with the stored frames (default: the one recorded)")
    p.add_argument("--unfreeze-epochs", type=int, default=3)
    p.add_argument("--unfreeze-batch-size", type=int, default=32, help="frames per fine-tuning step")
    p.add_argument("--unfreeze-lr", type=float, default=1e-3, help="head lr when unfreezing")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1,
                   help="backbone lr = unfreeze lr * this")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from vidfeat.train import train

    train(args.features, args.model_dir, head=args.head, hidden=args.hidden, dropout=args.dropout,
          epochs=args.epochs, patience=args.patience, lr=args.lr, weight_decay=args.weight_decay,
          batch_size=args.batch_size, seed=args.seed, device=args.device,
          class_weight=args.class_weight, sampler=args.sampler, logit_adjust=args.logit_adjust,
          sweep=args.sweep, select_metric=args.select_metric, max_memory=args.max_memory,
          unfreeze=args.unfreeze, frames=args.frames, unfreeze_epochs=args.unfreeze_epochs,
          unfreeze_batch_size=args.unfreeze_batch_size, unfreeze_lr=args.unfreeze_lr,
          backbone_lr_scale=args.backbone_lr_scale, progress=args.progress)
    return 0
