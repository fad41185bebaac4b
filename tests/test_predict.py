"""predict: recorded sampling + preprocessing + backbone + head on real generated videos."""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from featfiles import make_features, write_features
from vidfeat.predict import predict
from videos import make_video

SAMPLING = {"mode": "uniform", "frames_per_video": 4, "fps": None, "size": 40, "jpeg_quality": 90}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from vidfeat.train import train

    root = tmp_path_factory.mktemp("predict")
    data = make_features({"red": 8, "blue": 8, "green": 4}, dim=512, frames=2, seed=2)
    path = write_features(root / "f.h5", data, attrs={
        "input_size": 32, "resize_size": 36, "sampling": json.dumps(SAMPLING)})
    train(path, root / "model", device="cpu", progress=False, epochs=3)
    return root / "model"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    red = make_video(root / "-red clip.mp4", duration=1, fps=10, source="color", color="red")
    bars = make_video(root / "bars.mp4", duration=1.5, fps=12, source="smptebars", size=(80, 60))
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    return red, bars, root / "broken.mp4"


def expected_probabilities(model_dir, video) -> np.ndarray:
    """The same pipeline by hand: decode with the recorded sampling, preprocess, backbone, head."""
    from vidfeat.backbones import Preprocess, create_backbone, load_image
    from vidfeat.decode import decode_frames
    from vidfeat.probe import probe_video
    from vidfeat.sample import SamplingSpec
    from vidfeat.train import load_head

    config, head = load_head(model_dir)
    with pytest.warns(UserWarning):
        backbone = create_backbone("resnet18", "none").model.eval()
    pre = Preprocess(resize_size=36, input_size=32, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        recs = decode_frames(video, probe_video(video), SamplingSpec(**SAMPLING), tmp)
        assert len(recs) == 4
        x = pre(torch.stack([load_image(Path(tmp) / r.filename) for r in recs]))
    with torch.no_grad():
        logits = head.eval()(backbone(x))[0].mean(0)
    return torch.softmax(logits.double(), 0).numpy()


def test_predict_matches_manual_pipeline(model_dir, clips):
    red, bars, _ = clips
    with pytest.warns(UserWarning, match="RANDOM"):
        out = list(predict(model_dir, [red, bars], top_k=2, device="cpu"))
    assert [o["video"] for o in out] == [str(red), str(bars)]
    names = ["red", "blue", "green"]
    for entry, video in zip(out, (red, bars)):
        assert entry["n_frames"] == 4 and len(entry["top_k"]) == 2
        probs = [t["probability"] for t in entry["top_k"]]
        assert probs == sorted(probs, reverse=True)
        expected = expected_probabilities(model_dir, video)
        for t in entry["top_k"]:
            assert t["probability"] == pytest.approx(expected[names.index(t["label"])], abs=1e-4)


def test_bad_videos_get_error_entries_and_others_go_on(model_dir, clips, tmp_path):
    red, _, broken = clips
    with pytest.warns(UserWarning):
        out = list(predict(model_dir, [broken, tmp_path / "missing.mp4", "http://example.com/a.mp4",
                                       red], device="cpu", top_k=5))
    assert [("error" in o) for o in out] == [True, True, True, False]
    assert "not a video" in out[0]["error"] or "VideoError" in out[0]["error"]
    assert "not found" in out[1]["error"]
    assert "URL" in out[2]["error"]
    assert len(out[3]["top_k"]) == 3   # top_k capped at the number of classes
    assert sum(t["probability"] for t in out[3]["top_k"]) == pytest.approx(1.0)


def test_fine_tuned_backbone_is_used(model_dir, clips, tmp_path):
    red = clips[0]
    tuned = tmp_path / "tuned"
    shutil.copytree(model_dir, tuned)
    with pytest.warns(UserWarning):
        from vidfeat.backbones import create_backbone
        state = create_backbone("resnet18", "none").model.state_dict()
    state = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, tuned / "backbone.pt")
    config = json.loads((tuned / "config.json").read_text())
    config["files"]["backbone"] = "backbone.pt"
    (tuned / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning):
        base = next(predict(model_dir, red, device="cpu"))
    other = next(predict(tuned, red, device="cpu"))
    assert base["top_k"] != other["top_k"]


def test_bad_model_dir_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        predict(tmp_path, ["a.mp4"], device="cpu")
    with pytest.raises(ValueError, match="top_k must be > 0"):
        predict(tmp_path, ["a.mp4"], top_k=0)


def test_cli_prints_json_lines(model_dir, clips, capsys):
    from vidfeat.cli import main

    red, _, broken = clips
    with pytest.warns(UserWarning):
        rc = main(["predict", str(model_dir), str(red), str(broken), "--top-k", "1",
                   "--device", "cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    assert lines[0]["top_k"][0]["label"] in {"red", "blue", "green"} and "error" in lines[1]


def test_predict_agrees_with_cached_features_end_to_end(tiny_dataset, tmp_path):
    """ingest -> extract -> train -> predict on a training video: predict re-derives the frames
    and features the cache holds, so its probabilities equal the head on the cached features."""
    import warnings

    from vidfeat.cache import FeatureStore
    from vidfeat.extract import extract
    from vidfeat.ingest import ingest
    from vidfeat.train import load_head, train

    ingest(tiny_dataset, tmp_path / "ing", frames_per_video=3, size=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(tmp_path / "ing", tmp_path / "f.h5", backbone="resnet18", weights="none",
                device="cpu", dtype="float32", progress=False)
        train(tmp_path / "f.h5", tmp_path / "model", device="cpu", epochs=5, progress=False)
        with FeatureStore(tmp_path / "f.h5") as store:
            fs = store.load("train")
            names = store.class_names
        config, head = load_head(tmp_path / "model")
        video_id = fs.video_id[0]
        source = tiny_dataset / video_id
        entry = next(predict(tmp_path / "model", [source], top_k=3, device="cpu"))
    assert entry["n_frames"] == (fs.video_id == video_id).sum() == 3
    with torch.no_grad():
        cached = head.eval()(torch.from_numpy(fs.X[fs.video_id == video_id]))[0].mean(0)
    expected = torch.softmax(cached.double(), 0).numpy()
    for t in entry["top_k"]:
        assert t["probability"] == pytest.approx(expected[names.index(t["label"])], abs=2e-3)
