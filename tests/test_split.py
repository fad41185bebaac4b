"""Video-level stratified splits: reproducible, per class, every ok video in exactly one split."""
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from vidfeat.ingestion.split import (
    assign_splits,
    assign_unlabelled,
    parse_ratios,
    rng_for,
    split_counts,
)


def videos(counts, failed=0):
    rows = [dict(video_id=f"{label}/{i:03d}.mp4", label=label, split="", status="ok")
            for label, n in counts.items() for i in range(n)]
    rows += [dict(video_id=f"bad/{i}.mp4", label="a", split="", status="failed")
             for i in range(failed)]
    return rows


def splits_by_id(rows):
    return {r["video_id"]: r["split"] for r in rows}


@pytest.mark.parametrize("text", ["0.8,0.2", "a,b,c", "0.5,0.5,0.5", "0,0.5,0.5", "-0.1,0.6,0.5",
                                  "nan,0.5,0.5"])
def test_bad_ratios_are_refused(text):
    with pytest.raises(ValueError, match="split="):
        parse_ratios(text)


def test_ratios_from_text_or_sequence():
    assert parse_ratios("0.7, 0.2, 0.1") == parse_ratios([0.7, 0.2, 0.1])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 101])
def test_counts_add_up_and_follow_ratios(n):
    counts = split_counts(n, (0.8, 0.1, 0.1))
    assert sum(counts) == n
    assert all(abs(c - n * r) < 1 for c, r in zip(counts, (0.8, 0.1, 0.1)))
    if n:
        assert counts[0] >= 1  # a class always has train videos


def test_every_ok_video_in_exactly_one_split_stratified():
    rows = videos({"a": 50, "b": 20, "c": 3}, failed=2)
    out = assign_splits(rows, (0.8, 0.1, 0.1), seed=0)
    assert out is rows  # in place
    ok = [r for r in out if r["status"] == "ok"]
    assert {r["split"] for r in ok} <= {"train", "val", "test"}
    assert all(r["split"] == "" for r in out if r["status"] == "failed")
    assert len(splits_by_id(out)) == len(out)
    for label, n in {"a": 50, "b": 20, "c": 3}.items():
        got = Counter(r["split"] for r in ok if r["label"] == label)
        assert [got[s] for s in ("train", "val", "test")] == split_counts(n, (0.8, 0.1, 0.1))


def test_same_seed_same_split_other_seed_differs():
    one = assign_splits(videos({"a": 40, "b": 40}), seed=3)
    shuffled = videos({"a": 40, "b": 40})
    random.Random(1).shuffle(shuffled)
    assert splits_by_id(assign_splits(shuffled, seed=3)) == splits_by_id(one)
    assert splits_by_id(assign_splits(videos({"a": 40, "b": 40}), seed=4)) != splits_by_id(one)


def test_adding_a_class_does_not_move_the_others():
    before = splits_by_id(assign_splits(videos({"a": 30}), seed=0))
    after = splits_by_id(assign_splits(videos({"a": 30, "b": 9}), seed=0))
    assert {v: after[v] for v in before} == before


def test_given_splits_are_kept():
    rows = videos({"a": 10})
    for row in rows[:5]:
        row["split"] = "test"
    rows[5]["split"] = None  # no split: assigned
    out = assign_splits(rows, (1.0, 0.0, 0.0), seed=0)
    assert [r["split"] for r in out] == ["test"] * 5 + ["train"] * 5


def test_unlabelled_rows_go_to_all():
    rows = videos({"": 3}, failed=1)
    assert [r["split"] for r in assign_unlabelled(rows)] == ["all", "all", "all", ""]


# --- the pandas implementation records replaced, as the reference ------------------------------

def old_assign_splits(videos, split=(0.8, 0.1, 0.1), *, seed=0):
    ratios = parse_ratios(split)
    out = videos.copy()
    out["split"] = out["split"].fillna("").astype(str)
    ok = out["status"] == "ok"
    out.loc[~ok, "split"] = ""
    todo = out[ok & (out["split"] == "")]
    for label, group in todo.groupby("label", sort=True):
        ids = group.sort_values("video_id").index.to_numpy()
        ids = ids[rng_for(seed, "split", str(label)).permutation(len(ids))]
        names = np.repeat(("train", "val", "test"), split_counts(len(ids), ratios))
        out.loc[ids, "split"] = names
    return out


def old_assign_unlabelled(videos):
    out = videos.copy()
    out["split"] = np.where(out["status"] == "ok", "all", "")
    return out


def random_rows(rnd):
    labels = rnd.sample(["a", "b", "c", "d", "é", "10", "2"], rnd.randint(1, 4)) + [None]
    ids = rnd.sample(range(1000), rnd.randint(0, 60))
    return [dict(video_id=f"v{i:04d}", label=rnd.choice(labels),
                 split=rnd.choice(["", "", "", None, "train", "val", "test"]),
                 status=rnd.choice(["ok", "ok", "ok", "failed"])) for i in ids]


@pytest.mark.parametrize("seed", range(25))
def test_assign_splits_matches_the_pandas_version(seed):
    rnd = random.Random(seed)
    rows = random_rows(rnd)
    ratios = rnd.choice([(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), "0.34,0.33,0.33"])
    frame = pd.DataFrame(rows, columns=["video_id", "label", "split", "status"])
    want = old_assign_splits(frame, ratios, seed=seed)["split"].tolist()
    assert [r["split"] for r in assign_splits([dict(r) for r in rows], ratios, seed=seed)] == want
    want = old_assign_unlabelled(frame)["split"].tolist()
    assert [r["split"] for r in assign_unlabelled([dict(r) for r in rows])] == want
