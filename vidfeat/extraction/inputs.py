"""Frames in, model-ready batches out: the input side of extraction.

CPU device: DataLoader workers read, decode (libjpeg-turbo) and resize/crop each JPEG in uint8;
the main process normalises. CUDA device, two input paths (``decode=``):

* ``cpu``: the same workers decode and resize/crop to uint8 ``input_size x input_size``; batches
  arrive in pinned memory, a prefetch thread copies them ``non_blocking`` on a side stream and
  normalises there (channels_last, bf16/fp16), while the model runs the previous batch.
* ``gpu``: workers only read JPEG bytes; the prefetch thread decodes whole batches with nvjpeg
  (``decode_jpeg(device="cuda")``), resizes/crops same-sized images together and normalises on
  the side stream. torchvision serialises every nvjpeg call behind one process-wide mutex and
  parses/Huffman-decodes on the calling thread, so this path runs at one core's pace.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidfeat.extraction.backbones import Preprocess
from vidfeat.extraction.defaults import PRECISIONS


class FrameFiles(Dataset):
    """Stored frames by path. ``decode=True``: resized/cropped uint8 (3,S,S) (cpu decode);
    ``decode=False``: the raw JPEG bytes as a numpy array (nvjpeg; plain pickling, since
    hundreds of tiny shared-memory tensors per batch exhaust or race the fd-passing channel).
    With ``hashes`` (the manifest's ``file_hash`` per path), each file's bytes are checked
    against it before use (~1% of a decode): a frame rewritten since the manifest was read (an
    ingest running into the folder) is an error, never a feature mixed into the file.
    A frame that cannot be read yields its error text instead, which the main process turns
    into a clear failure. ``group`` > 1: item i is the clip of frames ``i*group ..
    (i+1)*group - 1``, a (T,3,S,S) uint8 stack (cpu decode) or the list of its T JPEGs."""

    def __init__(self, root: Path, paths: list[str], preprocess: Preprocess, *, decode: bool,
                 hashes: list[str] | None = None, group: int = 1):
        self.root, self.paths, self.preprocess, self.decode = root, paths, preprocess, decode
        self.hashes, self.group = hashes, group

    def __len__(self) -> int:
        return len(self.paths) // self.group

    def __getitem__(self, i: int):
        if self.group == 1:
            return self._frame(i)
        seen: dict[str, tuple] = {}  # a short video's padded frames repeat one JPEG
        items = []
        for j in range(i * self.group, (i + 1) * self.group):
            if self.paths[j] not in seen:
                seen[self.paths[j]] = self._frame(j)
            items.append(seen[self.paths[j]])
        errors = [e for _, e in items if e]
        frames = [t for t, _ in items]
        return (torch.stack(frames) if self.decode else frames), (errors[0] if errors else "")

    def _read(self, i: int) -> bytes:
        from vidfeat.files import hash_bytes

        data = (self.root / self.paths[i]).read_bytes()
        if self.hashes is not None and self.hashes[i] and hash_bytes(data) != self.hashes[i]:
            raise ValueError("changed since the manifest was written (an ingest into the "
                             "folder ran meanwhile?): rerun ingest, then extract")
        return data

    def _frame(self, i: int):
        from vidfeat.extraction.backbones import load_image

        try:
            data = self._read(i)
            if not self.decode:
                return np.frombuffer(bytearray(data), dtype=np.uint8), ""
            img = load_image(data)
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
        # (nvjpeg: a clip's frames are flattened, clip after clip)
        batch = default_collate(list(tensors)) if decode else \
            [torch.from_numpy(a) for t in tensors for a in (t if isinstance(t, list) else [t])]
        return batch, [e for e in errors if e]
    return collate


def _raise_frame_errors(errors: list[str]) -> None:
    if errors:
        raise RuntimeError(f"cannot read stored frame {errors[0]} ({len(errors)} in this batch); "
                           "the rows before it are kept: rerun the same ingest command (it "
                           "re-makes missing or damaged frames), then this extract")


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
    """Resize/crop ``images``, (3,H,W) uint8, with ``preprocess``; same-sized ones go through
    in one call. Returns the (N,3,S,S) stack."""
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
            x = to_device(data, start)
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else
                             torch.channels_last_3d)
            ready = torch.cuda.Event()
            ready.record(stream)
        start += len(data)
        yield x, ready


def _nvjpeg_input(paths: list[str], preprocess: Preprocess, device: torch.device, in_dtype,
                  group: int = 1):
    def to_device(data: list[torch.Tensor], start: int) -> torch.Tensor:
        images = resize_crop_batch(_gpu_decode(data, paths[start:start + len(data)], device),
                                   preprocess)
        if group > 1:  # frames of whole clips, clip after clip: (B,T,3,S,S)
            images = images.view(-1, group, *images.shape[1:])
        return preprocess.normalize(images, dtype=in_dtype)
    return to_device


def _upload_input(preprocess: Preprocess, device: torch.device, in_dtype):
    def to_device(images: torch.Tensor, start: int) -> torch.Tensor:
        # pinned uint8 (N,3,S,S): async copy, then channels_last while still 1 byte a value
        # (clips (B,T,3,S,S): normalize's permute to (B,3,T,S,S) comes first)
        x = images.to(device, non_blocking=True)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return preprocess.normalize(x, dtype=in_dtype)
    return to_device


def input_batches(root: Path, paths: list[str], preprocess: Preprocess, *, device: torch.device,
                  decode: str, precision: str, batch_size: int, workers: int,
                  hashes: list[str] | None = None, group: int = 1):
    """(normalised channels_last batch, ready event or None) for each batch of ``paths``.

    ``root``: the ingest folder ``paths`` are relative to. ``preprocess``: the backbone's
    resize/crop/normalise. ``device``: where the batches go. ``decode``: the resolved decode
    site (cpu|gpu). ``precision``: fp32|bf16|fp16, the dtype of CUDA batches. ``batch_size``,
    ``workers``: DataLoader batch size and worker processes (0: in this process). ``hashes``:
    the expected content hash of each path (checked before use), or None. ``group``: frames
    per clip (a clip backbone's ``ClipPreprocess``; batches are (B,3,T,S,S) channels_last_3d
    clips, ``batch_size`` of them), else 1. On CUDA the
    batches are built by a prefetch thread on a side stream; the consumer waits on the event
    (``torch.cuda.current_stream().wait_event``).
    """
    cpu_decode = device.type != "cuda" or decode == "cpu"
    files = FrameFiles(root, paths, preprocess, decode=cpu_decode, hashes=hashes, group=group)
    loader = _loader(files, batch_size, workers, pin=device.type == "cuda" and cpu_decode)
    if device.type != "cuda":
        return _cpu_batches(loader, preprocess)
    in_dtype = PRECISIONS[precision]
    to_device = _upload_input(preprocess, device, in_dtype) if cpu_decode else \
        _nvjpeg_input(paths, preprocess, device, in_dtype, group)
    return _prefetch(_device_batches(loader, to_device, device))


def _cpu_batches(loader: DataLoader, preprocess: Preprocess):
    for images, errors in loader:
        _raise_frame_errors(errors)
        x = preprocess.normalize(images)
        yield x.contiguous(memory_format=preprocess.memory_format), None


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
