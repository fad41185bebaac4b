"""predict: recorded sampling + preprocessing + backbone + head on real generated videos."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from featfiles import make_features, write_features
from videos import make_video

from vidfeat.prediction import predict

SAMPLING = {"mode": "uniform", "frames_per_video": 4, "fps": None, "size": 40, "jpeg_quality": 90}


def save_backbone_state(model_dir, state: dict) -> None:
    """Make MODEL_DIR's backbone the state dict ``state`` (as fine-tuning leaves it)."""
    torch.save(state, Path(model_dir) / "backbone.pt")
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config["files"]["backbone"] = "backbone.pt"
    (Path(model_dir) / "config.json").write_text(json.dumps(config))


def random_resnet18_state(seed: int) -> dict:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model("resnet18", weights=None).state_dict()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A head trained on synthetic features, over a saved (random, seeded) resnet18 state dict:
    a file the independent expectation below loads too."""
    from vidfeat.training._train import train

    root = tmp_path_factory.mktemp("predict")
    data = make_features({"red": 8, "blue": 8, "green": 4}, dim=512, frames=2, seed=2)
    path = write_features(root / "f.h5", data, attrs={
        "input_size": 32, "resize_size": 36, "sampling": json.dumps(SAMPLING)})
    train(path, root / "model", device="cpu", progress=False, epochs=3)
    save_backbone_state(root / "model", random_resnet18_state(seed=7))
    return root / "model"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    red = make_video(root / "-red clip.mp4", duration=1, fps=10, source="color", color="red")
    bars = make_video(root / "bars.mp4", duration=1.5, fps=12, source="smptebars", size=(80, 60))
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    return red, bars, root / "broken.mp4"


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A clip whose frames all differ: the one where choosing the wrong frame shows."""
    return make_video(tmp_path_factory.mktemp("moving") / "moving.mp4", duration=1.5, fps=12,
                      source="testsrc2", size=(80, 60))


# -- the expectation, from the documented contract with plain PyAV / Pillow / torchvision --------

def sampled_frames_as_jpeg(video, *, n: int, size: int, quality: int) -> list[bytes]:
    """The ``uniform`` frames as ingest stores them, decoded with PyAV directly.

    Contract (vidfeat.ingestion.sample / decode docstrings): targets at the centres of ``n``
    equal segments of the stream's duration; a target ``t`` takes the last frame with
    pts <= t; one swscale call resizes the short side to ``size`` (AREA when shrinking, BICUBIC
    when enlarging) into full-range BT.601 YUV 4:2:0, and libjpeg-turbo (simplejpeg) encodes
    those planes at ``quality``, each plane's edge pixels repeated to whole JPEG blocks.
    """
    import av
    import simplejpeg

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        start = float((stream.start_time or 0) * tb)
        duration = float(stream.duration * tb)
        frames = [(float(f.pts * tb), f) for f in container.decode(stream)]
    targets = [start + (i + 0.5) * duration / n for i in range(n)]
    chosen = [max((fr for fr in frames if fr[0] <= t), key=lambda fr: fr[0])[1] for t in targets]
    assert len({id(f) for f in chosen}) == n  # n distinct frames: the clips are long enough
    out = []
    for frame in chosen:
        scale = size / min(frame.width, frame.height)
        small = frame.reformat(width=round(frame.width * scale), height=round(frame.height * scale),
                               format="yuv420p", interpolation="AREA" if scale < 1 else "BICUBIC",
                               dst_color_range="JPEG", dst_colorspace="ITU601")
        planes = []
        for plane, block in zip(small.planes, (16, 8, 8)):
            rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            pixels = rows[:plane.height, :plane.width]
            h, w = pixels.shape
            planes.append(np.pad(pixels, ((0, -h % block), (0, -w % block)), mode="edge")[:h, :w])
        out.append(simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality))
    return out


def expected_probabilities(model_dir, video) -> np.ndarray:
    """predict's answer computed without vidfeat: torchvision's resnet18 loaded with MODEL_DIR's
    backbone.pt, transforms.v2 from the weights' own transforms (sizes from config.json), and
    the head's saved tensors applied by hand; video score = mean frame logit."""
    import torchvision
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    config = json.loads((Path(model_dir) / "config.json").read_text())
    pre = config["preprocessing"]
    ref = torchvision.models.get_model_weights("resnet18").DEFAULT.transforms()
    assert (tuple(pre["mean"]), tuple(pre["std"])) == (tuple(ref.mean), tuple(ref.std))
    transform = v2.Compose([
        v2.Resize(pre["resize_size"], interpolation=ref.interpolation, antialias=True),
        v2.CenterCrop(pre["input_size"]), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(ref.mean, ref.std)])
    jpegs = sampled_frames_as_jpeg(video, n=SAMPLING["frames_per_video"], size=SAMPLING["size"],
                                   quality=SAMPLING["jpeg_quality"])
    x = torch.stack([transform(decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8)))
                     for j in jpegs])

    backbone = torchvision.models.get_model("resnet18", weights=None)
    backbone.load_state_dict(torch.load(Path(model_dir) / config["files"]["backbone"],
                                        weights_only=True))
    backbone.fc = torch.nn.Identity()  # the feature is what fed the classifier
    head = torch.load(Path(model_dir) / config["files"]["head"], weights_only=True)
    n_layers = len(config["head"]["hidden"]) + 1
    with torch.no_grad():
        h = (backbone.eval()(x) - head["mean"]) / head["scale"]
        for i in range(n_layers):  # head k=0 of the stacked (K, D_in, D_out) tensors
            h = h @ head[f"weights.{i}"][0] + head[f"biases.{i}"][0]
            h = torch.relu(h) if i < n_layers - 1 else h
    return torch.softmax(h.mean(0).double(), 0).numpy()


# Tolerance. Both routes decode byte-identical JPEGs (checked when this test was written), so the
# gap is float32 summation order (~1e-7 here) plus one real difference: torchvision's v1
# functional resize (predict) and transforms.v2's Resize round antialiased uint8 output
# differently, by at most 1 grey level. Measured gaps: 2e-7 (flat red), 7e-5 (testsrc2),
# 3.2e-4 (smptebars, whose hard edges meet that rounding most). Real pipeline mistakes on the
# textured clips, measured the same way: JPEG quality 85 instead of 90 >= 1.2e-3, the next frame
# instead of the target's (testsrc2) 1.8e-3, bicubic instead of bilinear >= 3.2e-3, short side
# 44 instead of 40 >= 6e-3. 5e-4 sits between the two. (The flat red clip cannot see
# preprocessing mistakes at all; it checks the backbone and head.)
PROB_TOL = 5e-4


def test_predict_matches_an_independent_pipeline(model_dir, clips, moving):
    red, bars, _ = clips
    videos = [red, bars, moving]
    out = list(predict(model_dir, videos, top_k=3, device="cpu"))
    assert [o["video"] for o in out] == list(map(str, videos))
    names = ["red", "blue", "green"]
    for entry, video in zip(out, videos):
        assert entry["n_frames"] == 4 and len(entry["top_k"]) == 3
        assert "n_clips" not in entry  # a frame model's rows are frames
        probs = [t["probability"] for t in entry["top_k"]]
        assert probs == sorted(probs, reverse=True)
        expected = expected_probabilities(model_dir, video)
        got = np.array([next(t["probability"] for t in entry["top_k"] if t["label"] == c)
                        for c in names])
        np.testing.assert_allclose(got, expected, rtol=0, atol=PROB_TOL)


def test_top_k_is_the_k_most_probable(model_dir, clips):
    red = clips[0]
    full = next(predict(model_dir, red, top_k=3, device="cpu"))["top_k"]
    two = next(predict(model_dir, red, top_k=2, device="cpu"))["top_k"]
    assert two == full[:2]


def test_bad_videos_get_error_entries_and_others_go_on(model_dir, clips, tmp_path):
    red, _, broken = clips
    out = list(predict(model_dir, [broken, tmp_path / "missing.mp4", "http://example.com/a.mp4",
                                   red], device="cpu", top_k=5))
    assert [("error" in o) for o in out] == [True, True, True, False]
    assert out[0]["error"].startswith("VideoError: ")
    assert "not found" in out[1]["error"]
    assert "URL" in out[2]["error"]
    assert len(out[3]["top_k"]) == 3   # top_k capped at the number of classes
    probs = [t["probability"] for t in out[3]["top_k"]]
    assert sum(probs) == pytest.approx(1.0, abs=2e-4)  # each rounded to 4 decimals
    assert all(p == round(p, 4) for p in probs)


def test_fine_tuned_backbone_is_used(model_dir, clips, tmp_path):
    red = clips[0]
    tuned = tmp_path / "tuned"
    shutil.copytree(model_dir, tuned)
    state = torch.load(model_dir / "backbone.pt", weights_only=True)
    save_backbone_state(tuned, {k: (v * 1.5 if v.is_floating_point() else v)
                                for k, v in state.items()})
    base = next(predict(model_dir, red, device="cpu"))
    other = next(predict(tuned, red, device="cpu"))
    assert base["top_k"] != other["top_k"]
    got = {t["label"]: t["probability"] for t in other["top_k"]}
    expected = expected_probabilities(tuned, red)
    names = ["red", "blue", "green"]
    np.testing.assert_allclose([got[c] for c in names], expected, rtol=0, atol=PROB_TOL)


def test_bad_model_dir_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        predict(tmp_path, ["a.mp4"], device="cpu")
    with pytest.raises(ValueError, match="top_k must be > 0"):
        predict(tmp_path, ["a.mp4"], top_k=0)


def test_cli_prints_json_lines(model_dir, clips, capsys):
    from vidfeat.cli import main

    red, _, broken = clips
    rc = main(["predict", str(model_dir), str(red), str(broken), "--top-k", "1",
               "--device", "cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    assert lines[0]["top_k"][0]["label"] in {"red", "blue", "green"} and "error" in lines[1]


def test_predict_agrees_with_cached_features_end_to_end(tiny_dataset, tmp_path):
    """ingest -> extract -> train -> predict on a training video: predict re-derives the frames
    and features the cache holds, so its probabilities equal the head on the cached features."""
    import warnings

    from vidfeat.extraction._extract import extract
    from vidfeat.extraction.cache import FeatureStore
    from vidfeat.extraction.preprocess import Preprocess
    from vidfeat.ingestion._ingest import ingest
    from vidfeat.training._train import train
    from vidfeat.training.model_dir import load_head

    ingest(tiny_dataset, tmp_path / "ing", frames_per_video=3, size=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(tmp_path / "ing", tmp_path / "f.h5", backbone="resnet18", weights="none",
                device="cpu", dtype="float32", progress=False)
        train(tmp_path / "f.h5", tmp_path / "model", device="cpu", epochs=5, progress=False)
        with FeatureStore(tmp_path / "f.h5") as store:
            fs = store.load("train")
            names = store.class_names
            made_with = Preprocess.from_attrs(store.attrs)
        config, head = load_head(tmp_path / "model")
        # the model resizes new videos as the file's features were made (resample included)
        assert Preprocess.from_attrs(config["preprocessing"]) == made_with
        assert made_with.resample == "uint8"
        video_id = fs.video_id[0]
        source = tiny_dataset / video_id
        entry = next(predict(tmp_path / "model", [source], top_k=3, device="cpu"))
    assert entry["n_frames"] == (fs.video_id == video_id).sum() == 3
    with torch.no_grad():
        cached = head.eval()(torch.from_numpy(fs.X[fs.video_id == video_id]))[0].mean(0)
    expected = torch.softmax(cached.double(), 0).numpy()
    for t in entry["top_k"]:
        assert t["probability"] == pytest.approx(expected[names.index(t["label"])], abs=2e-3)


def test_hung_or_crashing_decode_is_that_videos_error(model_dir, clips, tmp_path, monkeypatch):
    """Each video's probe and decode run in a child killed after ``timeout``: a decoder that
    hangs or crashes gives that video an error entry and the next videos are still predicted."""
    import time

    from sandboxed import decode_or_misbehave

    red = clips[0]
    expected = next(predict(model_dir, red, device="cpu"))
    hang, crash = (shutil.copyfile(red, tmp_path / name) for name in ("hang.mp4", "crash.mp4"))
    monkeypatch.setattr("vidfeat.ingestion.decode.decode_frames", decode_or_misbehave)
    start = time.monotonic()
    out = list(predict(model_dir, [hang, red, crash, red], device="cpu", timeout=4))
    assert time.monotonic() - start < 60
    assert out[0] == {"video": str(hang), "error": "VideoError: timed out after 4s (work killed)"}
    assert out[2]["error"].startswith("VideoError: worker process died (killed by SIGSEGV")
    assert out[1] == out[3] == expected


def test_timeout_must_be_positive(model_dir):
    with pytest.raises(ValueError, match="timeout must be > 0"):
        predict(model_dir, ["a.mp4"], timeout=0)


def test_predict_warns_once_when_the_training_features_changed(clips, tmp_path, caplog):
    import subprocess
    import sys
    import warnings

    from vidfeat.training._train import train

    red = clips[0]
    attrs = {"input_size": 32, "resize_size": 36, "sampling": json.dumps(SAMPLING)}
    path = write_features(tmp_path / "f.h5", make_features(
        {"red": 8, "blue": 8, "green": 4}, dim=512, frames=2, seed=2), attrs=attrs)
    model = tmp_path / "model"
    train(path, model, device="cpu", progress=False, epochs=3)
    changed = lambda: [r.getMessage() for r in caplog.records  # noqa: E731
                       if "has changed since the model" in r.getMessage()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the backbone's random weights
        before = list(predict(model, [red, red], device="cpu"))
        assert changed() == []
        # re-extracted to the recorded path: one warning for the run, the model still predicts
        new = make_features({"red": 8, "blue": 8, "green": 4}, dim=512, frames=2, seed=5)
        write_features(path, new, attrs={**attrs, "manifest_fingerprint": "e" * 16})
        after = list(predict(model, [red, red], device="cpu"))
        assert len(changed()) == 1 and str(path) in changed()[0]
        assert after == before
        proc = subprocess.run([sys.executable, "-m", "vidfeat", "predict", str(model), str(red),
                               "--device", "cpu"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["top_k"] == before[0]["top_k"]
        lines = [line for line in proc.stderr.splitlines() if "has changed since" in line]
        assert len(lines) == 1 and lines[0].startswith("vidfeat: warning: the feature file")
        # the recorded file is gone: nothing to compare, nothing said
        caplog.clear()
        path.unlink()
        assert list(predict(model, [red], device="cpu")) == before[:1]
    assert changed() == []


def test_clip_model_predicts_as_its_cached_clip_features(tiny_dataset, tmp_path):
    """clip ingest -> r3d_18 extract -> train -> predict a training video: predict samples the
    recorded clips again, and its probabilities are the head on the cached clip features,
    averaged over the video's clips (the mean of clip logits)."""
    import warnings

    from vidfeat.extraction._extract import extract
    from vidfeat.extraction.cache import FeatureStore
    from vidfeat.ingestion._ingest import ingest
    from vidfeat.training._train import train
    from vidfeat.training.model_dir import load_head

    src = tmp_path / "src"
    for label in ("alpha", "gamma"):  # 2 + 2 videos: a cheap r3d_18 run
        (src / label).mkdir(parents=True)
        for video in sorted((tiny_dataset / label).iterdir())[:2]:
            shutil.copy(video, src / label / video.name)
    ingest(src, tmp_path / "ing", clips_per_video=2, clip_len=2, clip_fps=8.0, size=48,
           split=(0.5, 0.5, 0), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(tmp_path / "ing", tmp_path / "f.h5", backbone="r3d_18", weights="none",
                device="cpu", dtype="float32", progress=False, workers=0)
        train(tmp_path / "f.h5", tmp_path / "model", device="cpu", epochs=5, progress=False)
        with FeatureStore(tmp_path / "f.h5") as store:
            fs = store.load("train")
            names = store.class_names
        _, head = load_head(tmp_path / "model")
        video_id = fs.video_id[0]
        entry = next(predict(tmp_path / "model", [src / video_id], top_k=2, device="cpu"))
    assert entry["n_frames"] == (fs.video_id == video_id).sum() == 2  # its two clips
    assert entry["n_clips"] == 2  # says what its rows are; n_frames kept for existing readers
    with torch.no_grad():
        cached = head.eval()(torch.from_numpy(fs.X[fs.video_id == video_id]))[0].mean(0)
    expected = torch.softmax(cached.double(), 0).numpy()
    for t in entry["top_k"]:
        assert t["probability"] == pytest.approx(expected[names.index(t["label"])], abs=2e-3)
