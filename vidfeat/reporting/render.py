"""The report as one list of blocks, rendered to Markdown and to a self-contained HTML page.

Blocks: ("h1"|"h2"|"h3"|"p", text), ("ul", [text]), ("table", header, rows), ("img", plot key, alt).
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np

from vidfeat.reporting.data import BETAS, usable_classes

MAX_TABLE_CLASSES = 30   # confusion-matrix tables above this size live in report.json only


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


def _balancing_changed(data: dict) -> bool:
    """Whether balancing changed any count: if not, "after" would repeat "before" column for
    column, so the report shows one of each (a pre-flight has no balancing at all)."""
    return any(c["videos_after"] != c["videos"] or c["frames_after"] != c["frames"]
               or c["dropped_videos"] for per_split in data["counts"].values()
               for c in per_split.values())


def _count_columns(data: dict, split: str) -> list[tuple[str, str]]:
    frames = "frames" if data["source"]["frames"] == "stored" else "source frames"
    keys = [(k, h.replace("frames", frames, 1) if k.startswith("frames") else h)
            for k, h in _COUNT_COLUMNS]
    if not _balancing_changed(data):
        keys = [(k, h) for k, h in keys if k not in ("videos_after", "dropped_videos",
                                                     "frames_after")]
    return keys + ([("failed", "failed")] if split == "all" else [])


def _count_table(data: dict, split: str) -> tuple:
    keys = _count_columns(data, split)
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
    changed = _balancing_changed(data)
    blocks = [("h2", "Classes and splits"), ("p", _counts_note(data, changed))]
    for split in data["splits"]:
        blocks += [("h3", "All splits" if split == "all" else f"Split: {split}"),
                   _count_table(data, split)]
    blocks.append(("img", "class_counts", "class counts" + (" before and after balancing"
                                                            if changed else "")))
    dist = data["split_distribution"]
    if len(data["splits"]) > 2:
        shown = [s for s in data["splits"] if s != "all"]
        rows = [[c] + [_pct(dist["fractions"][s][c]) for s in shown] for c in usable_classes(data)]
        rows.append(["**videos**"] + [_fmt(dist["videos"][s]) for s in shown])
        rows.append(["**drift from train**"] + [_fmt(dist["drift_from_train"].get(s))
                                               for s in shown])
        blocks += [("h3", "Class distribution per split"), ("table", ["class"] + shown, rows),
                   ("img", "split_distribution", "class distribution per split")]
    return blocks


def _counts_note(data: dict, changed: bool) -> str:
    if data["source"]["kind"] != "ingest":
        return ("A pre-flight counts the source videos as they are: frame sampling and "
                "balancing happen at ingest, so source frames are the frames the videos hold, "
                "not the frames training will see.")
    if not changed:
        return "Balancing changed no count: each ok video and stored frame counts once."
    return ("Before balancing counts each ok video and stored frame once; after weights them "
            "by their oversampling repeat and leaves out undersampled videos.")


def _imbalance_section(data: dict) -> list:
    imb = data["imbalance"]
    if not imb["videos"]["before"]["total"]:
        return []
    whens = ("before", "after") if _balancing_changed(data) else ("before",)
    cols = [(u, w) for u in ("videos", "frames") for w in whens]
    frames = "frames" if data["source"]["frames"] == "stored" else "source frames"
    heads = [(frames if u == "frames" else u) + (f" {w}" if len(whens) > 1 else "")
             for u, w in cols]
    measures = [("imbalance ratio (largest/smallest)", "imbalance_ratio"),
                ("normalised entropy (1 = even)", "normalized_entropy"),
                ("Gini coefficient (0 = even)", "gini"), ("largest class", "largest"),
                ("smallest class", "smallest")]
    rows = [[label] + [_fmt(imb[u][w][key]) for u, w in cols] for label, key in measures]
    return [("h2", f"Imbalance ({imb['scope']} split)" if imb["scope"] == "train"
             else "Imbalance (all videos)"),
            ("table", ["measure"] + heads, rows)] + _weights_blocks(data)


def _weights_blocks(data: dict) -> list:
    """Class weights, shown only where they are the ones training applies: the train split's
    stored frames with their oversampling repeat (``vidfeat.class_weights``, training's own
    function, on training's counts). A pre-flight has no stored frames, so it shows none."""
    imb = data["imbalance"]
    if data["source"]["kind"] != "ingest" or imb["scope"] != "train":
        why = ("a pre-flight has no stored frames yet" if data["source"]["kind"] != "ingest"
               else "there is no train split")
        return [("h3", "Class weights"),
                ("p", "Not shown: training weighs classes by the train split's stored frames, "
                      f"and {why}. Run vidfeat report on the ingest output folder to see them.")]
    basis = imb["frames"]["after"]
    weights = basis["weights"]
    rows = [[c, _fmt(basis["counts"][c]), _fmt(weights["balanced"][c])]
            + [_fmt(weights["effective_number"][str(b)][c]) for b in BETAS]
            for c in basis["counts"]]
    return [("h3", "Class weights (train split, as training applies them)"),
            ("p", "vidfeat.class_weights on the train split's stored frames, each counted "
                  "with its oversampling repeat: the counts and the function training uses for "
                  "--class-weight balanced and effective:BETA. Balanced = N / (K n_c), as "
                  "scikit-learn's compute_class_weight('balanced'); effective number = (1 - beta) "
                  "/ (1 - beta^n_c), scaled so that sum_c w_c n_c = N. n/a: no train frames."),
            ("table", ["class", "train frames", "balanced"] + [f"beta={b}" for b in BETAS],
             rows)]


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
    if row_level(model) == "clip":
        blocks.append(("p", ("Clip level: one row per clip of the clip ingest (the clip "
                             "backbone's input); video level: the mean of a video's clip "
                             "logits.")))
    if src is not None:
        blocks += [("h3", "Recall against training frequency"),
                   ("img", "recall_vs_frequency", "recall against training frequency")]
        blocks += [("p", note) for note in _left_out_of_plot(model)]
    return blocks


def _left_out_of_plot(model: dict) -> list[str]:
    """What the recall plot leaves out and why: classes without examples in a split have no
    recall (plotting them at 0 would read as a failure), and a class without training frames
    has no place on the log axis."""
    notes, absent = [], {}
    for split, levels in model["results"].items():
        for level, m in levels.items():
            names = tuple(p["class"] for p in m["recall_vs_train_frequency"] if not p["support"])
            if names:
                absent.setdefault(names, []).append(f"{split} {display_level(model, level)}")
    for names, where in absent.items():
        notes.append(f"Not plotted for {' and '.join(where)}: {_names(list(names))} (no "
                     "examples there, so no recall).")
    untrained = [c for c, n in model["train_frequency"]["counts"].items() if not n]
    if untrained:
        notes.append(f"Not plotted: {_names(untrained)} (no training frames).")
    return notes


def row_level(model: dict) -> str:
    """"clip" or "frame": what the model section's "frame" results count (``model["row_level"]``;
    a report dict without it, written before clip features: "frame")."""
    from vidfeat.training.scoring import recorded_row_level

    return recorded_row_level(model)


def display_level(model: dict, level: str) -> str:
    """The name a reader sees for results key ``level`` of ``model``: "frame" or "clip" for the
    row level, "video" for video."""
    from vidfeat.training.scoring import level_name

    return level_name(level, row_level(model))


def _names(classes: list[str], limit: int = 12) -> str:
    more = len(classes) - limit
    return ", ".join(classes[:limit]) + (f" and {more} more" if more > 0 else "")


def _evaluation_blocks(model: dict, split: str, level: str, m: dict) -> list:
    names, shown = model["class_names"], display_level(model, level)
    freq = model["train_frequency"]["counts"]
    rows = [[c, _fmt(v.get("precision")), _fmt(v.get("recall")), _fmt(v.get("f1")),
             _fmt(v.get("support")), _fmt(freq.get(c))] for c, v in m["per_class"].items()]
    blocks = [("h3", f"{split}, {shown} level"),
              ("p", f"n = {m.get('n', 'n/a')}; accuracy {_fmt(m['accuracy'])}; balanced accuracy "
                    f"{_fmt(m['balanced_accuracy'])}; macro F1 {_fmt(m['macro_f1'])}."),
              ("table", ["class", "precision", "recall", "F1", "support", "train frames"], rows)]
    absent = [c for c, v in m["per_class"].items() if not v.get("support")]
    if absent:
        blocks.append(("p", f"n/a: no {split} {shown}s of {_names(absent)} (support 0), so no "
                            "recall, precision or F1 to report."))
    if len(names) <= MAX_TABLE_CLASSES:
        cm, norm = m["confusion_matrix"], m["confusion_matrix_normalized"]
        # a row without examples has no shares: its cells are plain zeros, not "0 (0%)"
        cells = [[f"{n} ({_pct(norm[i][j])})" if sum(row) else str(n) for j, n in enumerate(row)]
                 for i, row in enumerate(cm)]
        blocks.append(("table", ["true \\ predicted"] + names,
                       [[c] + r for c, r in zip(names, cells)]))
    # the plot's key (its file name) keeps the results key: stable names for existing readers
    blocks.append(("img", f"confusion_{_safe(split)}_{level}", f"confusion matrix {split} {shown}"))
    return blocks


def _safe(name: str) -> str:
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)


def document(data: dict) -> list:
    """Report dict ``data`` as a list of blocks (shared by the Markdown and HTML renderers)."""
    return (_overview(data) + _count_sections(data) + _imbalance_section(data)
            + _failure_section(data) + _model_section(data))


_MD_SPECIAL = str.maketrans({ch: "\\" + ch for ch in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


def _md_text(text: str) -> str:
    # class names and errors are untrusted: no raw HTML, no table breaks, no emphasis
    bold = text.startswith("**") and text.endswith("**") and len(text) > 4
    inner = (text[2:-2] if bold else text).translate(_MD_SPECIAL)
    return f"**{inner}**" if bold else inner


def render_markdown(blocks: list, plots: dict[str, Path]) -> str:
    """Markdown for ``blocks`` (from ``document``); ``plots`` {key: PNG path} become images
    linked by file name (they sit beside report.md); images without a plot are left out."""
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
th{white-space:nowrap}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}li{margin:.3em 0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


_NUMERIC = re.compile(r"[-+]?[\d,.]+%?( \(\d+%\))?|n/a")


def _html_cell(text: str, tag: str) -> str:
    bold = text.startswith("**") and text.endswith("**") and len(text) > 4
    body = html.escape(text[2:-2] if bold else text)
    align = ' class="n"' if _NUMERIC.fullmatch(text) else ""  # numbers right, text left
    return f"<{tag}{align}>{'<b>' + body + '</b>' if bold else body}</{tag}>"


def render_html(blocks: list, plots: dict[str, Path]) -> str:
    """A self-contained page for ``blocks``: inline CSS, the ``plots`` PNGs ({key: path}) as
    base64 data URIs, no script, no URL."""
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
