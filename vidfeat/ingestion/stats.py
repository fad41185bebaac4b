"""What ingest records about a run: failure reasons, nested counts, library versions."""
from __future__ import annotations

import os


def failure_reason(error: str) -> str:
    """The kind of a failure: its message up to the first ': ' (drops paths and details)."""
    return error.split(": ")[0].strip() or "unknown"


def failure_counts(errors) -> dict[str, int]:
    """Failed videos per reason, most frequent first."""
    counts: dict[str, int] = {}
    for error in errors:
        reason = failure_reason(str(error))
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def missing(value) -> bool:
    """Whether ``value`` is a missing value as pandas sees one: None, NaN, NaT or pd.NA."""
    if value is None:
        return True
    try:
        return bool(value != value)  # only NaN-likes differ from themselves
    except TypeError:  # pd.NA: its comparisons are NA, which has no truth value
        return True


def nested_counts(columns, by: list[str], weight: str | None = None) -> dict:
    """Nested ``{str(a): {str(b): n}}`` counts of rows (or sums of ``weight``) grouped by ``by``.

    ``columns``: a mapping of column name -> sequence (a dict of lists, or a DataFrame).
    ``by``: the key columns, outermost first. ``weight``: the column to sum instead of counting
    rows (missing weights count 0). As pandas ``groupby(by)`` gives them: keys sorted, rows with
    a missing key skipped; ``{}`` for no rows.
    """
    keys = zip(*(list(columns[c]) for c in by))
    weights = list(columns[weight]) if weight else None
    totals: dict[tuple, int] = {}
    for i, key in enumerate(keys):
        if any(missing(k) for k in key):
            continue
        w = 1 if weights is None else 0 if missing(weights[i]) else weights[i]
        totals[key] = totals.get(key, 0) + w
    try:
        ordered = sorted(totals)
    except TypeError:  # keys of mixed types: no order to sort by, keep first-seen
        ordered = list(totals)
    out: dict = {}
    for key in ordered:
        node = out
        for k in key[:-1]:
            node = node.setdefault(str(k), {})
        node[str(key[-1])] = int(totals[key])
    return out


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def library_versions() -> dict:
    import platform

    import av

    libs = {k: ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            for k, v in getattr(av, "library_versions", {}).items()}
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{d: package_version(d) for d in ("av", "numpy", "pandas", "pyarrow", "pillow",
                                               "simplejpeg", "joblib")},
            "ffmpeg_libs": libs}


def jsonable(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return list(value)
    return value
