"""train / evaluate on real HDF5 feature files (synthetic learnable clusters), and unfreezing."""
import json
import os
import shutil
import sys
from pathlib import Path

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
    assert metrics["row_level"] == "frame"  # frame features: rows are frames
    assert "Model written to" in res.summary()
    assert "val frame accuracy" in res.summary() and "clip" not in res.summary()


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
    assert "val, frame level: n=" in capsys.readouterr().out
    assert json.loads((out / "evaluate_val.json").read_text())["row_level"] == "frame"
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
    # the checkpoint (134 MB for a resnet50) is gone after success, and so is the staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == \
        ["backbone.pt", "config.json", "head.pt", "metrics.json"]
    best = torch.load(tmp_path / "m/backbone.pt", weights_only=True)
    with pytest.warns(UserWarning):
        original = create_backbone("resnet18", "none").model.state_dict()
    assert best.keys() == original.keys()
    # frozen BatchNorm statistics: the cached features' normalisation is kept
    torch.testing.assert_close(best["bn1.running_mean"], original["bn1.running_mean"])
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


def test_unfreeze_resumes_from_checkpoint(frames_and_features, tmp_path, monkeypatch):
    from vidfeat.training import model_dir as md

    _, path = frames_and_features
    d = tmp_path / "m"

    def interrupted(*args, **kwargs):   # stopped (Ctrl-C) just before the model is swapped in
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(md, "publish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            unfreeze_run(path, d, unfreeze_epochs=2)
    assert not d.exists()
    first = torch.load(md.staging_path(d) / "unfreeze_checkpoint.pt", weights_only=True)
    more = unfreeze_run(path, d, unfreeze_epochs=3)   # resumes without overwrite
    done = more.config["unfreeze"]["history"]
    assert done[:3] == first["history"]   # epochs 1-2 were not redone
    assert [h["epoch"] for h in done] == [0, 1, 2, 3]
    assert not md.staging_path(d).exists() and not (d / "unfreeze_checkpoint.pt").exists()
    # a finished model is not silently resumed into
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run(path, d, unfreeze=True, epochs=10)
    # a different run (other lr) must not resume from another run's checkpoint
    with monkeypatch.context() as m:
        m.setattr(md, "publish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            unfreeze_run(path, d, unfreeze_epochs=2, overwrite=True)
    # best weights that are not the ones the checkpoint records (a kill between writing them
    # and the checkpoint) are never resumed with
    from vidfeat.training.finetune import _cannot_resume

    stage = md.staging_path(d)
    ckpt = torch.load(stage / "unfreeze_checkpoint.pt", weights_only=True)
    assert _cannot_resume(stage, ckpt, ckpt["run_key"]) is None
    md.save_head(stage, {k: v * 2 for k, v in ckpt["head"].items()})
    assert "not the ones it records" in _cannot_resume(stage, ckpt, ckpt["run_key"])
    other = unfreeze_run(path, d, unfreeze_epochs=1, unfreeze_lr=3e-3, overwrite=True)
    assert [h["epoch"] for h in other.config["unfreeze"]["history"]] == [0, 1]
    # a frozen-backbone run over it leaves no backbone of the fine-tuned one
    run(path, d, epochs=2, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "head.pt", "metrics.json"]


def test_unfreeze_needs_frames(frames_and_features, tmp_path):
    _, path = frames_and_features
    with pytest.raises(Exception, match="ingest output folder not found"):
        unfreeze_run(path, tmp_path / "m", frames=tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []   # no model, no staging folder, no lock left


# ----------------------------------------------------------------------------------- provenance
def changed_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and "has changed since the model" in r.getMessage()]


def test_model_records_what_it_was_trained_from(feats, tmp_path):
    import hashlib

    from vidfeat.training.model_dir import verify_model_dir

    _, path = feats
    d = tmp_path / "m"
    res = run(path, d, epochs=3, sweep=["lr=1e-3,1e-2"])
    config = json.loads((d / "config.json").read_text())
    assert config == json.loads(json.dumps(res.config))
    import h5py

    with h5py.File(path, "r") as f:  # what the file itself says, read with plain h5py
        recorded = {"fingerprint": f.attrs["manifest_fingerprint"],
                    "features_fingerprint": f.attrs["features_fingerprint"]}
    assert config["features"] == {"path": str(path.resolve()), **recorded}
    # sha256 of every other file, as sha256sum computes it
    assert config["sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                for p in d.iterdir() if p.name != "config.json"}
    assert set(config["sha256"]) == {"head.pt", "metrics.json", "sweep.csv", "sweep.json"}
    assert verify_model_dir(d) == []


def test_verify_model_dir_names_what_is_wrong(feats, tmp_path):
    from vidfeat.training.model_dir import verify_model_dir

    _, path = feats
    d = tmp_path / "m"
    run(path, d, epochs=3)
    head = torch.load(d / "head.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in head.items()}, d / "head.pt")   # loads, but is not train's
    problems = verify_model_dir(d)
    assert len(problems) == 1 and problems[0].startswith(f"{d / 'head.pt'}: changed since train")
    (d / "head.pt").write_bytes(b"\x80\x02garbage")
    problems = verify_model_dir(d)
    assert [p.split(":")[0] for p in problems] == [str(d / "head.pt")] * 2
    assert "does not load as tensors" in problems[1]
    (d / "head.pt").unlink()
    (d / "metrics.json").write_text("{")
    assert verify_model_dir(d) == [f"{d / 'metrics.json'}: not readable JSON "
                                   "(Expecting property name enclosed in double quotes: "
                                   "line 1 column 2 (char 1))",
                                   f"{d / 'head.pt'}: missing (config.json records it)",
                                   f"{d / 'metrics.json'}: changed since train wrote it (its "
                                   "sha256 differs from the one config.json records)"]
    nothing = tmp_path / "nothing"
    assert verify_model_dir(nothing) == [f"{nothing / 'config.json'}: missing"]


def test_evaluate_warns_once_when_its_feature_file_changed(feats, tmp_path, caplog):
    data, _ = feats
    path = write_features(tmp_path / "features.h5", data)
    d = tmp_path / "m"
    run(path, d, epochs=3)
    evaluate(d, path, device="cpu")
    copy = write_features(tmp_path / "other.h5", data, attrs={"manifest_fingerprint": "0" * 16})
    evaluate(d, copy, device="cpu")   # other data than the model's: evaluating it is the point
    assert changed_warnings(caplog) == []
    # re-extracted to the recorded path: a changed manifest, then the same manifest through
    # other weights (the builder derives features_fingerprint from such settings)
    for attrs in ({"manifest_fingerprint": "e" * 16}, {"weights_sha256": "1" * 64}):
        caplog.clear()
        write_features(path, make_features(COUNTS, dim=24, frames=4, sep=0.35, seed=3),
                       attrs=attrs)
        evaluate(d, path, device="cpu")
        assert changed_warnings(caplog) == [
            f"the feature file {path.resolve()} has changed since the model in {d} was trained "
            "from it: the model and its metrics describe the earlier features; retrain with "
            f"'vidfeat train {path.resolve()} -o {d} --overwrite' to use the new ones"]


# ----------------------------------------------------------------------------------- kill -9
REPO = Path(__file__).resolve().parents[1]

# Runs the real CLI in a child that stops after every file-system call under ROOT (argv[1]) and
# waits for "go" on stdin: the parent sees the folder exactly as a kill -9 at that moment leaves it.
STEPPING = r"""
import os, shutil, sys
root = sys.argv[1]
from vidfeat.training import model_dir as md

def hooked(fn, name):
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        where = [str(a) for a in args if str(a).startswith(root)]
        if where:
            print("STEP", name, where[-1], flush=True)
            if sys.stdin.readline().strip() != "go":
                os._exit(3)
        return out
    return call

for name in ("replace", "rename", "unlink", "link", "mkdir"):
    setattr(os, name, hooked(getattr(os, name), name))
shutil.rmtree = hooked(shutil.rmtree, "rmtree")
if hasattr(md, "_exchange"):   # the atomic directory exchange, when there is one
    md._exchange = hooked(md._exchange, "exchange")
from vidfeat.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli_train(path, out, *extra) -> list[str]:
    return ["train", str(path), "-o", str(out), "--device", "cpu", "--no-progress", *extra]


def files_of(d) -> dict:
    return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def model_state(d, old: dict, *, seed: int) -> str:
    """'old' when ``d`` is byte for byte the old model, 'new' when it is wholly the new one."""
    from vidfeat.training.model_dir import load_head, verify_model_dir

    files = files_of(d)
    if files == old:
        return "old"
    config = json.loads(files["config.json"])
    assert config["hyperparameters"]["seed"] == seed, sorted(files)
    assert verify_model_dir(d) == []
    # the new model's files, the user's notes, nothing of the old model (evaluations, sweep)
    assert set(files) == {*config["sha256"], "config.json", "notes.txt"}
    load_head(d)
    return "new"


def old_model(path, d) -> dict:
    """An earlier model (a sweep, an evaluation, a user's notes) in ``d``; its files."""
    run(path, d, epochs=3, sweep=["lr=1e-3,1e-2"])
    evaluate(d, path, split="test", device="cpu")
    (d / "notes.txt").write_text("mine")
    return files_of(d)


def stepped_run(path, d, old: dict, *, kill_at: str | None = None, seed: int = 1):
    """Run ``train --overwrite`` stepping through its file operations; check ``d`` at each.

    ``kill_at``: SIGKILL the run at the first step whose line contains it. Returns the
    (step, state) list and the exit status."""
    import subprocess

    root = str(d.parent.resolve())
    args = cli_train(path, d, "--epochs", "3", "--seed", str(seed), "--overwrite")
    proc = subprocess.Popen([sys.executable, "-c", STEPPING, root, *args], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    steps = []
    for line in proc.stdout:
        if not line.startswith("STEP "):
            continue
        steps.append((line.split(maxsplit=1)[1].strip(), model_state(d, old, seed=seed)))
        if kill_at and kill_at in line:
            proc.kill()
            break
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return steps, proc.wait()


def test_kill_at_any_step_leaves_old_or_new_model(feats, tmp_path):
    import subprocess

    _, path = feats
    d = tmp_path / "m"
    old = old_model(path, d)
    pristine = tmp_path / "pristine"
    shutil.copytree(d, pristine)
    steps, rc = stepped_run(path, d, old)
    assert rc == 0
    states = [state for _, state in steps]
    # every moment is one model or the other, and it flips once: old ... old, new ... new
    assert states[0] == "old" and states[-1] == "new"
    assert states == sorted(states, key=lambda s: s == "new")
    assert len(steps) >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "pristine"]   # no staging left
    # really killed at the moments around the swap: the state stays whole, a rerun completes
    for kill_at, expected in (("staging/head.pt", "old"), ("staging/config.json", "old"),
                              ("exchange", "new")):
        shutil.rmtree(d)
        shutil.copytree(pristine, d)
        steps, rc = stepped_run(path, d, old, kill_at=kill_at)
        assert rc == -9 and steps[-1][1] == expected, (kill_at, steps)
        assert model_state(d, old, seed=1) == expected
        rerun = subprocess.run([sys.executable, "-m", "vidfeat",
                                *cli_train(path, d, "--epochs", "3", "--seed", "1",
                                           "--overwrite")],
                               cwd=REPO, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert model_state(d, old, seed=1) == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "pristine"]


def test_swap_without_atomic_exchange_restores_a_killed_swap(feats, tmp_path, monkeypatch):
    """Where the filesystem cannot exchange directories, two renames swap: a kill between them
    leaves the old model at .NAME.old, and the next train puts it back before anything else."""
    from vidfeat.training import model_dir as md

    _, path = feats
    d = tmp_path / "m"
    old = old_model(path, d)
    monkeypatch.setattr(md, "_exchange", lambda a, b: False)
    res = run(path, d, epochs=3, seed=1, overwrite=True)
    assert model_state(d, old, seed=1) == "new" and res.config["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    new = files_of(d)
    d.rename(tmp_path / ".m.old")   # the moment between the two renames
    with pytest.raises(FileExistsError, match="already holds a model"):
        run(path, d, epochs=3, seed=2)
    assert files_of(d) == new and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_symlinked_model_dir_keeps_its_link(feats, tmp_path):
    _, path = feats
    real = tmp_path / "real"
    old = old_model(path, real)
    (tmp_path / "link").symlink_to(real)
    run(path, tmp_path / "link", epochs=3, seed=1, overwrite=True)
    assert (tmp_path / "link").is_symlink() and model_state(real, old, seed=1) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (skipped where mounting is refused)."""
    import featfiles

    with featfiles.small_disk(tmp_path / "disk", "2m") as mnt:
        yield mnt


def fill(disk) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_disk_full_keeps_the_old_model(feats, small_disk):
    from vidfeat.files import StorageError

    _, path = feats
    d = small_disk / "m"
    old = old_model(path, d)
    filler = fill(small_disk)
    # one page free: the lock file's pid (files.FileLock does not yet turn a full disk there
    # into a StorageError), not the model
    os.truncate(filler, filler.stat().st_size - 4096)
    with pytest.raises(StorageError, match="disk full .*rerun the same command"):
        run(path, d, epochs=3, seed=1, overwrite=True)
    assert files_of(d) == old
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "m"]
    filler.unlink()
    run(path, d, epochs=3, seed=1, overwrite=True)
    assert model_state(d, old, seed=1) == "new"


@pytest.fixture(scope="module")
def tiny_frames(tmp_path_factory):
    """Stored frames and a mobilenet_v3_small-shaped feature file (a small backbone to tune)."""
    from featfiles import write_frames

    root = tmp_path_factory.mktemp("tiny_unfreeze")
    data = make_features({"red": 6, "blue": 4}, dim=1024, frames=3, sep=0.5, seed=1)
    outdir = write_frames(root / "ingest", data)
    path = write_features(root / "features.h5", data, backbone="mobilenet_v3_small", attrs={
        "input_size": 32, "resize_size": 32, "ingest_dir": str(outdir)})
    return path


def test_unfreeze_killed_resumes_and_never_mixes(tiny_frames, tmp_path):
    import subprocess
    import time

    from vidfeat.training.model_dir import staging_path

    d = tmp_path / "m"
    old = old_model(tiny_frames, d)
    args = [sys.executable, "-m", "vidfeat", *cli_train(
        tiny_frames, d, "--epochs", "5", "--seed", "1", "--overwrite", "--unfreeze",
        "--unfreeze-epochs", "2", "--unfreeze-batch-size", "8", "--unfreeze-lr", "1e-2")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = staging_path(d) / "unfreeze_checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert checkpoint.exists(), "the run ended before its first checkpoint"
    assert model_state(d, old, seed=1) == "old"
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming fine-tuning" in resumed.stderr
    assert model_state(d, old, seed=1) == "new"
    config = json.loads((d / "config.json").read_text())
    assert [h["epoch"] for h in config["unfreeze"]["history"]] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]   # no staging, no checkpoint


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


def test_sweep_ties_are_broken_by_the_stated_rule(tmp_path):
    """Well separated classes: every configuration reaches the same val score; the rule, not
    grid order, decides, and the selected row's val log loss is the model's own (sklearn)."""
    from sklearn.metrics import log_loss as sk_log_loss

    from vidfeat.training.model_dir import load_head

    data = make_features({"alpha": 30, "beta": 30, "gamma": 30}, dim=8, frames=2, sep=4.0,
                         seed=3)
    path = write_features(tmp_path / "f.h5", data)
    res = run(path, tmp_path / "m", sweep=["weight_decay=0,1e-2", "lr=3e-2,1e-1"], epochs=30)
    table = pd.read_csv(tmp_path / "m" / "sweep.csv")
    assert table["tied"].all() and table["val_balanced_accuracy"].nunique() == 1
    best = table.loc[table["selected"]].iloc[0]
    assert round(best["val_log_loss"], 4) == round(table["val_log_loss"].min(), 4)
    assert best["config"] != 0 or table["val_log_loss"].idxmin() == 0
    assert best["selected_by"].startswith("4 configurations tied at val balanced_accuracy")
    assert best["selected_by"] in res.summary()
    assert "lowest val log loss" in res.config["hyperparameters"]["selection"]
    _, head = load_head(tmp_path / "m")
    val = data["split"] == "val"
    with torch.no_grad():
        logits = head(torch.from_numpy(data["features"][val].astype(np.float32)))
    logits = logits.reshape(-1, logits.shape[-1])  # one head: (1, n, C) or (n, C)
    probs = torch.softmax(logits, 1).numpy()
    assert sk_log_loss(data["label"][val], probs, labels=[0, 1, 2]) == \
        pytest.approx(best["val_log_loss"], rel=1e-3)


def test_select_config_rule_on_a_table():
    from vidfeat.training.scoring import select_config

    rows = [dict(val_accuracy=1.0, val_log_loss=0.2, weight_decay=0.0, dropout=0.0, lr=0.1),
            dict(val_accuracy=0.9, val_log_loss=0.01, weight_decay=0.0, dropout=0.0, lr=0.1),
            dict(val_accuracy=1.0, val_log_loss=0.1, weight_decay=0.0, dropout=0.0, lr=0.1),
            dict(val_accuracy=1.0, val_log_loss=0.1, weight_decay=1e-2, dropout=0.0, lr=0.1)]
    best, note = select_config(rows, "accuracy")
    assert best == 3 and note.startswith("3 configurations tied")  # equal loss: more regularised
    assert [r["tied"] for r in rows] == [True, False, True, True]
    assert [r["selected"] for r in rows] == [False, False, False, True]
    best, note = select_config(rows[:2], "accuracy")
    assert best == 0 and note == "" and rows[0]["selected_by"] == "highest val accuracy"


def test_heads_train_on_clip_rows_and_videos_average_clip_logits(clip_features, tmp_path):
    from vidfeat.extraction.cache import FeatureStore
    from vidfeat.training.model_dir import load_head

    _, path = clip_features
    res = run(path, tmp_path / "m", epochs=5)
    with FeatureStore(path) as s:
        val = s.load("val")
        names = s.class_names
    assert res.metrics["val"]["frame"]["n"] == len(val.y) == 2 * len(set(val.video_id))
    _, head = load_head(tmp_path / "m")
    with torch.no_grad():
        logits = head.eval()(torch.from_numpy(val.X))[0].numpy()
    videos = sorted(set(val.video_id))
    mean = np.stack([logits[val.video_id == v].mean(0) for v in videos])
    truth = [val.y[val.video_id == v][0] for v in videos]
    cm = np.zeros((len(names), len(names)), int)
    for t, p in zip(truth, mean.argmax(1)):
        cm[t, p] += 1
    assert res.metrics["val"]["video"]["confusion_matrix"] == cm.tolist()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["preprocessing"]["input_kind"] == "clip"
    assert config["sampling"]["clip_len"] == 2
    assert evaluate(tmp_path / "m", path, split="val", device="cpu")["video"] == \
        res.metrics["val"]["video"]


def test_clip_features_are_named_clips_wherever_a_user_reads_the_row_level(clip_features,
                                                                           tmp_path, capsys):
    """Rows of clip features are clips: train's summary, metrics.json, evaluate's JSON and its
    printed tables say "clip" (the "frame" key stays, for existing readers)."""
    from vidfeat.cli import main

    _, path = clip_features
    out = tmp_path / "m"
    assert main(["train", str(path), "-o", str(out), "--device", "cpu", "--epochs", "3",
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "val clip accuracy" in printed and "test: no samples" in printed
    assert "frame" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["row_level"] == "clip" and metrics["val"]["frame"]["n"] == 4  # 2 videos x 2
    assert main(["evaluate", str(out), str(path), "--split", "val", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "val, clip level: n=4" in printed and "val, video level: n=2" in printed
    assert "frame" not in printed
    written = json.loads((out / "evaluate_val.json").read_text())
    assert written["row_level"] == "clip" and written["frame"]["n"] == 4


def test_unfreeze_fine_tunes_a_clip_backbone_on_the_stored_clips(clip_features, tmp_path):
    _, path = clip_features
    res = unfreeze_run(path, tmp_path / "m", unfreeze_epochs=1, unfreeze_batch_size=4, epochs=3)
    best = torch.load(tmp_path / "m/backbone.pt", weights_only=True)
    assert "stem.0.weight" in best and best["stem.0.weight"].ndim == 5  # r3d_18's Conv3d
    assert [h["epoch"] for h in res.config["unfreeze"]["history"]] == [0, 1]
    assert res.metrics["val"]["frame"]["n"] == 2 * res.metrics["val"]["video"]["n"]  # clips
    assert res.metrics["row_level"] == "clip" and "val clip accuracy" in res.summary()
