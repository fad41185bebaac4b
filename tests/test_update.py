"""extraction.update: which rows of an old feature file a changed manifest may keep."""
import numpy as np

from vidfeat.extraction.update import gather, plan_reuse


def test_plan_keeps_only_same_frame_same_bytes():
    old_ids, old_hashes = ["a#0", "a#1", "b#0", "c#0"], ["h1", "h2", "h3", "h4"]
    new_ids = ["a#0", "a#1", "b#0", "d#0"]
    new_hashes = ["h1", "CHANGED", "h3", "h9"]
    plan = plan_reuse(old_ids, old_hashes, new_ids, new_hashes)
    assert plan.old_row.tolist() == [0, -1, 2, -1]
    assert plan.todo.tolist() == [1, 3] and plan.kept == 2 and plan.dropped == 2


def test_plan_without_hashes_keeps_nothing():
    plan = plan_reuse(["a#0"], None, ["a#0"], ["h1"])
    assert plan.old_row.tolist() == [-1]
    plan = plan_reuse(["a#0"], [""], ["a#0"], [""])  # unhashed rows are never proven unchanged
    assert plan.old_row.tolist() == [-1]


def test_gather_matches_fancy_indexing_in_any_order():
    rng = np.random.default_rng(0)
    old = rng.standard_normal((1000, 7)).astype(np.float16)
    calls = []

    def read_range(start, stop):
        calls.append((start, stop))
        return old[start:stop]

    for rows in (np.arange(10, 60), rng.permutation(1000)[:40], np.array([5, 5, 900, 3, 901])):
        calls.clear()
        got = gather(read_range, rows, 7, np.float16)
        assert np.array_equal(got, old[rows])
        assert sum(b - a for a, b in calls) <= max(4 * len(rows), 1000)
