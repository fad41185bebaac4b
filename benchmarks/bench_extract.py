"""Extraction throughput, measured side by side in one run; prints ratios and writes JSON.

CPU: ``vidfeat.extract`` (end to end: manifest, model, DataLoader, HDF5 file) vs the classic
transfer-learning loop (PIL open, torchvision transforms, fp32 eager resnet50, batch 64, one
process) on the same stored frames. Goal: >= 1.5x. Both run fp32, so the numbers are the same
up to rounding; the script reports the largest relative difference.

GPU (when CUDA is present): ``extract`` frames/s vs the model's own forward throughput on
preloaded tensors at the same batch and precision (goal >= 0.8x), and resnet50 bf16 end to end
(goal >= 5,000 frames/s on an H100).

    python benchmarks/bench_extract.py [--cpu-frames 2000] [--gpu-frames 30000] [--json PATH]
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

from vidfeat.backbones import create_backbone  # noqa: E402
from vidfeat.cache import FeatureStore  # noqa: E402
from vidfeat.extract import PRECISIONS, extract, forward  # noqa: E402
from vidfeat.manifest import write_manifest  # noqa: E402

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
    model = bb.model.eval().cuda().to(memory_format=torch.channels_last)
    in_dtype = PRECISIONS[precision]
    x = torch.randn(batch, 3, bb.preprocess.input_size, bb.preprocess.input_size, device="cuda")
    x = x.to(in_dtype).contiguous(memory_format=torch.channels_last)
    for _ in range(5):
        forward(model, x, precision)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            forward(model, x, precision)
        n += 10 * batch
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench_gpu(n: int, work: Path, batch: int, workers: int | None) -> dict:
    root = make_frames(work / "gpu_ingest", n)
    opts = dict(backbone="resnet50", weights="none", device="cuda", precision="bf16",
                batch_size=batch, workers=workers, progress=False)
    extract(root, work / "warm.h5", **opts, shard="0/20")  # nvjpeg, cuDNN and workers warm up
    t0 = time.perf_counter()
    res = extract(root, work / "gpu.h5", **opts)
    wall = time.perf_counter() - t0
    fwd = forward_only("resnet50", batch, "bf16")
    return {"frames": n, "batch_size": batch, "precision": res.precision,
            "device_name": torch.cuda.get_device_name(0),
            "forward_only_fps": fwd, "extract_fps_pipeline": res.frames_per_s,
            "extract_fps_end_to_end": n / wall, "ratio_pipeline_vs_forward": res.frames_per_s / fwd,
            "ratio_end_to_end_vs_forward": (n / wall) / fwd, "goal_ratio": 0.8,
            "goal_resnet50_bf16_fps_h100": 5000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-frames", type=int, default=2000, help="0 skips the CPU section")
    ap.add_argument("--gpu-frames", type=int, default=30000, help="0 skips the GPU section")
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-workers", type=int, default=None)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "bench_extract.json"))
    args = ap.parse_args(argv)
    result = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # GPU first and JSON after each section: a time limit still leaves what was measured
        if args.gpu_frames and torch.cuda.is_available():
            result["gpu"] = bench_gpu(args.gpu_frames, Path(tmp), args.gpu_batch, args.gpu_workers)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result["gpu"]), flush=True)
        if args.cpu_frames:
            result["cpu"] = bench_cpu(args.cpu_frames, Path(tmp))
    print_table(result)
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
        print(f"GPU  {g['device_name']}, {g['frames']} frames, batch {g['batch_size']}, "
              f"{g['precision']}\n"
              f"  forward only         {g['forward_only_fps']:9.1f} frames/s\n"
              f"  extract (pipeline)   {g['extract_fps_pipeline']:9.1f} frames/s  "
              f"ratio {g['ratio_pipeline_vs_forward']:.2f}x (goal >= {g['goal_ratio']}x)\n"
              f"  extract (end to end) {g['extract_fps_end_to_end']:9.1f} frames/s  "
              f"ratio {g['ratio_end_to_end_vs_forward']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
