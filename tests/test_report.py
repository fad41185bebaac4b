"""vidfeat.report: numbers cross-checked with scikit-learn / scipy / independent formulas, the
outputs (JSON, Markdown, self-contained HTML, PNGs), warnings and edge cases, the CLI."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import entropy
from sklearn.metrics import (
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
)
from sklearn.utils.class_weight import compute_class_weight
from videos import make_video

from vidfeat.ingestion.manifest import ManifestError, write_manifest
from vidfeat.ingestion.probe import probe_video
from vidfeat.reporting._report import BETAS, report, summarize
from vidfeat.training.metrics import classification_metrics

# (label, split, frames stored, repeat, duration_s) -- balancing oversampled gamma in train and
# undersampled one alpha train video (repeat 0)
SPEC = (
    [("alpha", "train", 4, 1, 2.0)] * 5 + [("alpha", "train", 4, 0, 2.0)]
    + [("alpha", "val", 4, 1, 2.0), ("alpha", "test", 4, 1, 2.0)]
    + [("beta", "train", 3, 1, 1.5)] * 3 + [("beta", "val", 3, 1, 1.5), ("beta", "test", 3, 1, 1.5)]
    + [("gamma", "train", 2, 3, 1.0)] * 2 + [("gamma", "test", 2, 1, 1.0)]
)


def spec_frame(spec) -> pd.DataFrame:
    df = pd.DataFrame(spec, columns=["label", "split", "n_frames", "repeat", "duration_s"])
    df["video_id"] = pd.Series([f"{r.label}/{i:03d}.mp4" for i, r in enumerate(df.itertuples())],
                               dtype="string")
    return df


def write_outdir(root, spec=SPEC, *, failed=(), vfr=(), rotated=(), frames_for_dropped=True):
    """An ingest OUTDIR from ``spec``; ``failed`` = [(label, error)]; vfr/rotated = video indexes."""
    df = spec_frame(spec)
    videos = pd.DataFrame({
        "video_id": df["video_id"], "path": "/data/" + df["video_id"], "label": df["label"],
        "split": df["split"], "status": "ok", "error": "", "duration_s": df["duration_s"],
        "fps": 10.0, "width": 64, "height": 48, "n_frames": df["n_frames"], "repeat": df["repeat"],
        "vfr": [i in vfr for i in range(len(df))],
        "rotation": [90 if i in rotated else 0 for i in range(len(df))]})
    bad = pd.DataFrame({
        "video_id": [f"{label}/bad{i}.mp4" for i, (label, _) in enumerate(failed)],
        "path": [f"/data/{label}/bad{i}.mp4" for i, (label, _) in enumerate(failed)],
        "label": [label for label, _ in failed], "split": "", "status": "failed",
        "error": [err for _, err in failed], "n_frames": 0, "repeat": 0})
    videos = pd.concat([videos, bad], ignore_index=True) if failed else videos
    frames = [{"frame_id": f"{r.video_id}#{j}", "video_id": r.video_id, "label": r.label,
               "split": r.split, "frame_index": j, "timestamp_s": j / 10,
               "path": f"frames/{r.video_id}/{j:06d}.jpg", "repeat": max(r.repeat, 1)}
              for r in df.itertuples() if r.repeat or frames_for_dropped for j in range(r.n_frames)]
    frames = pd.DataFrame(frames, columns=["frame_id", "video_id", "label", "split", "frame_index",
                                           "timestamp_s", "path", "repeat"])
    write_manifest(root, videos, frames, {"args": {}})
    return root


def write_model(root, class_names, predictions: dict, train_counts=None):
    """MODEL_DIR with metrics.json from {split: {level: (y_true, y_pred)}} via classification_metrics."""
    root.mkdir(parents=True, exist_ok=True)
    metrics = {split: {level: classification_metrics(t, p, class_names) for level, (t, p) in lv.items()}
               for split, lv in predictions.items()}
    (root / "metrics.json").write_text(json.dumps(metrics))
    config = {"class_names": class_names}
    if train_counts is not None:
        config["train_counts"] = train_counts
    (root / "config.json").write_text(json.dumps(config))
    return root


def strict_json(path):
    def no_constants(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=no_constants)


def codes(result) -> dict[str, list[str]]:
    """Warning code -> the classes named by all warnings with that code."""
    out: dict[str, list[str]] = {}
    for w in result.warnings:
        out.setdefault(w["code"], []).extend(w["classes"])
    return out


@pytest.fixture
def outdir(tmp_path):
    return write_outdir(tmp_path / "ingest", failed=[("beta", "moov atom not found"),
                                                     ("beta", "moov atom not found"),
                                                     ("gamma", "no video stream (audio-only file)")],
                        vfr=(0,), rotated=(8, 9))


def test_counts_before_and_after_balancing(outdir):
    r = report(outdir, outdir / "rep", progress=False)
    df = spec_frame(SPEC)
    df["kept"] = df["repeat"] > 0
    for (label, split), g in df.groupby(["label", "split"]):
        c = r.data["counts"][label][split]
        assert c["videos"] == len(g)
        assert c["videos_after"] == g["repeat"].sum()
        assert c["dropped_videos"] == (~g["kept"]).sum()
        assert c["frames"] == g["n_frames"].sum()  # frames of dropped videos still count before
        assert c["frames_after"] == (g["n_frames"] * g["repeat"]).sum()
        assert c["duration_s"] == pytest.approx(g["duration_s"].sum())
        assert c["duration_s_after"] == pytest.approx((g["duration_s"] * g["repeat"]).sum())
        assert c["mean_duration_s"] == pytest.approx(g["duration_s"].mean())
        assert c["frames_per_video"] == pytest.approx(g["n_frames"].mean())
    assert r.data["counts"]["alpha"]["all"]["videos"] == 8
    assert r.data["counts"]["beta"]["all"]["failed"] == 2
    assert r.data["totals"] == {"videos": len(df) + 3, "ok": len(df), "failed": 3,
                                "frames": int(df["n_frames"].sum()),
                                "duration_s": pytest.approx(df["duration_s"].sum())}
    assert r.data["splits"] == ["train", "val", "test", "all"]


def test_dropped_videos_without_frames_count_the_same_after(tmp_path):
    a = report(write_outdir(tmp_path / "a"), tmp_path / "ra", progress=False).data
    b = report(write_outdir(tmp_path / "b", frames_for_dropped=False), tmp_path / "rb",
               progress=False).data
    for label in ("alpha", "beta", "gamma"):
        assert a["counts"][label]["train"]["frames_after"] == b["counts"][label]["train"]["frames_after"]
    assert b["counts"]["alpha"]["train"]["frames"] == a["counts"]["alpha"]["train"]["frames"] - 4


def test_class_weights_match_sklearn(outdir):
    imb = report(outdir, outdir / "rep", progress=False).data["imbalance"]
    assert imb["scope"] == "train"
    df = spec_frame(SPEC)
    train = df[df["split"] == "train"]
    classes = np.array(["alpha", "beta", "gamma"])
    cases = {("videos", "before"): train["label"],
             ("videos", "after"): train["label"].repeat(train["repeat"]),
             ("frames", "before"): train["label"].repeat(train["n_frames"]),
             ("frames", "after"): train["label"].repeat(train["n_frames"] * train["repeat"])}
    for (unit, when), y in cases.items():
        expected = compute_class_weight("balanced", classes=classes, y=y.to_numpy())
        got = imb[unit][when]["weights"]["balanced"]
        assert [got[c] for c in classes] == pytest.approx(expected), (unit, when)
        assert imb[unit][when]["counts"] == y.value_counts().to_dict()


def test_imbalance_measures_match_independent_formulas(outdir):
    m = report(outdir, outdir / "rep", progress=False).data["imbalance"]["frames"]["after"]
    n = np.array([m["counts"][c] for c in ("alpha", "beta", "gamma")], dtype=float)
    assert n.tolist() == [20, 9, 12]
    assert m["imbalance_ratio"] == pytest.approx(20 / 9)
    assert (m["largest"], m["smallest"]) == ("alpha", "beta")
    assert m["normalized_entropy"] == pytest.approx(entropy(n) / math.log(3))
    pairwise = np.abs(n[:, None] - n[None, :]).sum() / (2 * len(n) ** 2 * n.mean())
    assert m["gini"] == pytest.approx(pairwise)
    for beta in BETAS:
        # Cui et al. 2019, at training's scale: the weighted count equals the real count
        w = (1 - beta) / (1 - np.power(beta, n))
        w = w * n.sum() / (w * n).sum()
        got = m["weights"]["effective_number"][str(beta)]
        assert [got[c] for c in ("alpha", "beta", "gamma")] == pytest.approx(w)
        assert sum(got[c] * m["counts"][c] for c in got) == pytest.approx(n.sum())


def test_even_classes_have_no_imbalance(tmp_path):
    spec = [("a", "train", 2, 1, 1.0)] * 4 + [("b", "train", 2, 1, 1.0)] * 4
    m = report(write_outdir(tmp_path / "o", spec), tmp_path / "r",
               progress=False).data["imbalance"]["videos"]["before"]
    assert (m["imbalance_ratio"], m["normalized_entropy"], m["gini"]) == (1.0, pytest.approx(1.0),
                                                                          pytest.approx(0.0))
    assert m["weights"]["effective_number"]["0.99"] == {"a": pytest.approx(1.0),
                                                        "b": pytest.approx(1.0)}


def test_model_section_matches_sklearn(outdir, tmp_path):
    rng = np.random.default_rng(0)
    names = ["alpha", "beta", "gamma"]
    preds = {}
    for split in ("val", "test"):
        y = rng.integers(0, 3, 60)
        y_hat = np.where(rng.random(60) < 0.6, y, rng.integers(0, 3, 60))
        y_hat[y == 2] = 0  # gamma never recognised
        preds[split] = {"frame": (y, y_hat), "video": (y[:12], y_hat[:12])}
    model = write_model(tmp_path / "model", names, preds)
    r = report(outdir, tmp_path / "rep", model=model, progress=False)
    res = r.data["model"]["results"]
    for split, levels in preds.items():
        for level, (y, y_hat) in levels.items():
            m = res[split][level]
            sk = classification_report(y, y_hat, labels=[0, 1, 2], target_names=names,
                                       output_dict=True, zero_division=0)
            for c in names:
                for key in ("precision", "recall", "f1-score", "support"):
                    assert m["per_class"][c][key.replace("-score", "")] == pytest.approx(sk[c][key])
            assert m["confusion_matrix"] == confusion_matrix(y, y_hat, labels=[0, 1, 2]).tolist()
            norm = np.nan_to_num(confusion_matrix(y, y_hat, labels=[0, 1, 2], normalize="true"))
            assert np.allclose(m["confusion_matrix_normalized"], norm)
            assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, y_hat))
            assert m["macro_f1"] == pytest.approx(sk["macro avg"]["f1-score"])
            curve = {p["class"]: p for p in m["recall_vs_train_frequency"]}
            assert {c: p["train_count"] for c, p in curve.items()} == {"alpha": 20, "beta": 9,
                                                                     "gamma": 12}
            assert curve["beta"]["recall"] == pytest.approx(sk["beta"]["recall"])
            assert curve["gamma"]["train_fraction"] == pytest.approx(12 / 41)
    assert r.data["model"]["train_frequency"]["source"] == "manifest"
    assert "gamma" in codes(r)["zero_recall"]
    assert {"confusion_val_frame", "confusion_test_video", "recall_vs_frequency"} <= set(r.files)
    # a model without row_level (written before clip features) counts frames
    assert r.data["model"]["row_level"] == "frame"
    md = r.files["md"].read_text()
    assert "### val, frame level" in md and "clip" not in md
    assert any(w["message"].startswith("val frame level: the model never recognises")
               for w in r.warnings)


def test_a_clip_model_is_reported_at_clip_level(clip_features, tmp_path, monkeypatch):
    """train on real clip features, then report: every place that names the row level says
    "clip" (Markdown, HTML, plot titles and legend, the summary); report.json keeps the
    "frame" key and says row_level "clip"."""
    from vidfeat.reporting import plots
    from vidfeat.training._train import train

    ingest_dir, path = clip_features
    train(path, tmp_path / "m", device="cpu", epochs=3, progress=False)
    drawn = []
    heatmap, curves = plots.confusion_heatmap, plots.recall_vs_frequency
    monkeypatch.setattr(plots, "confusion_heatmap",
                        lambda *a: drawn.append(a[-1]) or heatmap(*a))
    monkeypatch.setattr(plots, "recall_vs_frequency",
                        lambda out, series: drawn.extend(series) or curves(out, series))
    r = report(ingest_dir, tmp_path / "rep", model=tmp_path / "m", progress=False)
    data = strict_json(r.files["json"])
    assert data["model"]["row_level"] == "clip"
    assert data["model"]["results"]["val"]["frame"]["n"] == 4  # 2 val videos x 2 clips
    md = r.files["md"].read_text()
    model_part = md[md.index("## Model evaluation"):]
    assert "### val, clip level" in model_part and "### val, video level" in model_part
    assert "confusion matrix val clip" in model_part and "frame level" not in md
    assert "val, clip level" in r.files["html"].read_text()
    assert drawn == ["val, clip level (row-normalised)", "val, video level (row-normalised)",
                     "val clip", "val video"]
    assert "Model val balanced accuracy: clip " in summarize(r, 0.0)


def test_model_train_counts_from_config_win(outdir, tmp_path):
    y = np.array([0, 1, 1, 0])
    model = write_model(tmp_path / "m", ["alpha", "beta"], {"val": {"frame": (y, y)}},
                        train_counts={"alpha": 100, "beta": 7})
    r = report(outdir, tmp_path / "rep", model=model, progress=False)
    freq = r.data["model"]["train_frequency"]
    assert freq == {"source": "config", "counts": {"alpha": 100, "beta": 7}}
    assert "video" not in r.data["model"]["results"]["val"]


def test_html_is_self_contained_and_every_image_decodes(outdir, tmp_path):
    y = np.array([0, 1, 2, 2, 1, 0])
    model = write_model(tmp_path / "m", ["alpha", "beta", "gamma"],
                        {"test": {"frame": (y, y[::-1]), "video": (y, y)}})
    r = report(outdir, tmp_path / "rep", model=model, progress=False)
    page = r.files["html"].read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", page)
    assert not re.search(r"[a-z]+://|https?:|//[a-z]|url\(|@import|<script|<link|<iframe|<object",
                         text, re.I)
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    pngs = sorted(p for p in (tmp_path / "rep").glob("*.png"))
    assert len(refs) == len(pngs) == 5 and all(ref.startswith("data:image/png;base64,") for ref in refs)
    for ref in refs:
        img = Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1], validate=True)))
        img.load()
        assert img.format == "PNG" and min(img.size) > 100
        assert b"http" not in base64.b64decode(ref.split(",", 1)[1])  # no matplotlib URL metadata
    for png in pngs:
        with Image.open(png) as img:
            img.verify()
    assert set(r.data["files"].values()) == {p.name for p in r.files.values()}


def test_json_and_markdown_outputs(outdir):
    r = report(outdir, progress=False)
    assert r.output == outdir / "report"
    data = strict_json(r.files["json"])
    assert data["schema_version"] == 1 and data["counts"] == r.data["counts"]
    assert data["source"] == {"path": str(outdir), "kind": "ingest", "labels": None,
                              "frames": "stored",
                              "fingerprint": json.loads((outdir / "ingest.json").read_text())[
                                  "fingerprint"]}
    md = r.files["md"].read_text()
    assert "| alpha | 8 | 7 | 1 | 32 | 28 |" in md  # all splits: videos, after, dropped, frames, after
    assert "![class counts before and after balancing](class_counts.png)" in md
    assert "moov atom not found (x2, e.g. beta/bad0.mp4)" in md


def test_hostile_class_names_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>|x"
    spec = [(evil, "train", 2, 1, 1.0)] * 3 + [("ok", "train", 2, 1, 1.0)] * 3
    r = report(write_outdir(tmp_path / "o", spec), tmp_path / "r", progress=False)
    page, md = r.files["html"].read_text(), r.files["md"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;|x" in page
    assert not re.search(r"(?<!\\)<", md) and r"\<script\>alert(1)\</script\>\|x" in md
    assert r.data["classes"] == sorted([evil, "ok"])


def test_warnings_name_the_classes(tmp_path):
    spec = ([("alpha", s, 2, 1, 1.0) for s in ["train"] * 16 + ["val"] * 2 + ["test"] * 2]
            + [("beta", "train", 2, 1, 1.0)] * 3 + [("beta", "test", 2, 1, 1.0)] * 3
            + [("solo", "train", 2, 1, 1.0)])
    root = write_outdir(tmp_path / "o", spec, vfr=(0, 1, 20), rotated=(5,),
                        failed=[("beta", "truncated")])
    r = report(root, tmp_path / "r", progress=False, min_videos=10, max_drift=0.2)
    w = codes(r)
    assert w["few_videos"] == ["beta"]
    assert w["single_video"] == ["solo"]
    missing = {m["message"]: m["classes"] for m in r.warnings if m["code"] == "missing_from_split"}
    assert missing == {"classes 'beta', 'solo' have no video in 'val'": ["beta", "solo"],
                       "class 'solo' has no video in 'test'": ["solo"]}
    drift = r.data["split_distribution"]["drift_from_train"]
    # independent TVD: train 16/3/1 of 20, test 2/3/0 of 5
    assert drift["test"] == pytest.approx(0.5 * (abs(0.8 - 0.4) + abs(0.15 - 0.6) + abs(0.05 - 0)))
    assert drift["val"] == pytest.approx(0.5 * (0.2 + 0.15 + 0.05))
    assert set(w["split_drift"]) <= {"alpha", "beta", "solo"} and "beta" in w["split_drift"]
    assert w["vfr"] == ["alpha", "beta"] and w["rotated"] == ["alpha"]
    assert w["failures"] == ["beta"]
    assert "truncated" in next(x["message"] for x in r.warnings if x["code"] == "failures")


def test_one_class(tmp_path):
    r = report(write_outdir(tmp_path / "o", [("only", "train", 2, 1, 1.0)] * 3
                            + [("only", "val", 2, 1, 1.0), ("only", "test", 2, 1, 1.0)]),
               tmp_path / "r", progress=False)
    assert r.warnings[0]["code"] == "one_class" and r.warnings[0]["classes"] == ["only"]
    assert "only one class ('only')" in r.warnings[0]["message"]
    m = r.data["imbalance"]["videos"]["before"]
    assert (m["imbalance_ratio"], m["normalized_entropy"], m["gini"]) == (1.0, None, 0.0)
    assert m["weights"]["balanced"] == {"only": 1.0}
    assert "only one class" in r.files["html"].read_text()


def test_empty_split(tmp_path):
    spec = [("a", "train", 2, 1, 1.0)] * 3 + [("b", "train", 2, 1, 1.0)] * 3 + [
        ("a", "test", 2, 1, 1.0), ("b", "test", 2, 1, 1.0)]
    r = report(write_outdir(tmp_path / "o", spec), tmp_path / "r", progress=False)
    assert r.data["splits"] == ["train", "test", "all"]
    msg = [w["message"] for w in r.warnings if w["code"] == "empty_split"]
    assert msg == ["split 'val' has no videos: no val results can be computed"]
    assert "missing_from_split" not in codes(r)
    assert r.data["split_distribution"]["drift_from_train"] == {"val": None, "test": 0.0}


def test_class_with_a_single_video_and_no_train_videos(tmp_path):
    spec = [("a", "train", 2, 1, 1.0)] * 4 + [("b", "test", 2, 1, 1.0)]
    r = report(write_outdir(tmp_path / "o", spec), tmp_path / "r", progress=False)
    assert codes(r)["single_video"] == ["b"]
    assert "never trained on or never evaluated" in r.files["md"].read_text()
    m = r.data["imbalance"]["videos"]["before"]
    assert m["counts"] == {"a": 4, "b": 0}
    assert m["imbalance_ratio"] is None and m["weights"]["balanced"] == {"a": 1.0, "b": None}
    assert m["weights"]["effective_number"]["0.9"]["b"] is None
    assert "missing_from_split" in codes(r) and "b" in codes(r)["missing_from_split"]


def test_all_videos_failed(tmp_path):
    root = write_outdir(tmp_path / "o", [], failed=[("a", "moov atom not found")] * 2
                        + [("b", "not a video container")])
    r = report(root, tmp_path / "r", progress=False)
    assert [w["code"] for w in r.warnings] == ["no_videos"]
    assert r.warnings[0]["message"].startswith("no usable video: all 3 videos failed (most common "
                                               "reasons: 'moov atom not found' x2")
    assert r.data["failures"]["by_class"]["a"]["reasons"] == [
        {"reason": "moov atom not found", "count": 2, "examples": ["a/bad0.mp4", "a/bad1.mp4"],
         "example_error": "moov atom not found"}]
    assert set(r.files) == {"json", "md", "html"}  # nothing to plot
    assert "Failed videos (3)" in r.files["html"].read_text()
    assert r.data["imbalance"]["videos"]["before"]["imbalance_ratio"] is None
    strict_json(r.files["json"])


def test_bad_inputs_have_clear_errors(outdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="report source not found"):
        report(tmp_path / "nope", progress=False)
    with pytest.raises(FileNotFoundError, match="no metrics.json in model folder"):
        report(outdir, tmp_path / "r", model=tmp_path, progress=False)
    bad = write_model(tmp_path / "m", ["alpha", "beta"], {"val": {"frame": ([0, 1], [0, 1])}})
    (bad / "config.json").write_text(json.dumps({"class_names": ["alpha", "beta", "gamma"]}))
    with pytest.raises(ValueError, match=r"val.frame.confusion_matrix is \(2, 2\), expected 3x3"):
        report(outdir, tmp_path / "r", model=bad, progress=False)
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not readable JSON"):
        report(outdir, tmp_path / "r", model=bad, progress=False)
    with pytest.raises(ValueError, match="labels= is only for a pre-flight"):
        report(outdir, labels="x.csv", progress=False)
    with pytest.raises(ValueError, match="max_drift must be in"):
        report(outdir, max_drift=0, progress=False)
    (outdir / "videos.parquet").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match=r"videos\.parquet.* not a readable Parquet file"):
        report(outdir, progress=False)


def test_empty_manifest_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no videos in"):
        report(write_outdir(tmp_path / "o", []), progress=False)


def test_malformed_manifest_names_the_column(outdir):
    videos = pd.read_parquet(outdir / "videos.parquet").drop(columns=["label"])
    videos.to_parquet(outdir / "videos.parquet")
    with pytest.raises(ManifestError, match="missing column 'label'"):
        report(outdir, progress=False)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vidfeat", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_writes_the_report_and_prints_a_summary(outdir, tmp_path):
    y = np.array([0, 1, 2, 1])
    model = write_model(tmp_path / "m", ["alpha", "beta", "gamma"], {"val": {"video": (y, y)}})
    proc = _cli(outdir, "-o", tmp_path / "rep", "--model", model, "--min-videos", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"3 classes, {len(SPEC) + 3} videos ({len(SPEC)} ok, 3 failed)" in out and "val balanced accuracy: video 1.000" in out
    assert f"to {tmp_path / 'rep'}" in out
    data = strict_json(tmp_path / "rep" / "report.json")
    assert data["model"]["results"]["val"]["video"]["accuracy"] == 1.0
    assert "few_videos" not in {w["code"] for w in data["warnings"]}  # --min-videos 3 reached it


def test_cli_errors_are_one_line(tmp_path):
    proc = _cli(tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vidfeat report: error: report source not found: {tmp_path / 'missing'}"]


def test_cli_import_is_light():
    code = ("import sys, vidfeat.cli.report, vidfeat.reporting, vidfeat.reporting.plots, "
            "vidfeat.reporting.data, vidfeat.reporting.evaluation, vidfeat.reporting.render; "
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'sklearn') if m in sys.modules]; "
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_failure_reasons_are_grouped_by_kind(tmp_path):
    spec = [("a", "train", 2, 1, 1.0)] * 3 + [("b", "train", 2, 1, 1.0)] * 3
    root = write_outdir(tmp_path / "o", spec, failed=[("a", "moov atom not found: /x/1.mp4"),
                                                      ("a", "moov atom not found: /x/2.mp4"),
                                                      ("a", "timed out after 5s (work killed)")])
    fail = report(root, tmp_path / "r", progress=False).data["failures"]["by_class"]["a"]
    assert [(r["reason"], r["count"]) for r in fail["reasons"]] == [
        ("moov atom not found", 2), ("timed out after 5s (work killed)", 1)]
    assert fail["reasons"][0]["example_error"] == "moov atom not found: /x/1.mp4"


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Class folders of real videos: a rotated and a VFR one, a corrupt and an empty file."""
    root = tmp_path_factory.mktemp("messy")
    make_video(root / "alpha" / "a0.mp4", duration=1.0, fps=10)
    make_video(root / "alpha" / "a1.mp4", duration=1.0, fps=10, rotation=90)
    make_video(root / "alpha" / "a2.mp4", duration=2.0, fps=8, vfr=True)
    make_video(root / "beta" / "b0.mp4", duration=1.0, fps=10, source="smptebars")
    (root / "beta" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "beta" / "empty.mp4").write_bytes(b"")
    return root


def test_preflight_on_class_folders_probes_without_extracting(messy_folder, tmp_path):
    r = report(messy_folder, tmp_path / "rep", progress=False)
    d = r.data
    assert d["source"]["kind"] == "folder" and d["source"]["frames"] == "source"
    assert d["splits"] == ["all"] and d["imbalance"]["scope"] == "all"
    alpha = d["counts"]["alpha"]["all"]
    probes = [probe_video(p) for p in sorted((messy_folder / "alpha").glob("*.mp4"))]
    assert alpha["videos"] == 3
    assert alpha["duration_s"] == pytest.approx(sum(p.duration_s for p in probes))
    assert alpha["frames"] == sum(p.frame_count for p in probes)
    assert d["counts"]["beta"]["all"] == {**d["counts"]["beta"]["all"], "videos": 1, "failed": 2}
    assert d["counts"]["beta"]["all"]["frames"] == 10  # the source's frame count
    reasons = {x["reason"] for x in d["failures"]["by_class"]["beta"]["reasons"]}
    assert len(reasons) == 2 and any("empty" in x for x in reasons)
    w = codes(r)
    assert w["rotated"] == ["alpha"] and w["vfr"] == ["alpha"] and w["failures"] == ["beta"]
    assert not {"empty_split", "missing_from_split", "split_drift"} & set(w)
    assert not list(messy_folder.rglob("*.jpg")) and not (messy_folder / "report").exists()
    assert "frames in the source videos" in r.files["md"].read_text()


def test_preflight_on_a_labels_file_uses_its_splits(messy_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,split\n"
                      f"{messy_folder}/alpha/a0.mp4,alpha,train\n"
                      f"{messy_folder}/alpha/a1.mp4,alpha,test\n"
                      f"{messy_folder}/beta/b0.mp4,beta,train\n"
                      "http://example.com/x.mp4,beta,train\n")
    r = report(labels, tmp_path / "rep", progress=False, jobs=2)
    d = r.data
    assert d["source"]["kind"] == "labels" and d["splits"] == ["train", "test", "all"]
    assert d["counts"]["alpha"]["test"]["videos"] == 1 and d["counts"]["beta"]["train"]["videos"] == 1
    assert d["totals"]["failed"] == 1
    assert "empty_split" in codes(r) and codes(r)["missing_from_split"] == ["beta"]


def test_preflight_probe_timeout_fails_the_video_not_the_report(messy_folder, tmp_path):
    r = report(messy_folder, tmp_path / "rep", timeout=0.001, progress=False)
    assert r.data["totals"]["ok"] == 0 and r.warnings[0]["code"] == "no_videos"
    reasons = [x["reason"] for e in r.data["failures"]["by_class"].values() for x in e["reasons"]]
    assert any(x.startswith("timed out after") for x in reasons)
    assert "no usable video: all 6 videos failed" in r.files["html"].read_text()
    strict_json(r.files["json"])


# -- readable, never misleading: n/a for support 0, plots that do not overprint or clip ---------

def test_a_class_without_test_examples_is_na_and_not_plotted(outdir, tmp_path, monkeypatch):
    from vidfeat.reporting import plots

    figures = []
    real = plots.recall_figure
    monkeypatch.setattr(plots, "recall_figure", lambda s: figures.append(real(s)) or figures[-1])
    y_val = np.array([0, 1, 2, 2, 1, 0, 2])
    y_test = np.array([0, 1, 1, 0, 0])  # no gamma in test: its recall is 0/0
    model = write_model(tmp_path / "m", ["alpha", "beta", "gamma"],
                        {"val": {"frame": (y_val, y_val)}, "test": {"frame": (y_test, y_test[::-1])}})
    r = report(outdir, tmp_path / "rep", model=model, progress=False)
    data = strict_json(r.files["json"])
    gamma = data["model"]["results"]["test"]["frame"]["per_class"]["gamma"]
    assert gamma == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert data["model"]["results"]["val"]["frame"]["per_class"]["gamma"]["recall"] == 1.0
    curve = {p["class"]: p["recall"] for p in
             data["model"]["results"]["test"]["frame"]["recall_vs_train_frequency"]}
    assert curve["gamma"] is None and curve["alpha"] == pytest.approx(2 / 3)
    assert "| gamma | n/a | n/a | n/a | 0 | 12 |" in r.files["md"].read_text()
    page = r.files["html"].read_text()
    assert ('<tr><td>gamma</td><td class="n">n/a</td><td class="n">n/a</td><td class="n">n/a</td>'
            '<td class="n">0</td>') in page
    assert "Not plotted for test frame: gamma (no examples there, so no recall)." in page
    (fig,) = figures
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    # x = training frames (alpha 20, beta 9, gamma 12): gamma only where it has examples
    assert sorted(lines["test frame"].get_xdata()) == [9, 20]
    assert sorted(lines["val frame"].get_xdata()) == [9, 12, 20]
    assert "zero_recall" not in codes(r)  # no examples is not "never recognised"


def _boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]


def _overlapping(boxes) -> list:
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_recall_plot_labels_each_class_once_without_overlap_and_series_differ():
    from matplotlib.text import Text

    from vidfeat.reporting import plots

    # 8 classes, 4 series, several classes at the same frequency and recall: every label
    # would sit on its neighbours if written beside its points
    classes = [f"class_{c}" for c in "abcdefgh"]
    freqs = [10, 10, 11, 12, 40, 40, 41, 300]
    rng = np.random.default_rng(0)
    series = {name: (classes, freqs, list(np.clip(0.8 + rng.normal(0, 0.02, 8), 0, 1)))
              for name in ("val frame", "val video", "test frame", "test video")}
    fig = plots.recall_figure(series)
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == classes  # each class once
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    assert _overlapping(boxes) == []
    inside = ax.get_window_extent(renderer)
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
               for b in boxes)
    lines = ax.get_lines()
    assert len(lines) == 4
    for key in (lambda l: l.get_marker(), lambda l: str(l.get_linestyle()),
                lambda l: l.get_color()):
        assert len({key(line) for line in lines}) == 4
    # hollow markers of decreasing size: a point drawn later never covers one drawn before
    assert all(line.get_markerfacecolor() == "none" for line in lines)
    sizes = [line.get_markersize() for line in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_plots_are_not_clipped_and_tick_labels_do_not_overlap(outdir, tmp_path, monkeypatch):
    from vidfeat.reporting import plots

    figures = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or real(fig, path))
    long = "a_class_name_long_enough_to_need_room_to_be_shown"
    spec = [(name, split, 2, 1, 1.0) for name in (long, "b", "c", "d")
            for split in ("train", "train", "val", "test")]
    y = np.array([0, 1, 2, 3, 3, 2])
    model = write_model(tmp_path / "m", [long, "b", "c", "d"], {"test": {"frame": (y, y[::-1])}})
    r = report(write_outdir(tmp_path / "o", spec), tmp_path / "rep", model=model, progress=False)
    assert len(figures) == 4  # class counts, split distribution, heatmap, recall
    for fig in figures:
        for ax in fig.axes:
            assert _overlapping(_boxes(fig, ax.get_xticklabels())) == []
            assert _overlapping(_boxes(fig, ax.get_yticklabels())) == []
    for png in (tmp_path / "rep").glob("*.png"):
        pixels = np.asarray(Image.open(png).convert("L"))
        edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert edges.min() == 255, f"{png.name}: something is cut at the image's edge"
    assert r.files["html"].is_file()


def test_report_shows_only_what_it_knows(outdir, tmp_path, messy_folder):
    from vidfeat.class_weights import class_weights

    r_md = report(outdir, tmp_path / "a", progress=False).files["md"].read_text()
    assert "| class | videos | videos after | dropped |" in r_md
    assert "### Class weights (train split, as training applies them)" in r_md
    # training's counts: train frames times their repeat (alpha 20, beta 9, gamma 12)
    w = class_weights("balanced", np.array([20, 9, 12]))
    assert w == pytest.approx(compute_class_weight(
        "balanced", classes=np.array([0, 1, 2]), y=np.repeat([0, 1, 2], [20, 9, 12])))
    assert f"| alpha | 20 | {w[0]:.3f} |" in r_md and f"| gamma | 12 | {w[2]:.3f} |" in r_md
    even = [("a", s, 2, 1, 1.0) for s in ("train", "train", "val", "test")] * 2 + [
        ("b", s, 3, 1, 1.0) for s in ("train", "val", "test")]
    md = report(write_outdir(tmp_path / "o", even), tmp_path / "b", progress=False
                ).files["md"].read_text()
    assert "after" not in md.replace("after balancing", "") and "dropped" not in md
    assert "| class | videos | frames | duration s |" in md
    assert "| measure | videos | frames |" in md
    assert "Balancing changed no count" in md and "as training applies them" in md
    pre = report(messy_folder, tmp_path / "c", progress=False)
    md = pre.files["md"].read_text()
    assert "after" not in md.replace("after balancing", "") and "| source frames |" in md
    assert "beta=0.9" not in md and "Not shown: training weighs classes by the train split's " \
        "stored frames, and a pre-flight has no stored frames yet" in md
    assert "![class counts](class_counts.png)" in md


def test_evaluate_cli_prints_a_per_class_table_and_where_its_json_went(tmp_path):
    from featfiles import make_features, write_features

    from vidfeat.training._train import train

    # gamma's 2 videos both fall in train: no test examples (support 0)
    data = make_features({"alpha": 10, "beta": 8, "gamma": 2}, dim=12, frames=3, sep=2.0, seed=1)
    feats = write_features(tmp_path / "f.h5", data)
    train(feats, tmp_path / "model", device="cpu", progress=False, epochs=5)
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "evaluate", str(tmp_path / "model"),
                           str(feats), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "model" / "evaluate_test.json"
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {written}"
    saved = json.loads(written.read_text())
    lines = proc.stdout.splitlines()
    for level in ("frame", "video"):
        m = saved[level]
        i = lines.index(next(x for x in lines if x.startswith(f"test, {level} level:")))
        assert lines[i] == (f"test, {level} level: n={m['n']}  accuracy {m['accuracy']:.3f}  "
                            f"balanced accuracy {m['balanced_accuracy']:.3f}  macro F1 "
                            f"{m['macro_f1']:.3f}")
        table = lines[i + 1:i + 5]
        assert table[0].split() == ["class", "precision", "recall", "F1", "support"]
        # aligned: every row ends at the same column
        assert len({len(row) for row in table}) == 1
        for row, name in zip(table[1:], ["alpha", "beta", "gamma"]):
            pc = m["per_class"][name]
            want = (["n/a"] * 3 if name == "gamma" else
                    [f"{pc[k]:.3f}" for k in ("precision", "recall", "f1")])
            assert row.split() == [name, *want, str(pc["support"])]
    assert saved["frame"]["per_class"]["gamma"]["support"] == 0


def test_model_whose_feature_file_changed_is_flagged_once(outdir, tmp_path, caplog):
    from featfiles import make_features, write_features

    from vidfeat.training._train import train

    counts = {"alpha": 6, "beta": 4, "gamma": 4}
    path = write_features(tmp_path / "f.h5", make_features(counts, dim=16, seed=0))
    train(path, tmp_path / "m", device="cpu", progress=False, epochs=2)
    r = report(outdir, tmp_path / "rep", model=tmp_path / "m", progress=False)
    assert "features_changed" not in codes(r)
    write_features(path, make_features(counts, dim=16, seed=1),
                   attrs={"manifest_fingerprint": "e" * 16})   # re-extracted to the same path
    caplog.clear()
    r = report(outdir, tmp_path / "rep", model=tmp_path / "m", progress=False)
    flagged = [w["message"] for w in r.warnings if w["code"] == "features_changed"]
    assert len(flagged) == 1 and flagged[0].startswith(f"the feature file {path} has changed")
    assert [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"] == flagged
    written = strict_json(tmp_path / "rep" / "report.json")["warnings"]
    assert [w["message"] for w in written if w["code"] == "features_changed"] == flagged


def test_report_records_what_it_was_made_from(outdir, tmp_path):
    from featfiles import make_features, write_features

    from vidfeat.training._train import train

    counts = {"alpha": 6, "beta": 4, "gamma": 4}
    path = write_features(tmp_path / "f.h5", make_features(counts, dim=16, seed=0))
    train(path, tmp_path / "m", device="cpu", progress=False, epochs=2)
    report(outdir, tmp_path / "rep", model=tmp_path / "m", progress=False)
    data = strict_json(tmp_path / "rep" / "report.json")
    ingest_info = json.loads((outdir / "ingest.json").read_text())
    assert data["source"]["fingerprint"] == ingest_info["fingerprint"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["model"]["features"] == config["features"]
    assert data["model"]["features"]["path"] == str(path.absolute())


def test_a_full_disk_while_writing_the_report_is_one_line(outdir, tmp_path):
    from featfiles import resize_disk, small_disk

    with small_disk(tmp_path / "disk", "64k") as disk:  # report.html and the PNGs do not fit
        proc = subprocess.run([sys.executable, "-m", "vidfeat", "report", str(outdir), "-o",
                               str(disk / "rep")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "disk full" in lines[0] and str(disk) in lines[0], lines
        resize_disk(disk, "8m")
        proc = subprocess.run([sys.executable, "-m", "vidfeat", "report", str(outdir), "-o",
                               str(disk / "rep")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        strict_json(disk / "rep" / "report.json")
