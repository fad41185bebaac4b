"""Class weights: the one definition that training's loss and the report's tables both use.

Weights are scaled so the weighted sample count equals the real one (``sum_c w_c n_c = N``):
then ``balanced`` is exactly scikit-learn's ``compute_class_weight('balanced')``, ``N / (K n_c)``,
and the report shows the numbers the trainer multiplies its loss by.
"""
from __future__ import annotations

import numpy as np


def parse_class_weight(spec: str) -> float | str | None:
    """'none' -> None, 'balanced' -> 'balanced', 'effective:BETA' -> BETA (0 <= BETA < 1)."""
    spec = str(spec)
    if spec.startswith("effective:"):
        try:
            beta = float(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"class_weight={spec!r}: BETA must be a number, e.g. "
                             "'effective:0.999'") from None
        if not 0 <= beta < 1:
            raise ValueError(f"class_weight={spec!r}: BETA must be in [0, 1)")
        return beta
    if spec not in ("none", "balanced"):
        raise ValueError(f"class_weight={spec!r} is not one of 'none', 'balanced', 'effective:BETA'")
    return None if spec == "none" else spec


def class_weights(spec: str, counts: np.ndarray) -> np.ndarray:
    """Per-class loss weights, scaled so the weighted sample count equals the real one.

    ``balanced`` is n / (C * n_c); ``effective:BETA`` is (1 - BETA) / (1 - BETA**n_c) (Cui et al.
    2019). Classes absent from training get weight 0 (they have no samples to weigh).
    """
    counts = np.asarray(counts, dtype=np.float64)
    kind = parse_class_weight(spec)
    present = counts > 0
    w = np.zeros_like(counts)
    if kind is None:
        w[present] = 1.0
    elif kind == "balanced":
        w[present] = 1.0 / counts[present]
    else:
        w[present] = (1 - kind) / (1 - kind ** counts[present]) if kind > 0 else 1.0
    return w * counts.sum() / max((w * counts).sum(), 1e-12)
