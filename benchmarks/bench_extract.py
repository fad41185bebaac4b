"""Extraction throughput, measured side by side in one run; prints ratios (JSON with --json).

CPU: ``vidfeat.extract`` (end to end: manifest, model, DataLoader, HDF5 file) vs the classic
transfer-learning loop (PIL open, torchvision transforms, fp32 eager resnet50, batch 64, one
process) on the same stored frames. Goal: >= 1.5x. Both run fp32, so the numbers are the same
up to rounding; the script reports the largest relative difference.

GPU (when CUDA is present), resnet50 bf16 at batch 256, in one run on the same frames: the
model's own forward throughput on preloaded tensors (the ceiling), then for ``decode="cpu"``
(DataLoader workers decode) and ``decode="gpu"`` (nvjpeg): the input pipeline alone (read,
decode, resize, upload, normalise; no model) and ``extract`` itself, each as a ratio to
forward. Goals: extract >= 0.8x of forward, and >= 5,000 frames/s end to end on an H100.
The input-only rate tells which side limits a miss.

    python benchmarks/bench_extract.py [--cpu-frames 2000] [--gpu-frames 50000] [--json PATH]
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
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidfeat.extraction._extract import extract  # noqa: E402
from vidfeat.extraction.backbones import (
    create_backbone,  # noqa: E402
    preprocess_for,  # noqa: E402
)
from vidfeat.extraction.cache import FeatureStore  # noqa: E402
from vidfeat.extraction.defaults import PRECISIONS, resolve_decode  # noqa: E402
from vidfeat.extraction.defaults import loader_defaults as _defaults
from vidfeat.extraction.inputs import input_batches  # noqa: E402
from vidfeat.extraction.single import forward, prepare_model  # noqa: E402
from vidfeat.ingestion.manifest import write_manifest  # noqa: E402

warnings.filterwarnings("ignore", message="backbone .* RANDOM")
warnings.filterwarnings("ignore", category=DeprecationWarning)
FRAMES_PER_VIDEO = 16


def make_frames(root: Path, n: int, *, size=(341, 256), unique: int = 64) -> Path:
    """An ingest OUTDIR of ``n`` JPEG frames (ingest's default short side 256), 16 per video.
    ``unique`` distinct images are encoded once and their bytes reused, to build fast."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    blobs = []
    for i in range(unique):
        img = np.stack([(xx * (1 + i % 5) + i * 9) % 256, (yy * (1 + i % 3) + xx // 4) % 256,
                        rng.integers(0, 256, (h, w)) // 2 + 64], -1).astype(np.uint8)
        tmp = root / "_tmp.jpg"
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp, quality=90)
        blobs.append(tmp.read_bytes())
    videos, frames = [], []
    for v in range((n + FRAMES_PER_VIDEO - 1) // FRAMES_PER_VIDEO):
        vid, label = f"c{v % 4}/v{v:06d}.mp4", f"c{v % 4}"
        folder = root / "frames" / vid
        folder.mkdir(parents=True, exist_ok=True)
        count = min(FRAMES_PER_VIDEO, n - v * FRAMES_PER_VIDEO)
        for k in range(count):
            (folder / f"{k:06d}.jpg").write_bytes(blobs[(v * 7 + k) % unique])
            frames.append(dict(frame_id=f"{vid}#{k}", video_id=vid, label=label, split="train",
                               frame_index=k, timestamp_s=k / 10, path=f"frames/{vid}/{k:06d}.jpg",
                               repeat=1))
        videos.append(dict(video_id=vid, path=f"/src/{vid}", label=label, split="train",
                           status="ok", error="", duration_s=1.6, fps=10.0, width=w, height=h,
                           n_frames=count, repeat=1))
    write_manifest(root, pd.DataFrame(videos), pd.DataFrame(frames), {"sampling": {}})
    return root


def classic_loop(root: Path, paths: list[str], batch_size: int = 64) -> tuple[float, np.ndarray]:
    """The transfer-learning tutorial recipe: PIL, transforms, fp32 eager, one process."""
    from torchvision import transforms

    bb = create_backbone("resnet50", "none")
    model = bb.model.eval()
    p = bb.preprocess
    tf = transforms.Compose([transforms.Resize(p.resize_size), transforms.CenterCrop(p.input_size),
                             transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = [tf(Image.open(root / q).convert("RGB")) for q in paths[start:start + batch_size]]
            out.append(model(torch.stack(batch)).numpy())
    return len(paths) / (time.perf_counter() - t0), np.concatenate(out)


def bench_cpu(n: int, work: Path) -> dict:
    root = make_frames(work / "cpu_ingest", n)
    paths = pd.read_parquet(root / "frames.parquet")["path"].tolist()
    base_fps, base_X = classic_loop(root, paths)
    t0 = time.perf_counter()
    res = extract(root, work / "cpu.h5", backbone="resnet50", weights="none", device="cpu",
                  batch_size=64, dtype="float32", progress=False)
    wall = time.perf_counter() - t0
    with FeatureStore(work / "cpu.h5") as s:
        X = s.load().X
    rel = float(np.abs(X - base_X).max() / np.abs(base_X).max())
    return {"frames": n, "threads": torch.get_num_threads(), "classic_fps": base_fps,
            "vidfeat_fps_end_to_end": n / wall, "vidfeat_fps_pipeline": res.frames_per_s,
            "ratio": (n / wall) / base_fps, "precision": res.precision,
            "max_rel_diff_vs_classic": rel, "goal": 1.5}


def forward_only(name: str, batch: int, precision: str, seconds: float = 5.0) -> float:
    """The model alone on a preloaded, preprocessed batch: the ceiling for extraction."""
    bb = create_backbone(name, "none")
    model = prepare_model(bb, torch.device("cuda"))  # extract's own model (BatchNorm folded)
    in_dtype = PRECISIONS[precision]
    x = torch.randn(batch, 3, bb.preprocess.input_size, bb.preprocess.input_size, device="cuda")
    x = x.to(in_dtype).contiguous(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # as extract does: the baseline at its best
    for _ in range(5):
        forward(model, x, precision)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            forward(model, x, precision)
        n += 10 * batch
        torch.cuda.synchronize()
    fps = n / (time.perf_counter() - t0)
    torch.backends.cudnn.benchmark = False
    return fps


def input_only(root: Path, decode: str, batch: int, workers: int | None, n: int) -> dict:
    """The input pipeline of ``extract`` alone, on the first ``n`` frames: no model."""
    dev = torch.device("cuda")
    _, workers = _defaults(dev, decode, batch, workers)
    paths = pd.read_parquet(root / "frames.parquet")["path"].tolist()[:n]
    t0, count = time.perf_counter(), 0
    for x, _ready in input_batches(root, paths, preprocess_for("resnet50"), device=dev,
                                   decode=decode, precision="bf16", batch_size=batch,
                                   workers=workers):
        count += len(x)
    torch.cuda.synchronize()
    return {"workers": workers, "input_only_fps": count / (time.perf_counter() - t0)}


def bench_decode(root: Path, work: Path, decode: str, batch: int, workers: int | None,
                 fwd: float) -> dict:
    n = len(pd.read_parquet(root / "frames.parquet"))
    opts = dict(backbone="resnet50", weights="none", device="cuda", precision="bf16",
                batch_size=batch, workers=workers, decode=decode, progress=False)
    extract(root, work / f"warm-{decode}.h5", **opts, shard="0/20")  # nvjpeg, cuDNN warm up
    out = input_only(root, decode, batch, workers, n // 4)
    t0 = time.perf_counter()
    res = extract(root, work / f"gpu-{decode}.h5", **opts)
    wall = time.perf_counter() - t0
    assert res.decode == decode, res
    out.update(extract_fps_pipeline=res.frames_per_s, extract_fps_end_to_end=n / wall,
               ratio_input_only_vs_forward=out["input_only_fps"] / fwd,
               ratio_pipeline_vs_forward=res.frames_per_s / fwd,
               ratio_end_to_end_vs_forward=(n / wall) / fwd)
    return out


def bench_gpu(n: int, work: Path, batch: int, workers: int | None, save) -> dict:
    """Forward-only, then decode=cpu and decode=gpu; ``save(partial)`` after each step."""
    root = make_frames(work / "gpu_ingest", n)
    fwd = forward_only("resnet50", batch, "bf16")
    dev = torch.device("cuda")
    out = {"frames": n, "batch_size": batch, "precision": "bf16", "backbone": "resnet50",
           "device_name": torch.cuda.get_device_name(0), "forward_only_fps": fwd,
           "auto_decode": resolve_decode("auto", dev, workers), "goal_ratio": 0.8,
           "goal_resnet50_bf16_fps_h100": 5000}
    save(out)
    for decode in ("cpu", "gpu"):  # the expected winner first: a time limit still leaves it
        out[f"decode_{decode}"] = bench_decode(root, work, decode, batch, workers, fwd)
        save(out)
    best = max(("cpu", "gpu"), key=lambda d: out[f"decode_{d}"]["extract_fps_pipeline"])
    b = out[f"decode_{best}"]
    out.update(best_decode=best, ratio_pipeline_vs_forward=b["ratio_pipeline_vs_forward"],
               resnet50_bf16_fps_end_to_end=b["extract_fps_end_to_end"],
               goal_ratio_met=b["ratio_pipeline_vs_forward"] >= 0.8,
               goal_fps_met=b["extract_fps_end_to_end"] >= 5000)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-frames", type=int, default=2000, help="0 skips the CPU section")
    ap.add_argument("--gpu-frames", type=int, default=50000, help="0 skips the GPU section")
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-workers", type=int, default=None,
                    help="DataLoader workers for both decodes (default: extract's own)")
    ap.add_argument("--json", help="write the results here too (e.g. "
                    "benchmarks/results/bench_extract.json); nothing is written without it")
    args = ap.parse_args(argv)
    result = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    out = Path(args.json) if args.json else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)

    def save(gpu: dict) -> None:
        result["gpu"] = gpu
        if out:
            out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(gpu), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # GPU first and JSON after each step: a time limit still leaves what was measured
        if args.gpu_frames and torch.cuda.is_available():
            save(bench_gpu(args.gpu_frames, Path(tmp), args.gpu_batch, args.gpu_workers, save))
        if args.cpu_frames:
            result["cpu"] = bench_cpu(args.cpu_frames, Path(tmp))
    print_table(result)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def print_table(r: dict) -> None:
    print(f"device: {r['device_name']}  cpus: {r['cpus']}  torch {r['torch']}")
    if "cpu" in r:
        c = r["cpu"]
        print(f"CPU  {c['frames']} frames, {c['threads']} threads, {c['precision']}\n"
              f"  classic loop         {c['classic_fps']:9.1f} frames/s\n"
              f"  vidfeat extract      {c['vidfeat_fps_end_to_end']:9.1f} frames/s  "
              f"ratio {c['ratio']:.2f}x (goal >= {c['goal']}x)  "
              f"max rel diff {c['max_rel_diff_vs_classic']:.1e}")
    if "gpu" in r:
        g = r["gpu"]
        print(f"GPU  {g['device_name']}, {g['frames']} frames, {g['backbone']} batch "
              f"{g['batch_size']}, {g['precision']} (auto decode here: {g['auto_decode']})\n"
              f"  forward only                {g['forward_only_fps']:9.1f} frames/s")
        for decode in ("cpu", "gpu"):
            d = g.get(f"decode_{decode}")
            if d is None:
                continue
            print(f"  decode={decode} ({d['workers']:2d} workers)\n"
                  f"    input only                {d['input_only_fps']:9.1f} frames/s  "
                  f"ratio {d['ratio_input_only_vs_forward']:.2f}x\n"
                  f"    extract (pipeline)        {d['extract_fps_pipeline']:9.1f} frames/s  "
                  f"ratio {d['ratio_pipeline_vs_forward']:.2f}x (goal >= {g['goal_ratio']}x)\n"
                  f"    extract (end to end)      {d['extract_fps_end_to_end']:9.1f} frames/s  "
                  f"ratio {d['ratio_end_to_end_vs_forward']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
