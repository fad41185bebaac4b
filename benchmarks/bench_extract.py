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

Clips: ``vidfeat.extract`` with the clip backbone r2plus1d_18 (16-frame clips, fp32 on the CPU,
bf16 on a GPU) vs the plain loop (PIL reads each clip's JPEGs into a (T,C,H,W) uint8 tensor, the
weights' own ``VideoClassification`` transform, the eager model with its classifier removed, in
batches of 8 clips), clips/s side by side and their ratio, and the largest relative difference.

Extra rows (issue 14; on CUDA with resnet50 bf16 on the GPU section's frames, else on the CPU on
``--cpu-rows-frames`` tiny frames, to prove the code): ``--compile``, eager vs ``torch.compile``
(model alone and ``extract`` end to end, same batch; speed-up ratios and the features' largest
relative difference); ``--gpus-all``, ``extract(gpus="all")`` (one shard per GPU, merged; CPU:
``cpu:2``) vs the single-device run; ``--profile-frames N``, ``torch.profiler`` over an
``extract`` of about N frames, its op table written to ``--profile-out`` (where the main
process's time goes: waiting for decoded batches, H2D copy, model, the writer's D2H copy);
``--late-decodes gpu`` measures nvjpeg after them. Issue 14's goals on an H200: extract end
to end >= 0.8x of forward and >= 10,000 frames/s (``benchmarks/gpu_check.sh`` runs it all).

Worker core (``--resample-frames N``): one DataLoader worker's work per stored frame (read,
decode, resize, crop; resnet50's preprocessing, one thread) with the resize in uint8 (Pillow's
arithmetic, ``resample="uint8"``, now) and in float (``"float"``, before), frames/s and ratio:
how many cores the input side of the GPU goal needs.

Checksums: the same feature file (resnet50-sized rows, float16, real-looking ids) built and read
back through ``FeatureFileBuilder``/``FeatureStore`` with and without integrity (fletcher32 on
every dataset + fixed-length strings vs the older unfiltered, variable-length layout), runs
alternated; the ratio of the best times. Goal: at most 1.05x (5% slower) for build + read.

    python benchmarks/bench_extract.py [--cpu-frames 2000] [--gpu-frames 50000] [--resample-frames 2000]
        [--clips 32] [--checksum-frames 20000] [--compile] [--gpus-all] [--profile-frames N]
        [--late-decodes gpu] [--json PATH]
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _provenance import provenance
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidfeat.extraction._extract import extract  # noqa: E402
from vidfeat.extraction.backbones import (
    create_backbone,  # noqa: E402
    preprocess_for,  # noqa: E402
)
from vidfeat.extraction.cache import FeatureFileBuilder, FeatureStore, merge  # noqa: E402
from vidfeat.extraction.defaults import PRECISIONS, resolve_decode  # noqa: E402
from vidfeat.extraction.defaults import loader_defaults as _defaults
from vidfeat.extraction.inputs import FrameFiles, input_batches  # noqa: E402
from vidfeat.extraction.single import compile_model, forward, prepare_model  # noqa: E402
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


def make_clips(root: Path, n_clips: int, clip_len: int = FRAMES_PER_VIDEO) -> Path:
    """A clip ingest OUTDIR: ``make_frames``' videos, each one clip of its 16 frames."""
    from vidfeat.ingestion.manifest import read_manifest

    m = read_manifest(make_frames(root, n_clips * clip_len))
    frames = m.frames.copy()
    row = np.arange(len(frames))
    frames["clip_id"], frames["clip_pos"] = row // clip_len, row % clip_len
    frames["padded"] = False
    frames["frame_id"] = [f"{f}@{c}.{k}" for f, c, k in
                          zip(frames["frame_id"], frames["clip_id"], frames["clip_pos"])]
    sampling = {"mode": "uniform", "clips_per_video": 1, "clip_len": clip_len, "clip_fps": 15.0,
                "short_clips": "pad"}
    write_manifest(root, m.videos, frames, {"sampling": sampling})
    return root


def plain_clip_loop(root: Path, name: str, device: str, batch_size: int = 8):
    """The plain recipe for a video model: PIL -> (T,C,H,W) uint8 -> the weights' transform ->
    eager model (bf16 autocast on CUDA), one process. Returns (clips/s, features)."""
    from torchvision.models import get_model_weights

    from vidfeat.ingestion.manifest import read_manifest

    m = read_manifest(root)
    clips = [g["path"].tolist() for _, g in m.frames.groupby("clip_id", sort=True)]
    model = create_backbone(name, "none").model.eval().to(device)
    transform = get_model_weights(name).DEFAULT.transforms()
    cuda = device == "cuda"
    t0 = time.perf_counter()
    out = []
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        for start in range(0, len(clips), batch_size):
            batch = [transform(torch.stack([torch.from_numpy(np.array(
                Image.open(root / p).convert("RGB"))).permute(2, 0, 1) for p in paths]))
                for paths in clips[start:start + batch_size]]
            out.append(model(torch.stack(batch).to(device)).float().cpu().numpy())
    return len(clips) / (time.perf_counter() - t0), np.concatenate(out)


def bench_clips(n: int, work: Path, device: str, repeats: int = 2) -> dict:
    """r2plus1d_18 clips/s: ``extract`` (end to end) vs the plain loop, on ``device``; runs
    alternated, best of ``repeats`` each (a shared machine's load hits both alike)."""
    root = make_clips(work / f"clips_{device}", n)
    plain, ours = [], []
    for k in range(repeats):
        base_cps, base_X = plain_clip_loop(root, "r2plus1d_18", device)
        plain.append(base_cps)
        out = work / f"clips_{device}_{k}.h5"
        t0 = time.perf_counter()
        res = extract(root, out, backbone="r2plus1d_18", weights="none", device=device,
                      dtype="float32", progress=False)
        ours.append(n / (time.perf_counter() - t0))
    with FeatureStore(out) as s:
        X = s.load().X
    rel = float(np.abs(X - base_X).max() / np.abs(base_X).max())
    return {"clips": n, "clip_len": FRAMES_PER_VIDEO, "backbone": "r2plus1d_18",
            "device": device, "precision": res.precision, "threads": torch.get_num_threads(),
            "repeats": repeats, "plain_clips_per_s": max(plain),
            "vidfeat_clips_per_s_end_to_end": max(ours),
            "vidfeat_clips_per_s_pipeline": res.frames_per_s, "ratio": max(ours) / max(plain),
            "max_rel_diff_vs_plain": rel}


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


def bench_resample(n: int, work: Path, repeats: int = 3) -> dict:
    """What one DataLoader worker core does per stored frame (read, decode, resize, crop:
    ``FrameFiles``, resnet50's preprocessing, one thread) with ``resample`` uint8 (now)
    and float (before), runs alternated, best of ``repeats``: the input side of the GPU goal."""
    root = make_frames(work / "resample_ingest", n)
    frames = pd.read_parquet(root / "frames.parquet")
    pre, threads = preprocess_for("resnet50"), torch.get_num_threads()
    torch.set_num_threads(1)
    best = {}
    try:
        for _ in range(repeats):
            for resample in ("uint8", "float"):
                ds = FrameFiles(root, frames["path"].tolist(), replace(pre, resample=resample),
                                decode=True)
                t0 = time.perf_counter()
                for i in range(len(ds)):
                    ds[i]
                best[resample] = max(best.get(resample, 0.0), n / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return {"frames": n, "frame_size": "341x256", "uint8_fps_per_core": best["uint8"],
            "float_fps_per_core": best["float"], "ratio": best["uint8"] / best["float"]}


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


def bench_gpu(n: int, work: Path, batch: int, workers: int | None, save,
              decodes=("cpu", "gpu")) -> dict:
    """Forward-only, then each of ``decodes``; ``save(partial)`` after each step."""
    root = make_frames(work / "gpu_ingest", n)
    fwd = forward_only("resnet50", batch, "bf16")
    dev = torch.device("cuda")
    out = {"frames": n, "batch_size": batch, "precision": "bf16", "backbone": "resnet50",
           "device_name": torch.cuda.get_device_name(0), "forward_only_fps": fwd,
           "auto_decode": resolve_decode("auto", dev, workers), "goal_ratio": 0.8,
           "goal_resnet50_bf16_fps_h100": 5000}
    save(out)
    for decode in decodes:  # the expected winner first: a time limit still leaves it
        out[f"decode_{decode}"] = bench_decode(root, work, decode, batch, workers, fwd)
        summarize(out)
        save(out)
    return out


def bench_late_decodes(gpu: dict, work: Path, decodes: list[str], batch: int,
                       workers: int | None, save) -> dict:
    """The decode rows that ``--late-decodes`` put after the extra rows (nvjpeg, the slow one:
    a time limit then cuts it, not them), on the GPU section's frames."""
    for decode in decodes:
        gpu[f"decode_{decode}"] = bench_decode(work / "gpu_ingest", work, decode, batch, workers,
                                               gpu["forward_only_fps"])
        summarize(gpu)
        save(gpu)
    return gpu


def summarize(out: dict) -> None:
    """The best decode measured so far (by pipeline rate), its ratios and the goals met."""
    best = max((d for d in ("cpu", "gpu") if f"decode_{d}" in out),
               key=lambda d: out[f"decode_{d}"]["extract_fps_pipeline"])
    b = out[f"decode_{best}"]
    out.update(best_decode=best, ratio_pipeline_vs_forward=b["ratio_pipeline_vs_forward"],
               resnet50_bf16_fps_end_to_end=b["extract_fps_end_to_end"],
               goal_ratio_met=b["ratio_pipeline_vs_forward"] >= 0.8,
               goal_fps_met=b["extract_fps_end_to_end"] >= 5000,
               ratio_end_to_end_vs_forward=b["ratio_end_to_end_vs_forward"],
               goal_end_to_end_ratio_met=b["ratio_end_to_end_vs_forward"] >= 0.8,
               goal_fps_h200=10000, goal_fps_h200_met=b["extract_fps_end_to_end"] >= 10000)


# ------------------------------------------------------------------ issue 14: extra rows
def rows_setup(work: Path, gpu_frames: int, cpu_frames: int, backbone: str, *,
               gpu_batch: int, cpu_batch: int) -> dict:
    """Device, precision, batch and frames of the extra rows: the GPU section's frames and
    settings on CUDA, else ``cpu_frames`` tiny frames on the CPU (fp32): a proof of the code."""
    if torch.cuda.is_available():
        root = work / "gpu_ingest"
        if not (root / "frames.parquet").exists():
            root = make_frames(root, gpu_frames)
        return {"root": root, "device": "cuda", "precision": "bf16", "batch": gpu_batch,
                "backbone": backbone, "frames": len(pd.read_parquet(root / "frames.parquet"))}
    root = make_frames(work / "cpu_rows_ingest", cpu_frames, size=(80, 64), unique=8)
    return {"root": root, "device": "cpu", "precision": "fp32", "batch": cpu_batch,
            "backbone": backbone, "frames": cpu_frames}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_rate(model: torch.nn.Module, x: torch.Tensor, precision: str, seconds: float) -> float:
    """Frames/s of ``model`` alone on the preloaded batch ``x`` (after a warm-up)."""
    for _ in range(3):
        forward(model, x, precision)
    _sync(x.device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            forward(model, x, precision)
        n += 5 * len(x)
        _sync(x.device)
    return n / (time.perf_counter() - t0)


def _features(path: Path) -> np.ndarray:
    with FeatureStore(path) as s:
        return s.load().X.astype(np.float32)


def bench_compile(setup: dict, work: Path, seconds: float = 3.0) -> dict:
    """Eager vs ``torch.compile`` (the first call compiles: timed apart), the model alone on
    one batch, then ``extract`` end to end with ``compile`` off and on, same batch size."""
    dev, prec, batch = torch.device(setup["device"]), setup["precision"], setup["batch"]
    bb = create_backbone(setup["backbone"], "none")
    eager = prepare_model(bb, dev)
    size = bb.preprocess.input_size
    x = torch.randn(batch, 3, size, size, device=dev).to(PRECISIONS[prec])
    x = x.contiguous(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    t0 = time.perf_counter()
    compiled = compile_model(eager, batch)
    forward(compiled, x, prec)
    _sync(dev)
    out = {"backbone": setup["backbone"], "device": setup["device"], "precision": prec,
           "batch_size": batch, "frames": setup["frames"],
           "first_call_compile_s": time.perf_counter() - t0,
           "forward_eager_fps": model_rate(eager, x, prec, seconds),
           "forward_compiled_fps": model_rate(compiled, x, prec, seconds)}
    torch.backends.cudnn.benchmark = False
    out["ratio_forward_compiled_vs_eager"] = out["forward_compiled_fps"] / out["forward_eager_fps"]
    opts = dict(backbone=setup["backbone"], weights="none", device=setup["device"],
                precision=prec, batch_size=batch, progress=False)
    for flag in (False, True):
        t0 = time.perf_counter()
        res = extract(setup["root"], work / f"compile-{flag}.h5", compile=flag, **opts)
        key = "compiled" if flag else "eager"
        out[f"extract_{key}_wall_s"] = time.perf_counter() - t0
        out[f"extract_{key}_fps_end_to_end"] = setup["frames"] / out[f"extract_{key}_wall_s"]
        out[f"extract_{key}_fps_pipeline"] = res.frames_per_s
    Xe, Xc = _features(work / "compile-False.h5"), _features(work / "compile-True.h5")
    out.update(ratio_end_to_end_compiled_vs_eager=out["extract_compiled_fps_end_to_end"]
               / out["extract_eager_fps_end_to_end"],
               max_rel_diff=float(np.abs(Xc - Xe).max() / np.abs(Xe).max()),
               tolerance=3e-2 if prec != "fp32" else 1e-4)
    out["within_tolerance"] = out["max_rel_diff"] <= out["tolerance"]
    return out


def bench_gpus_all(setup: dict, work: Path) -> dict:
    """``extract(gpus="all")`` (one shard process per GPU, merged; ``cpu:2`` without CUDA) vs
    one in-process ``extract`` of the same frames, and the two files' largest difference."""
    gpus = "all" if setup["device"] == "cuda" else "cpu:2"
    opts = dict(backbone=setup["backbone"], weights="none", precision=setup["precision"],
                batch_size=setup["batch"], progress=False)
    single = work / "gpus-single.h5"
    t0 = time.perf_counter()
    extract(setup["root"], single, device=setup["device"], **opts)
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = extract(setup["root"], work / "gpus-all.h5", gpus=gpus, **opts)
    multi_s = time.perf_counter() - t0
    Xs, Xm = _features(single), _features(work / "gpus-all.h5")
    out = {"gpus": gpus, "devices": res.device, "frames": res.n_frames,
           "single_wall_s": single_s, "gpus_all_wall_s": multi_s,
           "single_fps_end_to_end": setup["frames"] / single_s,
           "gpus_all_fps_end_to_end": setup["frames"] / multi_s,
           "ratio_gpus_all_vs_single": single_s / multi_s,
           "max_rel_diff_vs_single": float(np.abs(Xm - Xs).max() / np.abs(Xs).max())}
    out["two_shards_merged"] = _shards_merged(setup, work, opts, Xs)
    return out


def _shards_merged(setup: dict, work: Path, opts: dict, Xs: np.ndarray) -> dict:
    """With one GPU, ``gpus="all"`` is one shard and merges nothing: two ``--shard`` runs on
    the device, then ``merge``, exercise the merge and are compared with the single run."""
    paths = [work / f"shard-{i}-of-2.h5" for i in range(2)]
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        extract(setup["root"], path, device=setup["device"], shard=f"{i}/2", **opts)
    t1 = time.perf_counter()
    merge(paths, work / "merged.h5")
    Xm = _features(work / "merged.h5")
    return {"shards_wall_s": t1 - t0, "merge_wall_s": time.perf_counter() - t1,
            "rows": len(Xm), "max_rel_diff_vs_single": float(np.abs(Xm - Xs).max()
                                                             / np.abs(Xs).max())}


def bench_profile(setup: dict, work: Path, frames: int, table_path: Path | None) -> dict:
    """``torch.profiler`` over an ``extract`` of about ``frames`` frames (a shard of the
    frames): the main process's ops by self time (decoding runs in the loader workers, so it
    shows as the wait for the next batch)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = setup["device"] == "cuda"
    count = max(1, setup["frames"] // max(frames, 1))
    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=acts) as prof:
        res = extract(setup["root"], work / "profile.h5", backbone=setup["backbone"],
                      weights="none", device=setup["device"], precision=setup["precision"],
                      batch_size=setup["batch"], shard=f"0/{count}", progress=False)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=sort, row_limit=30)
    if table_path is not None:
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table_path.write_text(table + "\n")
    top = sorted(events, key=lambda e: getattr(e, sort, 0.0), reverse=True)[:12]
    return {"frames": res.n_frames, "decode": res.decode, "sort": sort,
            "fps_pipeline_profiled": res.frames_per_s,
            "top": [{"name": e.key, "count": e.count,
                     "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "self_device_ms": getattr(e, sort, 0.0) / 1e3} for e in top],
            "table": str(table_path) if table_path is not None else None}


def run_extra_rows(args, work: Path, save_extra) -> None:
    """The rows that ``--compile``, ``--gpus-all`` and ``--profile-frames`` ask for, each saved
    as soon as it is measured."""
    if not (args.compile or args.gpus_all or args.profile_frames):
        return
    setup = rows_setup(work, args.gpu_frames or 50000, args.cpu_rows_frames, args.rows_backbone,
                       gpu_batch=args.gpu_batch, cpu_batch=args.cpu_rows_batch)
    if setup["device"] == "cpu":
        print("note: no CUDA here: the compile/gpus-all/profile rows run on the CPU, tiny "
              f"({setup['frames']} frames, {setup['backbone']}): they prove the code, not the "
              "speed", flush=True)
    table = Path(args.profile_out) if args.profile_out else None
    rows = {"compile": (args.compile, lambda: bench_compile(setup, work)),
            "gpus_all": (args.gpus_all, lambda: bench_gpus_all(setup, work)),
            "profile": (args.profile_frames,
                        lambda: bench_profile(setup, work, args.profile_frames, table))}
    for key, (wanted, measure) in rows.items():
        if wanted:
            save_extra(key, guarded(measure))


def guarded(measure) -> dict:
    """``measure()``, or ``{"error": ...}`` if it fails: one failed row (in a one-shot run on a
    lent GPU) must not lose the rows after it."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, the exit code says it
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def _file_once(path: Path, meta: pd.DataFrame, X: np.ndarray, checksums: bool) -> dict:
    """Wall and CPU seconds to build one feature file (extract's 65536-row blocks) and to read
    it whole at frame and video level, as training does."""
    clocks = {"wall": time.perf_counter, "cpu": lambda: os.times().user}
    start = {k: c() for k, c in clocks.items()}
    b = FeatureFileBuilder(path, meta, X.shape[1], dtype="float16", chunk_rows=256,
                           checksums=checksums)
    for row in range(0, len(X), 65536):
        b.write(row, X[row:row + 65536])
    b.finish({"class_names": ["c0", "c1", "c2", "c3"], "backbone": "resnet50",
              "weights": "none", "feature_dim": X.shape[1], "manifest_fingerprint": "0" * 32})
    built = {k: c() for k, c in clocks.items()}
    with FeatureStore(path) as s:
        s.load()
        s.load(level="video")
    done = {k: c() for k, c in clocks.items()}
    return {**{f"build_{k}_s": built[k] - start[k] for k in clocks},
            **{f"read_{k}_s": done[k] - built[k] for k in clocks},
            **{f"total_{k}_s": done[k] - start[k] for k in clocks}}


def bench_checksums(n: int, work: Path, dim: int = 2048, repeats: int = 7) -> dict:
    """The cost of integrity on the feature file itself, runs alternated, best of ``repeats``.

    The ratio is of user CPU seconds: the checksums and the string layout cost CPU, while the
    bytes written are the same to within 4 per chunk, so the kernel's page-cache work (which
    other processes on a shared machine disturb, as they do wall time) is left out. The
    wall-clock ratio is reported beside it.
    """
    rng = np.random.default_rng(0)
    vids = [f"c{v % 4}/clip_{v:07d}.mp4" for v in range(n // FRAMES_PER_VIDEO + 1)]
    video = np.repeat(vids, FRAMES_PER_VIDEO)[:n]
    meta = pd.DataFrame({"frame_id": [f"{v}#{k % FRAMES_PER_VIDEO}" for k, v in enumerate(video)],
                         "video_id": video, "label": [int(v[1]) for v in video],
                         "split": rng.choice(["train", "val", "test"], n), "repeat": 1,
                         "row": np.arange(n)})
    X = rng.standard_normal((n, dim), np.float32).astype(np.float16)
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(repeats):
        for checksums in (False, True):
            path = work / f"checksums-{checksums}.h5"
            runs[checksums].append(_file_once(path, meta, X, checksums))
            size = path.stat().st_size
            path.unlink()
    best = {c: {k: min(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
    for b in best.values():  # the best build plus the best read: steadier than the best sum
        b.update(total_cpu_s=b["build_cpu_s"] + b["read_cpu_s"],
                 total_wall_s=b["build_wall_s"] + b["read_wall_s"])
    extra = max(0.0, best[True]["total_cpu_s"] - best[False]["total_cpu_s"]) / n
    return {"frames": n, "dim": dim, "dtype": "float16", "file_mb": size / 2**20,
            "repeats": repeats, "without": best[False], "with": best[True],
            "ratio_cpu": best[True]["total_cpu_s"] / best[False]["total_cpu_s"],
            "ratio_wall": best[True]["total_wall_s"] / best[False]["total_wall_s"],
            "extra_cpu_s_per_million_frames": extra * 1e6,
            # what that adds to an extraction running at the GPU goal of 5,000 frames/s
            "extract_slowdown_at_5000_fps": extra * 5000, "goal": 1.05}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-frames", type=int, default=2000, help="0 skips the CPU section")
    ap.add_argument("--gpu-frames", type=int, default=50000, help="0 skips the GPU section")
    ap.add_argument("--resample-frames", type=int, default=2000,
                    help="frames of the per-worker-core row, resize in uint8 vs float; 0 skips")
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-workers", type=int, default=None,
                    help="DataLoader workers for both decodes (default: extract's own)")
    ap.add_argument("--clips", type=int, default=32,
                    help="16-frame clips for the r2plus1d_18 section (CPU, and GPU when there "
                         "is one); 0 skips it")
    ap.add_argument("--checksum-frames", type=int, default=20000,
                    help="frames of the with/without-checksums file; 0 skips it")
    ap.add_argument("--late-decodes", default="", metavar="gpu",
                    help="decodes of the GPU section measured after the extra rows instead")
    ap.add_argument("--compile", action="store_true",
                    help="eager vs torch.compile rows (model alone and extract end to end)")
    ap.add_argument("--gpus-all", action="store_true",
                    help="extract(gpus='all') vs one device (cpu:2 without CUDA)")
    ap.add_argument("--profile-frames", type=int, default=0,
                    help="torch.profiler over an extract of about N frames; 0 skips it")
    ap.add_argument("--profile-out", default=None, metavar="PATH",
                    help="write the profiler's op table here (text)")
    ap.add_argument("--rows-backbone", default="resnet50",
                    help="backbone of the compile/gpus-all/profile rows")
    ap.add_argument("--cpu-rows-frames", type=int, default=64,
                    help="frames of those rows without CUDA (tiny: a proof of the code)")
    ap.add_argument("--cpu-rows-batch", type=int, default=8)
    ap.add_argument("--json", default=None, metavar="PATH",
                    help="also write the results here (e.g. benchmarks/results/bench_extract.json)")
    args = ap.parse_args(argv)
    result = {**provenance(), "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    out = Path(args.json) if args.json else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        if out is not None:
            out.write_text(json.dumps(result, indent=2) + "\n")

    def save(gpu: dict) -> None:
        result["gpu"] = gpu
        write()
        print(json.dumps(gpu), flush=True)

    def save_extra(key: str, row: dict) -> None:
        result[key] = row
        write()
        print(json.dumps({key: row}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # GPU first and JSON after each step: a time limit still leaves what was measured
        cuda = bool(args.gpu_frames) and torch.cuda.is_available()
        late = [d for d in args.late_decodes.split(",") if d]
        if cuda:
            early = tuple(d for d in ("cpu", "gpu") if d not in late)
            gpu = guarded(lambda: bench_gpu(args.gpu_frames, Path(tmp), args.gpu_batch,
                                            args.gpu_workers, save, early))
            save({**result.get("gpu", {}), **gpu} if "error" in gpu else gpu)  # keep the rows
        elif args.gpu_frames:
            print("note: no CUDA here: the GPU section (forward-only vs extract per decode) is "
                  "skipped", flush=True)
        run_extra_rows(args, Path(tmp), save_extra)
        if cuda and late and "forward_only_fps" in result["gpu"]:
            gpu = guarded(lambda: bench_late_decodes(result["gpu"], Path(tmp), late,
                                                     args.gpu_batch, args.gpu_workers, save))
            save({**result["gpu"], **gpu} if "error" in gpu else gpu)
        if args.resample_frames:
            result["resample"] = bench_resample(args.resample_frames, Path(tmp))
        if args.cpu_frames:
            result["cpu"] = bench_cpu(args.cpu_frames, Path(tmp))
        if args.clips:
            devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
            result["clips"] = {d: bench_clips(args.clips, Path(tmp), d) for d in devices}
        if args.checksum_frames:
            result["checksums"] = bench_checksums(args.checksum_frames, Path(tmp))
    print_table(result)
    write()
    if out is not None:
        print(f"wrote {out}")
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    if failed:
        print(f"failed rows: {', '.join(failed)} (see their 'error')", file=sys.stderr)
    return 1 if failed else 0


def print_table(r: dict) -> None:
    print(f"device: {r['device_name']}  cpus: {r['cpus']}  torch {r['torch']}")
    if "checksums" in r:
        c = r["checksums"]
        print(f"Checksums  {c['frames']} frames x {c['dim']} {c['dtype']} ({c['file_mb']:.0f} MB), "
              f"best of {c['repeats']}, user CPU s (wall s)")
        for name in ("without", "with"):
            t = c[name]
            print(f"  {name:8s} build {t['build_cpu_s']:6.2f} ({t['build_wall_s']:6.2f})  read "
                  f"{t['read_cpu_s']:6.2f} ({t['read_wall_s']:6.2f})")
        print(f"  build + read ratio {c['ratio_cpu']:.3f}x CPU, {c['ratio_wall']:.3f}x wall "
              f"(goal <= {c['goal']}x); +{c['extra_cpu_s_per_million_frames']:.1f} CPU s per "
              f"million frames = {100 * c['extract_slowdown_at_5000_fps']:.2f}% of an "
              "extraction at 5,000 frames/s")
    for c in r.get("clips", {}).values():
        print(f"Clips  {c['clips']} x {c['clip_len']} frames, {c['backbone']} on {c['device']} "
              f"({c['precision']}, {c['threads']} threads)\n"
              f"  plain loop           {c['plain_clips_per_s']:9.2f} clips/s\n"
              f"  vidfeat extract      {c['vidfeat_clips_per_s_end_to_end']:9.2f} clips/s  "
              f"ratio {c['ratio']:.2f}x  max rel diff {c['max_rel_diff_vs_plain']:.1e}")
    if "resample" in r:
        c = r["resample"]
        print(f"Worker core, {c['frames']} frames {c['frame_size']} -> resnet50's 224 crop: "
              f"uint8 resize {c['uint8_fps_per_core']:.0f} frames/s, float "
              f"{c['float_fps_per_core']:.0f} frames/s, ratio {c['ratio']:.2f}x")
    if "cpu" in r:
        c = r["cpu"]
        print(f"CPU  {c['frames']} frames, {c['threads']} threads, {c['precision']}\n"
              f"  classic loop         {c['classic_fps']:9.1f} frames/s\n"
              f"  vidfeat extract      {c['vidfeat_fps_end_to_end']:9.1f} frames/s  "
              f"ratio {c['ratio']:.2f}x (goal >= {c['goal']}x)  "
              f"max rel diff {c['max_rel_diff_vs_classic']:.1e}")
    print_extra_rows(r)
    for key, row in r.items():
        if isinstance(row, dict) and "error" in row:
            print(f"{key}: FAILED {row['error']}")
    if "forward_only_fps" in r.get("gpu", {}):
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
        if "best_decode" in g:
            print(f"  best: decode={g['best_decode']}, end to end "
                  f"{g['resnet50_bf16_fps_end_to_end']:9.1f} frames/s = "
                  f"{g['ratio_end_to_end_vs_forward']:.2f}x forward (issue 14 goals: >= 0.8x, "
                  f">= {g['goal_fps_h200']:,} frames/s)")


def print_extra_rows(r: dict) -> None:
    r = {k: v for k, v in r.items() if not (isinstance(v, dict) and "error" in v)}
    if "compile" in r:
        c = r["compile"]
        print(f"--compile  {c['backbone']} {c['precision']} batch {c['batch_size']} on "
              f"{c['device']}, {c['frames']} frames (first call compiles: "
              f"{c['first_call_compile_s']:.1f} s)\n"
              f"  forward only  eager {c['forward_eager_fps']:9.1f}  compiled "
              f"{c['forward_compiled_fps']:9.1f} frames/s  "
              f"speed-up {c['ratio_forward_compiled_vs_eager']:.2f}x\n"
              f"  extract e2e   eager {c['extract_eager_fps_end_to_end']:9.1f}  compiled "
              f"{c['extract_compiled_fps_end_to_end']:9.1f} frames/s  speed-up "
              f"{c['ratio_end_to_end_compiled_vs_eager']:.2f}x (compiling included)\n"
              f"  features max rel diff {c['max_rel_diff']:.1e} (tolerance {c['tolerance']:.0e})")
    if "gpus_all" in r:
        g = r["gpus_all"]
        print(f"--gpus {g['gpus']} ({g['devices']}): {g['gpus_all_fps_end_to_end']:9.1f} "
              f"frames/s vs one device {g['single_fps_end_to_end']:9.1f}  ratio "
              f"{g['ratio_gpus_all_vs_single']:.2f}x, max rel diff "
              f"{g['max_rel_diff_vs_single']:.1e}")
        m = g["two_shards_merged"]
        print(f"  2 shards + merge: {m['rows']} rows, shards {m['shards_wall_s']:.1f} s, merge "
              f"{m['merge_wall_s']:.1f} s, max rel diff {m['max_rel_diff_vs_single']:.1e}")
    if "profile" in r:
        p = r["profile"]
        print(f"profile of {p['frames']} frames ({p['decode']} decode), top ops by {p['sort']}:")
        for e in p["top"][:8]:
            print(f"  {e['name'][:48]:48s} x{e['count']:<6d} self cpu {e['self_cpu_ms']:9.1f} ms"
                  f"  self {e['self_device_ms']:9.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
