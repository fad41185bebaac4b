"""The report's numbers: the per-video table, counts, failures, imbalance measures and class
weights, split distribution and the data warnings (definitions in ``vidfeat.reporting._report``).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from vidfeat import __version__
from vidfeat.class_weights import class_weights
from vidfeat.ingestion.manifest import SPLITS

SCHEMA_VERSION = 1
BETAS = (0.9, 0.99, 0.999, 0.9999)
TOP_REASONS = 10


def video_table(videos: pd.DataFrame, *, frames, frames_after) -> pd.DataFrame:
    """One row per video with the columns the report aggregates (plain numpy dtypes).

    ``videos``: a videos manifest (or a scan with its columns). ``frames``: each video's frame
    count before balancing. ``frames_after``: after (weighted by repeat; 0 for dropped videos).
    """
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



def build_report(table: pd.DataFrame, *, source: dict, min_videos: int = 10,
                 max_drift: float = 0.2) -> dict:
    """Every number of the report (without the model section) from a ``video_table``.

    ``table``: the ``video_table``. ``source``: the report's ``source`` entry. ``min_videos``,
    ``max_drift``: the warning thresholds, as for ``report``.
    """
    if table.empty:
        raise ValueError(f"no videos in {source['path']}")
    classes = sorted(c for c in table["label"].unique() if c)
    ok = table[table["ok"]]
    splits = [s for s in SPLITS if (ok["split"] == s).any()] + ["all"]
    counts = {c: {s: _counts(ok, table, c, s) for s in splits} for c in classes}
    scope = "train" if "train" in splits else "all"
    usable = sorted(c for c in ok["label"].unique() if c)  # "": an unlabelled ingest
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
    """Failed videos per class of ``table`` (a ``video_table``), with their most common reasons
    and a few example ids."""
    from vidfeat.ingestion.stats import failure_reason

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
    """Imbalance ratio, normalised entropy, Gini and class weights for ``counts`` ({class: n})."""
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
    # the trainer's own function, so the table shows exactly what multiplies the loss
    out["weights"]["balanced"] = _weights(names, x, class_weights("balanced", x))
    for beta in BETAS:
        out["weights"]["effective_number"][str(beta)] = _weights(
            names, x, class_weights(f"effective:{beta}", x))
    return out


def _weights(names, x, values) -> dict:
    # training gives an absent class weight 0; the report says "undefined" (null) instead
    return {n: (_num(v) if c > 0 else None) for n, c, v in zip(names, x, values)}


def split_distribution(ok: pd.DataFrame, classes: list[str], splits: list[str]) -> dict:
    """Videos per split, each split's class fractions, and its drift (TVD) from train.

    ``ok``: the ok rows of a ``video_table``. ``classes``: the classes to report. ``splits``:
    the splits present, ``"all"`` included.
    """
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
    """Warnings about the data, each naming the classes concerned.

    ``data``: the report dict so far. ``table``: its ``video_table``. ``min_videos``,
    ``max_drift``: the thresholds, as for ``report``.
    """
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


def usable_classes(data: dict) -> list[str]:
    """Classes of report dict ``data`` with at least one ok video, in report order."""
    return [c for c in data["classes"] if data["counts"][c]["all"]["videos"]]
