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


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the pip command."""


def require_extra(module: str, extra: str, *, needed_for: str) -> None:
    """Raise MissingExtra unless ``module`` can be imported.

    ``module``: what to import (e.g. ``distributed``). ``extra``: the vidfeat extra that installs
    it (``dask``). ``needed_for``: what the user asked for, named in the message.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{needed_for} needs the optional '{extra}' dependencies, which are "
                           f"not installed: pip install 'vidfeat[{extra}]'") from None


class VidfeatWarning(UserWarning):
    """A warning meant for the user (random weights, stale inputs...): the CLI shows each one
    once, as one line in the user's terms, without Python's source-line echo."""


def show_warnings_once() -> None:
    """CLI policy: each distinct vidfeat warning printed once, as ``vidfeat: warning: TEXT``."""
    import sys
    import warnings

    warnings.simplefilter("once", VidfeatWarning)
    plain = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, VidfeatWarning):
            print(f"vidfeat: warning: {message}", file=file or sys.stderr)
        else:
            plain(message, category, filename, lineno, file, line)

    warnings.showwarning = show
