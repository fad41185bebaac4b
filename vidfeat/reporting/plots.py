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
# tick labels longer than this are shortened with an ellipsis
MAX_TICK_CHARS = 28


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    import io

    from vidfeat.files import atomic_write, write_exact

    # tight: the saved image grows to hold every label, so nothing drawn is cut at its edge
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png", metadata={"Software": None}, bbox_inches="tight",
                pad_inches=0.1)
    # atomic and length-checked: a full disk leaves no truncated PNG, and says so in one line
    atomic_write(path, lambda tmp: write_exact(tmp, buf.getvalue()))
    return path


def _plain_log(axis) -> None:
    """Log axis with 1-2-5 ticks and plain labels (2, 5, 10, 20), not 2x10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _width(n_classes: int) -> float:
    return min(max(6.0, 0.35 * n_classes + 2), 40.0)


def _label_room(classes: list[str]) -> float:
    """Inches below an axis that its slanted class names take (0.06 in a character at 45
    degrees), so that long names add to the figure instead of squeezing the plot."""
    if len(classes) > MAX_LABELLED:
        return 0.0
    return 0.06 * max((len(_tick_text(c)) for c in classes), default=0)


def _tick_text(name: str) -> str:
    """A class name short enough for a tick label (the tables give it whole)."""
    return name if len(name) <= MAX_TICK_CHARS else name[:MAX_TICK_CHARS - 1] + "\u2026"


def _x_class_labels(ax, labels: list[str], *, room: int) -> None:
    """Class names under the x ticks: slanted when more than ``room`` characters would have to
    fit under one tick (level labels of neighbouring classes would run into each other)."""
    labels = [_tick_text(c) for c in labels]
    if max(map(len, labels), default=0) > room:
        ax.set_xticklabels(labels, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels(labels)


def _class_ticks(ax, classes: list[str]) -> None:
    if len(classes) > MAX_LABELLED:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(classes)} classes (names in the tables)")
        return
    ax.set_xticks(range(len(classes)))
    _x_class_labels(ax, classes, room=8 if len(classes) <= 6 else 0)


def _grouped_bars(ax, classes: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(classes))]
        ax.bar(xs, values, width=width, label=name)
    _class_ticks(ax, classes)
    # beside the axes, not inside: inside, it would hide the bars of the last classes
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def class_counts(path: Path, classes: list[str], panels: dict[str, dict[str, list[float]]]) -> Path:
    """Write to ``path`` one panel of log-scale bars per unit for ``classes``.

    ``panels``: {unit: {series: per-class counts}}, e.g. {"videos": {"before": [...],
    "after": [...]}, "frames": ...}. When every unit's series are equal (balancing changed
    nothing) one bar per class is drawn, with no before/after to tell apart.
    """
    changed = any(len({tuple(v) for v in series.values()}) > 1 for series in panels.values())
    fig = _figure(_width(len(classes)), (3.2 + _label_room(classes)) * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (unit, series) in zip(axes, panels.items()):
        if changed:
            _grouped_bars(ax, classes, series)
        else:
            ax.bar(range(len(classes)), next(iter(series.values())), width=0.6)
            _class_ticks(ax, classes)
        ax.set_yscale("log")
        # bars grow from below 1, so a count of 1 or 2 stays visible; room above the tallest
        top = max((max(v, default=0) for v in series.values()), default=0)
        ax.set_ylim(0.5, max(2.0, 1.6 * top))
        _plain_log(ax.yaxis)
        ax.set_ylabel(unit)
        ax.set_title(f"{unit} per class" + (", before and after balancing" if changed else "")
                     + " (log scale)")
    return _save(fig, path)


def split_distribution(path: Path, classes: list[str], fractions: dict[str, list[float]]) -> Path:
    """Write to ``path`` the share of each split's videos per class, one bar per split.

    ``classes``: the x axis. ``fractions``: {split: per-class fraction of that split's videos}.
    """
    fig = _figure(_width(len(classes)), 3.6 + _label_room(classes))
    ax = fig.subplots()
    _grouped_bars(ax, classes, fractions)
    ax.set_ylabel("fraction of the split's videos")
    ax.set_title("class distribution per split")
    return _save(fig, path)


def confusion_heatmap(path: Path, classes: list[str], counts: list[list[int]],
                      normalized: list[list[float]], title: str) -> Path:
    """Write to ``path`` a row-normalised heatmap (colour = recall share), annotated with counts
    when small. ``classes``: axis labels. ``counts``: the confusion matrix (rows true).
    ``normalized``: its rows divided by their sums. ``title``: the plot title. A row without
    examples is grey (no shares to show)."""
    import numpy as np

    k = len(classes)
    ticks = [_tick_text(c) for c in classes] if k <= MAX_LABELLED else []
    side = min(max(3.0, 0.45 * k), 30.0)
    labels = 0.08 * max(map(len, ticks), default=0)  # inches the longest name takes
    fig = _figure(side + labels + 2.2, side + 0.75 * labels + 1.2)
    ax = fig.subplots()
    shares = np.asarray(normalized, dtype=float)
    shares[np.asarray(counts).sum(axis=1) == 0] = np.nan  # no examples: grey, not "0%"
    image = ax.imshow(shares, cmap=_blues_grey_unknown(), vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.9)
    if k <= MAX_ANNOTATED:
        for (i, j), n in np.ndenumerate(np.asarray(counts)):
            dark = normalized[i][j] > 0.5
            ax.text(j, i, str(n), ha="center", va="center", fontsize="small",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(ticks)))
    _x_class_labels(ax, ticks, room=3)  # a cell is 0.45 in wide: about 4 characters
    ax.set_yticks(range(len(ticks)))
    ax.set_yticklabels(ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


# (marker, line style, marker size): each series differs in all three and in colour; markers are
# hollow and shrink series by series, so points at the same place stay visible inside each other
SERIES_STYLES = [("o", "-", 11), ("s", "--", 8.5), ("^", ":", 7), ("D", "-.", 4.5),
                 ("v", (0, (5, 1)), 10), ("P", (0, (1, 3)), 8), ("X", (0, (3, 1, 1, 1)), 6),
                 ("*", (0, (8, 3)), 5)]
# where a class label may go, in points from its point: near first, then further out (with a
# leader line), right before left, above before below
LABEL_OFFSETS = [(5, 4), (5, -4), (-5, 4), (-5, -4), (0, 9), (0, -9)] + [
    (dx * r, dy * r) for r in (12, 18, 24, 36, 48) for dx, dy in
    ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.6, 0), (-1.6, 0))]


def _blues_grey_unknown():
    from matplotlib import colormaps

    return colormaps["Blues"].with_extremes(bad="0.85")


def recall_figure(series: dict[str, tuple[list[str], list[float], list[float]]]):
    """The recall-against-training-frequency figure (matplotlib ``Figure``), not yet saved.

    ``series``: {"split level": (classes, train counts, recalls)}. Points with a training count
    of 0 or less have no place on the log axis and are left out (the caller says so in its note).
    Each series has its own colour, marker, line style and marker size; each class is labelled
    once (at its first point; classes whose points coincide share a label), where the label
    overlaps no other label, point or the axes' edge.
    """
    fig = _figure(8.0, 5.0)
    ax = fig.subplots()
    positive = any(f > 0 for _, freqs, _ in series.values() for f in freqs)
    points: dict[str, tuple[float, float]] = {}
    for i, (name, (classes, freqs, recalls)) in enumerate(series.items()):
        pts = sorted((f, r, c) for c, f, r in zip(classes, freqs, recalls) if f > 0 or not positive)
        marker, style, size = SERIES_STYLES[i % len(SERIES_STYLES)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=style,
                markersize=size, markerfacecolor="none", markeredgewidth=1.5, linewidth=1.0,
                color=f"C{i % 10}", label=name, zorder=2 + i)
        for f, r, c in pts:
            points.setdefault(c, (f, r))
    if positive:
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("training frames per class (log scale)" if positive else "training frames")
    ax.set_ylabel("recall")
    ax.set_title("recall against training frequency")
    fig.legend(loc="outside right upper", fontsize="small")
    if len(points) <= MAX_ANNOTATED:
        # classes whose points coincide share one label: two labels at one point would not say
        # which is which
        shared: dict[tuple[float, float], list[str]] = {}
        for c, xy in points.items():
            shared.setdefault(xy, []).append(c)
        _label_points(fig, ax, {", ".join(map(_tick_text, cs)): xy for xy, cs in shared.items()})
    return fig


def _label_points(fig, ax, points: dict[str, tuple[float, float]]) -> None:
    """Label each class once, at the first of ``LABEL_OFFSETS`` where its text box overlaps no
    label placed before, no plotted point and stays inside the axes; a class with no such place
    is labelled nowhere (the tables name it) rather than over another."""
    from matplotlib.text import Text

    fig.canvas.draw()  # settle the layout: from here display positions are final
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer).padded(-2)
    taken = _marker_boxes(ax)
    for name, xy in sorted(points.items(), key=lambda kv: (kv[1], kv[0])):
        for dx, dy in LABEL_OFFSETS:
            far = abs(dx) > 9 or abs(dy) > 9
            text = ax.annotate(
                name, xy, xytext=(dx, dy), textcoords="offset points",
                fontsize="small", ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if far else None)
            # the text's own box: Annotation's would add the leader line, which touches the point
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).padded(1)
            if _contains(inside, box) and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                break
            text.remove()


def _marker_boxes(ax) -> list:
    """Display-space boxes around every plotted marker (obstacles for labels)."""
    from matplotlib.transforms import Bbox

    boxes = []
    for line in ax.get_lines():
        half = line.get_markersize() * ax.figure.dpi / 72 / 2 + 1
        for x, y in ax.transData.transform(line.get_xydata()):
            boxes.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    return boxes


def _contains(outer, inner) -> bool:
    return (outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0
            and inner.y1 <= outer.y1)


def recall_vs_frequency(path: Path, series: dict[str, tuple[list[str], list[float], list[float]]],
                        ) -> Path:
    """Write to ``path`` the ``recall_figure`` for ``series`` ({"split level": (classes, train
    counts, recalls)}) as a PNG."""
    return _save(recall_figure(series), path)
