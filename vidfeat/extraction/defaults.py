"""Extraction defaults and option tables, one place: decode site, precision, stored dtype,
batch size and loader workers.

Both a single-device ``extract`` and ``extract_multi`` (which sizes each shard on its share of the
cores) ask these functions, so the policy cannot drift between them.
"""
from __future__ import annotations

import numpy as np
import torch

from vidfeat.options import check_choice, check_positive
from vidfeat.system import usable_cores

DECODES = {"auto": "cpu-worker decode with enough cores per GPU, else gpu",
           "cpu": "DataLoader workers decode and resize/crop (libjpeg-turbo)",
           "gpu": "nvjpeg on the device"}
# auto picks cpu-worker decode at this many decode cores per GPU (a hypothesis, see resolve_decode)
AUTO_CPU_DECODE_CORES = 8
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = {"float16": np.float16, "float32": np.float32}  # on disk


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU; others as given.

    ``precision``: auto|fp32|bf16|fp16. ``device``: the compute device.
    """
    check_choice("precision", precision, ["auto", *PRECISIONS])
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU bf16 changes the numbers; ask for it explicitly


def resolve_decode(decode: str, device: torch.device, workers: int | None = None) -> str:
    """Where JPEGs are decoded: ``"cpu"`` (DataLoader workers) or ``"gpu"`` (nvjpeg).

    ``decode``: auto|cpu|gpu. ``device``: the compute device. ``workers``: the decode budget in
    cores (default: this process's cores per visible GPU).

    A CPU device always decodes in workers. On CUDA, ``auto`` picks ``cpu`` when the decode
    budget is at least ``AUTO_CPU_DECODE_CORES`` (8), and ``gpu`` otherwise. The rule is a
    hypothesis to confirm with ``benchmarks/bench_extract.py``: a ~256x341 frame costs about
    1 ms of one core to decode and resize (so 8+ cores feed roughly a resnet50's bf16 pace on an
    H100), while torchvision's nvjpeg path runs behind one mutex at one core's pace (1,884
    frames/s measured on an H100).
    """
    check_choice("decode", decode, DECODES)
    if device.type != "cuda":
        return "cpu"
    if decode != "auto":
        return decode
    if workers is None:
        workers = usable_cores() // max(1, torch.cuda.device_count())
    return "cpu" if workers >= AUTO_CPU_DECODE_CORES else "gpu"


def loader_defaults(device: torch.device, decode: str, batch_size: int | None,
                    workers: int | None, cores: int | None = None, *,
                    clips: bool = False) -> tuple[int, int]:
    """``(batch_size, workers)`` with the defaults filled in and both checked.

    ``device``: the compute device. ``decode``: the resolved decode site (cpu|gpu).
    ``batch_size``/``workers``: the caller's values, None for the default. ``cores``: the cores
    this extraction may use (default :func:`vidfeat.system.usable_cores`; a shard of
    ``extract_multi`` passes its share). ``clips``: batches of clips (a clip backbone), 32 on
    CUDA and 4 on CPU by default (a 16-frame clip costs a 2D model's ~16 frames and more).
    """
    cores = cores or usable_cores()
    if batch_size is None and clips:
        batch_size = 32 if device.type == "cuda" else 4
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    if workers is None:
        # CUDA + cpu decode: every core but the two that feed the GPU and write (main thread,
        # prefetch/pin/writer threads). nvjpeg: workers only read bytes. CPU device: one decoder
        # per ~4 cores leaves the rest to compute.
        if device.type != "cuda":
            workers = max(1, min(8, cores // 4))
        else:
            workers = max(1, cores - 2) if decode == "cpu" else min(8, cores)
    check_positive("batch_size", batch_size)
    check_positive("workers", workers, allow_zero=True)
    return batch_size, workers
