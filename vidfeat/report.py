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
coefficient ``sum_ij |n_i - n_j| / (2 K^2 mean n)`` (0 = even); ``balanced`` weights
``N / (K n_c)`` (scikit-learn's ``compute_class_weight('balanced')``); effective-number weights
(Cui et al. 2019) ``(1 - beta) / (1 - beta^n_c)`` scaled to sum to ``K``. A weight is null for a
class with no samples, and ``K`` in the weights counts only the classes that have samples.
Split drift is the total variation distance ``0.5 sum_c |p_c - q_c|`` between a split's class
distribution of videos and train's.

``report.json`` schema (``schema_version`` 1; floats may be null where undefined)::

    {"schema_version": 1, "vidfeat_version": str, "created": ISO-8601 str,
     "source": {"path": str, "kind": "ingest" | "folder" | "labels", "labels": str | null,
                "frames": "stored" | "source"},
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
         #        missing_from_split, split_drift, failures, vfr, rotated, zero_recall, model_classes
     "model": null | {"path": str, "class_names": [str],
                      "train_frequency": {"source": "config" | "manifest" | null,
                                          "counts": {class: int}},
                      "results": {split: {"frame" | "video": EVAL}}},
         # EVAL = classification_metrics' dict ("n", "accuracy", "balanced_accuracy", "macro_f1",
         #        "per_class", "confusion_matrix") plus "confusion_matrix_normalized" (rows sum
         #        to 1, or 0 for a class without support) and "recall_vs_train_frequency":
         #        [{"class", "train_count", "train_fraction", "recall", "support"}]
     "files": {"json" | "md" | "html" | plot name: file name in the report folder}}

Training frequency for the model section is ``config.json``'s ``train_counts`` when present, else
the train split's frames after balancing in the ingest manifest (what the trainer sees).
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat import __version__
from vidfeat.manifest import SPLITS, ManifestError, manifest_path, read_manifest, write_json
from vidfeat.options import check_positive

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BETAS = (0.9, 0.99, 0.999, 0.9999)
TOP_REASONS = 10
MAX_TABLE_CLASSES = 30   # confusion-matrix tables above this size live in report.json only


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


def report(source, output=None, *, model=None, labels: str | None = None, jobs: int = 1,
           timeout: float = 600.0, min_videos: int = 10, max_drift: float = 0.2,
           progress: bool = True) -> ReportResult:
    """Write report.json/.md/.html and PNG plots for SOURCE (ingest OUTDIR, class folders or
    labels file) into ``output`` (default: OUTDIR/report for an ingest OUTDIR, else ./report).

    ``model`` adds the evaluation in MODEL_DIR; ``min_videos`` is the per-class video count below
    which a class is flagged; ``max_drift`` the total variation distance above which a split's
    class distribution is flagged as drifting from train. A pre-flight probes ``jobs`` videos at
    a time, each in a child process killed after ``timeout`` seconds (the video then fails).
    """
    check_positive("jobs", jobs)
    check_positive("timeout", timeout)
    check_positive("min_videos", min_videos)
    if not 0 < max_drift <= 1:
        raise ValueError(f"max_drift must be in (0, 1], got {max_drift!r}")
    start = time.perf_counter()
    src, kind, table = load_source(source, labels=labels, jobs=jobs, timeout=timeout,
                                   progress=progress)
    data = build_report(table, source={"path": str(src), "kind": kind, "labels": labels and str(labels),
                                       "frames": "stored" if kind == "ingest" else "source"},
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
    """-> (path, kind, per-video table) for an ingest OUTDIR, class folders or a labels file."""
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
    return video_table(m.videos, frames=stored, frames_after=weighted)


def video_table(videos: pd.DataFrame, *, frames, frames_after) -> pd.DataFrame:
    """One row per video with the columns the report aggregates (plain numpy dtypes)."""
    ok = (videos["status"] == "ok").fillna(False).to_numpy(bool)
    repeat = _column(videos, "repeat", 1).fillna(1).astype("int64").clip(lower=0).to_numpy()
    weight = np.where(ok, repeat, 0)
    return pd.DataFrame({
        "video_id": videos["video_id"].astype(str).to_numpy(),
        "label": videos["label"].fillna("").astype(str).to_numpy(),
        "split": _column(videos, "split", "").fillna("").astype(str).to_numpy(),
        "ok": ok,
        "error": _column(videos, "error", "").fillna("").astype(str).to_numpy(),
        "duration_s": pd.to_numeric(_column(videos, "duration_s", np.nan), errors="coerce")
                        .astype(float).to_numpy(),
        "frames": np.asarray(frames, dtype=np.int64),
        "frames_after": np.where(weight > 0, np.asarray(frames_after, dtype=np.int64), 0),
        "weight": weight,
        "vfr": _column(videos, "vfr", False).fillna(False).astype(bool).to_numpy(),
        "rotation": _column(videos, "rotation", 0).fillna(0).astype("int64").to_numpy(),
    })


def _column(df: pd.DataFrame, name: str, default) -> pd.Series:
    return df[name] if name in df.columns else pd.Series(default, index=df.index)


def _preflight_table(src: Path, labels, *, jobs: int, timeout: float,
                     progress: bool) -> pd.DataFrame:
    from vidfeat.ingest import scan_source

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

    from vidfeat.ingest import VideoTask, close_sandboxes, run_video_task
    from vidfeat.probe import probe_video

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


# -- numbers -------------------------------------------------------------------------------------

def build_report(table: pd.DataFrame, *, source: dict, min_videos: int = 10,
                 max_drift: float = 0.2) -> dict:
    """Every number of the report (without the model section) from a ``video_table``."""
    if table.empty:
        raise ValueError(f"no videos in {source['path']}")
    classes = sorted(c for c in table["label"].unique() if c)
    ok = table[table["ok"]]
    splits = [s for s in SPLITS if (ok["split"] == s).any()] + ["all"]
    counts = {c: {s: _counts(ok, table, c, s) for s in splits} for c in classes}
    scope = "train" if "train" in splits else "all"
    usable = sorted(ok["label"].unique())
    data = {
        "schema_version": SCHEMA_VERSION, "vidfeat_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source, "classes": classes, "splits": splits,
        "totals": {"videos": len(table), "ok": len(ok), "failed": int((~table["ok"]).sum()),
                   "frames": int(ok["frames"].sum()), "duration_s": float(ok["duration_s"].sum())},
        "counts": counts,
        "failures": failures(table),
        "imbalance": {"scope": scope, **{unit: {
            when: imbalance({c: counts[c][scope][unit + suffix] for c in usable})
            for when, suffix in (("before", ""), ("after", "_after"))} for unit in ("videos", "frames")}},
        "split_distribution": split_distribution(ok, usable, splits),
        "flags": {"vfr": _flag_counts(ok, ok["vfr"]), "rotated": _flag_counts(ok, ok["rotation"] != 0)},
        "model": None,
    }
    data["warnings"] = data_warnings(data, table, min_videos=min_videos, max_drift=max_drift)
    return data


def _counts(ok: pd.DataFrame, table: pd.DataFrame, label: str, split: str) -> dict:
    rows = ok[(ok["label"] == label) & ((ok["split"] == split) | (split == "all"))]
    n = len(rows)
    failed = int(((table["label"] == label) & ~table["ok"]).sum()) if split == "all" else 0
    return {
        "videos": n, "videos_after": int(rows["weight"].sum()),
        "dropped_videos": int((rows["weight"] == 0).sum()),
        "frames": int(rows["frames"].sum()), "frames_after": int(rows["frames_after"].sum()),
        "duration_s": float(rows["duration_s"].sum()),
        "duration_s_after": float((rows["duration_s"] * rows["weight"]).sum()),
        "mean_duration_s": _num(rows["duration_s"].mean()) if n else None,
        "frames_per_video": rows["frames"].sum() / n if n else None,
        "failed": failed,
    }


def _num(x) -> float | None:
    """A JSON-safe float: NaN and infinities (undefined quantities) become None."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def failures(table: pd.DataFrame) -> dict:
    """Failed videos per class with their most common reasons and a few example ids."""
    from vidfeat.ingest import failure_reason

    bad = table[~table["ok"]]
    bad = bad.assign(reason=bad["error"].map(failure_reason))
    by_class = {}
    for label, rows in bad.groupby("label", sort=True):
        reasons = rows.groupby("reason", sort=False)["video_id"].agg(list)
        reasons = reasons.loc[reasons.map(len).sort_values(ascending=False, kind="stable").index]
        first_error = rows.groupby("reason", sort=False)["error"].first()
        top = [{"reason": e, "count": len(ids), "examples": ids[:3],
                "example_error": first_error[e]} for e, ids in reasons.iloc[:TOP_REASONS].items()]
        by_class[label or "(no label)"] = {
            "failed": len(rows), "reasons": top,
            "other_reasons": int(reasons.iloc[TOP_REASONS:].map(len).sum())}
    return {"failed": len(bad), "by_class": by_class}


def imbalance(counts: dict[str, int]) -> dict:
    """Imbalance ratio, normalised entropy, Gini and class weights for per-class counts."""
    names, x = list(counts), np.asarray(list(counts.values()), dtype=np.float64)
    k, total = len(x), float(x.sum())
    out = {"counts": dict(counts), "total": int(total), "n_classes": k, "largest": None,
           "smallest": None, "imbalance_ratio": None, "normalized_entropy": None, "gini": None,
           "weights": {"balanced": dict.fromkeys(names),
                       "effective_number": {str(b): dict.fromkeys(names) for b in BETAS}}}
    if k == 0 or total == 0:
        return out
    p = x / total
    nz = p[p > 0]
    xs = np.sort(x)
    out.update(
        largest=names[int(np.argmax(x))], smallest=names[int(np.argmin(x))],
        imbalance_ratio=_num(x.max() / x.min()) if x.min() > 0 else None,
        normalized_entropy=_num(-(nz * np.log(nz)).sum() / math.log(k)) if k > 1 else None,
        # sorted-order form of sum_ij |x_i - x_j| / (2 k^2 mean): O(k log k), not O(k^2)
        gini=_num(2 * (np.arange(1, k + 1) * xs).sum() / (k * total) - (k + 1) / k),
    )
    # weights are for the classes training sees: K counts only classes with samples
    present = x > 0
    out["weights"]["balanced"] = _weights(names, x, total / (present.sum() * np.where(present, x, 1)))
    for beta in BETAS:
        # (1 - beta) / (1 - beta^n), with 1 - beta^n computed stably as -expm1(n ln beta)
        raw = (1 - beta) / np.where(present, -np.expm1(x * math.log(beta)), 1)
        raw = raw * present.sum() / raw[present].sum()
        out["weights"]["effective_number"][str(beta)] = _weights(names, x, raw)
    return out


def _weights(names, x, values) -> dict:
    return {n: (_num(v) if c > 0 else None) for n, c, v in zip(names, x, values)}


def split_distribution(ok: pd.DataFrame, classes: list[str], splits: list[str]) -> dict:
    """Videos per split, each split's class fractions, and its drift (TVD) from train."""
    videos, fractions = {}, {}
    for s in splits:
        rows = ok if s == "all" else ok[ok["split"] == s]
        n = rows["label"].value_counts().reindex(classes, fill_value=0)
        videos[s] = len(rows)
        fractions[s] = {c: (float(n[c]) / len(rows) if len(rows) else 0.0) for c in classes}
    drift = {}
    if "train" in splits:
        train = np.array([fractions["train"][c] for c in classes])
        for s in ("val", "test"):
            other = np.array([fractions[s][c] for c in classes]) if s in splits else None
            drift[s] = None if other is None else float(0.5 * np.abs(other - train).sum())
    return {"videos": videos, "fractions": fractions, "drift_from_train": drift}


def _flag_counts(ok: pd.DataFrame, mask: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in ok.loc[mask, "label"].value_counts().sort_index().items()}


# -- warnings ------------------------------------------------------------------------------------

def _warn(code: str, message: str, classes=()) -> dict:
    return {"code": code, "message": message, "classes": list(classes)}


def _names(classes, limit: int = 8) -> str:
    """"class 'a' has" / "classes 'a', 'b' have": the subject of a warning, with its verb."""
    shown = ", ".join(repr(c) for c in classes[:limit])
    shown += f" and {len(classes) - limit} more" if len(classes) > limit else ""
    return f"class {shown} has" if len(classes) == 1 else f"classes {shown} have"


def _videos(n: int) -> str:
    return f"{n:,} video is" if n == 1 else f"{n:,} videos are"


def data_warnings(data: dict, table: pd.DataFrame, *, min_videos: int, max_drift: float) -> list:
    """Warnings about the data, each naming the classes concerned."""
    out = _class_warnings(data, min_videos)
    if data["totals"]["ok"]:
        out += _split_warnings(data, max_drift)
    out += _failure_and_flag_warnings(data)
    return out


def _class_warnings(data: dict, min_videos: int) -> list:
    totals, counts = data["totals"], data["counts"]
    if not totals["ok"]:
        top = _top_reasons(data["failures"])
        return [_warn("no_videos", f"no usable video: all {totals['failed']} videos failed "
                      f"(most common reasons: {top}); fix them and re-run", data["classes"])]
    videos = {c: counts[c]["all"]["videos"] for c in data["classes"]}
    usable = [c for c, n in videos.items() if n]
    out = []
    if len(usable) == 1:
        out.append(_warn("one_class", f"only one class ({usable[0]!r}) has usable videos: a "
                         "classifier needs at least two, and imbalance measures are trivial", usable))
    empty = [c for c, n in videos.items() if not n]
    if empty:
        out.append(_warn("no_usable_videos", f"{_names(empty)} no usable video "
                         "(every one failed): they cannot be learned", empty))
    single = [c for c in usable if videos[c] == 1]
    if single:
        out.append(_warn("single_video", f"{_names(single)} a single video: it sits "
                         "in one split, so the class is either never trained on or never "
                         "evaluated", single))
    few = [c for c in usable if 1 < videos[c] < min_videos]
    if few:
        out.append(_warn("few_videos", f"{_names(few)} fewer than {min_videos} "
                         "videos: their results will be noisy", few))
    return out


def _split_warnings(data: dict, max_drift: float) -> list:
    present, dist = data["splits"], data["split_distribution"]
    if present == ["all"]:
        return []
    out = []
    usable = [c for c in data["classes"] if data["counts"][c]["all"]["videos"]]
    for s in SPLITS:
        if s not in present:
            out.append(_warn("empty_split", f"split {s!r} has no videos: "
                             + ("nothing to train on" if s == "train" else f"no {s} results"
                                " can be computed")))
            continue
        missing = [c for c in usable if not data["counts"][c][s]["videos"]]
        if missing:
            out.append(_warn("missing_from_split", f"{_names(missing)} no video in "
                             f"{s!r}", missing))
    for s, tvd in dist["drift_from_train"].items():
        if tvd is not None and tvd > max_drift:
            shift = {c: dist["fractions"][s][c] - dist["fractions"]["train"][c] for c in usable}
            worst = sorted(shift, key=lambda c: -abs(shift[c]))[:3]
            out.append(_warn("split_drift", f"split {s!r} class distribution drifts from train "
                             f"(total variation {tvd:.2f} > {max_drift:g}); most shifted: "
                             + ", ".join(f"{c!r} {shift[c]:+.0%}" for c in worst), worst))
    return out


def _top_reasons(fail: dict, limit: int = 3) -> str:
    totals: dict[str, int] = {}
    for entry in fail["by_class"].values():
        for r in entry["reasons"]:
            totals[r["reason"]] = totals.get(r["reason"], 0) + r["count"]
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{e!r} x{n}" for e, n in top) or "none recorded"


def _failure_and_flag_warnings(data: dict) -> list:
    out = []
    fail = data["failures"]
    if fail["failed"] and data["totals"]["ok"]:
        classes = list(fail["by_class"])
        subject = "1 video" if fail["failed"] == 1 else f"{fail['failed']:,} videos"
        out.append(_warn("failures", f"{subject} failed ({', '.join(map(repr, classes[:8]))}"
                         f"{', ...' if len(classes) > 8 else ''}; most common: "
                         f"{_top_reasons(fail)})", classes))
    for code, what in (("vfr", "variable-frame-rate"), ("rotated", "rotated")):
        flagged = data["flags"][code]
        if flagged:
            detail = ", ".join(f"{c!r}: {n}" for c, n in list(flagged.items())[:8])
            out.append(_warn(code, f"{_videos(sum(flagged.values()))} {what} ({detail})",
                             list(flagged)))
    return out


# -- model section -------------------------------------------------------------------------------

def add_model(data: dict, model_dir, table: pd.DataFrame) -> None:
    """Add ``data["model"]`` from MODEL_DIR/metrics.json (+ config.json) and its warnings."""
    model_dir = Path(model_dir).expanduser().absolute()
    metrics_path = model_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.json in model folder {model_dir}")
    metrics = _read_json(metrics_path)
    config_path = model_dir / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    class_names = _model_classes(metrics, config, metrics_path)
    freq_source, freq = _train_frequency(config, class_names, table)
    results = {split: {level: _evaluation(m, class_names, freq, metrics_path, f"{split}.{level}")
                       for level, m in levels.items() if level in ("frame", "video")}
               for split, levels in metrics.items() if isinstance(levels, dict)}
    results = {s: r for s, r in results.items() if r}
    if not results:
        raise ValueError(f"{metrics_path}: no split with 'frame' or 'video' metrics "
                         "(expected {\"val\": {\"frame\": ..., \"video\": ...}, ...})")
    data["model"] = {"path": str(model_dir), "class_names": class_names,
                     "train_frequency": {"source": freq_source, "counts": freq},
                     "results": results}
    data["warnings"] += _model_warnings(data)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _model_classes(metrics: dict, config: dict, where: Path) -> list[str]:
    names = config.get("class_names")
    if names is None:  # fall back to the per-class order of the first result
        for levels in metrics.values():
            for m in (levels.values() if isinstance(levels, dict) else ()):
                if isinstance(m, dict) and isinstance(m.get("per_class"), dict):
                    return [str(c) for c in m["per_class"]]
        raise ValueError(f"{where.parent}: no class_names in config.json or metrics.json")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where.parent / 'config.json'}: 'class_names' must be a non-empty list")
    return [str(c) for c in names]


def _train_frequency(config: dict, class_names: list[str], table: pd.DataFrame):
    given = config.get("train_counts")
    if isinstance(given, list) and len(given) == len(class_names):
        given = dict(zip(class_names, given))
    if isinstance(given, dict):
        return "config", {c: int(given.get(c, 0)) for c in class_names}
    train = table[table["ok"] & (table["split"] == "train")]
    if train.empty or not train["frames_after"].any():
        return None, {}
    per_class = train.groupby("label")["frames_after"].sum()
    return "manifest", {c: int(per_class.get(c, 0)) for c in class_names}


def _evaluation(m, class_names: list[str], freq: dict, where: Path, key: str) -> dict:
    if not isinstance(m, dict):
        raise ValueError(f"{where}: {key} must be an object of metrics")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        if name not in m:
            raise ValueError(f"{where}: {key} lacks {name!r}")
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"{where}: {key}.confusion_matrix is {cm.shape}, expected {k}x{k} "
                         f"for the {k} classes in config.json")
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    total = sum(freq.values())
    per_class = m["per_class"]
    curve = [{"class": c, "train_count": freq.get(c),
              "train_fraction": freq[c] / total if c in freq and total else None,
              "recall": _num(per_class.get(c, {}).get("recall")),
              "support": int(per_class.get(c, {}).get("support", 0))} for c in class_names]
    return {**m, "confusion_matrix_normalized": normalized.tolist(),
            "recall_vs_train_frequency": curve}


def _model_warnings(data: dict) -> list:
    model, out = data["model"], []
    unknown = [c for c in model["class_names"] if data["classes"] and c not in data["classes"]]
    if unknown:
        out.append(_warn("model_classes", f"model {_names(unknown)} no video in the report "
                         "source: was the model trained on other data?", unknown))
    for split, levels in model["results"].items():
        for level, m in levels.items():
            zero = [c for c, v in m["per_class"].items()
                    if v.get("support", 0) > 0 and v.get("recall", 0) == 0]
            if zero:
                names = ", ".join(map(repr, zero[:8])) + (", ..." if len(zero) > 8 else "")
                out.append(_warn("zero_recall", f"{split} {level} level: the model never recognises "
                                 f"{names} (recall 0)", zero))
    return out


# -- document: one list of blocks rendered to Markdown and to HTML -------------------------------
# ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows), ("img", plot key, alt)

def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3f}"
    return str(x)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


_COUNT_COLUMNS = [("videos", "videos"), ("videos_after", "videos after"),
                  ("dropped_videos", "dropped"), ("frames", "frames"),
                  ("frames_after", "frames after"), ("duration_s", "duration s"),
                  ("mean_duration_s", "mean duration s"), ("frames_per_video", "frames/video")]


def _count_table(data: dict, split: str) -> tuple:
    keys = _COUNT_COLUMNS + ([("failed", "failed")] if split == "all" else [])
    rows = [[c] + [_fmt(data["counts"][c][split][k]) for k, _ in keys] for c in data["classes"]]
    total = {k: sum(data["counts"][c][split][k] for c in data["classes"])
             for k in ("videos", "videos_after", "dropped_videos", "frames", "frames_after",
                       "duration_s", "duration_s_after", "failed")}
    n = total["videos"]
    total["mean_duration_s"] = total["duration_s"] / n if n else None
    total["frames_per_video"] = total["frames"] / n if n else None
    if len(data["classes"]) > 1:
        rows.append(["**total**"] + [_fmt(total[k]) for k, _ in keys])
    return ("table", ["class"] + [h for _, h in keys], rows)


def _overview(data: dict) -> list:
    src, t = data["source"], data["totals"]
    what = {"ingest": "ingest output folder", "folder": "pre-flight on a folder of class folders",
            "labels": "pre-flight on a labels file"}[src["kind"]]
    frames = "stored frames" if src["frames"] == "stored" else "frames in the source videos"
    blocks = [("h1", f"vidfeat report: {Path(src['path']).name}"),
              ("p", f"Source: {src['path']} ({what}). Created {data['created']} by vidfeat "
                    f"{data['vidfeat_version']}."),
              ("p", f"{len(data['classes'])} classes, {t['videos']:,} videos: {t['ok']:,} ok, "
                    f"{t['failed']:,} failed; {t['frames']:,} {frames}; "
                    f"{t['duration_s']:,.1f} s of video.")]
    warnings = [w["message"] for w in data["warnings"]]
    blocks += [("h2", "Warnings"), ("ul", warnings) if warnings else ("p", "No warnings.")]
    return blocks


def _count_sections(data: dict) -> list:
    if not data["totals"]["ok"]:
        return []
    blocks = [("h2", "Classes and splits"),
              ("p", "Before balancing counts each ok video and stored frame once; after weights "
                    "them by their oversampling repeat and leaves out undersampled videos.")]
    for split in data["splits"]:
        blocks += [("h3", "All splits" if split == "all" else f"Split: {split}"),
                   _count_table(data, split)]
    blocks.append(("img", "class_counts", "class counts before and after balancing"))
    dist = data["split_distribution"]
    if len(data["splits"]) > 2:
        shown = [s for s in data["splits"] if s != "all"]
        rows = [[c] + [_pct(dist["fractions"][s][c]) for s in shown] for c in _usable(data)]
        rows.append(["**videos**"] + [_fmt(dist["videos"][s]) for s in shown])
        rows.append(["**drift from train**"] + [_fmt(dist["drift_from_train"].get(s))
                                               for s in shown])
        blocks += [("h3", "Class distribution per split"), ("table", ["class"] + shown, rows),
                   ("img", "split_distribution", "class distribution per split")]
    return blocks


def _usable(data: dict) -> list[str]:
    return [c for c in data["classes"] if data["counts"][c]["all"]["videos"]]


def _imbalance_section(data: dict) -> list:
    imb = data["imbalance"]
    if not imb["videos"]["before"]["total"]:
        return []
    cols = [(u, w) for u in ("videos", "frames") for w in ("before", "after")]
    measures = [("imbalance ratio (largest/smallest)", "imbalance_ratio"),
                ("normalised entropy (1 = even)", "normalized_entropy"),
                ("Gini coefficient (0 = even)", "gini"), ("largest class", "largest"),
                ("smallest class", "smallest")]
    rows = [[label] + [_fmt(imb[u][w][key]) for u, w in cols] for label, key in measures]
    basis = imb["frames"]["after"]
    weights = basis["weights"]
    wrows = [[c, _fmt(basis["counts"][c]), _fmt(weights["balanced"][c])]
             + [_fmt(weights["effective_number"][str(b)][c]) for b in BETAS] for c in basis["counts"]]
    return [("h2", f"Imbalance ({imb['scope']} split)" if imb["scope"] == "train"
             else "Imbalance (all videos)"),
            ("table", ["measure"] + [f"{u} {w}" for u, w in cols], rows),
            ("h3", "Class weights"),
            ("p", f"From {imb['scope']} frames after balancing (what training sees). Balanced = "
                  "N / (K n_c) as scikit-learn's compute_class_weight('balanced'); effective "
                  "number = (1 - beta) / (1 - beta^n_c) scaled to sum to K. report.json also has "
                  "them for videos and before balancing."),
            ("table", ["class", "frames", "balanced"] + [f"beta={b}" for b in BETAS], wrows)]


def _failure_section(data: dict) -> list:
    fail = data["failures"]
    if not fail["failed"]:
        return []
    rows = [[c, _fmt(e["failed"]), "; ".join(f"{r['reason']} (x{r['count']}, e.g. {r['examples'][0]})"
                                             for r in e["reasons"])
             + (f"; {e['other_reasons']} with other reasons" if e["other_reasons"] else "")]
            for c, e in fail["by_class"].items()]
    return [("h2", f"Failed videos ({fail['failed']:,})"),
            ("table", ["class", "failed", "reasons"], rows)]


def _model_section(data: dict) -> list:
    model = data["model"]
    if model is None:
        return []
    src = model["train_frequency"]["source"]
    blocks = [("h2", "Model evaluation"),
              ("p", f"Model: {model['path']}. Training frequency from "
                    + {"config": "config.json train_counts", "manifest":
                       "the train split's frames after balancing", None: "nowhere (unknown)"}[src]
                    + ".")]
    for split, levels in model["results"].items():
        for level, m in levels.items():
            blocks += _evaluation_blocks(model, split, level, m)
    if src is not None:
        blocks.append(("img", "recall_vs_frequency", "recall against training frequency"))
    return blocks


def _evaluation_blocks(model: dict, split: str, level: str, m: dict) -> list:
    names = model["class_names"]
    freq = model["train_frequency"]["counts"]
    rows = [[c, _fmt(v.get("precision")), _fmt(v.get("recall")), _fmt(v.get("f1")),
             _fmt(v.get("support")), _fmt(freq.get(c))] for c, v in m["per_class"].items()]
    blocks = [("h3", f"{split}, {level} level"),
              ("p", f"n = {m.get('n', 'n/a')}; accuracy {_fmt(m['accuracy'])}; balanced accuracy "
                    f"{_fmt(m['balanced_accuracy'])}; macro F1 {_fmt(m['macro_f1'])}."),
              ("table", ["class", "precision", "recall", "F1", "support", "train frames"], rows)]
    if len(names) <= MAX_TABLE_CLASSES:
        cm, norm = m["confusion_matrix"], m["confusion_matrix_normalized"]
        cells = [[f"{n} ({_pct(norm[i][j])})" for j, n in enumerate(row)]
                 for i, row in enumerate(cm)]
        blocks.append(("table", ["true \\ predicted"] + names,
                       [[c] + r for c, r in zip(names, cells)]))
    blocks.append(("img", f"confusion_{_safe(split)}_{level}", f"confusion matrix {split} {level}"))
    return blocks


def _safe(name: str) -> str:
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)


def document(data: dict) -> list:
    """The report as a list of blocks (shared by the Markdown and HTML renderers)."""
    return (_overview(data) + _count_sections(data) + _imbalance_section(data)
            + _failure_section(data) + _model_section(data))


_MD_SPECIAL = str.maketrans({ch: "\\" + ch for ch in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


def _md_text(text: str) -> str:
    # class names and errors are untrusted: no raw HTML, no table breaks, no emphasis
    bold = text.startswith("**") and text.endswith("**") and len(text) > 4
    inner = (text[2:-2] if bold else text).translate(_MD_SPECIAL)
    return f"**{inner}**" if bold else inner


def render_markdown(blocks: list, plots: dict[str, Path]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + _md_text(block[1]))
        elif kind == "p":
            out.append(_md_text(block[1]))
        elif kind == "ul":
            out.append("\n".join(f"- {_md_text(item)}" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(map(_md_text, header)) + " |",
                     "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(_md_text, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img" and block[1] in plots:
            out.append(f"![{_md_text(block[2])}]({plots[block[1]].name})")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:left}.n{text-align:right}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}li{margin:.3em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


_NUMERIC = re.compile(r"[-+]?[\d,.]+%?( \(\d+%\))?|n/a")


def _html_cell(text: str, tag: str) -> str:
    bold = text.startswith("**") and text.endswith("**") and len(text) > 4
    body = html.escape(text[2:-2] if bold else text)
    align = ' class="n"' if _NUMERIC.fullmatch(text) else ""  # numbers right, text left
    return f"<{tag}{align}>{'<b>' + body + '</b>' if bold else body}</{tag}>"


def render_html(blocks: list, plots: dict[str, Path]) -> str:
    """A self-contained page: inline CSS, PNGs as base64 data URIs, no script, no URL."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(_html_cell(h, "th") for h in block[1])
            rows = "".join("<tr>" + "".join(_html_cell(c, "td") for c in r) + "</tr>"
                           for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img" and block[1] in plots:
            b64 = base64.b64encode(plots[block[1]].read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{b64}">')
    title = html.escape(blocks[0][1]) if blocks else "vidfeat report"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- plots and files -----------------------------------------------------------------------------

def make_plots(data: dict, out: Path) -> dict[str, Path]:
    """Write the report's PNGs into ``out``; -> {plot key: path}."""
    from vidfeat import plots

    made: dict[str, Path] = {}
    usable, scope = _usable(data), data["imbalance"]["scope"]
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
    from vidfeat import plots

    made, curves = {}, {}
    for split, levels in model["results"].items():
        for level, m in levels.items():
            key = f"confusion_{_safe(split)}_{level}"
            made[key] = plots.confusion_heatmap(
                out / f"{key}.png", model["class_names"], m["confusion_matrix"],
                m["confusion_matrix_normalized"], f"{split}, {level} level (row-normalised)")
            pts = [p for p in m["recall_vs_train_frequency"]
                   if p["train_count"] is not None and p["recall"] is not None]
            curves[f"{split} {level}"] = ([p["class"] for p in pts], [p["train_count"] for p in pts],
                                          [p["recall"] for p in pts])
    if model["train_frequency"]["source"] is not None:
        made["recall_vs_frequency"] = plots.recall_vs_frequency(out / "recall_vs_frequency.png",
                                                                curves)
    return made


def write_report(data: dict, out: Path) -> dict[str, Path]:
    """Write plots, report.md, report.html and report.json into ``out``; -> {name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(data, out)
    blocks = document(data)
    files = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             **plots}
    data["files"] = {k: p.name for k, p in files.items()}
    files["md"].write_text(render_markdown(blocks, plots), encoding="utf-8")
    files["html"].write_text(render_html(blocks, plots), encoding="utf-8")
    write_json(files["json"], data)
    return files


def summarize(result: ReportResult, elapsed: float) -> str:
    """A short paragraph for the terminal: counts, imbalance, model, warnings, where files went."""
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
            accs = ", ".join(f"{lvl} {_fmt(m['balanced_accuracy'])}" for lvl, m in levels.items())
            parts.append(f"Model {split} balanced accuracy: {accs}.")
    warnings = d["warnings"]
    if warnings:
        parts.append(f"{len(warnings)} warnings, e.g. {warnings[0]['message']}.")
    plots = len(result.files) - 3
    parts.append(f"Wrote report.json, report.md, report.html and {plots} "
                 f"plot{'' if plots == 1 else 's'} to {result.output} "
                 f"in {elapsed:.1f} s.")
    return " ".join(parts)
