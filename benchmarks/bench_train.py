"""Benchmark: heads on cached features vs scikit-learn, batched sweeps, and the cost of unfreezing.

Measured side by side in one run (same machine, same data), printed as a table of ratios and,
only when asked (``--json PATH``, e.g. ``benchmarks/results/bench_train.json``), written as JSON:

1. vidfeat ``LinearHead`` vs scikit-learn ``LogisticRegression(max_iter=1000)`` on N x D features
   (default 50,000 x 2,048, 20 imbalanced classes): test accuracy (goal: within 1 point) and fit
   time (goal: >= 5x faster).
2. A 16-configuration sweep (4 lr x 4 weight decay) in one batched pass vs 16 separate fits, same
   epochs, end to end through ``vidfeat.train`` on an HDF5 feature file (goal: >= 4x faster).
3. One head epoch on cached resnet18 features vs one full-unfreezing epoch (resnet18, CPU) on the
   same stored JPEG frames: the reason the cache exists (expect >= 100x).

Run: ``.venv/bin/python benchmarks/bench_train.py`` (a few minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def clusters(n: int, dim: int, classes: int, *, seed: int, sep: float = 0.045):
    """Imbalanced Gaussian class clusters (class c has prior ~ 0.8**c, ~90:1 largest:smallest)."""
    centres = np.random.default_rng(1234).normal(size=(classes, dim)).astype(np.float32) * sep
    prior = 0.8 ** np.arange(classes)
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n, p=prior / prior.sum())
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X += centres[y]
    return X, y


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_vs_sklearn(args) -> dict:
    from sklearn.linear_model import LogisticRegression

    from vidfeat.training.heads import LinearHead

    n_train = int(args.rows * 0.8)
    n_val = (args.rows - n_train) // 2
    X, y = clusters(args.rows, args.dim, args.classes, seed=0)
    Xtr, ytr = X[:n_train], y[:n_train]
    Xv, yv = X[n_train:n_train + n_val], y[n_train:n_train + n_val]
    Xte, yte = X[n_train + n_val:], y[n_train + n_val:]
    ours, t_ours = timed(lambda: LinearHead(device="cpu").fit(Xtr, ytr, X_val=Xv, y_val=yv))
    ref, t_ref = timed(lambda: LogisticRegression(max_iter=1000).fit(Xtr, ytr))
    acc_ours, acc_ref = ours.score(Xte, yte), float(ref.score(Xte, yte))
    return {"rows": args.rows, "dim": args.dim, "classes": args.classes, "train_rows": n_train,
            "vidfeat_s": t_ours, "sklearn_s": t_ref, "speedup": t_ref / t_ours,
            "vidfeat_epochs": max(h["epoch"] for h in ours.history_),
            "vidfeat_val_checks": len(ours.history_), "vidfeat_best_epoch": ours.best_epoch_,
            "sklearn_iterations": int(np.max(ref.n_iter_)),
            "vidfeat_test_accuracy": acc_ours, "sklearn_test_accuracy": acc_ref,
            "accuracy_gap_points": 100 * (acc_ref - acc_ours),
            "goal": "gap <= 1 point and speedup >= 5",
            "passed": bool(acc_ref - acc_ours <= 0.01 and t_ref / t_ours >= 5)}


def bench_sweep(args, tmp: Path) -> dict:
    """End to end, as a user runs it: one ``train(sweep=...)`` vs 16 ``train`` calls."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from featfiles import (
        write_features,  # the feature-file layout, written with plain h5py
    )

    from vidfeat.training._train import train

    n_videos, frames = args.sweep_rows // 8, 8
    X, y = clusters(n_videos * frames, args.dim, args.classes, seed=1)
    vid = np.repeat(np.arange(n_videos), frames)
    y = y[::frames].repeat(frames)          # one label per video
    split = np.array(["train", "train", "train", "val", "test"])[vid % 5]
    data = {"features": X, "label": y, "video_id": np.array([f"v{v}" for v in vid]),
            "frame_id": np.array([f"v{v}#{i % frames}" for i, v in enumerate(vid)]),
            "split": split, "repeat": np.ones(len(y), np.int64),
            "class_names": [f"c{c:02d}" for c in range(args.classes)]}
    path = write_features(tmp / "sweep.h5", data)
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decay": [0.0, 1e-5, 1e-4, 1e-3]}
    common = {"device": "cpu", "epochs": args.sweep_epochs, "patience": args.sweep_epochs,
              "progress": False}
    _, t_batched = timed(lambda: train(path, tmp / "sweep", sweep=grid, **common))
    _, t_sep = timed(lambda: [train(path, tmp / f"single{i}", lr=lr, weight_decay=wd, **common)
                              for i, (lr, wd) in enumerate((a, b) for a in grid["lr"]
                                                           for b in grid["weight_decay"])])
    return {"configs": 16, "rows": len(y), "dim": args.dim, "epochs": args.sweep_epochs,
            "batched_s": t_batched, "separate_s": t_sep, "speedup": t_sep / t_batched,
            "note": "vidfeat.train on one HDF5 feature file: one sweep call vs 16 calls "
                    "(each reads the file, trains, validates each epoch, evaluates, writes)",
            "goal": "speedup >= 4", "passed": bool(t_sep / t_batched >= 4)}


def _write_frames(root: Path, n: int, size: int = 256) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        rel = f"frames/v{i // 8:03d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 255, (size, size * 4 // 3, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / rel, quality=90)
        paths.append(rel)
    return paths


def bench_unfreeze(args) -> dict:
    from vidfeat.extraction.backbones import create_backbone
    from vidfeat.training.finetune import _FineTune, _FrameImages, fine_tune
    from vidfeat.training.stacked import (
        ArraySource,
        HeadConfig,
        StackedHead,
        TrainSpec,
        fit_heads,
    )

    n, classes = args.frames, 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = create_backbone("resnet18", "none")
    labels = np.arange(n) % classes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = _write_frames(root, n)
        ds = _FrameImages(root, paths, labels, bb.preprocess)
        # the cached features of these very frames (what extract would have stored)
        with torch.inference_mode():
            feats = torch.cat([bb.model(bb.preprocess.normalize(
                torch.stack([ds[i][0] for i in range(s, min(s + 32, n))])))
                for s in range(0, n, 32)]).numpy()
        spec = TrainSpec(epochs=1, batch_size=32, seed=0)
        cfg = HeadConfig(lr=1e-3)
        dev = torch.device("cpu")
        src = ArraySource(feats, labels)
        fit_heads(src, classes, [cfg], spec, device=dev)        # warm-up
        head_runs = [timed(lambda: fit_heads(src, classes, [cfg], spec, device=dev))[1]
                     for _ in range(5)]
        t_head = float(np.median(head_runs))
        head = StackedHead(bb.feature_dim, classes)
        vids = np.array([p.split("/")[1] for p in paths])
        val = _FrameImages(root, paths[:8], labels[:8], bb.preprocess)
        ft = _FineTune(bb.model, head, bb.preprocess,
                       {"train": (ds, np.ones(n, np.int64), vids),
                        "val": (val, np.ones(8, np.int64), vids[:8])}, run_key="bench")
        model_dir = root / "model"
        model_dir.mkdir()
        _, t_ft = timed(lambda: fine_tune(ft, cfg, spec, epochs=1, backbone_lr_scale=0.1,
                                          model_dir=model_dir, names=[str(c) for c in range(classes)],
                                          select_metric="balanced_accuracy", dev=dev,
                                          progress=False))
    return {"frames": n, "backbone": "resnet18", "input_size": bb.preprocess.input_size,
            "head_epoch_s": t_head, "unfreeze_epoch_s": t_ft, "ratio": t_ft / t_head,
            "note": "unfreeze epoch = train pass over the frames + val pass (8 frames) + "
                    "checkpoint; head epoch = one pass over the same frames' cached features",
            "goal": "report (expect >= 100x)", "passed": bool(t_ft / t_head >= 100)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--sweep-rows", type=int, default=20_000)
    p.add_argument("--sweep-epochs", type=int, default=5)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--json", help="write the results here too (e.g. "
                   "benchmarks/results/bench_train.json); nothing is written without it")
    args = p.parse_args(argv)
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("linear_vs_sklearn", bench_vs_sklearn),
                         ("sweep_16", lambda a: bench_sweep(a, Path(tmp))),
                         ("head_vs_unfreeze_epoch", bench_unfreeze)):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = fn(args)
    s, w, u = results["linear_vs_sklearn"], results["sweep_16"], results["head_vs_unfreeze_epoch"]
    rows = [
        ("linear head vs sklearn LogisticRegression", f"{s['sklearn_s']:.1f} s / {s['vidfeat_s']:.1f} s",
         f"{s['speedup']:.1f}x", f"acc {s['vidfeat_test_accuracy']:.4f} vs "
         f"{s['sklearn_test_accuracy']:.4f} (gap {s['accuracy_gap_points']:+.2f} pt)", s["passed"]),
        ("16-config sweep vs 16 separate fits", f"{w['separate_s']:.1f} s / {w['batched_s']:.1f} s",
         f"{w['speedup']:.1f}x", "goal >= 4x", w["passed"]),
        ("unfreeze epoch vs head epoch (resnet18, CPU)",
         f"{u['unfreeze_epoch_s']:.2f} s / {u['head_epoch_s'] * 1000:.1f} ms", f"{u['ratio']:.0f}x",
         f"{u['frames']} frames", u["passed"]),
    ]
    print(f"{'comparison':48} {'times':>22} {'ratio':>8}  detail")
    for name, times, ratio, detail, ok in rows:
        print(f"{name:48} {times:>22} {ratio:>8}  {detail} [{'ok' if ok else 'MISSED'}]")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
