"""An unfinished extraction's folder, ``<output>.partial/``: the only module that touches it.

It holds ``state.json`` (the settings the run was started with) and ``features.bin`` (the raw
rows written so far, whole rows of ``feature_dim`` values of the stored dtype, in frame order).
A rerun with the same settings resumes after the last whole batch; the folder is discarded once
the HDF5 file is built, or when the caller starts over.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from vidfeat.files import write_json

log = logging.getLogger(__name__)

_STATE = "state.json"
_ROWS = "features.bin"


def partial_dir(output: str | os.PathLike) -> Path:
    """The partial folder of the feature file ``output``."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def rows_file(output: str | os.PathLike) -> Path:
    """The raw rows file that a run of ``output`` appends to (see ``writer.RowWriter``)."""
    return partial_dir(output) / _ROWS


def load_state(output: str | os.PathLike, settings: dict, must_match) -> int:
    """Rows an earlier run of the same settings left for ``output`` (whole batches only).

    ``output``: the feature file. ``settings``: this run's settings (``feature_dim``, ``dtype``,
    ``batch_size``, ``decode`` and every key of ``must_match``). ``must_match``: the keys whose
    change makes the old rows unusable: a mismatch raises ValueError. Returns 0 when there is no
    partial folder; the rows file is truncated to the rows returned.
    """
    partial = partial_dir(output)
    if not partial.exists():
        return 0
    state_path = partial / _STATE
    if not state_path.exists():
        shutil.rmtree(partial, ignore_errors=True)  # killed before state was written: nothing to keep
        return 0
    state = json.loads(state_path.read_text())
    for key in must_match:
        if state.get(key) != settings[key]:
            what = "the manifest changed" if key == "manifest_fingerprint" else f"{key} differs"
            raise ValueError(f"an unfinished extraction in {partial} was started with {key}="
                             f"{state.get(key)!r}, this run has {settings[key]!r} ({what}); "
                             "pass overwrite=True (--overwrite) to start over")
    bin_path = partial / _ROWS
    row_bytes = settings["feature_dim"] * np.dtype(settings["dtype"]).itemsize
    rows = (bin_path.stat().st_size // row_bytes) if bin_path.exists() else 0
    # a batch's rows depend (in the last bits) on its companions: resume on the old boundaries
    rows -= rows % int(state["batch_size"])
    with open(bin_path, "ab") as f:
        f.truncate(rows * row_bytes)
    for key in ("batch_size", "decode", "compile"):  # old partials lack some: nothing to compare
        if state.get(key, settings[key]) != settings[key]:
            log.warning("resuming with %s=%r (was %r): the new rows may differ slightly from "
                        "the earlier ones", key, settings[key], state[key])
    return rows


def start_state(output: str | os.PathLike, settings: dict) -> None:
    """Record ``settings`` (must hold ``feature_dim`` and ``dtype``) as this run's state."""
    partial = partial_dir(output)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / _STATE, settings)


def rows_done(output: str | os.PathLike) -> int:
    """Rows a running extraction of ``output`` has written so far (0 when unknown).

    For progress bars of another process: a missing or half-written state reads as 0.
    """
    partial = partial_dir(output)
    try:
        state = json.loads((partial / _STATE).read_text())
        row_bytes = int(state["feature_dim"]) * np.dtype(state["dtype"]).itemsize
        return (partial / _ROWS).stat().st_size // row_bytes
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_rows(output: str | os.PathLike, rows: int, dim: int, dtype) -> np.ndarray:
    """The ``(rows, dim)`` raw rows of ``output``'s partial run, memory-mapped read-only.

    ``dtype``: the numpy dtype they were written in. Drop the array before :func:`discard`.
    """
    if not rows:
        return np.zeros((0, dim), dtype)
    return np.memmap(rows_file(output), dtype=dtype, mode="r", shape=(rows, dim))


def discard_leftover(output: str | os.PathLike, settings: dict, must_match) -> bool:
    """Remove the partial folder a finished run of these settings left behind; True if it did.

    A kill between the final rename of ``output`` and the removal of its partial folder leaves
    a full-size folder that nothing would ever resume. ``settings``/``must_match`` as for
    :func:`load_state`: a folder of other settings (or unreadable) is left alone.
    """
    partial = partial_dir(output)
    try:
        state = json.loads((partial / _STATE).read_text())
    except FileNotFoundError:
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()
        return False
    except (OSError, ValueError):
        return False
    if any(state.get(key) != settings.get(key) for key in must_match):
        return False
    log.info("removing %s: a leftover of the run that completed %s", partial, output)
    discard(output)
    return True


def discard_unless(output: str | os.PathLike, settings: dict, keys) -> bool:
    """Remove the partial run of ``output`` unless its ``keys`` equal ``settings``'; True if it
    did. For settings whose change makes the old rows useless rather than the run wrong (the
    manifest changed: the rows are of other frames), so starting over needs no flag."""
    partial = partial_dir(output)
    try:
        state = json.loads((partial / _STATE).read_text())
    except (OSError, ValueError):
        return False
    stale = [k for k in keys if state.get(k, "") != settings.get(k, "")]
    if stale:
        log.info("dropping the unfinished run in %s: %s changed since it started", partial,
                 ", ".join(stale))
        discard(output)
    return bool(stale)


def discard(output: str | os.PathLike) -> None:
    """Remove ``output``'s partial folder, if any (its rows are lost)."""
    shutil.rmtree(partial_dir(output), ignore_errors=True)
