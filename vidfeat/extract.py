"""Extract: backbone features of every stored frame of an ingest OUTDIR into one HDF5 file.

Pipeline. CPU device: DataLoader workers read, decode (libjpeg-turbo) and resize/crop each JPEG
in uint8; the main process normalises, runs the channels_last model under ``inference_mode``.
CUDA device, two input paths (``decode=``):

* ``cpu``: the same workers (one per spare core) decode and resize/crop to uint8
  ``input_size x input_size``; batches arrive in pinned memory, a prefetch thread copies them
  ``non_blocking`` on a side stream and normalises there (channels_last, bf16/fp16), while the
  model runs the previous batch.
* ``gpu``: workers only read JPEG bytes; the prefetch thread decodes whole batches with nvjpeg
  (``decode_jpeg(device="cuda")``), resizes/crops same-sized images together and normalises on
  the side stream. torchvision serialises every nvjpeg call behind one process-wide mutex and
  parses/Huffman-decodes on the calling thread, so this path runs at one core's pace.

Either way the features are cast to the stored dtype on the device, copied ``non_blocking``
into pinned host memory, and a writer thread waits on that copy's event and appends the rows
to ``<output>.partial/features.bin``: the model loop never syncs with the host and never waits
on disk.

Safety. ``<output>.lock`` (fcntl) admits one writer. The partial folder holds ``state.json``
(manifest fingerprint and settings) and the raw rows written so far; a rerun after a crash or
SIGKILL keeps the whole batches already written and goes on, so the result is identical to an
uninterrupted run. Only when every row is there is the HDF5 file built, under a temporary name,
``complete`` set last, and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from vidfeat import __version__
from vidfeat.backbones import Backbone, Preprocess, create_backbone, resolve_weights
from vidfeat.cache import FeatureFileBuilder, FeatureStore, OutputLock
from vidfeat.manifest import Manifest, read_manifest, write_json
from vidfeat.options import check_choice, check_positive, resolve_device

log = logging.getLogger(__name__)

DECODES = {"auto": "cpu-worker decode with enough cores per GPU, else gpu",
           "cpu": "DataLoader workers decode and resize/crop (libjpeg-turbo)",
           "gpu": "nvjpeg on the device"}
# auto picks cpu-worker decode at this many decode cores per GPU (a hypothesis, see resolve_decode)
AUTO_CPU_DECODE_CORES = 8
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = {"float16": np.float16, "float32": np.float32}
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_FINGERPRINT_COLUMNS = ["frame_id", "video_id", "label", "split", "path", "repeat"]


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

    def summary(self) -> str:
        if self.skipped:
            return (f"{self.output} is already complete ({self.n_frames} frames, "
                    f"{self.n_videos} videos, {self.backbone}); nothing to do.")
        resumed = f", {self.resumed_rows} resumed from an earlier run" if self.resumed_rows else ""
        decode = f", {self.decode} decode" if self.decode else ""
        return (f"Extracted {self.n_frames} frames of {self.n_videos} videos (shard {self.shard}"
                f"{resumed}) with {self.backbone} [{self.weights}] on {self.device} at "
                f"{self.precision}{decode}: {self.frames_per_s:.1f} frames/s, "
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
    """sha256 of the frame table's identity columns and the class names (not file contents)."""
    h = hashlib.sha256(json.dumps(m.class_names).encode())
    frames = m.frames[_FINGERPRINT_COLUMNS]
    for start in range(0, len(frames), 100_000):  # bounded memory for millions of frames
        h.update(frames.iloc[start:start + 100_000].to_csv(index=False, header=False).encode())
    return h.hexdigest()[:32]


def shard_rows(frames: pd.DataFrame, index: int, count: int) -> np.ndarray:
    """Frame rows of shard ``index`` of ``count``: whole videos, contiguous in first-frame order,
    balanced by frame count. Deterministic, so every node computes the same split."""
    codes, _ = pd.factorize(frames["video_id"], sort=False)
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    video_shard = (starts * count) // max(len(frames), 1)
    return np.flatnonzero(video_shard[codes] == index)


def _frame_meta(m: Manifest, rows: np.ndarray) -> pd.DataFrame:
    index = {name: i for i, name in enumerate(m.class_names)}
    f = m.frames.iloc[rows]
    return pd.DataFrame({"frame_id": f["frame_id"].astype(str).to_numpy(),
                         "video_id": f["video_id"].astype(str).to_numpy(),
                         "label": f["label"].map(index).to_numpy(np.int64),
                         "split": f["split"].astype(str).to_numpy(),
                         "repeat": f["repeat"].to_numpy(np.int64),
                         "row": rows.astype(np.int64),
                         "path": f["path"].astype(str).to_numpy()})


def _resolve_precision(precision: str, device: torch.device) -> str:
    check_choice("precision", precision, ["auto", *PRECISIONS])
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU bf16 changes the numbers; ask for it explicitly


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_decode(decode: str, device: torch.device, workers: int | None = None) -> str:
    """Where JPEGs are decoded: ``"cpu"`` (DataLoader workers) or ``"gpu"`` (nvjpeg).

    A CPU device always decodes in workers. On CUDA, ``auto`` picks ``cpu`` when the decode
    budget, ``workers`` if given, else this process's cores per visible GPU, is at least
    ``AUTO_CPU_DECODE_CORES`` (8), and ``gpu`` otherwise. The rule is a hypothesis to confirm with
    ``benchmarks/bench_extract.py``: a ~256x341 frame costs about 1 ms of one core to decode
    and resize (so 8+ cores feed roughly a resnet50's bf16 pace on an H100), while torchvision's
    nvjpeg path runs behind one mutex at one core's pace (1,884 frames/s measured on an H100).
    """
    check_choice("decode", decode, DECODES)
    if device.type != "cuda":
        return "cpu"
    if decode != "auto":
        return decode
    if workers is None:
        workers = _cores() // max(1, torch.cuda.device_count())
    return "cpu" if workers >= AUTO_CPU_DECODE_CORES else "gpu"


# ----------------------------------------------------------------------------------- inputs
class FrameFiles(Dataset):
    """Stored frames by path. ``decode=True``: resized/cropped uint8 (3,S,S) (cpu decode);
    ``decode=False``: the raw JPEG bytes as a numpy array (nvjpeg; plain pickling, since
    hundreds of tiny shared-memory tensors per batch exhaust or race the fd-passing channel).
    A frame that cannot be read yields its error text instead, which the main process turns
    into a clear failure."""

    def __init__(self, root: Path, paths: list[str], preprocess: Preprocess, *, decode: bool):
        self.root, self.paths, self.preprocess, self.decode = root, paths, preprocess, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            if not self.decode:
                return np.fromfile(self.root / self.paths[i], dtype=np.uint8), ""
            img = decode_image(read_file(str(self.root / self.paths[i])), mode=ImageReadMode.RGB)
            return self.preprocess.resize_crop(img[None])[0], ""
        except Exception as exc:  # corrupt or missing frame: reported with its path
            size = self.preprocess.input_size
            empty = torch.zeros((3, size, size), dtype=torch.uint8) if self.decode else \
                np.zeros(0, np.uint8)
            return empty, \
                f"{self.paths[i]}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _collate(decode: bool):
    from torch.utils.data import default_collate

    def collate(items):
        tensors, errors = zip(*items)
        # default_collate stacks straight into shared memory in a worker: no extra copy
        batch = default_collate(list(tensors)) if decode else [torch.from_numpy(t) for t in tensors]
        return batch, [e for e in errors if e]
    return collate


def _raise_frame_errors(errors: list[str]) -> None:
    if errors:
        raise RuntimeError(f"cannot read stored frame {errors[0]} ({len(errors)} in this batch); "
                           "the rows before it are kept: fix or re-ingest the frame and rerun")


def _loader(dataset: FrameFiles, batch_size: int, workers: int, pin: bool) -> DataLoader:
    # Many workers (CUDA, cpu decode): 2 batches each already keeps 16+ batches in flight, and
    # decoded batches sit in /dev/shm and pinned memory, so no more. One pass over the data:
    # persistent_workers would only keep idle processes alive.
    prefetch = (2 if workers >= 8 else 4) if workers else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_collate(dataset.decode), pin_memory=pin,
                      prefetch_factor=prefetch, persistent_workers=False,
                      timeout=600 if workers else 0)  # a wedged worker errors, never hangs


def resize_crop_batch(images: list[torch.Tensor], preprocess: Preprocess) -> torch.Tensor:
    """Resize/crop a list of (3,H,W) uint8 images; same-sized ones go through in one call."""
    out = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    for idx in groups.values():
        done = preprocess.resize_crop(torch.stack([images[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = done[j]
    return torch.stack(out)


def _gpu_decode(data: list[torch.Tensor], paths: list[str], device: torch.device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        # find the culprit so the error names a frame, not a batch
        for d, p in zip(data, paths):
            try:
                decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as exc:
                _raise_frame_errors([f"{p}: {str(exc).splitlines()[0]}"])
        raise


def _device_batches(loader: DataLoader, to_device, device: torch.device):
    """Run ``to_device(data, first_row)`` on a side stream; yield (batch, ready event)."""
    stream = torch.cuda.Stream(device)
    start = 0
    for data, errors in loader:
        _raise_frame_errors(errors)
        with torch.cuda.stream(stream):
            x = to_device(data, start).contiguous(memory_format=torch.channels_last)
            ready = torch.cuda.Event()
            ready.record(stream)
        start += len(data)
        yield x, ready


def _nvjpeg_input(paths: list[str], preprocess: Preprocess, device: torch.device, in_dtype):
    def to_device(data: list[torch.Tensor], start: int) -> torch.Tensor:
        images = _gpu_decode(data, paths[start:start + len(data)], device)
        return preprocess.normalize(resize_crop_batch(images, preprocess), dtype=in_dtype)
    return to_device


def _upload_input(preprocess: Preprocess, device: torch.device, in_dtype):
    def to_device(images: torch.Tensor, start: int) -> torch.Tensor:
        # pinned uint8 (N,3,S,S): async copy, then channels_last while still 1 byte a value
        x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return preprocess.normalize(x, dtype=in_dtype)
    return to_device


def input_batches(root: Path, paths: list[str], preprocess: Preprocess, *, device: torch.device,
                  decode: str, precision: str, batch_size: int, workers: int):
    """(normalised channels_last batch, ready event or None) for each batch of ``paths``.

    ``decode`` is resolved (cpu|gpu). On CUDA the batches are built by a prefetch thread on a
    side stream; the consumer waits on the event (``torch.cuda.current_stream().wait_event``).
    """
    cpu_decode = device.type != "cuda" or decode == "cpu"
    loader = _loader(FrameFiles(root, paths, preprocess, decode=cpu_decode), batch_size, workers,
                     pin=device.type == "cuda" and cpu_decode)
    if device.type != "cuda":
        return _cpu_batches(loader, preprocess)
    in_dtype = PRECISIONS[precision]
    to_device = _upload_input(preprocess, device, in_dtype) if cpu_decode else \
        _nvjpeg_input(paths, preprocess, device, in_dtype)
    return _prefetch(_device_batches(loader, to_device, device))


def _cpu_batches(loader: DataLoader, preprocess: Preprocess):
    for images, errors in loader:
        _raise_frame_errors(errors)
        yield preprocess.normalize(images).contiguous(memory_format=torch.channels_last), None


def _prefetch(iterator, depth: int = 3):
    """Run ``iterator`` in a thread, ``depth`` items ahead; its exceptions surface here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=run, name="vidfeat-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ----------------------------------------------------------------------------------- compute
def forward(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Features of a normalised batch at ``precision`` (autocast for bf16/fp16), float32 out."""
    dtype = PRECISIONS[precision]
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype,
                                                enabled=dtype != torch.float32):
        return model(x).float()


def prepare_model(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """A copy of the backbone for inference on ``device``: eval, channels_last, and each
    BatchNorm folded into the convolution before it (fp32 relative change ~1e-6; ~10% faster
    resnet50 on CPU). A model that torch.fx cannot trace runs unfolded."""
    from torch.fx.experimental.optimization import fuse

    model = backbone.model.eval()
    try:
        model = fuse(model)  # a traced copy: backbone.model itself is left alone
    except Exception as exc:  # noqa: BLE001 - any tracing failure just means no folding
        log.debug("%s: BatchNorm not folded (%s)", backbone.name, exc)
    return model.to(device, memory_format=torch.channels_last)


class RowWriter:
    """Appends feature rows to a raw file from a background thread (the model never waits).

    ``put`` takes a device tensor; it is cast to the stored dtype on the device (half the bytes
    to copy for float16; the same round-to-nearest-even as numpy) and copied ``non_blocking``
    into pinned host memory; the thread waits on that copy's event, never the model loop. Only
    whole rows count on resume; the writer's errors surface on ``put``/``close``.
    """

    def __init__(self, path: Path, dtype: str, depth: int = 8):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.dtype, self.torch_dtype = DTYPES[dtype], TORCH_DTYPES[dtype]
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="vidfeat-writer", daemon=True)
        self.thread.start()

    def put(self, features: torch.Tensor) -> None:
        self._check()
        if features.is_cuda:
            # non_blocking to the CPU allocates the destination in (cached) pinned memory
            host = features.to(self.torch_dtype).to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.q.put((host, done))
        else:
            self.q.put((features, None))

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure
            host, done = item
            try:
                if done is not None:
                    done.synchronize()
                data = host.numpy().astype(self.dtype, copy=False).tobytes()
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except BaseException as exc:
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing features failed: {self.error}") from self.error

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        os.fsync(self.fd)
        os.close(self.fd)
        self._check()


# ----------------------------------------------------------------------------------- state
def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _same_file(output: Path, settings: dict) -> bool:
    """True if ``output`` is a complete file of these settings; error if it is another's."""
    try:
        with FeatureStore(output) as s:
            found = {k: s.attrs.get(k) for k in settings if k in _SETTING_ATTRS}
    except (ValueError, OSError) as exc:
        raise FileExistsError(f"{output} exists and is not a usable feature file ({exc}); "
                              "pass overwrite=True (--overwrite) to replace it") from None
    wanted = {k: settings[k] for k in found}
    if found != wanted:
        key = next(k for k in found if found[k] != wanted[k])
        raise FileExistsError(f"{output} exists with {key}={found[key]!r}, this run has "
                              f"{wanted[key]!r}; pass overwrite=True (--overwrite) to start over")
    return True


# settings recorded as file attributes and compared against an existing output
_SETTING_ATTRS = ("manifest_fingerprint", "backbone", "weights", "weights_sha256", "dtype",
                  "precision", "shard")


def _load_state(partial: Path, settings: dict) -> int:
    """Rows already written by an earlier run of the same settings (whole batches only)."""
    state_path = partial / "state.json"
    if not state_path.exists():
        shutil.rmtree(partial, ignore_errors=True)  # killed before state was written: nothing to keep
        return 0
    state = json.loads(state_path.read_text())
    for key in _SETTING_ATTRS:
        if state.get(key) != settings[key]:
            what = "the manifest changed" if key == "manifest_fingerprint" else f"{key} differs"
            raise ValueError(f"an unfinished extraction in {partial} was started with {key}="
                             f"{state.get(key)!r}, this run has {settings[key]!r} ({what}); "
                             "pass overwrite=True (--overwrite) to start over")
    bin_path = partial / "features.bin"
    row_bytes = settings["feature_dim"] * np.dtype(settings["dtype"]).itemsize
    rows = (bin_path.stat().st_size // row_bytes) if bin_path.exists() else 0
    # a batch's rows depend (in the last bits) on its companions: resume on the old boundaries
    rows -= rows % int(state["batch_size"])
    with open(bin_path, "ab") as f:
        f.truncate(rows * row_bytes)
    for key in ("batch_size", "decode"):  # old partials have no decode: nothing to compare
        if state.get(key, settings[key]) != settings[key]:
            log.warning("resuming with %s=%r (was %r): the new rows may differ slightly from "
                        "the earlier ones", key, settings[key], state[key])
    return rows


def _start_state(partial: Path, settings: dict) -> None:
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / "state.json", settings)


# ----------------------------------------------------------------------------------- main
def _defaults(device: torch.device, decode: str, batch_size: int | None, workers: int | None):
    cpus = _cores()
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    if workers is None:
        # CUDA + cpu decode: every core but the two that feed the GPU and write (main thread,
        # prefetch/pin/writer threads). nvjpeg: workers only read bytes. CPU device: one decoder
        # per ~4 cores leaves the rest to compute.
        if device.type != "cuda":
            workers = max(1, min(8, cpus // 4))
        else:
            workers = max(1, cpus - 2) if decode == "cpu" else min(8, cpus)
    check_positive("batch_size", batch_size)
    check_positive("workers", workers, allow_zero=True)
    return batch_size, workers


def extract(ingest_dir: str | os.PathLike, output: str | os.PathLike, *, backbone: str = "resnet50",
            weights: str | None = "DEFAULT", batch_size: int | None = None, device: str = "auto",
            precision: str = "auto", workers: int | None = None, dtype: str = "float16",
            shard=None, overwrite: bool = False, progress: bool = True,
            gpus=None, decode: str = "auto") -> ExtractResult:
    """Cache ``backbone`` features of every stored frame of ``ingest_dir`` in ``output`` (HDF5).

    ``device`` auto|cpu|cuda; ``precision`` auto (bf16/fp16 on CUDA, fp32 on CPU)|fp32|bf16|fp16;
    ``dtype`` float16|float32 on disk; ``decode`` auto|cpu|gpu, where JPEGs are decoded on
    CUDA (see :func:`resolve_decode`; a CPU device always decodes in workers);
    ``batch_size``/``workers`` default to 256 and cores-2 (cpu decode) or 8 (gpu decode) on
    CUDA, 64/(cores/4) on CPU; ``shard`` "i/n" extracts a deterministic slice of whole videos for
    ``merge``. A rerun resumes an interrupted run, returns at once if ``output`` is complete,
    and refuses a changed manifest or settings unless ``overwrite``. ``gpus`` ("all", "0,1"
    or "cpu:N") runs one shard per device in its own process and merges them into ``output``
    (``vidfeat.multigpu.extract_multi``; not with ``device`` or ``shard``).
    """
    if gpus is not None:
        return _extract_multi(ingest_dir, output, gpus=gpus, device=device, shard=shard,
                              backbone=backbone, weights=weights, batch_size=batch_size,
                              precision=precision, workers=workers, dtype=dtype,
                              overwrite=overwrite, progress=progress, decode=decode)
    t0 = time.perf_counter()
    check_choice("dtype", dtype, DTYPES)
    check_choice("decode", decode, DECODES)
    i, n = parse_shard(shard)
    dev = resolve_device(device)
    prec = _resolve_precision(precision, dev)
    decode = resolve_decode(decode, dev, workers)
    batch_size, workers = _defaults(dev, decode, batch_size, workers)
    m = read_manifest(ingest_dir)
    output = Path(output).expanduser().absolute()
    resolved, sha = resolve_weights(backbone, weights)
    meta = _frame_meta(m, shard_rows(m.frames, i, n))
    settings = {"manifest_fingerprint": manifest_fingerprint(m), "backbone": backbone,
                "weights": resolved, "weights_sha256": sha, "dtype": dtype, "precision": prec,
                "shard": f"{i}/{n}", "batch_size": batch_size, "rows": len(meta), "decode": decode}
    with OutputLock(output):
        partial = _partial_dir(output)
        if overwrite:
            output.unlink(missing_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
        if output.exists() and _same_file(output, settings):
            res = _skipped(output, settings, dev)
            if progress:
                print(res.summary())
            return res
        bb = create_backbone(backbone, weights)
        settings["feature_dim"] = bb.feature_dim
        done = _load_state(partial, settings) if partial.exists() else 0
        _start_state(partial, settings)
        t_run = time.perf_counter()
        _run(m.root, meta, bb, partial / "features.bin", done, dev=dev, precision=prec,
             dtype=dtype, batch_size=batch_size, workers=workers, progress=progress,
             decode=decode)
        run_s = time.perf_counter() - t_run
        _assemble(output, partial, meta, bb, m, settings, i, n)
    res = ExtractResult(output=output, n_frames=len(meta), n_videos=meta["video_id"].nunique(),
                        resumed_rows=done, skipped=False, backbone=backbone, weights=bb.weights,
                        feature_dim=bb.feature_dim, device=str(dev), precision=prec, dtype=dtype,
                        shard=f"{i}/{n}", elapsed_s=time.perf_counter() - t0,
                        frames_per_s=(len(meta) - done) / max(run_s, 1e-9), decode=decode)
    if progress:
        print(res.summary())
    return res


def _extract_multi(ingest_dir, output, *, gpus, device: str, shard, **options) -> ExtractResult:
    from vidfeat.multigpu import extract_multi

    if shard is not None:
        raise ValueError("give gpus= (one shard per device on this machine) or shard= "
                         "(one slice for merge), not both")
    if device != "auto":
        raise ValueError(f"gpus={gpus!r} chooses the devices itself; leave device='auto'")
    return extract_multi(ingest_dir, output, gpus=gpus, **options)


def _skipped(output: Path, settings: dict, dev) -> ExtractResult:
    with FeatureStore(output) as s:
        return ExtractResult(output=output, n_frames=len(s), n_videos=s.n_videos, resumed_rows=len(s),
                            skipped=True, backbone=s.backbone, weights=settings["weights"],
                            feature_dim=s.feature_dim, device=str(dev),
                            precision=settings["precision"], dtype=settings["dtype"],
                            shard=settings["shard"], elapsed_s=0.0, frames_per_s=0.0,
                            decode=str(s.attrs.get("decode", "")))  # how the file was made


def _run(root: Path, meta: pd.DataFrame, bb: Backbone, bin_path: Path, done: int, *, dev,
         precision: str, dtype: str, batch_size: int, workers: int, progress: bool,
         decode: str) -> None:
    from tqdm.auto import tqdm

    model = prepare_model(bb, dev)
    cuda = dev.type == "cuda"
    batches = input_batches(root, meta["path"].tolist()[done:], bb.preprocess, device=dev,
                            decode=decode, precision=precision, batch_size=batch_size,
                            workers=workers)
    writer = RowWriter(bin_path, dtype)
    bar = tqdm(total=len(meta), initial=done, unit="frame", desc=f"extract {bb.name}",
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


def _assemble(output: Path, partial: Path, meta: pd.DataFrame, bb: Backbone, m: Manifest,
              settings: dict, i: int, n: int) -> None:
    """Build the final HDF5 from the raw rows (complete set last), then drop the partial."""
    dim, np_dtype = bb.feature_dim, DTYPES[settings["dtype"]]
    rows = np.memmap(partial / "features.bin", dtype=np_dtype, mode="r", shape=(len(meta), dim)) \
        if len(meta) else np.zeros((0, dim), np_dtype)
    builder = FeatureFileBuilder(output, meta.drop(columns="path"), dim, dtype=settings["dtype"],
                                 chunk_rows=settings["batch_size"])
    try:
        for start in range(0, len(meta), 65536):
            builder.write(start, np.asarray(rows[start:start + 65536]))
        builder.finish(_attrs(bb, m, settings, i, n))
    except BaseException:
        builder.abort()
        raise
    del rows
    shutil.rmtree(partial)


def _attrs(bb: Backbone, m: Manifest, settings: dict, i: int, n: int) -> dict:
    return {"class_names": m.class_names, "backbone": bb.name, "weights": bb.weights,
            "weights_sha256": bb.weights_sha256, "feature_dim": bb.feature_dim,
            **bb.preprocess.as_attrs(), "precision": settings["precision"],
            "dtype": settings["dtype"], "decode": settings["decode"],
            "vidfeat_version": __version__,
            "manifest_fingerprint": settings["manifest_fingerprint"],
            "ingest_dir": str(Path(m.root).absolute()), "sampling": m.info.get("sampling", {}),
            "shard": f"{i}/{n}", "shard_index": i, "shard_count": n,
            "manifest_frames": len(m.frames)}
