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


def nested_counts(df, by: list[str], weight: str | None = None) -> dict:
    """Nested ``{a: {b: n}}`` counts (or sums of ``weight``) of ``df`` grouped by ``by``."""
    out: dict = {}
    if df.empty:
        return out
    sizes = df.groupby(by)[weight].sum() if weight else df.groupby(by).size()
    for keys, n in sizes.items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(str(k), {})
        node[str(keys[-1])] = int(n)
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
