"""MODEL_DIR, the folder ``vidfeat train`` writes: the one module that reads, writes and removes its files.

- ``head.pt``       the head's tensors (``torch.load(weights_only=True)``; no pickled code)
- ``backbone.pt``   the fine-tuned backbone's tensors (only after ``unfreeze``)
- ``config.json``   what predict needs to redo extraction and run the head
- ``metrics.json``  ``{"val": {"frame": M, "video": M}, "test": {...}}``
- ``sweep.csv``/``sweep.json``  one row per configuration of a sweep
- ``evaluate_<split>.json``     written by ``vidfeat evaluate``
- ``unfreeze_checkpoint.pt``    fine-tuning state after the last finished epoch (resume)

Every file is written atomically, so a killed run never leaves a half-written one.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import torch

from vidfeat.files import atomic_write, write_json

HEAD_FILE, BACKBONE_FILE = "head.pt", "backbone.pt"
CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
CHECKPOINT_FILE = "unfreeze_checkpoint.pt"
SWEEP_FILES = ("sweep.csv", "sweep.json")


# ----------------------------------------------------------------------------------- checks
def holds_model(model_dir) -> bool:
    """True when ``model_dir`` holds a model (its config.json or head.pt).

    Parameters
    ----------
    model_dir : path
    """
    model_dir = Path(model_dir)
    return (model_dir / CONFIG_FILE).is_file() or (model_dir / HEAD_FILE).is_file()


def interrupted_fine_tune(model_dir) -> bool:
    """True when ``model_dir`` holds a fine-tuning checkpoint but no config.json yet.

    That is what a run killed during ``unfreeze`` leaves; rerunning it resumes.

    Parameters
    ----------
    model_dir : path
    """
    model_dir = Path(model_dir)
    return (model_dir / CHECKPOINT_FILE).is_file() and not (model_dir / CONFIG_FILE).is_file()


def check_target(model_dir, *, overwrite: bool, resume: bool) -> None:
    """Refuse to train into a folder that already holds a model, unless ``overwrite``.

    Parameters
    ----------
    model_dir : path
        The output folder (it need not exist).
    overwrite : bool
        Replace an existing model.
    resume : bool
        This run fine-tunes (``unfreeze``): a folder left by an interrupted fine-tuning run is
        accepted without ``overwrite`` (the checkpoint's run key decides later whether it resumes).

    Raises
    ------
    FileExistsError
        ``model_dir`` holds a model and ``overwrite`` is False.
    """
    model_dir = Path(model_dir)
    if overwrite or not holds_model(model_dir) or (resume and interrupted_fine_tune(model_dir)):
        return
    raise FileExistsError(f"{model_dir} already holds a model (config.json or head.pt); pass "
                          "overwrite=True (--overwrite) to replace it")


# ----------------------------------------------------------------------------------- writing
def _save(obj, path: Path) -> None:
    # torch.save names the archive inside the file after the file it writes to; saving to a
    # buffer first keeps the bytes independent of atomic_write's random temporary name, so the
    # same model gives the same file
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def save_tensors(state: dict, path) -> None:
    """Write a state dict as plain CPU tensors (loadable with ``weights_only=True``).

    Parameters
    ----------
    state : dict of str -> torch.Tensor
    path : path
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _save(tensors, Path(path))


def save_head(model_dir, state: dict) -> None:
    """Write ``head.pt``.

    Parameters
    ----------
    model_dir : path
    state : dict
        The head's ``state_dict()``.
    """
    save_tensors(state, Path(model_dir) / HEAD_FILE)


def save_backbone(model_dir, state: dict) -> None:
    """Write ``backbone.pt``.

    Parameters
    ----------
    model_dir : path
    state : dict
        The backbone's ``state_dict()``.
    """
    save_tensors(state, Path(model_dir) / BACKBONE_FILE)


def load_tensors(model_dir, name: str) -> dict:
    """Read ``head.pt`` or ``backbone.pt`` (tensors only).

    Parameters
    ----------
    model_dir : path
    name : str
        ``HEAD_FILE`` or ``BACKBONE_FILE`` (or the name config.json records).
    """
    return torch.load(Path(model_dir) / name, map_location="cpu", weights_only=True)


def write_config(model_dir, config: dict) -> None:
    """Write ``config.json``.

    Parameters
    ----------
    model_dir : path
    config : dict
    """
    write_json(Path(model_dir) / CONFIG_FILE, config)


def write_metrics(model_dir, metrics: dict) -> None:
    """Write ``metrics.json``.

    Parameters
    ----------
    model_dir : path
    metrics : dict
    """
    write_json(Path(model_dir) / METRICS_FILE, metrics)


def write_sweep(model_dir, rows: list[dict]) -> None:
    """Write ``sweep.json`` and ``sweep.csv`` (one row per configuration).

    Parameters
    ----------
    model_dir : path
    rows : list of dict
        All rows have the same keys.
    """
    model_dir = Path(model_dir)
    write_json(model_dir / "sweep.json", {"configs": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(model_dir / "sweep.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))


def evaluation_path(model_dir, split: str) -> Path:
    """Where ``vidfeat evaluate`` writes by default: ``evaluate_<split>.json``.

    Parameters
    ----------
    model_dir : path
    split : str
    """
    return Path(model_dir) / f"evaluate_{split}.json"


def write_evaluation(path, result: dict) -> None:
    """Write an evaluation (to ``evaluation_path`` or a path the user chose).

    Parameters
    ----------
    path : path
    result : dict
    """
    write_json(Path(path), result)


# ----------------------------------------------------------------------------------- checkpoint
def save_checkpoint(model_dir, checkpoint: dict) -> None:
    """Write ``unfreeze_checkpoint.pt`` (tensors, numbers, strings: ``weights_only`` loadable).

    Parameters
    ----------
    model_dir : path
    checkpoint : dict
    """
    _save(checkpoint, Path(model_dir) / CHECKPOINT_FILE)


def load_checkpoint(model_dir) -> dict | None:
    """The fine-tuning checkpoint, or None when there is none.

    Parameters
    ----------
    model_dir : path

    Raises whatever ``torch.load`` raises for an unreadable file (the caller decides).
    """
    path = Path(model_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_path(model_dir) -> Path:
    """Path of the fine-tuning checkpoint (for messages).

    Parameters
    ----------
    model_dir : path
    """
    return Path(model_dir) / CHECKPOINT_FILE


# ----------------------------------------------------------------------------------- removing
def delete_checkpoint(model_dir) -> None:
    """Remove the fine-tuning checkpoint, if any.

    Parameters
    ----------
    model_dir : path
    """
    (Path(model_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)


def delete_model_record(model_dir) -> None:
    """Remove config.json and metrics.json, so the folder no longer describes a finished model.

    Before fine-tuning rewrites head.pt in place: a run killed then leaves a folder that resumes
    instead of one whose config.json describes another head.

    Parameters
    ----------
    model_dir : path
    """
    for name in (CONFIG_FILE, METRICS_FILE):
        (Path(model_dir) / name).unlink(missing_ok=True)


def delete_stale(model_dir, *, sweep: bool, unfreeze: bool) -> None:
    """Remove the files of an earlier model that this run would not rewrite.

    Parameters
    ----------
    model_dir : path
    sweep : bool
        This run writes sweep.csv/sweep.json (else they are removed).
    unfreeze : bool
        This run fine-tunes, writing backbone.pt and its checkpoint (else they are removed).

    Evaluations (``evaluate_*.json``) always go: they measured the earlier model.
    """
    model_dir = Path(model_dir)
    names = [] if sweep else list(SWEEP_FILES)
    if not unfreeze:
        names += [BACKBONE_FILE, CHECKPOINT_FILE]
    for name in names:
        (model_dir / name).unlink(missing_ok=True)
    for path in model_dir.glob("evaluate_*.json"):
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- reading
def load_config(model_dir) -> dict:
    """``config.json`` of MODEL_DIR.

    Parameters
    ----------
    model_dir : path

    Raises
    ------
    FileNotFoundError
        No config.json (not a vidfeat model folder).
    """
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir} (not a vidfeat model folder)")
    return json.loads(path.read_text())


def load_head(model_dir):
    """(config, head) from MODEL_DIR; tensors only (``weights_only=True``).

    Parameters
    ----------
    model_dir : path
    """
    from vidfeat.training.stacked import build_head

    config = load_config(model_dir)
    return config, build_head(config["head"], load_tensors(model_dir, config["files"]["head"]))


def is_complete(model_dir) -> bool:
    """True when ``model_dir`` holds a finished model (config.json, metrics.json and its head).

    Parameters
    ----------
    model_dir : path
    """
    model_dir = Path(model_dir)
    return all((model_dir / name).is_file() for name in (CONFIG_FILE, METRICS_FILE, HEAD_FILE))


def discard(model_dir) -> None:
    """Remove MODEL_DIR and everything in it (a pipeline stage whose options changed).

    Parameters
    ----------
    model_dir : path
    """
    shutil.rmtree(model_dir, ignore_errors=True)
