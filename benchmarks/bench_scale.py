"""Ingest on a 2-worker local Dask cluster vs local ``--jobs 2``, side by side; ratios + JSON.

Whole ``vidfeat ingest`` commands are timed (a subprocess each, start-up included) on the same
generated H.264 videos (cached under ``.bench/scale``), alternating the two so that load from
other processes hits both alike; each timing is the best of ``--repeat`` runs:

* ``--backend dask --scheduler ADDR`` on an already running ``LocalCluster`` (2 worker
  processes, 1 thread each, started here) vs ``--jobs 2`` (threads): overhead at most 15%
  (ratio <= 1.15). A running cluster is the deployment this models.
* ``--backend dask --jobs 2`` (no scheduler: the command starts and closes its own local
  cluster) vs ``--jobs 2``: informative, the cluster's start-up included.

    python benchmarks/bench_scale.py [--quick] [--repeat N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDFEAT = [sys.executable, "-m", "vidfeat"]


def dataset(cache: Path, quick: bool) -> Path:
    """Three class folders of 320x240 25 fps 10-second videos (GOP 50)."""
    from vidfeat.synth import make_video

    per_class = 4 if quick else 12
    src = cache / f"src-{per_class}"
    for label, source in (("bars", "smptebars"), ("test", "testsrc2"), ("mandel", "mandelbrot")):
        for i in range(per_class):
            path = src / label / f"{label}{i:03d}.mp4"
            if not path.exists():
                make_video(path, duration=10, fps=25, size=(320, 240), source=source, gop=50)
    return src


def timed(src: Path, work: Path, *extra: str) -> float:
    """Seconds for one fresh ``vidfeat ingest`` run (16 frames/video) into a new folder."""
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [*VIDFEAT, "ingest", str(src), "-o", str(out), "--frames-per-video", "16",
           "--no-progress", "--strict", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def run(quick: bool, cache: Path, repeat: int) -> dict:
    from distributed import Client, LocalCluster

    from vidfeat.ingestion.cluster import local_cluster_options

    src = dataset(cache, quick)
    n_videos = sum(1 for _ in src.glob("*/*.mp4"))
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    local, dask, dask_own = [], [], []
    try:
        with LocalCluster(**local_cluster_options(2)) as cluster, Client(cluster) as client:
            client.wait_for_workers(2)
            address = cluster.scheduler_address
            timed(src, work, "--jobs", "2")  # warm the page cache and the workers' imports
            timed(src, work, "--backend", "dask", "--scheduler", address)
            for _ in range(repeat):
                local.append(timed(src, work, "--jobs", "2"))
                dask.append(timed(src, work, "--backend", "dask", "--scheduler", address))
        for _ in range(repeat):
            dask_own.append(timed(src, work, "--backend", "dask", "--jobs", "2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = min(local)
    rows = [("dask, running 2-worker cluster / local --jobs 2", min(dask) / base, "<= 1.15",
             min(dask)),
            ("dask, own local cluster (start-up incl.) / --jobs 2", min(dask_own) / base, "-",
             min(dask_own))]
    return {
        "quick": quick, "repeat": repeat, "videos": n_videos, "frames_per_video": 16,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "local_jobs2_s": round(base, 3),
        "runs_s": {"local_jobs2": [round(t, 3) for t in local],
                   "dask_scheduler": [round(t, 3) for t in dask],
                   "dask_own_cluster": [round(t, 3) for t in dask_own]},
        "ratios": [{"name": name, "ratio": round(r, 3), "target": target, "seconds": round(t, 3),
                    "baseline_s": round(base, 3), "videos_per_s": round(n_videos / t, 2)}
                   for name, r, target, t in rows],
    }


def print_table(results: dict) -> None:
    print(f"{results['videos']} videos, 16 frames each; local --jobs 2: "
          f"{results['local_jobs2_s']:.2f} s ({results['videos'] / results['local_jobs2_s']:.2f} "
          "videos/s)")
    print(f"{'measure':55s} {'ratio':>6s} {'target':>8s} {'s':>7s} {'videos/s':>9s}")
    for r in results["ratios"]:
        print(f"{r['name']:55s} {r['ratio']:6.2f} {r['target']:>8s} {r['seconds']:7.2f} "
              f"{r['videos_per_s']:9.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 videos instead of 36")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per timing")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_scale.json"))
    parser.add_argument("--cache", default=str(ROOT / ".bench" / "scale"))
    args = parser.parse_args(argv)
    results = run(args.quick, Path(args.cache), args.repeat)
    print_table(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
