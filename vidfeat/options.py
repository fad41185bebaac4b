"""Small shared checks for keyword options (string choices, ranges)."""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


def check_choice(name: str, value: str, allowed: Mapping[str, T] | Iterable[str]) -> T | str:
    """Return ``allowed[value]`` (or ``value``) if known; else a ValueError naming both sides."""
    keys = list(allowed)
    if value not in keys:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, keys))}")
    return allowed[value] if isinstance(allowed, Mapping) else value


def check_positive(name: str, value, *, allow_zero: bool = False):
    """Raise a ValueError naming the option when ``value`` is not > 0 (or >= 0)."""
    if value is None:
        return value
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    import torch  # only the stages that compute need torch

    check_choice("device", device, DEVICES)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is available (use device='cpu')")
    return torch.device(device)
