"""What ingest records: nested counts (as pandas' groupby gives them), failure reasons."""
import random

import numpy as np
import pandas as pd
import pytest

from vidfeat.ingestion.stats import failure_counts, missing, nested_counts


def old_nested_counts(df, by, weight=None):
    """The pandas implementation records replaced: the reference."""
    out = {}
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


def test_nested_counts_of_columns():
    cols = {"label": ["b", "a", "b", None, "a"], "split": ["val", "train", "train", "val", "val"],
            "repeat": [1, 2, 3, 4, 5]}
    assert nested_counts(cols, ["split"]) == {"train": 2, "val": 3}
    got = nested_counts(cols, ["label", "split"], "repeat")
    assert got == {"a": {"train": 2, "val": 5}, "b": {"train": 3, "val": 1}}
    assert list(got) == ["a", "b"]  # sorted by key
    assert nested_counts({"label": [], "split": []}, ["label", "split"]) == {}


@pytest.mark.parametrize("seed", range(25))
def test_nested_counts_matches_the_pandas_version(seed):
    rnd = random.Random(seed)
    n = rnd.randint(0, 50)
    cols = {"label": [rnd.choice(["b", "a", "10", "2", "é", None]) for _ in range(n)],
            "split": [rnd.choice(["train", "val", "test", "", None]) for _ in range(n)],
            "repeat": [rnd.choice([0, 1, 2, 7]) for _ in range(n)]}
    frame = pd.DataFrame(cols)
    for by, weight in [(["split"], None), (["label", "split"], None),
                       (["label", "split"], "repeat"), (["split", "label"], "repeat")]:
        want = old_nested_counts(frame, by, weight)
        for columns in (cols, frame, frame.astype({"label": "string", "split": "string"})):
            got = nested_counts(columns, by, weight)
            assert got == want and _order(got) == _order(want), (by, weight)


def _order(nested):
    return [(k, _order(v)) if isinstance(v, dict) else k for k, v in nested.items()]


def test_missing_is_pandas_notion():
    assert [missing(v) for v in (None, float("nan"), np.float64("nan"), pd.NA, pd.NaT)] == [True] * 5
    assert not any(missing(v) for v in ("", "a", 0, 1.5, np.int64(3)))


def test_failure_counts_most_frequent_first():
    errors = ["file not found", "decode: bad frame at 3", "file not found", "decode: x", "a: b"]
    assert failure_counts(errors) == {"decode": 2, "file not found": 2, "a": 1}
