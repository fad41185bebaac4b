"""``extract``: backbone features of every stored frame of an ingest OUTDIR into one HDF5 file,
on one device (:mod:`vidfeat.extraction.single`) or one shard per device
(:mod:`vidfeat.extraction.multigpu`).

This module sits above both, so neither imports the other's caller; the option tables
(``DECODES``, ``PRECISIONS``, ``DTYPES``) are defined in :mod:`vidfeat.extraction.defaults`.
"""
from __future__ import annotations

import os

from vidfeat.extraction.multigpu import extract_multi
from vidfeat.extraction.single import (
    ExtractResult,
    extract_single,
)
from vidfeat.options import checked


@checked
def extract(ingest_dir: str | os.PathLike, output: str | os.PathLike, *, backbone: str = "resnet50",
            weights: str | None = "DEFAULT", batch_size: int | None = None, device: str = "auto",
            precision: str = "auto", workers: int | None = None, dtype: str = "float16",
            shard: str | tuple[int, int] | None = None, overwrite: bool = False,
            progress: bool = True, gpus: str | list[int] | None = None, decode: str = "auto",
            threads: int | None = None, compile: bool = False) -> ExtractResult:
    """Cache ``backbone`` features of every stored frame of ``ingest_dir`` in ``output`` (HDF5).

    ``ingest_dir``: an ingest OUTDIR. ``output``: the feature file. ``backbone``/``weights``:
    the model (``list_backbones()``) and its weights (``DEFAULT``, a torchvision enum name, a
    checkpoint path, or ``none`` for random init). ``batch_size``/``workers``: default to 256
    and cores-2 (cpu decode) or 8 (gpu decode) on CUDA, 64/(cores/4) on CPU (see
    :func:`vidfeat.extraction.defaults.loader_defaults`). ``device``: auto|cpu|cuda.
    ``precision``: auto (bf16/fp16 on CUDA, fp32 on CPU)|fp32|bf16|fp16. ``dtype``:
    float16|float32 on disk. ``shard``: "i/n", a deterministic slice of whole videos for
    ``merge``. ``overwrite``: discard an existing or unfinished output and start over.
    ``progress``: a progress bar and a closing summary. ``gpus``: "all", "0,1" or "cpu:N" runs
    one shard per device in its own process and merges them into ``output``
    (:func:`~vidfeat.extraction.multigpu.extract_multi`; not with ``device`` or ``shard``).
    ``decode``: auto|cpu|gpu, where JPEGs are decoded on CUDA (see :func:`resolve_decode`; a
    CPU device always decodes in workers). ``threads``: torch intra-op threads for this call
    (default: torch's own setting; each ``gpus`` shard gets its share of the cores).
    ``compile``: ``torch.compile`` the backbone (default mode; the first batch compiles, tens
    of seconds, inductor's cache speeds later runs); features equal eager ones to within the
    precision's rounding, and the file records ``compile`` (in its fingerprint too).

    A rerun resumes an interrupted run, returns at once if ``output`` is complete, and refuses
    a changed manifest or settings unless ``overwrite``.
    """
    options = dict(backbone=backbone, weights=weights, batch_size=batch_size,
                   precision=precision, workers=workers, dtype=dtype, overwrite=overwrite,
                   progress=progress, decode=decode, threads=threads, compile=compile)
    if gpus is None:
        return extract_single(ingest_dir, output, device=device, shard=shard, **options)
    if shard is not None:
        raise ValueError("give gpus= (one shard per device on this machine) or shard= "
                         "(one slice for merge), not both")
    if device != "auto":
        raise ValueError(f"gpus={gpus!r} chooses the devices itself; leave device='auto'")
    return extract_multi(ingest_dir, output, gpus=gpus, **options)
