"""train / evaluate on real HDF5 feature files (synthetic learnable clusters), and unfreezing."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from featfiles import make_features, write_features

from vidfeat.training._train import evaluate, parse_size, parse_sweep, train

COUNTS = {"alpha": 300, "beta": 120, "gamma": 40}


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    data = make_features(COUNTS, dim=24, frames=4, sep=0.35, seed=0)
    path = write_features(tmp_path_factory.mktemp("feats") / "features.h5", data)
    return data, path


def run(path, out, **kw):
    kw = {"device": "cpu", "progress": False, "epochs": 30, **kw}
    return train(path, out, **kw)


def test_train_writes_model_dir(feats, tmp_path):
    _, path = feats
    res = run(path, tmp_path / "m")
    d = tmp_path / "m"
    state = torch.load(d / "head.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    config = json.loads((d / "config.json").read_text())
    assert config["class_names"] == list(COUNTS)
    assert config["backbone"] == "resnet18" and config["weights"] == "none"
    assert config["preprocessing"]["input_size"] == 224
    assert config["sampling"] == {"mode": "uniform", "frames_per_video": 4}
    assert config["features"]["fingerprint"] == "f" * 16
    assert config["hyperparameters"]["lr"] == 1e-2 and config["head"]["type"] == "linear"
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(res.metrics))
    for split in ("val", "test"):
        for level in ("frame", "video"):
            m = metrics[split][level]
            assert set(m["per_class"]) == set(COUNTS)
            assert np.array(m["confusion_matrix"]).sum() == m["n"]
    data = feats[0]
    assert metrics["test"]["video"]["n"] == len(set(data["video_id"][data["split"] == "test"]))
    assert metrics["test"]["frame"]["n"] == (data["split"] == "test").sum()
    assert "Model written to" in res.summary()


def test_accuracy_matches_logistic_regression(feats, tmp_path):
    from sklearn.linear_model import LogisticRegression

    data, path = feats
    res = run(path, tmp_path / "m")
    tr, te = data["split"] == "train", data["split"] == "test"
    ref = LogisticRegression(max_iter=1000).fit(data["features"][tr], data["label"][tr])
    ref_acc = ref.score(data["features"][te], data["label"][te])
    assert res.metrics["test"]["frame"]["accuracy"] >= ref_acc - 0.02
    assert ref_acc > 0.6


def test_same_seed_same_metrics(feats, tmp_path):
    _, path = feats
    a = run(path, tmp_path / "a", head="mlp", hidden=(16,), seed=5, epochs=6)
    b = run(path, tmp_path / "b", head="mlp", hidden=(16,), seed=5, epochs=6)
    run(path, tmp_path / "c", head="mlp", hidden=(16,), seed=6, epochs=6)
    assert a.metrics == b.metrics
    # the same model is the same file, byte for byte (nothing of the temporary name leaks in)
    assert (tmp_path / "a/head.pt").read_bytes() == (tmp_path / "b/head.pt").read_bytes()
    sa = torch.load(tmp_path / "a/head.pt", weights_only=True)
    sc = torch.load(tmp_path / "c/head.pt", weights_only=True)
    assert not torch.equal(sa["weights.0"], sc["weights.0"])


def test_streaming_matches_in_memory(feats, tmp_path):
    _, path = feats
    held = run(path, tmp_path / "held", batch_size=32)
    streamed = run(path, tmp_path / "stream", batch_size=32, max_memory="64KB")
    assert streamed.streamed and not held.streamed
    for split in ("val", "test"):
        assert streamed.metrics[split]["frame"]["accuracy"] >= \
            held.metrics[split]["frame"]["accuracy"] - 0.02


def test_sweep_selects_and_matches_single_runs(feats, tmp_path):
    _, path = feats
    res = run(path, tmp_path / "sweep", sweep=["lr=1e-3,1e-2", "weight_decay=0,1e-3"])
    table = pd.read_csv(tmp_path / "sweep/sweep.csv")
    assert len(table) == 4 and table["selected"].sum() == 1
    best = table.loc[table["selected"]].iloc[0]
    assert best["val_balanced_accuracy"] == table["val_balanced_accuracy"].max()
    assert json.loads((tmp_path / "sweep/sweep.json").read_text())["configs"][0]["lr"] == 1e-3
    assert res.selected["lr"] == best["lr"]
    for _, row in table.iloc[[0, 3]].iterrows():
        alone = run(path, tmp_path / f"alone{row['config']}", lr=row["lr"],
                    weight_decay=row["weight_decay"])
        assert alone.metrics["val"]["frame"]["balanced_accuracy"] == \
            pytest.approx(row["val_balanced_accuracy"])
        assert alone.config["best_epoch"] == row["best_epoch"]


def test_oversampling_repeat_is_honoured(tmp_path):
    data = make_features(COUNTS, dim=24, frames=4, sep=0.35, seed=0)
    plain = run(write_features(tmp_path / "plain.h5", data), tmp_path / "p", epochs=10,
                patience=10)
    data["repeat"] = np.where((data["label"] == 2) & (data["split"] == "train"), 8, 1)
    over = run(write_features(tmp_path / "over.h5", data), tmp_path / "o", epochs=10,
               patience=10)
    recall = lambda r: sum(r.metrics[s]["frame"]["per_class"]["gamma"]["recall"]  # noqa: E731
                           for s in ("val", "test"))
    assert recall(over) > recall(plain)


def test_class_weight_raises_minority_recall(feats, tmp_path):
    _, path = feats
    plain = run(path, tmp_path / "p", epochs=10, patience=10)
    bal = run(path, tmp_path / "b", epochs=10, patience=10, class_weight="balanced")
    recall = lambda r: sum(r.metrics[s]["frame"]["per_class"]["gamma"]["recall"]  # noqa: E731
                           for s in ("val", "test"))
    assert recall(bal) > recall(plain)


def test_evaluate_matches_training_metrics(feats, tmp_path):
    _, path = feats
    res = run(path, tmp_path / "m")
    metrics = evaluate(tmp_path / "m", path, split="test", device="cpu")
    assert metrics["frame"] == res.metrics["test"]["frame"]
    written = json.loads((tmp_path / "m/evaluate_test.json").read_text())
    assert written["video"] == res.metrics["test"]["video"]


def test_train_refuses_existing_model_dir(feats, tmp_path):
    _, path = feats
    d = tmp_path / "m"
    run(path, d, epochs=3, sweep=["lr=1e-3,1e-2"])
    evaluate(d, path, split="test", device="cpu")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(FileExistsError, match=r"m already holds a model.*overwrite=True"):
        run(path, d, epochs=3)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before   # refused before training
    res = run(path, d, epochs=3, overwrite=True, seed=1)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "head.pt", "metrics.json"]
    assert json.loads((d / "config.json").read_text())["hyperparameters"]["seed"] == 1
    assert json.loads((d / "metrics.json").read_text()) == json.loads(json.dumps(res.metrics))


def test_train_into_folder_without_model_is_fine(feats, tmp_path):
    _, path = feats
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    run(path, tmp_path / "m", epochs=2)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_evaluate_refuses_other_classes(feats, tmp_path):
    _, path = feats
    run(path, tmp_path / "m", epochs=2)
    other = make_features({"x": 10, "y": 10}, dim=24)
    with pytest.raises(ValueError, match="has classes"):
        evaluate(tmp_path / "m", write_features(tmp_path / "o.h5", other), device="cpu")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate(tmp_path / "nothing", path, device="cpu")


def test_bad_inputs(feats, tmp_path):
    data, path = feats
    with pytest.raises(FileNotFoundError, match="not found"):
        run(tmp_path / "missing.h5", tmp_path / "m")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        run(tmp_path / "text.h5", tmp_path / "m")
    with pytest.raises(ValueError, match="label"):
        run(write_features(tmp_path / "nolabel.h5", data, drop=("label",)), tmp_path / "m")
    with pytest.raises(ValueError, match="incomplete"):
        run(write_features(tmp_path / "partial.h5", data, complete=False), tmp_path / "m")
    noval = dict(data, split=np.where(data["split"] == "val", "test", data["split"]))
    with pytest.raises(ValueError, match="split 'val' .* has no samples"):
        run(write_features(tmp_path / "noval.h5", noval), tmp_path / "m")
    one = make_features({"alpha": 10}, dim=24)
    with pytest.raises(ValueError, match="train split has 1 class.*'alpha'.*at least 2"):
        run(write_features(tmp_path / "one.h5", one), tmp_path / "m")
    assert not (tmp_path / "m").exists()   # nothing written on failure


@pytest.mark.parametrize("kwargs, match", [
    ({"head": "svm"}, "head='svm' is not one of"),
    ({"select_metric": "f2"}, "select_metric='f2' is not one of"),
    ({"sweep": ["momentum=0.9"]}, "sweep parameter='momentum' is not one of"),
    ({"sweep": ["lr"]}, "is not NAME=V1,V2"),
    ({"sweep": ["dropout=0.1"]}, "needs head='mlp'"),
    ({"max_memory": "lots"}, "not a size"),
    ({"epochs": 0}, "epochs must be > 0"),
])
def test_bad_options(feats, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(feats[1], tmp_path / "m", **kwargs)


def test_option_parsers():
    assert parse_size("2GB") == 2 << 30 and parse_size("512k") == 512 << 10
    assert parse_size(1000) == 1000 and parse_size(None) is None
    assert parse_sweep("lr=1e-3,1e-2 class_weight=none,balanced", head="linear") == \
        {"lr": [1e-3, 1e-2], "class_weight": ["none", "balanced"]}
    assert parse_sweep({"weight_decay": [0, 1]}, head="linear") == {"weight_decay": [0.0, 1.0]}


def test_cli_train_and_evaluate(feats, tmp_path, capsys):
    from vidfeat.cli import main

    _, path = feats
    out = tmp_path / "m"
    assert main(["train", str(path), "-o", str(out), "--device", "cpu", "--epochs", "3",
                 "--sweep", "lr=1e-2,1e-3", "--class-weight", "balanced"]) == 0
    assert (out / "sweep.csv").is_file()
    assert "selected" in capsys.readouterr().out
    assert main(["evaluate", str(out), str(path), "--split", "val", "--device", "cpu"]) == 0
    assert "val frame: n=" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "nope.h5"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feature file not found" in err[0]
    again = ["train", str(path), "-o", str(out), "--device", "cpu", "--epochs", "2"]
    assert main(again) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    assert not (out / "sweep.csv").exists() and not (out / "evaluate_val.json").exists()


def test_train_does_not_import_heavy_modules_at_cli_parse():
    import subprocess

    code = ("import sys; from vidfeat.cli import build_parser; build_parser(); "
            "print(any(m in sys.modules for m in ('torch', 'sklearn', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------- unfreeze
@pytest.fixture(scope="module")
def frames_and_features(tmp_path_factory):
    """Stored frames (red vs blue) and a resnet18-shaped feature file pointing at them."""
    from featfiles import write_frames

    root = tmp_path_factory.mktemp("unfreeze")
    data = make_features({"red": 6, "blue": 4}, dim=512, frames=3, sep=0.5, seed=1)
    outdir = write_frames(root / "ingest", data)
    path = write_features(root / "features.h5", data, attrs={
        "input_size": 32, "resize_size": 32, "ingest_dir": str(outdir)})
    return outdir, path


def unfreeze_run(path, out, **kw):
    kw = {"unfreeze": True, "unfreeze_epochs": 3, "unfreeze_batch_size": 8, "unfreeze_lr": 1e-2,
          "epochs": 10, **kw}
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return run(path, out, **kw)


def test_unfreeze_changes_backbone_and_lowers_loss(frames_and_features, tmp_path):
    from vidfeat.extraction.backbones import create_backbone

    _, path = frames_and_features
    res = unfreeze_run(path, tmp_path / "m")
    last = torch.load(tmp_path / "m/unfreeze_checkpoint.pt", weights_only=True)["backbone"]
    best = torch.load(tmp_path / "m/backbone.pt", weights_only=True)
    with pytest.warns(UserWarning):
        original = create_backbone("resnet18", "none").model.state_dict()
    assert best.keys() == last.keys() == original.keys()
    assert not torch.equal(last["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    # frozen BatchNorm statistics: the cached features' normalisation is kept
    torch.testing.assert_close(last["bn1.running_mean"], original["bn1.running_mean"])
    history = res.config["unfreeze"]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]   # 0: the linear probe it starts from
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    kept = res.config["unfreeze"]["best_epoch"]
    scores = [h["val_balanced_accuracy"] for h in history]
    assert scores[kept] == max(scores)
    if kept > 0:
        assert not torch.equal(best["conv1.weight"], original["conv1.weight"])
    assert res.config["files"]["backbone"] == "backbone.pt"
    assert res.metrics["val"]["frame"]["n"] == 6 and res.metrics["test"]["video"]["n"] == 1
    with pytest.raises(ValueError, match="fine-tuned its backbone"):
        evaluate(tmp_path / "m", path, device="cpu")


def test_unfreeze_resumes_from_checkpoint(frames_and_features, tmp_path):
    _, path = frames_and_features
    d = tmp_path / "m"
    first = unfreeze_run(path, d, unfreeze_epochs=2)
    assert (d / "unfreeze_checkpoint.pt").is_file()
    # what a run killed during fine-tuning leaves: weights and checkpoint, no config.json yet
    for name in ("config.json", "metrics.json"):
        (d / name).unlink()
    more = unfreeze_run(path, d, unfreeze_epochs=3)   # resumes without overwrite
    done = more.config["unfreeze"]["history"]
    assert done[:3] == first.config["unfreeze"]["history"]   # epochs 1-2 were not redone
    assert [h["epoch"] for h in done] == [0, 1, 2, 3]
    # a finished model is not silently resumed into
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run(path, d, unfreeze=True, epochs=10)
    # a different run (other lr) must not resume from that checkpoint
    other = unfreeze_run(path, d, unfreeze_epochs=1, unfreeze_lr=3e-3, overwrite=True)
    assert [h["epoch"] for h in other.config["unfreeze"]["history"]] == [0, 1]
    # a frozen-backbone run over it leaves no backbone or checkpoint of the fine-tuned one
    run(path, d, epochs=2, overwrite=True)
    assert not (d / "backbone.pt").exists() and not (d / "unfreeze_checkpoint.pt").exists()


def test_unfreeze_needs_frames(frames_and_features, tmp_path):
    _, path = frames_and_features
    with pytest.raises(Exception, match="ingest output folder not found"):
        unfreeze_run(path, tmp_path / "m", frames=tmp_path / "nowhere")


@pytest.mark.cuda
def test_cuda_matches_cpu(feats, tmp_path):
    _, path = feats
    cpu = run(path, tmp_path / "cpu")
    gpu = run(path, tmp_path / "gpu", device="cuda")
    streamed = run(path, tmp_path / "gpu_stream", device="cuda", max_memory="64KB")
    for res in (gpu, streamed):
        assert res.metrics["test"]["frame"]["accuracy"] >= \
            cpu.metrics["test"]["frame"]["accuracy"] - 0.02


@pytest.mark.cuda
def test_unfreeze_with_amp_on_cuda(frames_and_features, tmp_path):
    _, path = frames_and_features
    res = unfreeze_run(path, tmp_path / "m", device="cuda")
    history = res.config["unfreeze"]["history"]
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    assert torch.load(tmp_path / "m/backbone.pt", weights_only=True)["conv1.weight"].is_cpu
