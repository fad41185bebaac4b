"""The whole job in one call: ingest -> data report -> extract -> train -> evaluation report.

A config (TOML, or a dict) holds one table per stage whose keys are that stage's library options::

    [ingest]                      # vidfeat.ingest(src, WORKDIR/ingest, **options)
    src = "videos"                # relative paths resolve against the config file's folder
    frames_per_video = 8
    [extract]                     # vidfeat.extract(WORKDIR/ingest, WORKDIR/features.h5, ...)
    backbone = "resnet18"
    [train]                       # vidfeat.train(WORKDIR/features.h5, WORKDIR/model, ...)
    head = "linear"
    [report]                      # vidfeat.report(WORKDIR/ingest, WORKDIR/report, model=...)

Every stage records a fingerprint of its effective options (defaults filled in), of the stage
before it, and for ingest of the source listing (paths, sizes, mtimes) in
``WORKDIR/pipeline.json``. A stage whose fingerprint matches and whose outputs are complete is
skipped; a changed option (or changed source files) clears that stage's outputs and reruns it and
every stage after it, so stale outputs are never reused. A stage interrupted half-way keeps its
outputs, and the rerun lets the stage resume (ingest and extract both resume). The effective
config is written back to ``WORKDIR/config.toml``.

Nothing runs before every table is checked: unknown tables and keys, each value's type against
the stage function's annotation (``vidfeat.options``: ``keyframes = "false"`` is an error, not
true), its choices and cheap ranges against the tables the stage checks them with; and WORKDIR
must be a writable folder. A bad train value fails before ingest starts, one line naming the
table and key (``[train] epochs = "30": expected an integer``).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vidfeat.files import atomic_write, environment_errors, write_json
from vidfeat.options import Kind, OptionError, check_choice, check_options, check_positive, \
    checked, toml_value

log = logging.getLogger(__name__)

STAGES = ("ingest", "data_report", "extract", "train", "report")
SECTIONS = ("ingest", "extract", "train", "report")
# Options left out of a stage's fingerprint: only those that tests/test_pipeline.py shows leave
# its outputs bit-identical. Anything else changes the numbers or may (batch sizes, devices and
# precisions; an ingest timeout decides which videos fail), so a change reruns the stage.
_NO_EFFECT = {
    "ingest": {"progress", "jobs"},
    "extract": {"progress", "workers"},
    "train": {"progress"},
    "report": {"progress"},
}
# options the pipeline sets itself (paths between stages)
_OWNED = {
    "ingest": {"outdir"},
    "extract": {"ingest_dir", "output", "shard", "overwrite"},
    "train": {"features", "model_dir", "frames"},
    "report": {"source", "output", "model", "labels"},
}
_STATE = "pipeline.json"


@dataclass
class StageRun:
    name: str
    status: str            # "ran" | "skipped"
    elapsed_s: float
    summary: str = ""


@dataclass
class PipelineResult:
    workdir: Path
    config: dict
    stages: list[StageRun] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, Path]:
        w = self.workdir
        return {"manifests": w / "ingest", "data_report": w / "data_report" / "report.html",
                "features": w / "features.h5", "model": w / "model",
                "report": w / "report" / "report.html", "config": w / "config.toml"}

    def headline(self, split: str = "test") -> dict:
        """Frame- and video-level accuracy and balanced accuracy of ``split`` (val if empty)."""
        m = self.metrics.get(split) or self.metrics.get("val") or {}
        return {level: {k: m[level][k] for k in ("accuracy", "balanced_accuracy")}
                for level in ("frame", "video") if m.get(level)}

    def summary(self) -> str:
        ran = [s.name for s in self.stages if s.status == "ran"]
        skipped = [s.name for s in self.stages if s.status == "skipped"]
        head = self.headline()
        frame = head.get("frame", {})
        video = head.get("video", {})
        metrics = (f"test accuracy {frame.get('accuracy', float('nan')):.3f}, balanced accuracy "
                   f"{frame.get('balanced_accuracy', float('nan')):.3f} (per video "
                   f"{video.get('accuracy', float('nan')):.3f} / "
                   f"{video.get('balanced_accuracy', float('nan')):.3f})") if head else "no metrics"
        p = self.paths
        return (f"Pipeline done in {sum(s.elapsed_s for s in self.stages):.1f} s: ran "
                f"{', '.join(ran) or 'nothing'}{'; skipped ' + ', '.join(skipped) if skipped else ''}. "
                f"{metrics}. Manifests {p['manifests']}/, features {p['features']}, model "
                f"{p['model']}/, data report {p['data_report']}, evaluation report {p['report']}, "
                f"config {p['config']}.")


# ----------------------------------------------------------------------------------- config
def load_config(path: str | os.PathLike) -> dict:
    """Read a TOML config; relative ``src``/``labels`` resolve against its folder."""
    path = Path(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return resolve_paths(config, path.parent)


def resolve_paths(config: dict, base: Path) -> dict:
    """Make the ingest source paths absolute (against ``base``)."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    ingest = config.get("ingest", {})
    for key in ("src", "labels"):
        if ingest.get(key) and isinstance(ingest[key], (str, os.PathLike)):  # others: refused later
            ingest[key] = str((base / ingest[key]).resolve())
    return config


def _stage_function(section: str):
    from vidfeat import extract, ingest, report, train

    return {"ingest": ingest, "extract": extract, "train": train, "report": report}[section]


def effective_options(config: dict) -> dict[str, dict]:
    """Each section's options with the library defaults filled in; unknown tables and keys and
    values of the wrong type (against the stage function's annotations) are refused."""
    unknown = sorted(set(config) - set(SECTIONS) - {"workdir"})
    if unknown:
        raise ValueError(f"unknown config table {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    workdir = config.get("workdir")
    if workdir is not None and not Kind("path").accepts(workdir):
        raise OptionError("workdir", workdir, Kind("path"),
                          f"workdir = {toml_value(workdir)}: expected a path (a string)")
    out = {}
    for section in SECTIONS:
        table = config.get(section) or {}
        if not isinstance(table, dict):
            raise ValueError(f"{section} = {toml_value(table)}: expected a table [{section}]")
        out[section] = _section_options(section, dict(table))
    if not (out["ingest"].get("src") or out["ingest"].get("labels")):
        raise ValueError("config [ingest] needs 'src' (a folder of class folders) or 'labels'")
    src = out["ingest"].get("src")
    if src is not None and not Kind("path").accepts(src):  # the stage's positional argument
        error = OptionError("src", src, Kind("path"))
        raise OptionError("src", src, Kind("path"), error.in_config("ingest"))
    return out


def _section_options(section: str, given: dict) -> dict:
    params = inspect.signature(_stage_function(section)).parameters
    allowed = {n for n, p in params.items() if n not in _OWNED[section]}
    bad = sorted(set(given) - allowed)
    if bad:
        raise ValueError(f"[{section}] has unknown option {bad[0]!r}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    check_options(_stage_function(section), given, table=section)
    defaults = {n: p.default for n, p in params.items()
                if n in allowed and p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


def to_toml(config: dict) -> str:
    """Write a config of tables of scalars/lists as TOML (None values are left out)."""
    lines = ["# vidfeat pipeline config (effective options, defaults filled in)"]
    for section, options in config.items():
        if not isinstance(options, dict):
            lines.insert(1, f"{section} = {toml_value(options)}")
            continue
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in options.items() if v is not None]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- checks
def check_values(opts: dict[str, dict]) -> None:
    """Every stage's choices and cheap ranges (``effective_options`` checked the types), against
    the tables and parsers the stage itself checks with: a bad train value fails before ingest
    starts, and before a changed fingerprint discards any stage's outputs."""
    for section, check in (("ingest", _ingest_values), ("extract", _extract_values),
                           ("train", _train_values), ("report", _report_values)):
        try:
            check(opts[section])
        except OptionError as exc:
            text = exc.in_config(section) if exc.name in opts[section] else f"[{section}] {exc}"
            raise OptionError(exc.name, exc.value, exc.allowed, text) from None
        except ValueError as exc:
            raise ValueError(f"[{section}] {exc}") from None
    _clips_fit(opts["ingest"], opts["extract"]["backbone"])


def _clips_fit(ingest: dict, backbone: str) -> None:
    """A clip backbone needs a clip ingest of a length it takes: said before any stage runs."""
    from vidfeat.extraction.backbones import backbone_kind
    from vidfeat.extraction.video_backbones import check_clip_len

    if backbone_kind(backbone) != "clip":
        return
    if ingest.get("clips_per_video") is None:
        raise ValueError(f"[extract] backbone {backbone} is a clip (video) model: set [ingest] "
                         "clips_per_video (and clip_len, clip_fps)")
    try:
        check_clip_len(backbone, int(ingest["clip_len"]))
    except ValueError as exc:
        raise ValueError(f"[extract] {exc}") from None


def _ingest_values(o: dict) -> None:
    from vidfeat.ingestion._ingest import BACKENDS, sampling_spec
    from vidfeat.ingestion.balance import MODES
    from vidfeat.ingestion.manifest import FORMATS
    from vidfeat.ingestion.split import parse_ratios

    spec = sampling_spec(**{k: o[k] for k in ("frames_per_video", "fps", "keyframes", "size",
                                               "jpeg_quality", "clips_per_video", "clip_len",
                                               "clip_fps", "short_clips")})
    check_choice("fmt", o["fmt"], FORMATS)
    check_choice("balance", o["balance"], MODES)
    check_choice("backend", o["backend"], BACKENDS)
    check_positive("jobs", o["jobs"])
    check_positive("timeout", o["timeout"])
    parse_ratios(o["split"])
    if o["scheduler"] is not None and o["backend"] != "dask":
        raise ValueError(f"scheduler needs backend = \"dask\" (backend is {o['backend']!r})")
    if o["balance"] == "frames" and spec.mode != "uniform":
        raise ValueError("balance = \"frames\" needs uniform sampling (frames_per_video), "
                         "not fps or keyframes")


def _extract_values(o: dict) -> None:
    from vidfeat.extraction.backbones import check_backbone, is_timm, list_backbones
    from vidfeat.extraction.defaults import DECODES, DTYPES, PRECISIONS
    from vidfeat.system import DEVICES

    if is_timm(o["backbone"]):  # open-ended: timm says whether the name exists
        check_backbone(o["backbone"])
    else:
        check_choice("backbone", o["backbone"], list_backbones())
    check_choice("device", o["device"], DEVICES)
    check_choice("precision", o["precision"], ["auto", *PRECISIONS])
    check_choice("dtype", o["dtype"], DTYPES)
    check_choice("decode", o["decode"], DECODES)
    check_positive("batch_size", o["batch_size"])
    check_positive("workers", o["workers"], allow_zero=True)
    check_positive("threads", o["threads"])
    if o["gpus"] is not None and o["device"] != "auto":
        raise ValueError("gpus chooses the devices itself; leave device = \"auto\"")


def _train_values(o: dict) -> None:
    from vidfeat.system import DEVICES
    from vidfeat.training._train import (
        HEADS, SELECT_METRICS, expand_configs, parse_size, parse_sweep)
    from vidfeat.training.stacked import DEFAULT_LR, HeadConfig, TrainSpec

    head = o["head"]
    check_choice("head", head, HEADS)
    check_choice("select_metric", o["select_metric"], SELECT_METRICS)
    check_choice("device", o["device"], DEVICES)
    base = HeadConfig(lr=o["lr"] or DEFAULT_LR[head], weight_decay=o["weight_decay"],
                      class_weight=o["class_weight"], logit_adjust=o["logit_adjust"] or 0.0,
                      dropout=o["dropout"] if head == "mlp" else 0.0)
    try:
        expand_configs(base, parse_sweep(o["sweep"], head=head))  # every swept value in range
    except ValueError as exc:  # said as the sweep's, not as the plain option's
        raise ValueError(f"sweep = {toml_value(o['sweep'])}: {exc}") from None
    TrainSpec(hidden=tuple(o["hidden"]), epochs=o["epochs"], batch_size=o["batch_size"],
              seed=o["seed"], sampler=o["sampler"], patience=o["patience"])
    parse_size(o["max_memory"])
    for name in ("unfreeze_epochs", "unfreeze_batch_size", "unfreeze_lr", "backbone_lr_scale"):
        check_positive(name, o[name])


def _report_values(o: dict) -> None:
    for name in ("jobs", "timeout", "min_videos"):
        check_positive(name, o[name])
    if not 0 < o["max_drift"] <= 1:
        raise OptionError("max_drift", o["max_drift"], "in (0, 1]")


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """Create WORKDIR and prove it writable before any work. A file in its place (or in place
    of a folder above it) is a usage error; a read-only, full or forbidden disk a StorageError."""
    workdir = Path(workdir).expanduser().resolve()
    for folder in (workdir, *workdir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise FileExistsError(f"output folder {workdir}: {folder} is a file, not a "
                                      "folder; give another output folder")
            break
    with environment_errors(workdir, "writing"):
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as f:  # a few bytes: an empty file needs no free block
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    return workdir


# ----------------------------------------------------------------------------------- stages
def _fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _source_listing(options: dict) -> str:
    """A digest of the input videos (path, size, mtime) so new or edited files rerun ingest."""
    from vidfeat.ingestion.scan import scan_source

    rows = scan_source(options.get("src"), labels=options.get("labels"))
    h = hashlib.sha256()
    for path in sorted(rows["path"].astype(str)):
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    labels = options.get("labels")
    if labels and os.path.exists(labels):
        h.update(Path(labels).read_bytes())
    return h.hexdigest()[:16]


def _outputs(workdir: Path) -> dict[str, list[Path]]:
    return {"ingest": [workdir / "ingest"], "data_report": [workdir / "data_report"],
            "extract": [workdir / "features.h5"], "train": [workdir / "model"],
            "report": [workdir / "report"]}


def _complete(stage: str, workdir: Path) -> bool:
    """Whether ``stage``'s outputs are finished, asked of the module that owns them."""
    path = _outputs(workdir)[stage][0]
    try:
        if stage == "ingest":
            from vidfeat.ingestion.manifest import read_manifest
            read_manifest(path)
        elif stage == "extract":
            from vidfeat.extraction.cache import FeatureStore
            FeatureStore(path).close()
        elif stage == "train":
            from vidfeat.training import model_dir
            return model_dir.is_complete(path)
        else:
            from vidfeat.reporting import _report
            return _report.is_complete(path)
    except (OSError, ValueError):
        return False
    return True


def _clear_stage(stage: str, workdir: Path) -> None:
    """Remove a stage's outputs through the module that owns them."""
    path = _outputs(workdir)[stage][0]
    if stage == "ingest":
        from vidfeat.ingestion.tasks import discard_outdir
        discard_outdir(path)
    elif stage == "extract":
        from vidfeat.extraction import discard_output
        discard_output(path)
    elif stage == "train":
        from vidfeat.training import model_dir
        model_dir.discard(path)
    else:
        from vidfeat.reporting import _report
        _report.discard(path)


def _run_stage(stage: str, workdir: Path, opts: dict[str, dict]):
    w = workdir
    if stage == "ingest":
        o = dict(opts["ingest"])
        return _stage_function("ingest")(o.pop("src"), w / "ingest", **o)
    if stage == "data_report":
        return _stage_function("report")(w / "ingest", w / "data_report", **opts["report"])
    if stage == "extract":
        return _stage_function("extract")(w / "ingest", w / "features.h5", **opts["extract"])
    if stage == "train":
        frames = w / "ingest" if opts["train"].get("unfreeze") else None
        return _stage_function("train")(w / "features.h5", w / "model", frames=frames, **opts["train"])
    return _stage_function("report")(w / "ingest", w / "report", model=w / "model", **opts["report"])


def _summary_of(result) -> str:
    summary = getattr(result, "summary", "")
    return summary() if callable(summary) else str(summary)


def _check_exit(stage: str, result) -> None:
    if stage == "ingest" and getattr(result, "n_ok", 1) == 0:
        raise RuntimeError("ingest: every video failed; see the videos manifest's 'error' column")


# ----------------------------------------------------------------------------------- run
@checked
def run_pipeline(config: dict | str | os.PathLike, workdir: str | os.PathLike | None = None, *,
                 overwrite: bool = False, progress: bool = True) -> PipelineResult:
    """Run (or resume) every stage of ``config`` into ``workdir``; see the module docstring.

    ``config``: a dict or a TOML path. ``workdir``: the output folder (default: the config's
    ``workdir`` key, else ``vidfeat_out``). ``overwrite``: discard every stage's outputs and
    rerun them all. ``progress``: each stage's progress output (stage options cannot override).
    Every option is checked (module docstring) before WORKDIR is created or any stage runs.
    """
    if not isinstance(config, dict):
        config = load_config(config)
    opts = effective_options(config)
    check_values(opts)
    workdir = prepare_workdir(workdir or config.get("workdir") or "vidfeat_out")
    for section in SECTIONS:
        if "progress" in opts[section]:
            opts[section]["progress"] = progress
    text = to_toml({"workdir": str(workdir), **opts})
    atomic_write(workdir / "config.toml", lambda tmp: Path(tmp).write_text(text))
    state = _read_state(workdir)
    result = PipelineResult(workdir, opts)
    fps = _fingerprints(opts)
    if _stale("extract", fps["extract"], workdir, state, overwrite):
        from vidfeat.extraction.backbones import check_weights_available

        # offline without cached weights: one line now, not after ingest has run for hours
        check_weights_available(opts["extract"]["backbone"], opts["extract"]["weights"])
    for stage in STAGES:
        result.stages.append(_maybe_run(stage, fps[stage], workdir, opts, state, overwrite,
                                        progress))
    metrics = workdir / "model" / "metrics.json"
    result.metrics = json.loads(metrics.read_text()) if metrics.exists() else {}
    return result


def _fingerprints(opts: dict) -> dict[str, str]:
    """Each stage's fingerprint: its options that change outputs, chained from the source
    listing through every stage before it."""
    fps, parent = {}, _source_listing(opts["ingest"])
    for stage in STAGES:
        section = "report" if stage == "data_report" else stage
        relevant = {k: v for k, v in opts[section].items() if k not in _NO_EFFECT[section]}
        fps[stage] = parent = _fingerprint(stage, relevant, parent)
    return fps


def _stale(stage: str, fp: str, workdir: Path, state: dict, overwrite: bool) -> bool:
    """True when ``stage`` must run: forced, changed, unfinished or its outputs incomplete."""
    recorded = state.get(stage, {})
    return overwrite or recorded.get("fingerprint") != fp or not recorded.get("done") \
        or not _complete(stage, workdir)


def _maybe_run(stage: str, fp: str, workdir: Path, opts: dict, state: dict, overwrite: bool,
               progress: bool) -> StageRun:
    recorded = state.get(stage, {})
    if not _stale(stage, fp, workdir, state, overwrite):
        _say(progress, f"[{stage}] up to date, skipped")
        return StageRun(stage, "skipped", 0.0)
    if overwrite or recorded.get("fingerprint") != fp:
        _clear_stage(stage, workdir)  # options changed: the old outputs are stale
    for later in STAGES[STAGES.index(stage):]:
        state.pop(later, None)
    state[stage] = {"fingerprint": fp, "done": False}
    write_json(workdir / _STATE, state)
    _say(progress, f"[{stage}] running")
    start = time.perf_counter()
    out = _run_stage(stage, workdir, opts)
    _check_exit(stage, out)
    state[stage]["done"] = True
    write_json(workdir / _STATE, state)
    # each stage prints its own closing summary when progress is on
    return StageRun(stage, "ran", time.perf_counter() - start, _summary_of(out))


def _read_state(workdir: Path) -> dict:
    path = workdir / _STATE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}  # a damaged state file only costs a rerun


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- demo
DEMO_OPTIONS = {
    "ingest": {"frames_per_video": 8, "size": 128, "split": [0.6, 0.2, 0.2], "seed": 0,
               "jobs": 2},
    "extract": {"backbone": "resnet18", "dtype": "float32"},
    "train": {"head": "linear", "epochs": 100, "class_weight": "balanced", "seed": 0,
              "sweep": "lr=1e-3,3e-3,1e-2 weight_decay=0,1e-3"},
    "report": {},
}


def pretrained_cached(backbone: str) -> bool:
    """Whether torch hub already holds the DEFAULT weights of ``backbone`` (no download)."""
    from vidfeat.extraction.backbones import cached_weights_path

    return cached_weights_path(backbone).is_file()


@checked
def demo(output: str | os.PathLike = "demo_out", *, weights: str | None = None,
         backbone: str = "resnet18", counts: dict[str, int] | None = None, seed: int = 0,
         device: str = "auto", jobs: int = 2, overwrite: bool = False,
         progress: bool = True) -> PipelineResult:
    """Generate the demo dataset (imbalanced, 5 classes) in ``output/videos`` and run the pipeline.

    ``output``: the folder for the videos and the pipeline's outputs. ``weights``: None uses the
    DEFAULT pretrained weights when torch hub has them cached, else a random-init backbone (and
    says so); ``"DEFAULT"`` downloads them on a connected machine. ``backbone``: the extract
    backbone. ``counts``: videos per class (default: the demo's imbalanced counts). ``seed``:
    the dataset, split and training seed. ``device``: extract and train device (auto|cpu|cuda).
    ``jobs``: videos ingested at once. ``overwrite``: regenerate the videos and rerun every
    stage. ``progress``: progress output.
    """
    from vidfeat.synth import make_demo_dataset

    output = Path(output).resolve()
    videos = output / "videos"
    marker = output / "videos.done"
    if not marker.exists() or overwrite:
        _say(progress, f"Generating the demo dataset in {videos}/ ...")
        shutil.rmtree(videos, ignore_errors=True)  # the demo's own generated videos
        make_demo_dataset(videos, counts=counts, seed=seed)
        marker.write_text(json.dumps(counts or "default") + "\n")
    if weights is None:
        weights = "DEFAULT" if pretrained_cached(backbone) else "none"
        if weights == "none":
            _say(progress, f"No pretrained {backbone} weights cached (offline?): using a "
                 "RANDOM-INIT backbone; accuracy will be lower. Use --weights DEFAULT on a "
                 "connected machine for the real ones.")
    config = {k: dict(v) for k, v in DEMO_OPTIONS.items()}
    config["ingest"].update(src=str(videos), seed=seed, jobs=jobs)
    config["extract"].update(backbone=backbone, weights=weights, device=device)
    config["train"].update(device=device, seed=seed)
    return run_pipeline(config, output, overwrite=overwrite, progress=progress)
