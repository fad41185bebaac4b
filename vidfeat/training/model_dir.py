"""MODEL_DIR, the folder ``vidfeat train`` writes: the one module that reads, writes and removes its files.

- ``head.pt``       the head's tensors (``torch.load(weights_only=True)``; no pickled code)
- ``backbone.pt``   the fine-tuned backbone's tensors (only after ``unfreeze``)
- ``config.json``   what predict needs to redo extraction and run the head, what the model was
                    trained from (``features``) and the sha256 of the other files (``sha256``)
- ``metrics.json``  ``{"row_level": "frame" | "clip", "val": {"frame": M, "video": M},
                    "test": {...}}``: "frame" is the row level, frames or clips for clip
                    features, as ``row_level`` says (absent in older models: frames)
- ``sweep.csv``/``sweep.json``  one row per configuration of a sweep
- ``evaluate_<split>.json``     written by ``vidfeat evaluate``

A run writes the new model into ``.NAME.staging`` beside MODEL_DIR (``open_staging``) and
``publish`` swaps it in with one atomic exchange of the two directories (``renameat2``; where the
filesystem lacks it, two renames, and the next ``train`` restores an old model a kill between them
left at ``.NAME.old``): a kill -9 at any moment leaves the old model or the new one, whole.
``unfreeze`` keeps ``unfreeze_checkpoint.pt`` there (the state after the last finished epoch; the
same run resumes from it); ``publish`` deletes it. ``.NAME.lock`` keeps a second run out.
"""
from __future__ import annotations

import csv
import ctypes
import errno
import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

from vidfeat.files import FileLock, atomic_write, environment_errors, write_json

log = logging.getLogger(__name__)

HEAD_FILE, BACKBONE_FILE = "head.pt", "backbone.pt"
CONFIG_FILE, METRICS_FILE = "config.json", "metrics.json"
CHECKPOINT_FILE = "unfreeze_checkpoint.pt"
SWEEP_FILES = ("sweep.csv", "sweep.json")
# what a run writes (or an earlier run wrote): never carried over from the folder it replaces
OWNED = (HEAD_FILE, BACKBONE_FILE, CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, *SWEEP_FILES)
RENAME_EXCHANGE = 2   # linux/fs.h


# ----------------------------------------------------------------------------------- checks
def holds_model(model_dir) -> bool:
    """True when ``model_dir`` holds a model (its config.json or head.pt).

    Parameters
    ----------
    model_dir : path
    """
    model_dir = Path(model_dir)
    return (model_dir / CONFIG_FILE).is_file() or (model_dir / HEAD_FILE).is_file()


def check_target(model_dir, *, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds a model, unless ``overwrite``.

    First puts back an old model that a run killed in the middle of a two-rename swap left
    beside the folder (only where the filesystem cannot exchange directories atomically).

    Parameters
    ----------
    model_dir : path
        The output folder (it need not exist).
    overwrite : bool
        Replace an existing model.

    Raises
    ------
    FileExistsError
        ``model_dir`` holds a model and ``overwrite`` is False.
    NotADirectoryError
        ``model_dir`` is a file.
    """
    target = _target(model_dir)
    _recover(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{model_dir} is a file, not a model folder")
    if overwrite or not holds_model(model_dir):
        return
    raise FileExistsError(f"{model_dir} already holds a model (config.json or head.pt); pass "
                          "overwrite=True (--overwrite) to replace it")


# ----------------------------------------------------------------------------------- staging
def _target(model_dir) -> Path:
    # the real folder: a symlinked MODEL_DIR keeps its link, its target's contents are swapped
    return Path(os.path.realpath(Path(model_dir).expanduser()))


def _beside(model_dir, suffix: str) -> Path:
    target = _target(model_dir)
    return target.with_name(f".{target.name}.{suffix}")


def staging_path(model_dir) -> Path:
    """The staging folder of the model folder ``model_dir``: ``.NAME.staging`` beside it."""
    return _beside(model_dir, "staging")


def lock(model_dir) -> FileLock:
    """The lock every run writing the model folder ``model_dir`` holds (``.NAME.lock``)."""
    return FileLock(_beside(model_dir, "lock"), what=f"model folder {model_dir}")


def _remove(path: Path) -> None:
    with environment_errors(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def open_staging(model_dir, *, resume: bool) -> Path:
    """Create (or keep) the staging folder a run writes its model into; returns its path.

    Parameters
    ----------
    model_dir : path
    resume : bool
        Keep what an unfinished run (no config.json yet) left there: a fine-tuning run decides
        from its checkpoint whether it resumes (else calls ``restart``). Otherwise, and always
        for a folder holding a config.json (a finished or swapped-out model), it starts empty.
    """
    stage = staging_path(model_dir)
    if not (resume and stage.is_dir() and not (stage / CONFIG_FILE).exists()):
        _remove(stage)
    with environment_errors(stage):
        stage.mkdir(parents=True, exist_ok=True)
    return stage


def restart(stage) -> None:
    """Empty the staging folder ``stage`` (a fine-tuning run that cannot resume starts over)."""
    stage = Path(stage)
    _remove(stage)
    with environment_errors(stage):
        stage.mkdir(parents=True)


def discard_staging(model_dir, *, keep_checkpoint: bool) -> None:
    """Remove the staging folder of the model folder ``model_dir`` (a failed run's), unless
    ``keep_checkpoint`` and it holds a fine-tuning checkpoint to resume from."""
    stage = staging_path(model_dir)
    if not (keep_checkpoint and (stage / CHECKPOINT_FILE).is_file()):
        _remove(stage)


def publish(model_dir, stage, config: dict) -> dict:
    """Finish the model in ``stage`` and swap it in as ``model_dir``; returns config.json's content.

    Deletes the checkpoint, records the sha256 of every file the run wrote in config.json (written
    last), links the files of the old folder that are no model's (a user's notes) into the new
    one, then exchanges the two folders and removes the old one.

    Parameters
    ----------
    model_dir : path
    stage : path
        The staging folder (``open_staging``) holding head.pt, metrics.json, ...
    config : dict
        config.json's content, without ``sha256``.
    """
    stage, target = Path(stage), _target(model_dir)
    with environment_errors(stage):
        (stage / CHECKPOINT_FILE).unlink(missing_ok=True)
        written = sorted(p.name for p in stage.iterdir()
                         if p.is_file() and p.name != CONFIG_FILE and not p.name.startswith("."))
    config = {**config, "sha256": {name: file_sha256(stage / name) for name in written}}
    write_config(stage, config)
    _carry_over(target, stage)
    _swap(target, stage)
    return config


def _owned(name: str) -> bool:
    return (name in OWNED or name.startswith(".") or
            (name.startswith("evaluate_") and name.endswith(".json")))


def _carry_over(target: Path, stage: Path) -> None:
    if not target.is_dir():
        return
    with environment_errors(stage):
        shutil.copymode(target, stage)
        for src in target.iterdir():
            if _owned(src.name) or (stage / src.name).exists():
                continue
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, stage / src.name, symlinks=True, copy_function=_link)
            else:
                _link(src, stage / src.name)


def _link(src, dst) -> None:
    # a hard link costs nothing and keeps the user's file itself; a copy where links are refused
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap(target: Path, stage: Path) -> None:
    old = _beside(target, "old")
    _remove(old)
    with environment_errors(target):
        if not target.exists():
            os.rename(stage, target)
            return
        if not _exchange(stage, target):
            os.rename(target, old)   # a kill here leaves the old model at .NAME.old (_recover)
            os.rename(stage, target)
        else:
            os.rename(stage, old)    # staging now holds the old model
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange directories ``a`` and ``b``; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = ctypes.c_int(-100)
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b),
                 ctypes.c_uint(RENAME_EXCHANGE)) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _recover(target: Path) -> None:
    # .NAME.old beside an existing MODEL_DIR is what a kill while removing it left: garbage
    old = _beside(target, "old")
    if old.is_dir() and not target.exists():
        log.warning("restoring %s from %s (a run was killed while swapping it in)", target, old)
        with environment_errors(target):
            os.rename(old, target)
    elif old.exists():
        _remove(old)


# ----------------------------------------------------------------------------------- writing
def _save(obj, path: Path) -> str:
    # torch.save names the archive inside the file after the file it writes to; saving to a
    # buffer first keeps the bytes independent of atomic_write's random temporary name, so the
    # same model gives the same file
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def save_tensors(state: dict, path) -> str:
    """Write a state dict as plain CPU tensors (loadable with ``weights_only=True``); its sha256.

    Parameters
    ----------
    state : dict of str -> torch.Tensor
    path : path
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return _save(tensors, Path(path))


def save_head(model_dir, state: dict) -> str:
    """Write ``head.pt``; returns its sha256.

    Parameters
    ----------
    model_dir : path
        MODEL_DIR or its staging folder.
    state : dict
        The head's ``state_dict()``.
    """
    return save_tensors(state, Path(model_dir) / HEAD_FILE)


def save_backbone(model_dir, state: dict) -> str:
    """Write ``backbone.pt``; returns its sha256.

    Parameters
    ----------
    model_dir : path
        MODEL_DIR or its staging folder.
    state : dict
        The backbone's ``state_dict()``.
    """
    return save_tensors(state, Path(model_dir) / BACKBONE_FILE)


def load_tensors(model_dir, name: str) -> dict:
    """Read ``head.pt`` or ``backbone.pt`` (tensors only).

    Parameters
    ----------
    model_dir : path
    name : str
        ``HEAD_FILE`` or ``BACKBONE_FILE`` (or the name config.json records).
    """
    import torch

    return torch.load(Path(model_dir) / name, map_location="cpu", weights_only=True)


def file_sha256(path) -> str:
    """sha256 (hex) of the file ``path``, as ``sha256sum`` prints it.

    Parameters
    ----------
    path : path
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

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
    import torch

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
    """Remove MODEL_DIR, everything in it and its staging folder (a pipeline stage whose options
    changed).

    Parameters
    ----------
    model_dir : path
    """
    for path in (staging_path(model_dir), _beside(model_dir, "old"), Path(model_dir)):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------- provenance
def features_fingerprint(store) -> str | None:
    """What identifies the content of an open feature file (its ``features_fingerprint``
    attribute; files written before it existed: their ``manifest_fingerprint``).

    Parameters
    ----------
    store : FeatureStore
    """
    return store.attrs.get("features_fingerprint") or store.attrs.get("manifest_fingerprint")


def features_record(store) -> dict:
    """config.json's ``features``: the feature file a model is trained from (path, fingerprints).

    Parameters
    ----------
    store : FeatureStore
    """
    return {"path": str(Path(store.path).resolve()), "fingerprint": store.fingerprint,
            "features_fingerprint": features_fingerprint(store)}


def features_changed(model_dir, config: dict, *, store=None) -> str | None:
    """One line saying that the feature file behind the model has changed, or None.

    Parameters
    ----------
    model_dir : path
        The model folder (named in the message).
    config : dict
        Its config.json.
    store : FeatureStore, optional
        A feature file at hand (``evaluate``'s): checked when it is the recorded one. Without
        it, the recorded path is opened, if it still exists.
    """
    recorded = config.get("features") or {}
    path, was = recorded.get("path"), (recorded.get("features_fingerprint")
                                       or recorded.get("fingerprint"))
    if not path or not was:
        return None
    if store is not None:
        same = Path(store.path).resolve() == Path(path)
        return _changed(model_dir, path, features_fingerprint(store) != was) if same else None
    if not Path(path).is_file():
        return None
    from vidfeat.extraction.cache import FeatureStore

    try:
        with FeatureStore(path) as current:
            return _changed(model_dir, path, features_fingerprint(current) != was)
    except (OSError, ValueError):
        return _changed(model_dir, path, True, " (it is now incomplete or unreadable)")


def _changed(model_dir, path: str, changed: bool, detail: str = "") -> str | None:
    if not changed:
        return None
    return (f"the feature file {path} has changed since the model in {model_dir} was trained "
            f"from it{detail}: the model and its metrics describe the earlier features; retrain "
            f"with 'vidfeat train {path} -o {model_dir} --overwrite' to use the new ones")


def warn_features_changed(model_dir, config: dict, *, store=None) -> str | None:
    """Log ``features_changed``'s line as a warning when there is one; returns it.

    Parameters
    ----------
    model_dir, config, store
        As for ``features_changed``.
    """
    message = features_changed(model_dir, config, store=store)
    if message:
        log.warning("%s", message)
    return message


def verify_model_dir(model_dir) -> list[str]:
    """Problems of a model folder, one line each; empty when it is sound.

    Sound: config.json and metrics.json parse, every file config.json records is present with
    its recorded sha256, and head.pt (and backbone.pt, if any) load as plain tensors.

    Parameters
    ----------
    model_dir : path
    """
    model_dir = Path(model_dir)
    config, problems = _read_object(model_dir / CONFIG_FILE)
    if config is None:
        return problems
    problems += _read_object(model_dir / METRICS_FILE)[1]
    recorded = config.get("sha256")
    if not isinstance(recorded, dict):
        problems.append(f"{model_dir / CONFIG_FILE}: records no sha256 of the model files "
                        "(written by an older vidfeat); they cannot be verified")
        recorded = {}
    for name, digest in sorted(recorded.items()):
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing (config.json records it)")
        elif file_sha256(path) != digest:
            problems.append(f"{path}: changed since train wrote it (its sha256 differs from the "
                            "one config.json records)")
    files = config.get("files") if isinstance(config.get("files"), dict) else {}
    for name in filter(None, (files.get("head") or HEAD_FILE, files.get("backbone"))):
        if (model_dir / name).is_file():
            problems += _check_tensors(model_dir / name)
        elif name not in recorded:
            problems.append(f"{model_dir / name}: missing (config.json names it)")
    return problems


def _read_object(path: Path) -> tuple[dict | None, list[str]]:
    if not path.is_file():
        return None, [f"{path}: missing"]
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{path}: not readable JSON ({exc})"]
    if not isinstance(value, dict):
        return None, [f"{path}: not a JSON object"]
    return value, []


def _check_tensors(path: Path) -> list[str]:
    try:
        state = load_tensors(path.parent, path.name)
    except Exception as exc:   # any unpickling failure is the finding, not a crash
        return [f"{path}: does not load as tensors ({str(exc).splitlines()[0]})"]
    if not isinstance(state, dict):
        return [f"{path}: holds {type(state).__name__}, not a dict of tensors"]
    return []
