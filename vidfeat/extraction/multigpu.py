"""Multi-GPU extraction: one ``extract`` shard per GPU, merged into one feature file.

``extract_multi`` starts one child process per device slot, each running
``extract(..., shard="i/n")`` into ``<output>.shard-i-of-n.h5`` with ``CUDA_VISIBLE_DEVICES``
set to its GPU (so every child sees exactly one device, and its CUDA context, DataLoader workers
and GIL are its own). When all shards are complete they are merged with ``cache.merge`` into
``output`` and removed; the merged file equals one unsharded run's.

``gpus='cpu:N'`` runs N CPU shards instead (each with its share of the cores): the same
processes, files and merge, so machines without a GPU exercise the whole path.

Failures: a child that fails (bad frame, out of memory, killed) is reported with its shard,
device and last log line, after the others have finished; shard files and partial shards stay,
so a rerun with the same options skips finished shards, resumes interrupted ones and merges.
A kill after the merge but before the shards were removed leaves them beside the complete
output: the rerun (which finds the output complete) removes those of the same extraction.
Across machines, run ``vidfeat extract --shard i/n`` per node and ``vidfeat merge`` once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vidfeat.extraction import partial
from vidfeat.extraction.cache import SHARD_INVARIANTS, FeatureStore, merge, output_lock
from vidfeat.extraction.defaults import loader_defaults, resolve_decode
from vidfeat.extraction.single import ExtractResult, discard_output, extract_single
from vidfeat.files import write_json
from vidfeat.sandbox import kill_group, python_child
from vidfeat.system import usable_cores

POLL_S = 0.5
_CHILD = "from vidfeat.extraction.multigpu import _child; _child()"


@dataclass(frozen=True)
class Slot:
    """One shard's device: ``cuda`` with ``CUDA_VISIBLE_DEVICES=visible``, or ``cpu``."""

    device: str
    visible: str = ""

    def __str__(self) -> str:
        return f"GPU {self.visible}" if self.device == "cuda" else "CPU"


def parse_gpus(gpus) -> list[Slot]:
    """``'all'`` (every visible GPU), ``'0,1'`` / ``[0, 1]`` (visible indices) or ``'cpu:N'``.

    Indices count the GPUs this process sees, so under ``CUDA_VISIBLE_DEVICES=2,3`` index 0 is
    physical GPU 2.
    """
    text = ",".join(map(str, gpus)) if isinstance(gpus, (list, tuple)) else str(gpus).strip()
    if text.lower().startswith("cpu:"):
        count = _int(text[4:], gpus)
        if count < 1:
            raise ValueError(f"gpus={gpus!r}: need at least one CPU shard")
        return [Slot("cpu")] * count
    visible = _visible_gpus()
    if text.lower() == "all":
        if not visible:
            raise RuntimeError("gpus='all' but torch sees no CUDA GPU; use gpus='cpu:N' for N "
                               "CPU shards, or run on a GPU machine")
        return [Slot("cuda", v) for v in visible]
    wanted = [_int(v, gpus) for v in text.split(",") if v.strip()]
    if not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(f"gpus={gpus!r}: give 'all', distinct GPU indices like '0,1', or 'cpu:N'")
    bad = [i for i in wanted if not 0 <= i < len(visible)]
    if bad:
        raise ValueError(f"gpus={gpus!r}: GPU {bad[0]} does not exist "
                         f"({len(visible)} visible)")
    return [Slot("cuda", visible[i]) for i in wanted]


def _int(text: str, gpus) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"gpus={gpus!r}: give 'all', GPU indices like '0,1', or 'cpu:N'") from None


def _visible_gpus() -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value that selects each GPU this process sees."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and len(listed) >= count:
        return listed[:count]
    return [str(i) for i in range(count)]


def shard_path(output: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` is written before the merge."""
    return output.with_name(f"{output.name}.shard-{index}-of-{count}.h5")


def extract_multi(ingest_dir, output, *, gpus="all", overwrite: bool = False,
                  progress: bool = True, **options) -> ExtractResult:
    """``extract`` on several devices at once: one shard per GPU, merged into ``output``.

    ``ingest_dir``: the ingest OUTDIR. ``output``: the merged feature file. ``gpus``: ``'all'``,
    visible GPU indices (``'0,1'`` or a list) or ``'cpu:N'`` (N CPU shards). ``overwrite``:
    discard an existing output and any shard left by an earlier run. ``progress``: one bar over
    all shards, and the summary. ``options`` are ``extract``'s (``backbone``, ``weights``,
    ``batch_size``, ``precision``, ``workers``, ``dtype``, ``decode``, ``threads``; not
    ``device`` or ``shard``); ``workers`` and ``threads`` default to each shard's share of the
    cores. Returns the merged file's ``ExtractResult`` (``frames_per_s`` is the combined rate).
    A complete ``output`` of the same settings is returned at once; one of other settings needs
    ``overwrite``.
    """
    for key in ("device", "shard"):
        if key in options:
            raise ValueError(f"extract_multi sets {key} itself; pass gpus= instead")
    slots = parse_gpus(gpus)
    output = Path(output).expanduser().absolute()
    start = time.perf_counter()
    if output.exists() and not overwrite:  # done already (or another run's file: refused)
        result = extract_single(ingest_dir, output, device=slots[0].device, progress=progress,
                                **options)
        _discard_merged_shards(output, len(slots))
        return result
    options = _per_shard_defaults(options, slots)
    n = len(slots)
    paths = [output] if n == 1 else [shard_path(output, i, n) for i in range(n)]
    if overwrite:
        for path in {output, *paths}:
            discard_output(path)
    results = _run_shards(Path(ingest_dir), paths, slots, options, progress=progress)
    if n > 1:
        _merge_shards(paths, output)
    return _combined(output, results, slots, time.perf_counter() - start, progress=progress)


def _per_shard_defaults(options: dict, slots: list[Slot]) -> dict:
    """Split the machine's cores between the shards: torch threads and, unless given, the
    decode site and loader workers, by extract's own defaults on one shard's share."""
    share = max(1, usable_cores() // len(slots))
    out = dict(options)
    if out.get("threads") is None:
        out["threads"] = share
    if out.get("workers") is None:
        device = torch.device(slots[0].device)
        out["decode"] = resolve_decode(out.get("decode", "auto"), device, share)
        _, out["workers"] = loader_defaults(device, out["decode"], out.get("batch_size"), None,
                                            cores=share)
    return out


# ------------------------------------------------------------------------------- the children
def _run_shards(ingest_dir: Path, paths: list[Path], slots: list[Slot], options: dict, *,
                progress: bool) -> list[dict]:
    """Run every shard in its own process, wait for all; raise naming the failed ones."""
    procs = [_start(ingest_dir, path, i, len(paths), slot, options)
             for i, (path, slot) in enumerate(zip(paths, slots))]
    try:
        _watch(procs, paths, ingest_dir, progress=progress, backbone=options["backbone"])
    finally:
        for proc in procs:  # only reached alive on an exception (Ctrl-C) in this process
            if proc.poll() is None:
                kill_group(proc, signal.SIGTERM)
    failed = [(i, slot) for i, (proc, slot) in enumerate(zip(procs, slots)) if proc.returncode]
    if failed:
        details = "; ".join(f"shard {i}/{len(paths)} on {slot}: {_last_line(_log(paths[i]))} "
                            f"(log {_log(paths[i])})" for i, slot in failed)
        raise RuntimeError(f"{len(failed)} of {len(paths)} extraction shards failed: {details}. "
                           "Finished shards are kept: rerun the same command to resume")
    results = []
    for path in paths:
        results.append(json.loads(_result(path).read_text()))
        _result(path).unlink()
        _log(path).unlink(missing_ok=True)
    return results


def _start(ingest_dir: Path, path: Path, index: int, count: int, slot: Slot,
           options: dict) -> subprocess.Popen:
    job = {"ingest_dir": str(ingest_dir), "output": str(path), "device": slot.device,
           "shard": None if count == 1 else f"{index}/{count}", "options": options}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_log(path), "w") as log:
        # "" hides every GPU from a CPU shard
        return python_child(_CHILD, json.dumps(job), env={"CUDA_VISIBLE_DEVICES": slot.visible},
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def _child() -> None:
    """A shard's process: ``extract`` one shard, write its result next to it."""
    job = json.loads(sys.argv[1])
    try:
        result = extract_single(job["ingest_dir"], job["output"], device=job["device"],
                                shard=job["shard"], progress=False, **job["options"])
    except Exception as exc:
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    write_json(_result(Path(job["output"])), record)  # atomic: _rows_done polls it


def _log(path: Path) -> Path:
    return path.with_name(path.name + ".log")


def _result(path: Path) -> Path:
    return path.with_name(path.name + ".result.json")


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "exited without a message"


# ------------------------------------------------------------------------------- progress
def _watch(procs: list[subprocess.Popen], paths: list[Path], ingest_dir: Path, *,
           progress: bool, backbone: str) -> None:
    """Wait for the children; one bar over all shards' rows, read from their partial files."""
    from tqdm.auto import tqdm

    total, unit = None, "frame"
    if progress:
        from vidfeat.extraction.clips import file_rows
        from vidfeat.ingestion.manifest import read_manifest

        total, unit = file_rows(read_manifest(ingest_dir), backbone)
    with tqdm(total=total, unit=unit, desc=f"extract x{len(procs)}",
              disable=not progress) as bar:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            if progress:
                bar.n = sum(_rows_done(path) for path in paths)
                bar.refresh()
        if progress:
            bar.n = sum(_rows_done(path) for path in paths)
            bar.refresh()


def _rows_done(path: Path) -> int:
    """Rows a running shard has written (its partial raw file), or all once it is complete."""
    result = _result(path)
    if result.exists():
        try:
            return int(json.loads(result.read_text())["n_frames"])
        except (ValueError, KeyError):
            return 0
    return partial.rows_done(path)


# ------------------------------------------------------------------------------- merging
def _merge_shards(paths: list[Path], output: Path) -> None:
    merge(paths, output, overwrite=True)  # the output did not exist or overwrite was asked
    for path in paths:
        # the shard's lock file stays: unlinking a lock another process may open races (files.py)
        discard_output(path)


def _discard_merged_shards(output: Path, count: int) -> None:
    """Remove the shards of ``count`` that a kill between the merge's rename and their removal
    left beside the complete ``output``: complete shards of the same extraction only."""
    if count < 2:
        return
    with FeatureStore(output) as merged:
        wanted = {k: merged.attrs.get(k) for k in SHARD_INVARIANTS if k != "shard_count"}
    for i in range(count):
        path = shard_path(output, i, count)
        if not path.exists():
            continue
        with output_lock(path):
            try:
                with FeatureStore(path) as shard:
                    same = all(shard.attrs.get(k) == v for k, v in wanted.items())
            except (ValueError, OSError):
                same = False  # not ours to judge: left for --overwrite
            if same:
                discard_output(path)


def _combined(output: Path, results: list[dict], slots: list[Slot], elapsed: float, *,
              progress: bool) -> ExtractResult:
    first = results[0]
    with FeatureStore(output) as store:
        n_frames, n_videos = len(store), store.n_videos
    devices = ", ".join(str(s) if s.device == "cpu" else f"cuda (GPU {s.visible})" for s in slots)
    result = ExtractResult(
        output=output, n_frames=n_frames, n_videos=n_videos,
        resumed_rows=sum(r["resumed_rows"] for r in results),
        skipped=all(r["skipped"] for r in results), backbone=first["backbone"],
        weights=first["weights"], feature_dim=first["feature_dim"],
        device=f"{len(slots)} devices: {devices}", precision=first["precision"],
        dtype=first["dtype"], shard="0/1", elapsed_s=elapsed, decode=first.get("decode", ""),
        frames_per_s=sum(r["frames_per_s"] for r in results), unit=first.get("unit", "frame"))
    if progress:
        print(result.summary())
    return result
