"""The output side of extraction: feature rows appended to a raw file off the model loop.

Features are cast to the stored dtype on the device, copied ``non_blocking`` into pinned host
memory, and a writer thread waits on that copy's event and appends the rows: the model loop
never syncs with the host and never waits on disk.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import torch

from vidfeat.extraction.defaults import DTYPES
from vidfeat.files import StorageError, environment_errors, is_environmental

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class RowWriter:
    """Appends feature rows to a raw file from a background thread (the model never waits).

    ``put`` takes a device tensor; it is cast to the stored dtype on the device (half the bytes
    to copy for float16; the same round-to-nearest-even as numpy) and copied ``non_blocking``
    into pinned host memory; the thread waits on that copy's event, never the model loop. Only
    whole rows count on resume; the writer's errors surface on ``put``/``close``: a full disk
    (or another environmental OSError) as one ``StorageError`` naming the file, after which the
    rows already written stay for a rerun to resume from.

    ``path``: the raw rows file, appended to. ``dtype``: float16|float32, the stored dtype.
    ``depth``: batches in flight before ``put`` blocks.
    """

    def __init__(self, path: Path, dtype: str, depth: int = 8):
        self.path = Path(path)
        with environment_errors(self.path):
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
        error = self.error
        if error is None:
            return
        if is_environmental(error):
            raise StorageError(error.errno, self.path) from error
        raise RuntimeError(f"writing features failed: {error}") from error

    def close(self) -> None:
        """Write what is queued, fsync and close the file (once; later calls do nothing)."""
        if self.fd is None:
            return
        self.q.put(None)
        self.thread.join()
        fd, self.fd = self.fd, None
        try:
            with environment_errors(self.path):
                os.fsync(fd)
        finally:
            os.close(fd)
        self._check()
