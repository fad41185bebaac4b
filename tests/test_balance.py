"""Balancing on the train split only: undersample, oversample, frames, max_per_class."""
import numpy as np
import pandas as pd
import pytest

from vidfeat.ingestion.balance import balance, spread


def train_val(counts, capacity=None, val=2):
    rows = []
    for label, n in counts.items():
        for i in range(n + val):
            rows.append(dict(video_id=f"{label}/{i:03d}", label=label,
                             split="train" if i < n else "val",
                             capacity=(capacity or {}).get(label, 1000)))
    return pd.DataFrame(rows)


COUNTS = {"big": 12, "mid": 5, "small": 2}


def train_counts(df, column="repeat"):
    train = df[df["split"] == "train"]
    return train.groupby("label")[column].sum().to_dict()


def assert_val_untouched(df, frames_per_video=16):
    val = df[df["split"] == "val"]
    assert (val["repeat"] == 1).all() and (val["n_planned"] == frames_per_video).all()


def test_none_keeps_everything():
    df = balance(train_val(COUNTS), "none")
    assert (df["repeat"] == 1).all() and (df["n_planned"] == 16).all()


def test_undersample_drops_down_to_the_smallest_class():
    df = balance(train_val(COUNTS), "undersample", seed=1)
    kept = df[(df["split"] == "train") & (df["repeat"] > 0)]
    assert kept.groupby("label").size().to_dict() == {k: 2 for k in COUNTS}
    dropped = df[df["repeat"] == 0]
    assert len(dropped) == 12 - 2 + 5 - 2 and (dropped["n_planned"] == 0).all()
    assert set(df["repeat"]) <= {0, 1}
    assert_val_untouched(df)


def test_oversample_repeats_minorities_up_to_the_largest():
    df = balance(train_val(COUNTS), "oversample", seed=1)
    assert train_counts(df) == {k: 12 for k in COUNTS}
    small = df[(df["label"] == "small") & (df["split"] == "train")]
    assert (small["repeat"] == 6).all()
    mid = df[(df["label"] == "mid") & (df["split"] == "train")]["repeat"]
    assert mid.max() - mid.min() <= 1  # spread evenly
    assert_val_untouched(df)


def test_max_per_class_caps_every_mode():
    for mode in ("none", "oversample"):
        df = balance(train_val(COUNTS), mode, max_per_class=4, seed=0)
        kept = df[(df["split"] == "train") & (df["repeat"] > 0)]
        assert kept.groupby("label").size().max() == 4
    df = balance(train_val(COUNTS), "oversample", max_per_class=4, seed=0)
    assert train_counts(df) == {k: 4 for k in COUNTS}


def test_frames_equalises_frame_totals_without_duplicates():
    caps = {"big": 1000, "mid": 1000, "small": 40}
    df = balance(train_val(COUNTS, caps), "frames", frames_per_video=8, max_frames_per_video=64)
    totals = train_counts(df, "n_planned")
    assert totals["big"] == 12 * 8 and totals["mid"] == 12 * 8
    assert totals["small"] == 2 * 40  # limited by what its videos hold
    train = df[df["split"] == "train"]
    assert (train["n_planned"] <= np.minimum(train["capacity"], 64)).all()
    assert (train[train["label"] == "big"]["n_planned"] == 8).all()
    assert (df["repeat"] == 1).all()
    assert_val_untouched(df, 8)


def test_frames_respects_max_frames_per_video():
    df = balance(train_val(COUNTS), "frames", frames_per_video=8, max_frames_per_video=10)
    assert train_counts(df, "n_planned") == {"big": 96, "mid": 50, "small": 20}


def test_frames_needs_uniform_sampling_and_a_sane_cap():
    with pytest.raises(ValueError, match="frames_per_video"):
        balance(train_val(COUNTS), "frames", frames_per_video=None)
    with pytest.raises(ValueError, match="max_frames_per_video=4"):
        balance(train_val(COUNTS), "frames", frames_per_video=8, max_frames_per_video=4)


def test_bad_mode_and_cap_are_refused():
    with pytest.raises(ValueError, match="balance='smote'"):
        balance(train_val(COUNTS), "smote")
    with pytest.raises(ValueError, match="max_per_class"):
        balance(train_val(COUNTS), "none", max_per_class=0)


def test_same_seed_same_choices():
    a = balance(train_val(COUNTS), "undersample", seed=5)
    b = balance(train_val(COUNTS).sample(frac=1, random_state=0), "undersample", seed=5)
    assert a.set_index("video_id")["repeat"].equals(b.set_index("video_id")["repeat"].loc[a["video_id"]])


@pytest.mark.parametrize("total,caps", [(10, [3, 3, 3, 3]), (7, [1, 5, 5]), (100, [2, 3]),
                                        (0, [4, 4])])
def test_spread_is_even_within_caps(total, caps):
    alloc = spread(total, np.array(caps), seed=0, label="x")
    assert alloc.sum() == min(total, sum(caps))
    assert (alloc <= caps).all()
    room = alloc < caps
    if room.any():
        assert alloc[room].max() - alloc[room].min() <= 1
