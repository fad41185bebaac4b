"""Bringing a feature file up to date with a manifest that changed since it was built.

A feature file records, per row, the frame id and the hash of the JPEG bytes its features were
computed from (``/file_hash``). When ingest has run again (other frames, replaced videos, new or
removed videos), ``extract`` keeps the rows whose frame and bytes are unchanged, computes the
others, and drops the rows of frames that are gone: the result equals a fresh extraction of the
new manifest, at the cost of the changed frames only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATHER_SPAN = 4  # read a contiguous span of old rows when it is at most this many times the rows used


@dataclass(frozen=True)
class ReusePlan:
    """Which rows of the new file come from the old one: ``old_row[i]`` or -1 (compute)."""

    old_row: np.ndarray   # (n_new,) int64
    n_old: int            # rows in the old file

    @property
    def kept(self) -> int:
        return int((self.old_row >= 0).sum())

    @property
    def todo(self) -> np.ndarray:
        """Positions (in the new file) of the rows to compute, in order."""
        return np.flatnonzero(self.old_row < 0)

    @property
    def dropped(self) -> int:
        return self.n_old - self.kept

    def describe(self) -> str:
        return (f"kept {self.kept} rows of unchanged frames, computing {len(self.todo)} new or "
                f"changed, dropping {self.dropped}")


def plan_reuse(old_ids, old_hashes, new_ids, new_hashes) -> ReusePlan:
    """Match new rows to old rows by (frame id, content hash).

    ``old_ids``/``old_hashes``: the old file's ``/frame_id`` and ``/file_hash`` (None when it has
    none: nothing can be proven unchanged, so nothing is kept). ``new_ids``/``new_hashes``: the
    new manifest's rows in file order. A row without a hash is never reused.
    """
    new_ids = np.asarray(new_ids, dtype=object)
    old_row = np.full(len(new_ids), -1, np.int64)
    n_old = len(old_ids)
    if old_hashes is None:
        return ReusePlan(old_row, n_old)
    known = {(i, h): k for k, (i, h) in enumerate(zip(old_ids, old_hashes)) if h}
    for k, key in enumerate(zip(new_ids, new_hashes)):
        if key[1]:
            old_row[k] = known.get(key, -1)
    return ReusePlan(old_row, n_old)


def gather(read_range, rows: np.ndarray, dim: int, dtype) -> np.ndarray:
    """Old features of ``rows`` (old row indices, any order), as one (len(rows), dim) array.

    ``read_range(start, stop)``: reads old rows [start, stop). Rows kept by an update are
    mostly in their old order, so one contiguous read usually covers a block; scattered rows
    are read in sorted runs.
    """
    out = np.empty((len(rows), dim), dtype)
    if not len(rows):
        return out
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if hi - lo <= GATHER_SPAN * len(rows):
        out[:] = read_range(lo, hi)[rows - lo]
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    breaks = np.flatnonzero(np.diff(sorted_rows) > 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        start, stop = int(sorted_rows[run[0]]), int(sorted_rows[run[-1]]) + 1
        out[order[run]] = read_range(start, stop)[sorted_rows[run] - start]
    return out
