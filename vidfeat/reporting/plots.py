"""PNG plots for ``vidfeat report`` (matplotlib, Agg canvas, no pyplot global state).

Every function takes plain lists, writes one PNG and returns its path. matplotlib is imported
inside the functions so that importing this module costs nothing on the ingest path. The PNGs
carry no "Software" metadata (which would embed matplotlib's URL in the report).
"""
from __future__ import annotations

from pathlib import Path

# above this many classes tick labels overlap: drop them (the tables still name every class)
MAX_LABELLED = 60
# above this many classes a confusion matrix cell is too small to print its count
MAX_ANNOTATED = 20


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, format="png", metadata={"Software": None})
    return path


def _plain_log(axis) -> None:
    """Log axis with 1-2-5 ticks and plain labels (2, 5, 10, 20), not 2x10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _width(n_classes: int) -> float:
    return min(max(6.0, 0.35 * n_classes + 2), 40.0)


def _class_ticks(ax, classes: list[str]) -> None:
    if len(classes) > MAX_LABELLED:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(classes)} classes (names in the tables)")
        return
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 6 else 0, ha="right"
                       if len(classes) > 6 else "center")


def _grouped_bars(ax, classes: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(classes))]
        ax.bar(xs, values, width=width, label=name)
    _class_ticks(ax, classes)
    ax.legend(fontsize="small")


def class_counts(path: Path, classes: list[str], panels: dict[str, dict[str, list[float]]]) -> Path:
    """Write to ``path`` one panel of log-scale bars per unit for ``classes``.

    ``panels``: {unit: {series: per-class counts}}, e.g. {"videos": {"before": [...],
    "after": [...]}, "frames": ...}.
    """
    fig = _figure(_width(len(classes)), 3.2 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (unit, series) in zip(axes, panels.items()):
        _grouped_bars(ax, classes, series)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5)  # bars grow from below 1, so a count of 1 or 2 stays visible
        _plain_log(ax.yaxis)
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} per class, before and after balancing (log scale)")
    return _save(fig, path)


def split_distribution(path: Path, classes: list[str], fractions: dict[str, list[float]]) -> Path:
    """Write to ``path`` the share of each split's videos per class, one bar per split.

    ``classes``: the x axis. ``fractions``: {split: per-class fraction of that split's videos}.
    """
    fig = _figure(_width(len(classes)), 3.6)
    ax = fig.subplots()
    _grouped_bars(ax, classes, fractions)
    ax.set_ylabel("fraction of the split's videos")
    ax.set_title("class distribution per split")
    return _save(fig, path)


def confusion_heatmap(path: Path, classes: list[str], counts: list[list[int]],
                      normalized: list[list[float]], title: str) -> Path:
    """Write to ``path`` a row-normalised heatmap (colour = recall share), annotated with counts
    when small. ``classes``: axis labels. ``counts``: the confusion matrix (rows true).
    ``normalized``: its rows divided by their sums. ``title``: the plot title."""
    import numpy as np

    k = len(classes)
    side = min(max(4.0, 0.45 * k + 2), 30.0)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(np.asarray(normalized, dtype=float), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= MAX_ANNOTATED:
        for (i, j), n in np.ndenumerate(np.asarray(counts)):
            dark = normalized[i][j] > 0.5
            ax.text(j, i, str(n), ha="center", va="center", fontsize="small",
                    color="white" if dark else "black")
    ticks = classes if k <= MAX_LABELLED else []
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticks(range(len(ticks)))
    ax.set_yticklabels(ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def recall_vs_frequency(path: Path, series: dict[str, tuple[list[str], list[float], list[float]]],
                        ) -> Path:
    """Write to ``path`` a scatter of recall against training frequency (log x).

    ``series``: {"split level": (classes, train counts, recalls)}, one marker set each.
    """
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    for name, (classes, freqs, recalls) in series.items():
        ax.scatter(freqs, recalls, label=name, alpha=0.8)
        if len(classes) <= MAX_ANNOTATED:
            for c, x, y in zip(classes, freqs, recalls):
                ax.annotate(c, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    if any(f > 0 for _, freqs, _ in series.values() for f in freqs):
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training frames per class (log scale)")
    ax.set_ylabel("recall")
    ax.set_title("recall against training frequency")
    ax.legend(fontsize="small")
    return _save(fig, path)
