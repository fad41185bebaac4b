"""System policy, one place each: usable cores, decoder threads, the compute device."""
from __future__ import annotations

import os

DEVICES = ("auto", "cpu", "cuda")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def decode_threads(jobs: int = 1, cores: int | None = None) -> int:
    """Decoder threads per video worker: ``$VIDFEAT_DECODE_THREADS``, else cores / ``jobs``.

    ``jobs``: videos decoded at once on this machine. ``cores``: the machine's usable cores
    (default :func:`usable_cores`; a Dask worker passes its host's). ``--jobs 1`` still decodes
    each video with every core.
    """
    override = os.environ.get("VIDFEAT_DECODE_THREADS")
    if override:
        return max(1, int(override))
    return max(1, (cores or usable_cores()) // max(1, jobs))


def resolve_device(device: str):
    """``'auto'`` -> cuda when available, else cpu; ``'cuda'`` without a GPU is a clear error.

    ``device``: one of ``auto``, ``cpu``, ``cuda``. Returns a ``torch.device``.
    """
    import torch  # only the stages that compute need torch

    from vidfeat.options import check_choice

    check_choice("device", device, DEVICES)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is available (use device='cpu')")
    return torch.device(device)
