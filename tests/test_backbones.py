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
    pre = preprocess_for(name)
    reference = get_model_weights(name).DEFAULT.transforms()
    assert pre.input_size == reference.crop_size[0] and pre.resize_size == reference.resize_size[0]
    assert pre.interpolation == reference.interpolation.value
    gen = torch.Generator().manual_seed(0)
    for h, w in [(48, 64), (143, 175), (300, 200)]:
        img = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)
        ours = pre(img)
        assert ours.shape == (1, 3, pre.input_size, pre.input_size) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, reference(img), rtol=0, atol=1e-6)


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
