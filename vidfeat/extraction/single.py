"""Single-device extraction: every stored frame of an ingest OUTDIR (or one shard of it) into
one HDF5 feature file.

Inputs come from :mod:`vidfeat.extraction.inputs`, rows go out through
:mod:`vidfeat.extraction.writer` into the partial run of :mod:`vidfeat.extraction.partial`.

Safety. ``<output>.lock`` (fcntl) admits one writer. The partial folder holds the settings and
the raw rows written so far; a rerun after a crash or SIGKILL keeps the whole batches already
written and goes on, so the result is identical to an uninterrupted run. Only when every row is
there is the HDF5 file built, under a temporary name, ``complete`` set last, and renamed into
place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vidfeat import __version__
from vidfeat.extraction import partial
from vidfeat.extraction.backbones import (
    Backbone,
    check_weights_available,
    create_backbone,
    resolve_weights,
)
from vidfeat.extraction.cache import FeatureFileBuilder, FeatureStore, output_lock
from vidfeat.extraction.clips import (
    check_fits,
    clip_fps,
    clip_len,
    clip_meta,
    clip_table,
    flat_inputs,
)
from vidfeat.extraction.defaults import (
    DECODES,
    DTYPES,
    PRECISIONS,
    loader_defaults,
    resolve_decode,
    resolve_precision,
)
from vidfeat.extraction.inputs import input_batches
from vidfeat.extraction.preprocess import RESAMPLE, recorded_resample
from vidfeat.extraction.update import ReusePlan, gather, plan_reuse
from vidfeat.extraction.writer import RowWriter
from vidfeat.files import check_output
from vidfeat.ingestion.manifest import Manifest, read_manifest
from vidfeat.options import check_choice, check_positive
from vidfeat.system import resolve_device

log = logging.getLogger(__name__)

# settings recorded as file attributes and compared against an existing output or partial run
SETTING_ATTRS = ("manifest_fingerprint", "backbone", "weights", "weights_sha256", "dtype",
                 "precision", "shard")


@dataclass
class ExtractResult:
    """What one ``extract`` call did."""

    output: Path
    n_frames: int          # rows in the file (this shard's)
    n_videos: int
    resumed_rows: int      # rows found already done in a partial run
    skipped: bool          # the output was already complete: nothing was computed
    backbone: str
    weights: str
    feature_dim: int
    device: str
    precision: str
    dtype: str
    shard: str             # "i/n"
    elapsed_s: float
    frames_per_s: float    # frames computed in this call per second of model pipeline
    decode: str = ""       # where JPEGs were decoded: "cpu" (workers) or "gpu" (nvjpeg)
    update: str = ""       # brought an older file up to date: what was kept, computed, dropped
    unit: str = "frame"    # what a row is: "frame", or "clip" (a clip backbone; then n_frames
    #                        and frames_per_s count clips)

    def summary(self) -> str:
        unit = self.unit
        if self.skipped:
            return (f"{self.output} is already complete ({self.n_frames} {unit}s, "
                    f"{self.n_videos} videos, {self.backbone}); nothing to do.")
        resumed = f", {self.resumed_rows} resumed from an earlier run" if self.resumed_rows else ""
        if self.update:
            resumed += f"; the manifest changed since the last extraction: {self.update}"
        decode = f", {self.decode} decode" if self.decode else ""
        return (f"Extracted {self.n_frames} {unit}s of {self.n_videos} videos (shard "
                f"{self.shard}{resumed}) with {self.backbone} [{self.weights}] on {self.device} at "
                f"{self.precision}{decode}: {self.frames_per_s:.1f} {unit}s/s, "
                f"{self.elapsed_s:.1f} s in all. {self.feature_dim}-d {self.dtype} features in "
                f"{self.output}.")


# ----------------------------------------------------------------------------------- planning
def parse_shard(shard) -> tuple[int, int]:
    """``"i/n"``, ``(i, n)`` or None (``0/1``) -> (i, n) with 0 <= i < n."""
    if shard is None:
        return 0, 1
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        raise ValueError(f"shard={shard!r} is not of the form i/n (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise ValueError(f"shard={shard!r}: need 0 <= i < n")
    return i, n


def manifest_fingerprint(m: Manifest) -> str:
    """What the features are computed from: the ingest's content fingerprint (sources,
    sampling, every frame's bytes via its hash) and the class names (their order is the label
    index), as 32 hex digits."""
    h = hashlib.sha256(json.dumps(m.class_names).encode())
    h.update(m.fingerprint.encode())
    return h.hexdigest()[:32]


def shard_rows(frames: pd.DataFrame, index: int, count: int) -> np.ndarray:
    """Frame rows of shard ``index`` of ``count``: whole videos, contiguous in first-frame order,
    balanced by frame count. Deterministic, so every node computes the same split."""
    codes, _ = pd.factorize(frames["video_id"], sort=False)
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    video_shard = (starts * count) // max(len(frames), 1)
    return np.flatnonzero(video_shard[codes] == index)


def _rows_meta(m: Manifest, i: int, n: int, kind: str) -> pd.DataFrame:
    """The file rows of shard ``i`` of ``n``: one per frame, or one per clip (``kind`` clip)."""
    if kind == "clip":
        index = {name: k for k, name in enumerate(m.class_names)}
        return clip_meta(m, shard_rows(clip_table(m), i, n), index)
    return _frame_meta(m, shard_rows(m.frames, i, n))


def _frame_meta(m: Manifest, rows: np.ndarray) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(m.class_names)}
    f = m.frames.iloc[rows]
    hashes = f["file_hash"].fillna("").astype(str).to_numpy() if "file_hash" in f.columns \
        else np.full(len(f), "", dtype=object)
    return pd.DataFrame({"frame_id": f["frame_id"].astype(str).to_numpy(),
                         "video_id": f["video_id"].astype(str).to_numpy(),
                         "label": f["label"].map(index).to_numpy(np.int64),
                         "split": f["split"].astype(str).to_numpy(),
                         "repeat": f["repeat"].to_numpy(np.int64),
                         "row": rows.astype(np.int64),
                         "path": f["path"].astype(str).to_numpy(), "file_hash": hashes})


# ----------------------------------------------------------------------------------- compute
def forward(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Features of a normalised batch at ``precision`` (autocast for bf16/fp16), float32 out."""
    dtype = PRECISIONS[precision]
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype,
                                                enabled=dtype != torch.float32):
        return model(x).float()


def prepare_model(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """A copy of the backbone for inference on ``device``: eval, channels_last (clip models:
    channels_last_3d), and each BatchNorm folded into the convolution before it (fp32 relative
    change ~1e-6; ~10% faster resnet50 on CPU). A model that torch.fx cannot trace runs
    unfolded."""
    from torch.fx.experimental.optimization import fuse

    model = backbone.model.eval()
    try:
        model = fuse(model)  # a traced copy: backbone.model itself is left alone
    except Exception as exc:  # noqa: BLE001 - any tracing failure just means no folding
        log.debug("%s: BatchNorm not folded (%s)", backbone.name, exc)
    return model.to(device, memory_format=backbone.preprocess.memory_format)


_LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}  # frames, clips


class _FixedBatch(torch.nn.Module):
    """``model`` on batches padded to ``batch_size`` rows: the last, shorter batch of a run
    reuses the compiled graph instead of compiling another (rows are independent in eval)."""

    def __init__(self, model: torch.nn.Module, batch_size: int):
        super().__init__()
        self.model, self.batch_size = model, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if n < self.batch_size:  # zeros after the rows, in the layout of a full batch
            fmt = _LAYOUTS.get(x.dim(), torch.contiguous_format)
            # an inference tensor or not, as the full batches are: the compiled graph's guards
            # tell them apart (a mismatch would compile a second graph)
            with torch.inference_mode(x.is_inference()):
                full = x.new_zeros((self.batch_size, *x.shape[1:])).contiguous(memory_format=fmt)
                full[:n] = x
            x = full
        return self.model(x)[:n]


def compile_model(model: torch.nn.Module, batch_size: int) -> torch.nn.Module:
    """``torch.compile`` (default mode, static shapes) of a prepared ``model`` for batches of
    at most ``batch_size`` rows. The first batch compiles (tens of seconds); inductor's own
    cache (``TORCHINDUCTOR_CACHE_DIR``, default under /tmp) makes later runs start faster.
    Features equal eager ones to within the precision's rounding, not bit for bit."""
    return _FixedBatch(torch.compile(model, dynamic=False), batch_size)


# ----------------------------------------------------------------------------------- state
def _existing(output: Path, settings: dict, meta: pd.DataFrame) -> ReusePlan | None:
    """None when ``output`` is complete for these settings; when only the manifest changed
    since it was built, the plan that brings it up to date; else FileExistsError naming what
    differs and the flag that starts over."""
    try:
        with FeatureStore(output) as s:
            found = {k: s.attrs.get(k) for k in settings if k in SETTING_ATTRS}
            changed = [k for k in found if found[k] != settings[k]]
            if changed and changed != ["manifest_fingerprint"]:
                key = next(k for k in changed if k != "manifest_fingerprint")
                raise FileExistsError(f"{output} exists with {key}={found[key]!r}, this run has "
                                      f"{settings[key]!r}; pass overwrite=True (--overwrite) to "
                                      "start over")
            if not changed:  # complete; one made with another resample stays as it is
                return None
            # rows of another resample (an older vidfeat) differ slightly: none is kept
            same = recorded_resample(s.attrs) == settings["resample"]
            return plan_reuse(s.column("frame_id"), s.optional_column("file_hash") if same
                              else None, meta["frame_id"], meta["file_hash"])
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise
        raise FileExistsError(f"{output} exists and is not a usable feature file ({exc}); "
                              "pass overwrite=True (--overwrite) to replace it") from None


def discard_output(output: str | os.PathLike) -> None:
    """Remove the feature file ``output`` and its unfinished run, if any.

    Its ``.lock`` file stays: unlinking a lock that another process may be opening would let
    two writers in (see ``vidfeat.files.FileLock``). The caller must own ``output``.
    """
    Path(output).unlink(missing_ok=True)
    partial.discard(output)


# ----------------------------------------------------------------------------------- main
@contextmanager
def _torch_threads(threads: int | None):
    """Run with ``threads`` intra-op torch threads, restoring the process's setting after."""
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def extract_single(ingest_dir: str | os.PathLike, output: str | os.PathLike, *,
                   backbone: str = "resnet50", weights: str | None = "DEFAULT",
                   batch_size: int | None = None, device: str = "auto", precision: str = "auto",
                   workers: int | None = None, dtype: str = "float16", shard=None,
                   overwrite: bool = False, progress: bool = True, decode: str = "auto",
                   threads: int | None = None, compile: bool = False) -> ExtractResult:
    """Cache ``backbone`` features of the stored frames of ``ingest_dir`` in ``output`` on one
    device; ``vidfeat.extract`` documents every parameter (all but ``gpus`` are the same here).

    A rerun resumes an interrupted run and returns at once if ``output`` is complete. When the
    ingest folder changed since ``output`` was built, the file is brought up to date: rows of
    unchanged frames (same id, same bytes) are kept, new or changed frames computed, removed
    ones dropped. Other changed settings are refused unless ``overwrite``.
    """
    t0 = time.perf_counter()
    check_choice("dtype", dtype, DTYPES)
    check_choice("decode", decode, DECODES)
    if threads is not None:
        check_positive("threads", threads)
    i, n = parse_shard(shard)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    decode = resolve_decode(decode, dev, workers)
    output = check_output(output, kind="file")
    m = read_manifest(ingest_dir)
    kind = check_fits(m, backbone)  # a clip model on single frames: one line, before any work
    batch_size, workers = loader_defaults(dev, decode, batch_size, workers, clips=kind == "clip")
    resolved, sha = resolve_weights(backbone, weights)
    meta = _rows_meta(m, i, n, kind)
    settings = {"manifest_fingerprint": manifest_fingerprint(m), "backbone": backbone,
                "weights": resolved, "weights_sha256": sha, "dtype": dtype, "precision": prec,
                "shard": f"{i}/{n}", "batch_size": batch_size, "rows": len(meta), "decode": decode,
                "compile": bool(compile),
                # frame backbones resize as Preprocess does; clip backbones' own transform, float
                "resample": RESAMPLE if kind == "frame" else "float"}
    with output_lock(output), _torch_threads(threads):
        if overwrite:
            discard_output(output)
        plan = _existing(output, settings, meta) if output.exists() else None
        if output.exists() and plan is None:
            res = _skipped(output, settings, dev)
        else:
            res = _compute(m, meta, output, settings, plan, backbone=backbone, weights=weights,
                           dev=dev, workers=workers, progress=progress)
    res.elapsed_s = 0.0 if res.skipped else time.perf_counter() - t0
    res.unit = kind
    if progress:
        print(res.summary())
    return res


def _compute(m: Manifest, meta: pd.DataFrame, output: Path, settings: dict,
             plan: ReusePlan | None, *, backbone: str, weights, dev, workers: int,
             progress: bool) -> ExtractResult:
    """Resume or start the partial run, compute the missing rows, build the file.

    ``plan``: rows kept from the existing ``output`` (an update), or None (every row).
    """
    check_weights_available(backbone, weights)  # one line offline, not a download traceback
    bb = create_backbone(backbone, weights)
    settings["feature_dim"] = bb.feature_dim
    # the raw rows, then the HDF5 file built from them: both on disk at the end
    row_bytes = bb.feature_dim * np.dtype(DTYPES[settings["dtype"]]).itemsize
    check_output(output, need_bytes=2 * len(meta) * row_bytes)
    todo = meta if plan is None else meta.iloc[plan.todo]
    settings.update(rows=len(todo), update_of=_fingerprint_of(output) if plan else "")
    # an unfinished run over other frames (the manifest changed since): its rows are of no use
    partial.discard_unless(output, settings, ("manifest_fingerprint", "update_of", "resample"))
    done = partial.load_state(output, settings, (*SETTING_ATTRS, "update_of"))
    partial.start_state(output, settings)
    t_run = time.perf_counter()
    _run(m.root, todo, bb, partial.rows_file(output), done, dev=dev,
         precision=settings["precision"], dtype=settings["dtype"],
         batch_size=settings["batch_size"], workers=workers, progress=progress,
         decode=settings["decode"], compiled=settings["compile"])
    run_s = time.perf_counter() - t_run
    _assemble(output, meta, bb, m, settings, plan)
    return ExtractResult(output=output, n_frames=len(meta), n_videos=meta["video_id"].nunique(),
                         resumed_rows=done, skipped=False, backbone=backbone, weights=bb.weights,
                         feature_dim=bb.feature_dim, device=str(dev),
                         precision=settings["precision"], dtype=settings["dtype"],
                         shard=settings["shard"], elapsed_s=0.0,
                         frames_per_s=(len(todo) - done) / max(run_s, 1e-9),
                         decode=settings["decode"], update=plan.describe() if plan else "")


def _fingerprint_of(output: Path) -> str:
    with FeatureStore(output) as s:
        return s.fingerprint


def _skipped(output: Path, settings: dict, dev) -> ExtractResult:
    # killed after the final rename but before the partial folder went: finish that cleanup
    partial.discard_leftover(output, settings, SETTING_ATTRS)
    with FeatureStore(output) as s:
        return ExtractResult(output=output, n_frames=len(s), n_videos=s.n_videos, resumed_rows=len(s),
                             skipped=True, backbone=s.backbone, weights=settings["weights"],
                             feature_dim=s.feature_dim, device=str(dev),
                             precision=settings["precision"], dtype=settings["dtype"],
                             shard=settings["shard"], elapsed_s=0.0, frames_per_s=0.0,
                             decode=str(s.attrs.get("decode", "")))  # how the file was made


def _run(root: Path, meta: pd.DataFrame, bb: Backbone, bin_path: Path, done: int, *, dev,
         precision: str, dtype: str, batch_size: int, workers: int, progress: bool,
         decode: str, compiled: bool = False) -> None:
    from tqdm.auto import tqdm

    model = prepare_model(bb, dev)
    model = compile_model(model, batch_size) if compiled else model
    cuda = dev.type == "cuda"
    if bb.kind == "clip":  # a clip's frames, clip after clip
        (paths, hashes) = flat_inputs(meta.iloc[done:])
        group = len(meta["paths"].iloc[0]) if len(meta) else 1
    else:
        paths, hashes, group = meta["path"].tolist()[done:], meta["file_hash"].tolist()[done:], 1
    batches = input_batches(root, paths, bb.preprocess, device=dev, decode=decode,
                            precision=precision, batch_size=batch_size, workers=workers,
                            hashes=hashes, group=group)
    writer = RowWriter(bin_path, dtype)
    bar = tqdm(total=len(meta), initial=done, unit=bb.kind, desc=f"extract {bb.name}",
               disable=not progress, smoothing=0.1)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda  # fixed input shape: let cuDNN pick its fastest kernels
    try:
        for x, ready in batches:
            if ready is not None:
                torch.cuda.current_stream(dev).wait_event(ready)
                x.record_stream(torch.cuda.current_stream(dev))
            writer.put(forward(model, x, precision))
            bar.update(len(x))
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        bar.close()
        writer.close()


def _assemble(output: Path, meta: pd.DataFrame, bb: Backbone, m: Manifest, settings: dict,
              plan: ReusePlan | None) -> None:
    """Build the final HDF5 from the raw rows (and, for an update, the kept rows of the old
    file), complete set last and renamed over ``output``; then drop the partial run."""
    dim, np_dtype = bb.feature_dim, DTYPES[settings["dtype"]]
    rows = partial.read_rows(output, settings["rows"], dim, np_dtype)
    inputs = [c for c in ("path", "paths", "hashes") if c in meta.columns]  # not stored
    builder = FeatureFileBuilder(output, meta.drop(columns=inputs), dim,
                                 dtype=settings["dtype"], chunk_rows=settings["batch_size"])
    try:
        with contextlib.ExitStack() as stack:
            old = stack.enter_context(FeatureStore(output)) if plan is not None else None
            for start in range(0, len(meta), 65536):
                stop = min(len(meta), start + 65536)
                builder.write(start, _block(rows, old, plan, start, stop, dim, np_dtype))
        builder.finish(_attrs(bb, m, settings))
    except BaseException:
        builder.abort()
        raise
    del rows  # the memory map must close before its file goes
    partial.discard(output)


def _block(rows, old, plan: ReusePlan | None, start: int, stop: int, dim: int, dtype):
    """Feature rows ``start:stop`` of the new file: computed rows from ``rows`` (the partial
    run, in ``plan.todo`` order), kept ones read from the ``old`` file."""
    if plan is None:
        return np.asarray(rows[start:stop])
    source = plan.old_row[start:stop]
    kept = source >= 0
    computed_before = int((plan.old_row[:start] < 0).sum())
    block = np.empty((stop - start, dim), dtype)
    n_new = int((~kept).sum())
    block[~kept] = rows[computed_before:computed_before + n_new]
    block[kept] = gather(old.feature_rows, source[kept], dim, dtype)
    return block


def _attrs(bb: Backbone, m: Manifest, settings: dict) -> dict:
    i, n = parse_shard(settings["shard"])
    return {"class_names": m.class_names, "backbone": bb.name, "weights": bb.weights,
            "weights_sha256": bb.weights_sha256, "feature_dim": bb.feature_dim,
            **bb.preprocess.as_attrs(), "precision": settings["precision"],
            "dtype": settings["dtype"], "decode": settings["decode"],
            "compile": settings["compile"],
            "vidfeat_version": __version__,
            "manifest_fingerprint": settings["manifest_fingerprint"],
            "ingest_dir": str(Path(m.root).absolute()), "sampling": m.info.get("sampling", {}),
            "shard": f"{i}/{n}", "shard_index": i, "shard_count": n,
            "manifest_frames": len(m.frames), **_clip_attrs(bb, m)}


def _clip_attrs(bb: Backbone, m: Manifest) -> dict:
    """A clip file's own attributes: the clips' length and rate, and how many the manifest has
    (what a merge of its shards must cover)."""
    if bb.kind != "clip":
        return {}
    return {"clip_len": clip_len(m), "clip_fps": clip_fps(m),
            "manifest_clips": len(clip_table(m))}
