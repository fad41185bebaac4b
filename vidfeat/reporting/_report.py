"""Class-imbalance and evaluation reports: ``report.json``, ``report.md``, ``report.html``, PNG plots.

SOURCE is an ingest OUTDIR (read from its manifests), or, as a pre-flight before any ingest, a
folder of class folders or a labels file: the videos are then probed (no frames are extracted)
and ``frames`` means the frames the source videos hold. With ``model=MODEL_DIR`` the report adds
the model's evaluation from ``MODEL_DIR/metrics.json`` and ``MODEL_DIR/config.json``.

Hostile or broken input: a missing SOURCE or MODEL_DIR raises FileNotFoundError; a malformed
manifest raises ManifestError and a malformed ``metrics.json`` a ValueError, both naming the
culprit; videos that fail to probe are reported as failures with their reason, never raised.
Class names are untrusted text: they are escaped in the Markdown and the HTML. The HTML loads
nothing: its plots are embedded as ``data:`` URIs and it contains no URL.

Definitions. *Before balancing* counts every ok video and every stored frame once; *after*
weights each by its ``repeat`` (oversampling) and leaves out videos with ``repeat`` 0
(undersampled). Imbalance measures use the train split (``scope`` "train"), or every ok video
when no video is in train (pre-flight without splits). For per-class counts ``n_c`` of ``K``
classes and ``N = sum n_c``: imbalance ratio ``max n_c / min n_c`` (null if a class has none);
normalised entropy ``-sum p_c ln p_c / ln K`` (1 = perfectly even; null for one class); Gini
coefficient ``sum_ij |n_i - n_j| / (2 K^2 mean n)`` (0 = even). Class weights are training's
own (``vidfeat.class_weights.class_weights``, the weights its loss uses), scaled so the weighted
count equals the real one, ``sum_c w_c n_c = N``: ``balanced`` is ``N / (K n_c)`` (scikit-learn's
``compute_class_weight('balanced')``); effective-number (Cui et al. 2019, spec ``effective:beta``)
is ``r_c = (1 - beta) / (1 - beta^n_c)`` times ``N / sum_c r_c n_c``. A weight is null for a class
with no samples (training gives it 0), and ``K`` counts only the classes that have samples.
Split drift is the total variation distance ``0.5 sum_c |p_c - q_c|`` between a split's class
distribution of videos and train's.

``report.json`` schema (``schema_version`` 1; floats may be null where undefined)::

    {"schema_version": 1, "vidfeat_version": str, "created": ISO-8601 str,
     "source": {"path": str, "kind": "ingest" | "folder" | "labels", "labels": str | null,
                "frames": "stored" | "source",
                "fingerprint": str | null},     # the ingest's content fingerprint (ingest.json)
     "classes": [str],                    # sorted; every label seen, failed videos included
     "splits": [str],                     # "train", "val", "test" present in SOURCE, then "all"
     "totals": {"videos": int, "ok": int, "failed": int, "frames": int, "duration_s": float},
     "counts": {class: {split: COUNTS}},  # split in "splits" ("all" = every ok video)
         # COUNTS = {"videos", "videos_after", "dropped_videos", "frames", "frames_after": int,
         #           "duration_s", "duration_s_after": float, "mean_duration_s",
         #           "frames_per_video": float | null, "failed": int ("all" only, else 0)}
     "failures": {"failed": int, "by_class": {class: {"failed": int,
                  "reasons": [{"reason": str, "count": int, "examples": [video_id],
                               "example_error": str}],
                  "other_reasons": int}}},
         # reason = the error up to its first ": " (ingest.failure_reason); top 10 per class
     "imbalance": {"scope": "train" | "all",
                   "videos" | "frames": {"before" | "after": MEASURES}},
         # MEASURES = {"counts": {class: int}, "total": int, "n_classes": int,
         #             "largest": str | null, "smallest": str | null, "imbalance_ratio",
         #             "normalized_entropy", "gini": float | null,
         #             "weights": {"balanced": {class: float | null},
         #                         "effective_number": {"0.9" | "0.99" | "0.999" | "0.9999":
         #                                              {class: float | null}}}}
     "split_distribution": {"videos": {split: int},
                            "fractions": {split: {class: float}},
                            "drift_from_train": {split: float | null}},  # val/test only
     "flags": {"vfr": {class: int}, "rotated": {class: int}},        # ok videos flagged
     "warnings": [{"code": str, "message": str, "classes": [str]}],
         # codes: no_videos, one_class, no_usable_videos, few_videos, single_video, empty_split,
         #        missing_from_split, split_drift, failures, vfr, rotated, zero_recall, model_classes,
         #        features_changed (the model's training feature file changed since)
     "model": null | {"path": str, "class_names": [str],
                      "train_frequency": {"source": "config" | "manifest" | null,
                                          "counts": {class: int}},
                      "features": null | {"path", "fingerprint", "features_fingerprint": str},
                          # the feature file the model was trained from (its config.json)
                      "row_level": "frame" | "clip",   # what the "frame" results count:
                          # frames, or clips for clip features (metrics.json's row_level;
                          # "frame" for a model without one)
                      "results": {split: {"frame" | "video": EVAL}}},
                          # "frame": the row level (displays name it by row_level)
         # EVAL = classification_metrics' dict ("n", "accuracy", "balanced_accuracy", "macro_f1",
         #        "per_class", "confusion_matrix") plus "confusion_matrix_normalized" (rows sum
         #        to 1, or 0 for a class without support) and "recall_vs_train_frequency":
         #        [{"class", "train_count", "train_fraction", "recall", "support"}]
     "files": {"json" | "md" | "html" | plot name: file name in the report folder}}

Training frequency for the model section is ``config.json``'s ``train_counts`` when present, else
the train split's frames after balancing in the ingest manifest (what the trainer sees).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat.files import atomic_write, check_output, write_json
from vidfeat.ingestion.manifest import ManifestError, manifest_path, read_manifest
from vidfeat.options import check_positive, checked
from vidfeat.reporting.data import BETAS, build_report, usable_classes, video_table
from vidfeat.reporting.evaluation import add_model
from vidfeat.reporting.render import (
    _fmt,
    _safe,
    display_level,
    document,
    render_html,
    render_markdown,
)

__all__ = ["BETAS", "ReportResult", "report", "load_source", "write_report", "summarize"]

log = logging.getLogger(__name__)


@dataclass
class ReportResult:
    """What ``report`` wrote: the folder, the JSON data, its warnings, files and summary."""
    output: Path
    data: dict
    files: dict[str, Path] = field(default_factory=dict)
    summary: str = ""

    @property
    def warnings(self) -> list[dict]:
        return self.data["warnings"]


@checked
def report(source, output: str | Path | None = None, *,
           model: str | Path | None = None, labels: str | Path | None = None, jobs: int = 1,
           timeout: float = 600.0, min_videos: int = 10, max_drift: float = 0.2,
           progress: bool = True) -> ReportResult:
    """Write report.json/.md/.html and PNG plots for ``source``; -> ReportResult.

    ``source``: an ingest OUTDIR, a folder of class folders or a labels file (see the module
    docstring). ``output``: the report folder (default: OUTDIR/report for an ingest OUTDIR, else
    ./report). ``model``: a MODEL_DIR whose evaluation is added. ``labels``: a labels file for a
    pre-flight on a folder of videos. ``jobs``: videos probed at a time in a pre-flight.
    ``timeout``: seconds before a pre-flight probe's child process is killed (the video then
    fails). ``min_videos``: the per-class video count below which a class is flagged.
    ``max_drift``: the total variation distance above which a split's class distribution is
    flagged as drifting from train. ``progress``: show a progress bar and print the summary.
    """
    check_positive("jobs", jobs)
    check_positive("timeout", timeout)
    check_positive("min_videos", min_videos)
    if not 0 < max_drift <= 1:
        raise ValueError(f"max_drift must be in (0, 1], got {max_drift!r}")
    if output is not None:
        check_output(output, kind="folder")  # before the pre-flight's probing, not after it
    start = time.perf_counter()
    src, kind, table = load_source(source, labels=labels, jobs=jobs, timeout=timeout,
                                   progress=progress)
    data = build_report(table, source={"path": str(src), "kind": kind, "labels": labels and str(labels),
                                       "frames": "stored" if kind == "ingest" else "source",
                                       "fingerprint": table.attrs.get("fingerprint")},
                        min_videos=min_videos, max_drift=max_drift)
    if model is not None:
        add_model(data, model, table)
    out = Path(output) if output is not None else (src / "report" if kind == "ingest"
                                                    else Path.cwd() / "report")
    files = write_report(data, out)
    result = ReportResult(out, data, files)
    result.summary = summarize(result, time.perf_counter() - start)
    if progress:
        print(result.summary)
    return result


# -- loading -------------------------------------------------------------------------------------

def load_source(source, *, labels=None, jobs: int = 1, timeout: float = 600.0,
                progress: bool = True):
    """-> (absolute path, kind, ``video_table``) for ``source``.

    ``source``: an ingest OUTDIR, class folders or a labels file; ``labels``, ``jobs``,
    ``timeout`` and ``progress`` as for ``report`` (used by a pre-flight only).
    """
    src = Path(source).expanduser().absolute()
    if not src.exists():
        raise FileNotFoundError(f"report source not found: {src}")
    if src.is_dir() and _is_ingest_dir(src):
        if labels is not None:
            raise ValueError(f"{src} is an ingest output folder; labels= is only for a pre-flight "
                             "report on a folder of videos")
        return src, "ingest", _ingest_table(src)
    kind = "folder" if src.is_dir() and labels is None else "labels"
    return src, kind, _preflight_table(src, labels, jobs=jobs, timeout=timeout, progress=progress)


def _is_ingest_dir(path: Path) -> bool:
    try:
        manifest_path(path, "videos")
    except ManifestError:
        return False
    return True


def _ingest_table(root: Path) -> pd.DataFrame:
    m = read_manifest(root)
    per_video = m.frames.groupby("video_id")
    stored = m.videos["video_id"].map(per_video.size()).fillna(0)
    weighted = m.videos["video_id"].map(per_video["repeat"].sum()).fillna(0)
    table = video_table(m.videos, frames=stored, frames_after=weighted)
    table.attrs["fingerprint"] = m.fingerprint  # what the report was made from
    return table



def _preflight_table(src: Path, labels, *, jobs: int, timeout: float,
                     progress: bool) -> pd.DataFrame:
    from vidfeat.ingestion.scan import scan_source

    if src.is_file():  # SOURCE is itself the labels file
        src, labels = None, src
    scan = scan_source(src, labels=labels).reset_index(drop=True)
    todo = scan.index[scan["status"] == "ok"]
    probed = _probe_all(scan.loc[todo, ["video_id", "path"]].itertuples(index=False), len(todo),
                        jobs=jobs, timeout=timeout, progress=progress)
    scan = scan.assign(duration_s=np.nan, frame_count=0, vfr=False, rotation=0)
    for i, (row, error) in zip(todo, probed):
        if error:
            scan.loc[i, ["status", "error"]] = ["failed", error]
        else:
            scan.loc[i, list(row)] = list(row.values())
    frames = scan["frame_count"].fillna(0).astype("int64")
    return video_table(scan, frames=frames, frames_after=frames)


def _probe_all(rows, total: int, *, jobs: int, timeout: float,
               progress: bool) -> list[tuple[dict, str]]:
    """Probe each (video_id, path) in ingest's sandbox (a child killed after ``timeout``), so a
    hostile file that hangs or crashes the decoder fails its row instead of the report."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from vidfeat.ingestion.probe import probe_video
    from vidfeat.ingestion.tasks import VideoTask, run_video_task
    from vidfeat.sandbox import close_sandboxes

    tasks = (VideoTask(phase="probe", video_id=vid, path=path, outdir="", timeout=timeout, key="",
                       work=probe_video) for vid, path in rows)
    try:
        # threads: each drives its own sandbox child, which does the real work
        entries = Parallel(n_jobs=jobs, backend="threading", return_as="generator")(
            delayed(run_video_task)(t) for t in tasks)
        entries = list(tqdm(entries, total=total, desc="probe", unit="video", disable=not progress))
    finally:
        close_sandboxes()
    return [(_probe_fields(e["probe"]), "") if e["status"] == "ok" else ({}, e["error"])
            for e in entries]


def _probe_fields(probe: dict) -> dict:
    return {"duration_s": probe["duration_s"], "frame_count": probe["frame_count"],
            "vfr": probe["vfr"], "rotation": probe["rotation"]}


# -- plots and files -----------------------------------------------------------------------------

def make_plots(data: dict, out: Path) -> dict[str, Path]:
    """Write the report's PNGs for report dict ``data`` into folder ``out``; -> {plot key: path}."""
    from vidfeat.reporting import plots

    made: dict[str, Path] = {}
    usable, scope = usable_classes(data), data["imbalance"]["scope"]
    if usable:
        panels = {unit: {w: [data["counts"][c][scope][unit + s] for c in usable]
                         for w, s in (("before", ""), ("after", "_after"))}
                  for unit in ("videos", "frames")}
        made["class_counts"] = plots.class_counts(out / "class_counts.png", usable, panels)
    if len(data["splits"]) > 2:
        fr = data["split_distribution"]["fractions"]
        series = {s: [fr[s][c] for c in usable] for s in data["splits"] if s != "all"}
        made["split_distribution"] = plots.split_distribution(out / "split_distribution.png",
                                                              usable, series)
    made.update(_model_plots(data["model"], out) if data["model"] else {})
    return made


def _model_plots(model: dict, out: Path) -> dict[str, Path]:
    from vidfeat.reporting import plots

    made, curves = {}, {}
    for split, levels in model["results"].items():
        for level, m in levels.items():
            key, shown = f"confusion_{_safe(split)}_{level}", display_level(model, level)
            made[key] = plots.confusion_heatmap(
                out / f"{key}.png", model["class_names"], m["confusion_matrix"],
                m["confusion_matrix_normalized"], f"{split}, {shown} level (row-normalised)")
            pts = [p for p in m["recall_vs_train_frequency"]
                   if p["train_count"] is not None and p["recall"] is not None]
            curves[f"{split} {shown}"] = ([p["class"] for p in pts], [p["train_count"] for p in pts],
                                          [p["recall"] for p in pts])
    if model["train_frequency"]["source"] is not None:
        made["recall_vs_frequency"] = plots.recall_vs_frequency(out / "recall_vs_frequency.png",
                                                                curves)
    return made


def write_report(data: dict, out: Path) -> dict[str, Path]:
    """Write plots, report.md, report.html and report.json into ``out``; -> {name: path}.

    ``data``: the report dict (its ``files`` entry is filled in here). ``out``: the folder.
    """
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(data, out)
    blocks = document(data)
    files = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             **plots}
    data["files"] = {k: p.name for k, p in files.items()}
    for key, text in (("md", render_markdown(blocks, plots)), ("html", render_html(blocks, plots))):
        atomic_write(files[key], lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    write_json(files["json"], data)
    return files


def summarize(result: ReportResult, elapsed: float) -> str:
    """A short paragraph for the terminal: counts, imbalance, model, warnings, where files went.

    ``result``: what ``report`` wrote. ``elapsed``: the seconds it took.
    """
    d = result.data
    t, imb = d["totals"], d["imbalance"]
    parts = [f"Report on {d['source']['path']}: {len(d['classes'])} classes, {t['videos']:,} "
             f"videos ({t['ok']:,} ok, {t['failed']:,} failed), {t['frames']:,} frames."]
    before = imb["videos"]["before"]
    if before["total"]:
        ratio = before["imbalance_ratio"]
        parts.append(f"Imbalance ({imb['scope']} videos): ratio "
                     + (f"{ratio:.1f}" if ratio is not None else "unbounded")
                     + f" ({before['largest']!r} vs {before['smallest']!r}), normalised entropy "
                     f"{_fmt(before['normalized_entropy'])}, Gini {_fmt(before['gini'])}.")
    if d["model"]:
        for split, levels in d["model"]["results"].items():
            accs = ", ".join(f"{display_level(d['model'], lvl)} {_fmt(m['balanced_accuracy'])}"
                             for lvl, m in levels.items())
            parts.append(f"Model {split} balanced accuracy: {accs}.")
    warnings = d["warnings"]
    if warnings:
        parts.append(f"{len(warnings)} warnings, e.g. {warnings[0]['message']}.")
    plots = len(result.files) - 3
    parts.append(f"Wrote report.json, report.md, report.html and {plots} "
                 f"plot{'' if plots == 1 else 's'} to {result.output} "
                 f"in {elapsed:.1f} s.")
    return " ".join(parts)


def is_complete(output) -> bool:
    """True when the report folder ``output`` holds a finished report (report.json is written
    last, atomically)."""
    return (Path(output) / "report.json").is_file()


def discard(output) -> None:
    """Remove the report folder ``output`` and everything in it."""
    shutil.rmtree(output, ignore_errors=True)
