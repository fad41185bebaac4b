import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import get_model, get_model_weights

from vidfeat.extraction.backbones import (
    _HEADS,
    Preprocess,
    _split_head,
    create_backbone,
    list_backbones,
    load_image,
    preprocess_for,
    resolve_weights,
)

REQUIRED = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "efficientnet_b0",
            "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "convnext_tiny",
            "mobilenet_v3_large", "regnet_y_800mf", "vit_b_16"]


@pytest.fixture(scope="module")
def resnet18():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return create_backbone("resnet18", "none")


def test_registry_has_the_promised_backbones():
    assert set(REQUIRED) <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*resnet18.*vit_b_16"):
        create_backbone("resnet9", "none")


@pytest.mark.parametrize("name", sorted(_HEADS))
def test_every_backbone_returns_pooled_features_of_its_dim(name):
    # meta tensors check shapes without allocating; regnet's builder computes widths eagerly
    device = "cpu" if name.startswith("regnet") else "meta"
    with torch.device(device):
        model = get_model(name)
    dim = _split_head(model, _HEADS[name])
    size = preprocess_for(name).input_size
    out = model.eval()(torch.empty(2, 3, size, size, device=device))
    assert tuple(out.shape) == (2, dim)


def test_random_init_is_seeded_and_warned(resnet18):
    with pytest.warns(UserWarning, match="RANDOM"):
        again = create_backbone("resnet18", None)
    assert resnet18.weights == "none" and resnet18.feature_dim == 512
    for a, b in zip(resnet18.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in resnet18.model.parameters())
    assert not resnet18.model.training


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "vit_b_16"])
def test_preprocess_is_the_weights_own_transform(name):
    """The weights' transform as torchvision evaluated them: on PIL images. Resized in uint8
    (``resample='uint8'``) the crop is PIL's but for rare rounding: on noise, the hardest case,
    measured at most 1.06% of values, 2 grey levels apart at most (the float path: 18 to 23%,
    up to 20). ``resample='float'`` (files and models made before it was recorded) is the
    transform on tensors to 1e-6."""
    pre = preprocess_for(name)
    reference = get_model_weights(name).DEFAULT.transforms()
    assert pre.input_size == reference.crop_size[0] and pre.resize_size == reference.resize_size[0]
    assert pre.interpolation == reference.interpolation.value and pre.resample == "uint8"
    legacy = Preprocess.from_attrs({k: v for k, v in pre.as_attrs().items() if k != "resample"})
    assert legacy == dataclasses.replace(pre, resample="float")
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for h, w in [(48, 64), (143, 175), (300, 200)]:
        img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
        ours = pre(img)
        assert ours.shape == (1, 3, pre.input_size, pre.input_size) and ours.dtype == torch.float32
        pil = Image.fromarray(img[0].permute(1, 2, 0).numpy())
        levels = ((ours - reference(pil)[None]) * std * 255).abs()  # grey levels apart
        assert levels.max() <= 2 + 1e-3 and (levels > 0.5).float().mean() <= 0.015
        torch.testing.assert_close(legacy(img), reference(img), rtol=0, atol=1e-6)


def test_preprocess_halves_compose_and_keep_uint8():
    pre = Preprocess(resize_size=40, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = torch.full((2, 3, 50, 80), 255, dtype=torch.uint8)
    small = pre.resize_crop(img)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pre.normalize(small), torch.full((2, 3, 32, 32), 2.0))


def test_local_state_dict_full_or_headless(tmp_path, resnet18):
    full = get_model("resnet18")
    torch.nn.init.constant_(full.conv1.weight, 0.01)
    torch.save(full.state_dict(), tmp_path / "full.pt")
    bb = create_backbone("resnet18", str(tmp_path / "full.pt"))
    assert bb.weights == str(tmp_path / "full.pt") and len(bb.weights_sha256) == 64
    assert torch.equal(bb.model.conv1.weight, full.conv1.weight)
    headless = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in headless.items()}}, tmp_path / "h.pt")
    bb2 = create_backbone("resnet18", str(tmp_path / "h.pt"))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(bb.model(x), bb2.model(x))


def test_state_dict_mismatch_names_the_key(tmp_path):
    sd = get_model("resnet18").state_dict()
    bad = dict(sd)
    del bad["layer1.0.conv1.weight"]
    torch.save(bad, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \['layer1.0.conv1.weight'\]"):
        create_backbone("resnet18", str(tmp_path / "missing.pt"))
    bad = dict(sd, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"'conv1.weight' has shape \(64, 3, 3, 3\).*\(64, 3, 7, 7\)"):
        create_backbone("resnet18", str(tmp_path / "shape.pt"))
    torch.save(get_model("resnet34").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unexpected keys"):
        create_backbone("resnet18", str(tmp_path / "other.pt"))


class Payload:
    """Not a tensor: weights_only loading must refuse to unpickle it."""


def test_hostile_or_broken_weights_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file"):
        create_backbone("resnet18", str(tmp_path / "junk.pt"))
    torch.save({"x": Payload()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        create_backbone("resnet18", str(tmp_path / "pickle.pt"))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_backbone("resnet18", str(tmp_path / "absent.pt"))


def test_weights_names_resolve_without_download():
    assert resolve_weights("resnet50", "DEFAULT") == ("ResNet50_Weights.IMAGENET1K_V2", "")
    assert resolve_weights("resnet50", "IMAGENET1K_V1")[0] == "ResNet50_Weights.IMAGENET1K_V1"
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V1")[0].endswith("V1")
    assert resolve_weights("resnet50", "none") == ("none", "")
    with pytest.raises(ValueError, match="IMAGENET9K.*not known for resnet50.*IMAGENET1K_V2"):
        resolve_weights("resnet50", "IMAGENET9K")


def test_load_image_gives_rgb_uint8(tmp_path):
    Image.fromarray(np.full((20, 30), 128, np.uint8), mode="L").save(tmp_path / "g.jpg")
    img = load_image(tmp_path / "g.jpg")
    assert img.shape == (3, 20, 30) and img.dtype == torch.uint8
    assert abs(int(img.float().mean()) - 128) <= 1


def _offline(monkeypatch, tmp_path):
    import socket

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_unavailable_weights_are_one_line_and_cached_ones_need_no_network(monkeypatch, tmp_path):
    from urllib.parse import urlparse

    from torchvision.models import ResNet18_Weights

    from vidfeat.extraction.backbones import WeightsUnavailable, check_weights_available

    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable, match="ResNet18_Weights.IMAGENET1K_V1 of resnet18 "
                                                 "are not in torch hub's cache.*cannot be reached"):
        check_weights_available("resnet18", "DEFAULT")
    check_weights_available("resnet18", "none")  # nothing to fetch
    cached = tmp_path / "torch" / "hub" / "checkpoints" / \
        urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path.split("/")[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    check_weights_available("resnet18", "DEFAULT")  # in the cache: no connection tried


def test_pipeline_checks_weights_before_ingest(tiny_dataset, monkeypatch, tmp_path):
    from vidfeat.extraction.backbones import WeightsUnavailable
    from vidfeat.pipeline import run_pipeline

    _offline(monkeypatch, tmp_path)
    config = {"ingest": {"src": str(tiny_dataset), "frames_per_video": 1},
              "extract": {"backbone": "resnet18", "weights": "DEFAULT"}}
    with pytest.raises(WeightsUnavailable, match="cannot be reached"):
        run_pipeline(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "ingest").exists()


# -- timm backbones (the optional vidfeat[timm] extra) -------------------------------------------

def _textured_jpeg(path, size):
    """A JPEG with detail at every scale, so a wrong resize, crop or interpolation shows."""
    rng = np.random.default_rng(3)
    coarse = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
    img = np.asarray(coarse.resize(size, Image.BICUBIC)).astype(np.int16)
    img += rng.integers(-20, 21, img.shape).astype(np.int16)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def _timm_reference(model_name, state, jpeg):
    """timm's own path: its eval transform of the resolved data config, on PIL, and its model."""
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
    model.load_state_dict(state)
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        return model(transform(Image.open(jpeg).convert("RGB"))[None])[0], transform


def _vidfeat_feature(bb, jpeg):
    with torch.no_grad():
        return bb.model(bb.preprocess(load_image(jpeg)[None]))[0]


def _rel(got, expected):
    return float((got - expected).norm() / expected.norm())


def test_timm_cnn_feature_equals_timms_own_transform_and_model(tmp_path):
    # resnet10t: 176 input, crop_pct 0.875 -> resize 201, bicubic
    pytest.importorskip("timm")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        bb = create_backbone("timm:resnet10t", "none")
    jpeg = _textured_jpeg(tmp_path / "f.jpg", (200, 150))
    expected, _ = _timm_reference("resnet10t", bb.model.state_dict(), jpeg)
    assert bb.feature_dim == expected.numel() == 512
    assert (bb.preprocess.resize_size, bb.preprocess.input_size) == (201, 176)
    assert _rel(_vidfeat_feature(bb, jpeg), expected) <= 1e-3


def test_timm_vit_feature_equals_timms_own_transform_and_model(tmp_path):
    # test_vit: 160 input, crop_pct 0.95 -> resize 168, bicubic, mean/std 0.5. A random ViT
    # amplifies any pixel difference, so this is the strict case: on a frame resampled from
    # 400x300 the feature is timm's (PIL) to 1e-3 (measured 4.7e-4; 2.1e-3 when resizing in
    # float, resample='float'), and the crop PIL's pixel for pixel but for rare rounding.
    pytest.importorskip("timm")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        bb = create_backbone("timm:test_vit", "none")
    assert (bb.preprocess.resize_size, bb.preprocess.input_size) == (168, 160)
    other = _textured_jpeg(tmp_path / "other.jpg", (400, 300))
    expected, transform = _timm_reference("test_vit", bb.model.state_dict(), other)
    assert bb.feature_dim == expected.numel() == 64
    assert _rel(_vidfeat_feature(bb, other), expected) <= 1e-3
    resize, crop = transform.transforms[:2]
    theirs = torch.from_numpy(np.array(crop(resize(Image.open(other).convert("RGB")))))
    ours = bb.preprocess.resize_crop(load_image(other)[None])[0].permute(1, 2, 0)
    assert ours.shape == theirs.shape == (160, 160, 3)
    diff = (ours.int() - theirs.int()).abs().float()
    # measured: max 1, mean 0.005 (in float: max 1, mean 0.16; bilinear for bicubic: max 4)
    assert diff.max() <= 1 and diff.mean() <= 0.02


def test_timm_squash_preprocess_resizes_both_sides_and_round_trips_attrs():
    pytest.importorskip("timm")
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    # a real timm config with crop_mode "squash" (from timm's registry, not typed here)
    cfg = resolve_data_config(pretrained_cfg=get_pretrained_cfg(
        "convnext_base.fb_in22k_ft_in1k_384").to_dict())
    assert cfg["crop_mode"] == "squash"
    pre = preprocess_for("timm:convnext_base.fb_in22k_ft_in1k_384")
    assert (pre.resize_size, pre.input_size, pre.crop_mode) == (384, 384, "squash")
    assert Preprocess.from_attrs(pre.as_attrs()) == pre
    wide = torch.full((1, 3, 50, 200), 255, dtype=torch.uint8)
    wide[..., :50] = 0  # the left quarter dark: squash keeps it, a centre crop would cut it off
    out = pre.resize_crop(wide)
    assert out.shape == (1, 3, 384, 384)
    assert out[..., :90].max() == 0 and out[..., 100:].min() == 255
    centre = Preprocess.from_attrs({**pre.as_attrs(), "crop_mode": "center"})
    assert "crop_mode" not in centre.as_attrs()  # older files and fingerprints stay as they were
    assert Preprocess.from_attrs(centre.as_attrs()) == centre


def test_timm_local_state_dict_full_or_headless_round_trips(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    full = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    torch.save(full.state_dict(), tmp_path / "full.pt")
    assert "fc.weight" in full.state_dict()
    full.reset_classifier(0)
    torch.save(full.state_dict(), tmp_path / "headless.pt")
    jpeg = _textured_jpeg(tmp_path / "f.jpg", (120, 90))
    for file in ("full.pt", "headless.pt"):
        timm_bb = create_backbone("timm:resnet10t", str(tmp_path / file))
        assert timm_bb.weights == str(tmp_path / file) and len(timm_bb.weights_sha256) == 64
        x = timm_bb.preprocess(load_image(jpeg)[None])
        with torch.no_grad():
            torch.testing.assert_close(timm_bb.model(x), full(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        torch.manual_seed(123)  # whatever the caller's RNG state (another process: predict)
        random_a = create_backbone("timm:resnet10t", "none").model.state_dict()
        torch.manual_seed(456)
        random_b = create_backbone("timm:resnet10t", None).model.state_dict()
    assert all(torch.equal(random_a[k], random_b[k]) for k in random_a)  # seeded: predict agrees
    assert not torch.equal(random_a["conv1.0.weight"], full.state_dict()["conv1.0.weight"])
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="missing keys"):
        create_backbone("timm:resnet10t", str(tmp_path / "wrong.pt"))


def test_timm_weights_resolve_without_download():
    pytest.importorskip("timm")
    assert resolve_weights("timm:resnet18", "DEFAULT") == ("timm:resnet18.a1_in1k", "")
    assert resolve_weights("timm:resnet18", "tv_in1k")[0] == "timm:resnet18.tv_in1k"
    # the resolved name (what a feature file and a model config record) resolves to itself
    assert resolve_weights("timm:resnet18", "timm:resnet18.tv_in1k")[0] == "timm:resnet18.tv_in1k"
    assert resolve_weights("timm:resnet18.a2_in1k", "DEFAULT")[0] == "timm:resnet18.a2_in1k"
    assert resolve_weights("timm:resnet18", "none") == ("none", "")
    with pytest.raises(ValueError, match="are not weights of timm:resnet18"):
        resolve_weights("timm:resnet18", "timm:resnet34.a1_in1k")


def test_unknown_timm_name_is_one_line_with_close_matches():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"^unknown timm model 'vit_tiny_patch16_22'; close "
                                         r"matches: vit_tiny_patch16_224") as info:
        create_backbone("timm:vit_tiny_patch16_22", "none")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^timm model resnet18 has no pretrained tag 'bogus'; "
                                         r"known: .*tv_in1k"):
        resolve_weights("timm:resnet18.bogus", "none")


def test_timm_without_the_extra_is_one_line_naming_the_pip_command():
    import subprocess
    import sys

    code = ("import sys; sys.modules['timm'] = None\n"
            "from vidfeat.extraction.backbones import create_backbone\n"
            "from vidfeat.system import MissingExtra\n"
            "try:\n    create_backbone('timm:resnet18', 'none')\n"
            "except MissingExtra as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("backbone 'timm:resnet18' needs the optional 'timm' dependencies, which "
                           "are not installed: pip install 'vidfeat[timm]'\n")


def test_timm_weights_availability_uses_the_hf_hub_cache(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    from vidfeat.extraction.backbones import (
        WeightsUnavailable,
        cached_weights_path,
        check_weights_available,
    )

    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailable, match=r"^weights timm:resnet18.a1_in1k of timm:resnet18 "
                                                 r"are not in the huggingface hub cache .*"
                                                 r"huggingface.co cannot be reached"):
        check_weights_available("timm:resnet18", "DEFAULT")
    check_weights_available("timm:resnet18", "none")
    # huggingface_hub's layout for repo timm/resnet18.a1_in1k
    snap = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    assert cached_weights_path("timm:resnet18") == snap / "model.safetensors"
    check_weights_available("timm:resnet18", "DEFAULT")  # cached: no connection tried


def _vidfeat(*argv, no_timm=False, cwd=None):
    import subprocess
    import sys

    hide = "sys.modules['timm'] = None; " if no_timm else ""
    code = f"import sys; {hide}from vidfeat.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_timm_backbone_end_to_end_extract_train_predict(tiny_dataset, tmp_path):
    import json

    pytest.importorskip("timm")
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    ingest = _vidfeat("ingest", tiny_dataset, "-o", tmp_path / "ingest", "--frames-per-video", 2,
                      "--size", 64, "--split", "0.5,0.25,0.25", "--jobs", 1, "--no-progress")
    assert ingest.returncode == 0, ingest.stderr
    extract = ["extract", tmp_path / "ingest", "-o", tmp_path / "f.h5", "--backbone",
               "timm:test_vit", "--weights", "none", "--device", "cpu", "--dtype", "float32",
               "--batch-size", 8, "--loader-workers", 0, "--no-progress"]
    missing = _vidfeat(*extract, no_timm=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().endswith("pip install 'vidfeat[timm]'")
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "f.h5").exists()
    done = _vidfeat(*extract)
    assert done.returncode == 0, done.stderr
    # the attrs carry timm's own data config of test_vit: 160 input, crop_pct 0.95, bicubic
    cfg = resolve_data_config(pretrained_cfg=get_pretrained_cfg("test_vit").to_dict())
    from vidfeat.extraction.cache import FeatureStore

    with FeatureStore(tmp_path / "f.h5") as store:
        a = dict(store.attrs)
        assert store.backbone == "timm:test_vit"
    assert int(a["input_size"]) == cfg["input_size"][1] == 160
    assert int(a["resize_size"]) == int(160 / cfg["crop_pct"]) == 168
    assert str(a["interpolation"]) == cfg["interpolation"] == "bicubic"
    assert list(a["mean"]) == pytest.approx(cfg["mean"]) and list(a["std"]) == \
        pytest.approx(cfg["std"])
    assert int(a["feature_dim"]) == 64
    train = _vidfeat("train", tmp_path / "f.h5", "-o", tmp_path / "model", "--epochs", 3,
                     "--device", "cpu", "--no-progress")
    assert train.returncode == 0, train.stderr
    clip = sorted((tiny_dataset / "alpha").glob("*.mp4"))[0]
    pred = _vidfeat("predict", tmp_path / "model", clip, "--top-k", 1, "--device", "cpu")
    assert pred.returncode == 0, pred.stderr
    line = json.loads(pred.stdout)
    assert line["top_k"][0]["label"] in {"alpha", "beta", "gamma"} and line["n_frames"] == 2


def test_pipeline_takes_timm_names_and_checks_their_weights_first(tiny_dataset, monkeypatch,
                                                                 tmp_path):
    pytest.importorskip("timm")
    from vidfeat.extraction.backbones import WeightsUnavailable
    from vidfeat.pipeline import run_pipeline

    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    config = {"ingest": {"src": str(tiny_dataset), "frames_per_video": 1},
              "extract": {"backbone": "timm:resnet18", "weights": "DEFAULT"}}
    with pytest.raises(WeightsUnavailable, match="huggingface.co cannot be reached"):
        run_pipeline(config, tmp_path / "w", progress=False)
    config["extract"]["backbone"] = "timm:resnet1"
    with pytest.raises(ValueError, match="unknown timm model 'resnet1'; close matches: resnet18"):
        run_pipeline(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "ingest").exists()


# ----------------------------------------------------------------------------- clip backbones
# (clip_len, fps) that torchvision documents for each model's default Kinetics-400 weights
# (the model docs / weights tables: "frame_rate=15 ... clip_len=16" and so on)
CLIP_MODELS = {"r3d_18": (16, 15.0), "mc3_18": (16, 15.0), "r2plus1d_18": (16, 15.0),
               "s3d": (128, 15.0), "mvit_v1_b": (16, 7.5), "mvit_v2_s": (16, 7.5),
               "swin3d_t": (32, 15.0), "swin3d_s": (32, 15.0), "swin3d_b": (32, 15.0)}


def test_clip_backbones_are_listed_with_their_weights_clip_sampling():
    infos = {i.name: i for i in list_backbones(details=True)}
    assert set(CLIP_MODELS) <= set(infos) and set(REQUIRED) <= set(infos)
    assert list_backbones(kind="clip") == sorted(CLIP_MODELS)
    assert set(list_backbones(kind="frame")) == set(list_backbones()) - set(CLIP_MODELS)
    for name, (length, fps) in CLIP_MODELS.items():
        assert (infos[name].kind, infos[name].clip_len, infos[name].clip_fps) == \
            ("clip", length, fps)
    assert (infos["resnet50"].kind, infos["resnet50"].clip_len) == ("frame", None)
    with pytest.raises(ValueError, match="kind"):
        list_backbones(kind="video")


def _pre_logits(model, head: torch.nn.Module, x):
    """What feeds ``head`` in the full torchvision model (its pooled pre-logits vector)."""
    seen = []
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen[0].flatten(1)


@pytest.mark.parametrize("name", sorted(CLIP_MODELS))
def test_every_clip_backbone_returns_pooled_features_of_its_dim(name):
    from vidfeat.extraction.video_backbones import VIDEO_HEADS, split_video_head

    with torch.device("meta"):
        model = get_model(name)
    head = model.get_submodule(VIDEO_HEADS[name])
    # the classifier's own input width, read off the torchvision module before it goes
    linear = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d))]
    width = linear[-1].in_features if isinstance(linear[-1], torch.nn.Linear) \
        else linear[-1].in_channels
    assert split_video_head(model, name) == width
    size, frames = preprocess_for(name).input_size, max(CLIP_MODELS[name][0] // 8, 2)
    frames = 16 if name.startswith("mvit") else (14 if name == "s3d" else frames)
    out = model.eval()(torch.empty(2, 3, frames, size, size, device="meta"))
    assert tuple(out.shape) == (2, width)


def _clip(frames, h=90, w=120, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, h, w), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("name", ["r2plus1d_18", "mvit_v2_s", "swin3d_t"])
def test_clip_preprocess_is_the_weights_own_video_transform(name):
    pre = preprocess_for(name)
    reference = get_model_weights(name).DEFAULT.transforms()  # VideoClassification
    assert list(pre.resize_size) == reference.resize_size
    assert [pre.input_size] * 2 == reference.crop_size
    clip = _clip(3)
    small = pre.resize_crop(clip)
    assert small.dtype == torch.uint8 and small.shape == (3, 3, pre.input_size, pre.input_size)
    ours = pre.normalize(small[None])[0]
    assert ours.shape == (3, 3, pre.input_size, pre.input_size)  # (C, T, S, S)
    torch.testing.assert_close(ours, reference(clip), rtol=0, atol=1e-6)
    from vidfeat.extraction.backbones import preprocess_from_attrs

    assert preprocess_from_attrs(pre.as_attrs()) == pre
    # as HDF5 keeps it: a list attribute comes back as its JSON text
    import json

    assert preprocess_from_attrs({**pre.as_attrs(),
                                  "resize_size": json.dumps(list(pre.resize_size))}) == pre


@pytest.mark.parametrize("name,frames", [("r3d_18", 4), ("r2plus1d_18", 4), ("s3d", 14),
                                         ("swin3d_t", 2)])
def test_clip_feature_equals_torchvisions_transform_and_model(tmp_path, name, frames):
    # a saved random state dict of the full model (classifier included) is the weights file
    with torch.random.fork_rng():
        torch.manual_seed(7)
        full = get_model(name).eval()
    torch.save(full.state_dict(), tmp_path / "w.pt")
    bb = create_backbone(name, str(tmp_path / "w.pt"))
    assert (bb.kind, bb.clip_len, bb.clip_fps) == ("clip", *CLIP_MODELS[name])
    # larger than the resize target, so the resize downsamples (antialias would show)
    clips = [_clip(frames, 150, 240, seed=s) for s in (1, 2)]
    transform = get_model_weights(name).DEFAULT.transforms()
    from vidfeat.extraction.video_backbones import VIDEO_HEADS

    expected = _pre_logits(full, full.get_submodule(VIDEO_HEADS[name]),
                           torch.stack([transform(c) for c in clips]))
    if name == "s3d":  # its head is a 1x1x1 conv then a mean over (T,H,W): mean first, same
        expected = expected.mean(dim=(2, 3, 4)) if expected.ndim == 5 else expected
    with torch.no_grad():
        got = bb.model(bb.preprocess.normalize(bb.preprocess.resize_crop(torch.stack(clips))))
    assert got.shape == (2, bb.feature_dim)
    assert _rel(got, expected) <= 1e-3


def test_cli_lists_backbones_with_their_kind_and_clips(capsys):
    from vidfeat.cli import main

    assert main(["backbones", "--kind", "clip"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(CLIP_MODELS)
    r2 = next(line for line in lines if line.startswith("r2plus1d_18 "))
    assert r2.split()[1:5] == ["clip", "16", "frames", "at"] and "--clip-fps 15)" in r2
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "resnet50            frame" in out and out[-1].startswith("timm:<model>")
    assert len(out) == len(list_backbones()) + 1
