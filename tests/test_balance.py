"""Balancing on the train split only: undersample, oversample, frames, max_per_class."""
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from vidfeat.ingestion.balance import DEFAULT_MAX_FRAMES_FACTOR, balance, spread
from vidfeat.ingestion.split import rng_for


def train_val(counts, capacity=None, val=2):
    rows = []
    for label, n in counts.items():
        for i in range(n + val):
            rows.append(dict(video_id=f"{label}/{i:03d}", label=label,
                             split="train" if i < n else "val",
                             capacity=(capacity or {}).get(label, 1000)))
    return rows


COUNTS = {"big": 12, "mid": 5, "small": 2}


def of(rows, split="train", label=None):
    return [r for r in rows if r["split"] == split and (label is None or r["label"] == label)]


def train_counts(rows, key="repeat"):
    totals = Counter()
    for r in of(rows):
        totals[r["label"]] += r[key]
    return dict(totals)


def kept_per_class(rows):
    return dict(Counter(r["label"] for r in of(rows) if r["repeat"] > 0))


def assert_val_untouched(rows, frames_per_video=16):
    assert all(r["repeat"] == 1 and r["n_planned"] == frames_per_video for r in of(rows, "val"))


def test_none_keeps_everything():
    rows = train_val(COUNTS)
    out = balance(rows, "none")
    assert out is rows  # in place
    assert all(r["repeat"] == 1 and r["n_planned"] == 16 for r in out)
    assert all(type(r["repeat"]) is int and type(r["n_planned"]) is int for r in out)
    assert {r["n_planned"] for r in balance(train_val(COUNTS), "none", frames_per_video=None)} \
        == {None}


def test_undersample_drops_down_to_the_smallest_class():
    rows = balance(train_val(COUNTS), "undersample", seed=1)
    assert kept_per_class(rows) == {k: 2 for k in COUNTS}
    dropped = [r for r in rows if r["repeat"] == 0]
    assert len(dropped) == 12 - 2 + 5 - 2 and all(r["n_planned"] == 0 for r in dropped)
    assert {r["repeat"] for r in rows} <= {0, 1}
    assert_val_untouched(rows)


def test_oversample_repeats_minorities_up_to_the_largest():
    rows = balance(train_val(COUNTS), "oversample", seed=1)
    assert train_counts(rows) == {k: 12 for k in COUNTS}
    assert all(r["repeat"] == 6 for r in of(rows, label="small"))
    mid = [r["repeat"] for r in of(rows, label="mid")]
    assert max(mid) - min(mid) <= 1  # spread evenly
    assert all(type(r["repeat"]) is int for r in rows)
    assert_val_untouched(rows)


def test_max_per_class_caps_every_mode():
    for mode in ("none", "oversample"):
        rows = balance(train_val(COUNTS), mode, max_per_class=4, seed=0)
        assert max(kept_per_class(rows).values()) == 4
    rows = balance(train_val(COUNTS), "oversample", max_per_class=4, seed=0)
    assert train_counts(rows) == {k: 4 for k in COUNTS}


def test_frames_equalises_frame_totals_without_duplicates():
    caps = {"big": 1000, "mid": 1000, "small": 40}
    rows = balance(train_val(COUNTS, caps), "frames", frames_per_video=8, max_frames_per_video=64)
    totals = train_counts(rows, "n_planned")
    assert totals["big"] == 12 * 8 and totals["mid"] == 12 * 8
    assert totals["small"] == 2 * 40  # limited by what its videos hold
    assert all(r["n_planned"] <= min(r["capacity"], 64) for r in of(rows))
    assert all(r["n_planned"] == 8 for r in of(rows, label="big"))
    assert all(r["repeat"] == 1 for r in rows)
    assert_val_untouched(rows, 8)


def test_frames_respects_max_frames_per_video():
    rows = balance(train_val(COUNTS), "frames", frames_per_video=8, max_frames_per_video=10)
    assert train_counts(rows, "n_planned") == {"big": 96, "mid": 50, "small": 20}


def test_frames_needs_uniform_sampling_and_a_sane_cap():
    rows = train_val(COUNTS)
    with pytest.raises(ValueError, match="frames_per_video"):
        balance(rows, "frames", frames_per_video=None)
    with pytest.raises(ValueError, match="max_frames_per_video=4"):
        balance(rows, "frames", frames_per_video=8, max_frames_per_video=4)
    assert rows == train_val(COUNTS)  # refused before any row changed


def test_bad_mode_and_cap_are_refused():
    with pytest.raises(ValueError, match="balance='smote'"):
        balance(train_val(COUNTS), "smote")
    with pytest.raises(ValueError, match="max_per_class"):
        balance(train_val(COUNTS), "none", max_per_class=0)


def test_same_seed_same_choices():
    a = balance(train_val(COUNTS), "undersample", seed=5)
    shuffled = train_val(COUNTS)
    random.Random(0).shuffle(shuffled)
    b = balance(shuffled, "undersample", seed=5)
    assert {r["video_id"]: r["repeat"] for r in a} == {r["video_id"]: r["repeat"] for r in b}


@pytest.mark.parametrize("total,caps", [(10, [3, 3, 3, 3]), (7, [1, 5, 5]), (100, [2, 3]),
                                        (0, [4, 4])])
def test_spread_is_even_within_caps(total, caps):
    alloc = spread(total, np.array(caps), seed=0, label="x")
    assert alloc.sum() == min(total, sum(caps))
    assert (alloc <= caps).all()
    room = alloc < caps
    if room.any():
        assert alloc[room].max() - alloc[room].min() <= 1


def test_planning_imports_no_pandas():
    code = ("import sys\n"
            "from vidfeat.ingestion.balance import balance\n"
            "from vidfeat.ingestion.split import assign_splits\n"
            "from vidfeat.ingestion.stats import nested_counts\n"
            "rows = [dict(video_id=str(i), label='ab'[i % 2], split='', status='ok',"
            " capacity=40) for i in range(20)]\n"
            "balance(assign_splits(rows, seed=1), 'frames', frames_per_video=4)\n"
            "cols = {k: [r[k] for r in rows] for k in ('label', 'split', 'n_planned')}\n"
            "print(nested_counts(cols, ['label'], 'n_planned'), 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"


# --- the pandas implementation records replaced, as the reference ------------------------------

def old_balance(videos, mode="none", *, seed=0, frames_per_video=16, max_frames_per_video=None,
                max_per_class=None, capacity="capacity"):
    out = videos.copy()
    out["repeat"] = 1
    out["n_planned"] = pd.array([frames_per_video] * len(out), dtype="Int64")
    train = out[out["split"] == "train"]
    groups = {label: g.sort_values("video_id").index for label, g in train.groupby("label")}
    if max_per_class is not None:
        groups = {k: old_keep(out, ids, max_per_class, seed, k) for k, ids in groups.items()}
    if mode == "undersample" and groups:
        smallest = min(len(ids) for ids in groups.values())
        groups = {k: old_keep(out, ids, smallest, seed, k) for k, ids in groups.items()}
    elif mode == "oversample" and groups:
        largest = max(len(ids) for ids in groups.values())
        for label, ids in groups.items():
            out.loc[ids, "repeat"] = spread(largest, np.ones(len(ids), int) * largest, seed, label)
    elif mode == "frames":
        cap_limit = max_frames_per_video or DEFAULT_MAX_FRAMES_FACTOR * frames_per_video
        caps = {k: np.minimum(out.loc[ids, capacity].to_numpy(np.int64), cap_limit)
                for k, ids in groups.items()}
        base = {k: np.minimum(c, frames_per_video) for k, c in caps.items()}
        target = max((int(b.sum()) for b in base.values()), default=0)
        for label, ids in groups.items():
            alloc = spread(target, caps[label], seed, label, floor=frames_per_video)
            out.loc[ids, "n_planned"] = np.maximum(alloc, base[label])
    return out


def old_keep(out, ids, n, seed, label):
    if len(ids) <= n:
        return ids
    order = rng_for(seed, "keep", str(label)).permutation(len(ids))
    out.loc[ids[np.sort(order[n:])], ["repeat", "n_planned"]] = 0
    return ids[np.sort(order[:n])]


def random_rows(rnd):
    labels = rnd.sample(["a", "b", "c", "d", "é", "10", "2"], rnd.randint(1, 5)) + [None]
    ids = rnd.sample(range(1000), rnd.randint(0, 80))
    return [dict(video_id=f"v{i:04d}", label=rnd.choice(labels),
                 split=rnd.choice(["train"] * 5 + ["val", "test", ""]),
                 capacity=rnd.choice([0, 1, 3, 8, 20, 50, 500])) for i in ids]


@pytest.mark.parametrize("seed", range(40))
def test_balance_matches_the_pandas_version(seed):
    rnd = random.Random(seed)
    rows = random_rows(rnd)
    mode = rnd.choice(["none", "undersample", "oversample", "frames"])
    options = dict(seed=rnd.randint(0, 3), frames_per_video=rnd.choice([1, 4, 8]),
                   max_frames_per_video=rnd.choice([None, 8, 30]),
                   max_per_class=rnd.choice([None, None, 1, 3, 10]))
    if mode == "frames" and (options["max_frames_per_video"] or 99) < options["frames_per_video"]:
        options["max_frames_per_video"] = None
    if mode != "frames" and rnd.random() < 0.3:
        options["frames_per_video"] = None
    frame = pd.DataFrame(rows, columns=["video_id", "label", "split", "capacity"])
    want = old_balance(frame, mode, **options)
    got = balance([dict(r) for r in rows], mode, **options)
    assert [r["repeat"] for r in got] == want["repeat"].tolist()
    assert [r["n_planned"] for r in got] == want["n_planned"].astype(object).where(
        want["n_planned"].notna(), None).tolist()
