"""Video-level stratified splits: reproducible, per class, every ok video in exactly one split."""
import pandas as pd
import pytest

from vidfeat.ingestion.split import assign_splits, parse_ratios, split_counts


def videos(counts, failed=0):
    rows = [dict(video_id=f"{label}/{i:03d}.mp4", label=label, split="", status="ok")
            for label, n in counts.items() for i in range(n)]
    rows += [dict(video_id=f"bad/{i}.mp4", label="a", split="", status="failed")
             for i in range(failed)]
    return pd.DataFrame(rows)


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
    df = assign_splits(videos({"a": 50, "b": 20, "c": 3}, failed=2), (0.8, 0.1, 0.1), seed=0)
    ok = df[df["status"] == "ok"]
    assert set(ok["split"]) <= {"train", "val", "test"} and (ok["split"] != "").all()
    assert (df.loc[df["status"] == "failed", "split"] == "").all()
    assert not df["video_id"].duplicated().any()
    for label, n in {"a": 50, "b": 20, "c": 3}.items():
        got = ok[ok["label"] == label]["split"].value_counts().reindex(
            ["train", "val", "test"], fill_value=0).tolist()
        assert got == split_counts(n, (0.8, 0.1, 0.1))


def test_same_seed_same_split_other_seed_differs():
    df = videos({"a": 40, "b": 40})
    one, two = assign_splits(df, seed=3), assign_splits(df.sample(frac=1, random_state=1), seed=3)
    assert one.set_index("video_id")["split"].equals(two.set_index("video_id")["split"].loc[one["video_id"]])
    other = assign_splits(df, seed=4)
    assert not other["split"].equals(one["split"])


def test_adding_a_class_does_not_move_the_others():
    before = assign_splits(videos({"a": 30}), seed=0).set_index("video_id")["split"]
    after = assign_splits(videos({"a": 30, "b": 9}), seed=0).set_index("video_id")["split"]
    assert after.loc[before.index].equals(before)


def test_given_splits_are_kept():
    df = videos({"a": 10})
    df.loc[:4, "split"] = "test"
    out = assign_splits(df, (1.0, 0.0, 0.0), seed=0)
    assert (out.loc[:4, "split"] == "test").all()
    assert (out.loc[5:, "split"] == "train").all()
