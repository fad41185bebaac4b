"""Backbone registry: torchvision classifiers with the classifier removed, and their preprocessing.

Any timm model is a backbone too, named ``timm:<model>`` (the optional ``vidfeat[timm]`` extra):
its pooled pre-logits features (``num_classes=0``) and the preprocessing of timm's resolved data
config (input size, crop_pct, crop_mode, interpolation, mean, std).

``create_backbone(name, weights)`` returns a :class:`Backbone` whose ``model`` maps a normalised
float batch (B, 3, S, S) to pooled penultimate features (B, D). Its :class:`Preprocess` is the
weights' own torchvision transform (resize short side, centre crop, scale, normalise), split in
two halves so that the uint8 half can run where the pixels are (DataLoader workers on CPU, the
GPU after ``decode_jpeg``) and only uint8 travels. Extract, unfreezing and predict all use it.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vidfeat.extraction.preprocess import Preprocess
from vidfeat.extraction.video_backbones import (
    VIDEO_HEADS,
    ClipPreprocess,
    clip_defaults,
    clip_preprocess_for,
    is_clip_model,
    split_video_head,
)

# name -> dotted path of the final Linear layer (the one replaced by Identity). The feature is
# whatever feeds that layer: the pooled (and, for mobilenet_v3, projected) penultimate vector.
_HEADS: dict[str, str] = {
    **{f"resnet{d}": "fc" for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": "fc",
    "wide_resnet50_2": "fc",
    **{f"efficientnet_b{i}": "classifier.1" for i in range(8)},
    "efficientnet_v2_s": "classifier.1",
    "convnext_tiny": "classifier.2",
    "convnext_small": "classifier.2",
    "convnext_base": "classifier.2",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "regnet_y_400mf": "fc",
    "regnet_y_800mf": "fc",
    "regnet_y_1_6gf": "fc",
    "vit_b_16": "heads.head",
    "vit_b_32": "heads.head",
    "swin_t": "head",
}
# Random init is seeded so that "none" is reproducible across processes (shards, resume, tests).
RANDOM_INIT_SEED = 0
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
TIMM_PREFIX = "timm:"
_CROP_MODES = ("center", "squash")


def preprocess_from_attrs(attrs) -> Preprocess | ClipPreprocess:
    """The preprocessing recorded in ``attrs`` (feature-file attributes or config.json): a
    :class:`ClipPreprocess` where ``input_kind`` is "clip", else a :class:`Preprocess`."""
    if attrs.get("input_kind") == "clip":
        return ClipPreprocess.from_attrs(attrs)
    return Preprocess.from_attrs(attrs)


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry: ``kind`` "frame" (2D) or "clip" (video); a clip model's default
    ``clip_len`` frames at ``clip_fps`` (from its default weights' metadata), else None."""

    name: str
    kind: str
    clip_len: int | None = None
    clip_fps: float | None = None


@dataclass
class Backbone:
    """A headless classifier: ``model(x)`` -> (B, ``feature_dim``) pooled penultimate features.

    ``kind`` "frame": x is (B,3,S,S) frames; "clip": x is (B,3,T,S,S) clips, ``clip_len`` and
    ``clip_fps`` the default clip sampling of its weights.
    """

    name: str
    weights: str          # resolved: "ResNet50_Weights.IMAGENET1K_V2", "timm:resnet18.a1_in1k",
    #                       "none", or a file path
    model: nn.Module
    feature_dim: int
    preprocess: Preprocess | ClipPreprocess
    weights_sha256: str = ""   # of the state-dict file, when weights is a path
    kind: str = "frame"
    clip_len: int | None = None
    clip_fps: float | None = None


def list_backbones(*, kind: str | None = None, details: bool = False) -> list:
    """The torchvision names accepted by :func:`create_backbone`; any ``timm:<model>`` (a name
    of ``timm.list_models()``, optionally with a pretrained tag) is accepted too.

    ``kind``: None (all), "frame" (2D image models) or "clip" (video models). ``details``:
    :class:`BackboneInfo` entries (kind, a clip model's default clip length and fps) instead of
    names.
    """
    if kind is not None:
        from vidfeat.options import check_choice

        check_choice("kind", kind, ("frame", "clip"))
    names = sorted(n for n in (*_HEADS, *VIDEO_HEADS)
                   if kind is None or backbone_kind(n) == kind)
    return [backbone_info(n) for n in names] if details else names


def backbone_kind(name: str) -> str:
    """"clip" for a video backbone, else "frame" (2D torchvision or timm models)."""
    return "clip" if is_clip_model(name) else "frame"


def backbone_info(name: str) -> BackboneInfo:
    """:class:`BackboneInfo` of backbone ``name`` (no download, no model)."""
    if not is_clip_model(check_backbone(name)):
        return BackboneInfo(name, "frame")
    d = clip_defaults(name)
    return BackboneInfo(name, "clip", d.clip_len, d.clip_fps)


def is_timm(name: str) -> bool:
    """Whether backbone ``name`` is a timm model (``timm:<model>``)."""
    return str(name).startswith(TIMM_PREFIX)


def check_backbone(name: str) -> str:
    """``name`` if it is a known backbone, else ValueError in one line (with close timm names).

    ``name``: a :func:`list_backbones` name or ``timm:<model>``.
    """
    if is_timm(name):
        _timm_model_name(name)
        return name
    if name not in _HEADS and name not in VIDEO_HEADS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}, "
                         "or timm:<model> (pip install 'vidfeat[timm]')")
    return name


_check_name = check_backbone


def _timm(name: str):
    from vidfeat.system import require_extra

    require_extra("timm", "timm", needed_for=f"backbone {name!r}")
    import timm

    return timm


def _timm_model_name(name: str) -> str:
    """The timm model name of backbone ``timm:<model>[.tag]``; one line when timm lacks it."""
    timm = _timm(name)
    model_name = name[len(TIMM_PREFIX):]
    arch, tag = timm.models.split_model_name_tag(model_name)
    if not timm.models.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise ValueError(f"unknown timm model {model_name!r}; {hint}")
    if tag:
        _timm_pretrained_cfg(model_name)
    return model_name


def _timm_pretrained_cfg(model_name: str):
    """timm's pretrained config of ``arch[.tag]`` (None for an architecture without any)."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # "Invalid pretrained tag"
        arch = model_name.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(arch + ".*")]
        raise ValueError(f"timm model {arch} has no pretrained tag {model_name.split('.', 1)[1]!r}"
                         f"; known: {', '.join(tags) or 'none'}") from None


def _timm_weights(name: str, weights: str) -> str:
    """The timm ``arch.tag`` whose pretrained weights ``weights`` names for backbone ``name``.

    ``weights``: ``DEFAULT`` (the tag in ``name``, else timm's default tag), a tag, or the
    resolved ``timm:arch.tag`` (as recorded in a feature file or model config).
    """
    model_name = _timm_model_name(name)
    arch, _, tag = model_name.partition(".")
    w = str(weights).removeprefix(TIMM_PREFIX)
    chosen = model_name if w == "DEFAULT" else (w if "." in w else f"{arch}.{w}")
    if chosen.partition(".")[0] != arch or (tag and chosen != model_name):
        raise ValueError(f"weights={weights!r} are not weights of {name}; use DEFAULT, a "
                         "pretrained tag of it, none, or a PATH to a state dict")
    cfg = _timm_pretrained_cfg(chosen)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm has no pretrained weights for {chosen}; pass weights='none' or "
                         "a PATH to a local state dict")
    return f"{arch}.{cfg.tag}" if cfg.tag else arch


def _timm_preprocess(data_config: dict, name: str) -> Preprocess:
    """timm's eval transform (``transforms_imagenet_eval``) of a resolved data config."""
    _, height, width = data_config["input_size"]
    mode = data_config.get("crop_mode") or "center"
    interpolation = data_config.get("interpolation") or "bilinear"
    if height != width or mode not in _CROP_MODES or interpolation not in _INTERPOLATIONS:
        raise ValueError(f"backbone {name}: timm preprocessing input {height}x{width}, crop_mode "
                         f"{mode!r}, interpolation {interpolation!r} is not supported (square "
                         f"input, crop_mode {'/'.join(_CROP_MODES)}, {'/'.join(_INTERPOLATIONS)})")
    crop_pct = data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    return Preprocess(resize_size=math.floor(height / crop_pct), input_size=int(height),
                      mean=tuple(float(v) for v in data_config["mean"]),
                      std=tuple(float(v) for v in data_config["std"]),
                      interpolation=interpolation, crop_mode=mode)


def _timm_build(model_name: str, *, pretrained: bool) -> nn.Module:
    import timm

    if pretrained:
        try:
            return timm.create_model(model_name, pretrained=True, num_classes=0)
        except OSError as exc:  # offline, proxy, full disk (huggingface_hub errors are OSErrors)
            raise RuntimeError(f"could not fetch timm weights {model_name} ({exc}); on an offline "
                               "machine fill the huggingface hub cache once, or pass "
                               "--weights PATH to a local state dict") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return timm.create_model(model_name, pretrained=False, num_classes=0)


def _timm_dim(model: nn.Module) -> int:
    # with num_classes=0 the output is the pre-logits vector: head_hidden_size where the head
    # has a hidden layer (mobilenetv3, convnext with head_hidden_size), else num_features
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_classifiers(model: nn.Module) -> tuple[str, ...]:
    """The classifier module names of a timm model (dropped from a full state dict)."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (heads,) if isinstance(heads, str) else tuple(heads)


def _hf_hub_cache() -> Path:
    # huggingface_hub's own rule, read at call time (its constants are fixed at import)
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _timm_cached_path(chosen: str) -> Path:
    """The cached weights file of timm ``arch.tag`` if present, else where it would be."""
    from urllib.parse import urlparse

    cfg = _timm_pretrained_cfg(chosen)
    if cfg.file:  # timm loads a configured local file before any hub or url
        return Path(cfg.file).expanduser()
    if not cfg.hf_hub_id:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    repo = _hf_hub_cache() / ("models--" + cfg.hf_hub_id.split("@")[0].replace("/", "--"))
    found = sorted((repo / "snapshots").glob("*/*.safetensors")) + \
        sorted((repo / "snapshots").glob("*/*.bin"))
    return found[0] if found else repo / "snapshots"


def _weights_enum(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def preprocess_for(name: str) -> Preprocess | ClipPreprocess:
    """The preprocessing of ``name``'s default weights (no download, no model)."""
    if is_clip_model(name):
        return clip_preprocess_for(name)
    if is_timm(name):
        from timm.data import resolve_data_config

        cfg = _timm_pretrained_cfg(_timm_model_name(name))
        return _timm_preprocess(resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {}),
                                name)
    t = _weights_enum(_check_name(name)).DEFAULT.transforms()
    return Preprocess(resize_size=int(t.resize_size[0]), input_size=int(t.crop_size[0]),
                      mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
                      interpolation=t.interpolation.value)


def _resolve_torchvision_weights(name: str, weights: str):
    enum = _weights_enum(name)
    member = weights.split(".")[-1]
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
    except KeyError:
        known = ", ".join(["DEFAULT", *(w.name for w in enum), "none", "PATH"])
        raise ValueError(f"weights={weights!r} is not known for {name}; use one of {known}") from None


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin")) or Path(weights).exists()


def _build(name: str, weights_obj=None) -> nn.Module:
    from torchvision.models import get_model

    if weights_obj is not None:
        try:
            return get_model(name, weights=weights_obj)
        except OSError as exc:  # URLError is an OSError: offline, proxy, full disk
            raise RuntimeError(f"could not fetch {weights_obj} for {name} ({exc}); on an offline "
                               "machine copy the file into torch hub's cache, or pass "
                               "--weights PATH to a local state dict") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return get_model(name, weights=None)


def _split(model: nn.Module, name: str) -> int:
    """Remove backbone ``name``'s classifier in place; the feature width."""
    return split_video_head(model, name) if is_clip_model(name) else _split_head(model, _HEADS[name])


def _split_head(model: nn.Module, head_path: str) -> int:
    """Replace the final Linear by Identity in place; return its input width."""
    parent_path, _, attr = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    linear = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected a Linear at {head_path}, found {type(linear).__name__}")
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return linear.in_features


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, disallowed globals
        raise ValueError(f"cannot read weights file {path} as a state dict "
                         f"(loaded with weights_only=True): {exc}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    # checkpoints saved from DistributedDataParallel prefix every key
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_state_dict(model: nn.Module, sd: dict, head_path: str | tuple, path: Path) -> None:
    """Load a full or headless state dict; name the first mismatched keys or shapes.

    ``head_path``: the classifier's module path (or paths), whose keys a full state dict has.
    """
    heads = (head_path,) if isinstance(head_path, str) else head_path
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(h + "." for h in heads))}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = [f"missing keys {missing[:5]}" if missing else "",
                 f"unexpected keys {unexpected[:5]}" if unexpected else ""]
        raise ValueError(f"weights file {path} does not match {type(model).__name__}: "
                         + "; ".join(p for p in parts if p))
    for key, value in sd.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"weights file {path}: key {key!r} has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(sd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_weights(name: str, weights: str | None = "DEFAULT") -> tuple[str, str]:
    """What ``weights`` means for ``name``, cheaply (no download, no model): (resolved, sha256).

    resolved is ``"none"``, an absolute file path, ``"<Enum>.<MEMBER>"`` or, for a timm
    backbone, ``"timm:<arch>.<tag>"``; sha256 is the file's digest for a path, else "".
    """
    _check_name(name)
    if weights is None or str(weights).lower() == "none":
        return "none", ""
    if _is_path(str(weights)):
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return str(path), _sha256(path)
    if is_timm(name):
        return TIMM_PREFIX + _timm_weights(name, str(weights)), ""
    wobj = _resolve_torchvision_weights(name, str(weights))
    return f"{type(wobj).__name__}.{wobj.name}", ""


def cached_weights_path(name: str, weights: str = "DEFAULT") -> Path:
    """Where torch hub keeps the file of torchvision weights ``weights`` of backbone ``name``.

    For a timm backbone: the weights file in the huggingface hub cache (of the model's
    ``hf_hub_id``) when there, else the folder it would be in (torch hub's for url-only weights).
    """
    from urllib.parse import urlparse

    if is_timm(name):
        return _timm_cached_path(_timm_weights(name, str(weights)))
    url = _resolve_torchvision_weights(name, str(weights)).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be had here: checked before any work, said in one line."""


def check_weights_available(name: str, weights: str | None = "DEFAULT", *,
                            timeout: float = 3.0) -> None:
    """Raise WeightsUnavailable unless ``weights`` of backbone ``name`` can be loaded here.

    ``name``/``weights``: as for ``create_backbone``. ``timeout``: seconds for the one TCP
    connect to the weights' host, tried only when torch hub's cache lacks the file. A pipeline
    calls this before ingest, so an offline machine fails in a second, not after hours.
    """
    resolved, _ = resolve_weights(name, weights)  # a missing local file raises here
    if resolved == "none" or _is_path(str(weights)):
        return
    import socket
    from urllib.parse import urlparse

    cached = cached_weights_path(name, weights)
    if cached.is_file():
        return
    if is_timm(name):
        cfg = _timm_pretrained_cfg(resolved.removeprefix(TIMM_PREFIX))
        url = urlparse(cfg.url if cfg.url and not cfg.hf_hub_id else "https://huggingface.co")
        where = "the huggingface hub cache" if cfg.hf_hub_id else "torch hub's cache"
        where += f" ({cached if cfg.hf_hub_id else cached.parent})"
    else:
        url = urlparse(_resolve_torchvision_weights(name, str(weights)).url)
        where = f"torch hub's cache ({cached.parent})"
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        raise WeightsUnavailable(
            f"weights {resolved} of {name} are not in {where} and "
            f"{url.hostname} cannot be reached ({exc.strerror or exc}): download them once on a "
            "connected machine, or pass a local state dict (weights=PATH) or weights='none' "
            "(random, tests only)") from None


def create_backbone(name: str, weights: str | None = "DEFAULT") -> Backbone:
    """Build backbone ``name`` in eval mode on the CPU, classifier removed.

    ``name``: a :func:`list_backbones` name or ``timm:<model>`` (any timm model).
    ``weights``: ``"DEFAULT"`` or a torchvision weights name (``"IMAGENET1K_V1"`` or
    ``"ResNet50_Weights.IMAGENET1K_V1"``; torch hub downloads and caches it; for timm, timm's
    pretrained weights via the huggingface hub, or a pretrained tag), ``"none"``/None
    (random init with a fixed seed, loudly warned), or a path to a local state dict of the full
    or headless model, read with ``torch.load(weights_only=True)``.
    """
    _check_name(name)
    if is_timm(name):
        return _create_timm(name, weights)
    head = VIDEO_HEADS.get(name) or _HEADS[name]
    sha = ""
    if weights is None or str(weights).lower() == "none":
        _warn_random(name)
        model, resolved = _build(name), "none"
        dim = _split(model, name)
    elif _is_path(str(weights)):
        path = Path(weights).expanduser().resolve()
        sd = _read_state_dict(path)
        model = _build(name)
        dim = _split(model, name)
        _load_state_dict(model, sd, head, path)
        resolved, sha = str(path), _sha256(path)
    else:
        wobj = _resolve_torchvision_weights(name, str(weights))
        model, resolved = _build(name, wobj), f"{type(wobj).__name__}.{wobj.name}"
        dim = _split(model, name)
    model.eval().requires_grad_(False)
    info = backbone_info(name)
    return Backbone(name=name, weights=resolved, model=model, feature_dim=dim,
                    preprocess=preprocess_for(name), weights_sha256=sha, kind=info.kind,
                    clip_len=info.clip_len, clip_fps=info.clip_fps)


def _warn_random(name: str) -> None:
    from vidfeat.system import VidfeatWarning

    warnings.warn(f"backbone {name} uses RANDOM weights (weights='none'): its features "
                  "mean nothing beyond tests and demos", VidfeatWarning, stacklevel=3)


def _create_timm(name: str, weights: str | None) -> Backbone:
    """``create_backbone`` for ``timm:<model>``: pooled pre-logits (``num_classes=0``)."""
    from timm.data import resolve_model_data_config

    model_name, sha = _timm_model_name(name), ""
    if weights is None or str(weights).lower() == "none":
        _warn_random(name)
        model, resolved = _timm_build(model_name, pretrained=False), "none"
    elif _is_path(str(weights)):
        path = Path(weights).expanduser().resolve()
        sd = _read_state_dict(path)
        model = _timm_build(model_name, pretrained=False)
        _load_state_dict(model, sd, _timm_classifiers(model), path)
        resolved, sha = str(path), _sha256(path)
    else:
        chosen = _timm_weights(name, str(weights))
        model, resolved = _timm_build(chosen, pretrained=True), TIMM_PREFIX + chosen
    model.eval().requires_grad_(False)
    return Backbone(name=name, weights=resolved, model=model, feature_dim=_timm_dim(model),
                    preprocess=_timm_preprocess(resolve_model_data_config(model), name),
                    weights_sha256=sha)


def load_image(source: str | os.PathLike | bytes) -> torch.Tensor:
    """Decode a stored frame the documented way: libjpeg via torchvision, RGB uint8 (3,H,W).

    ``source``: the JPEG's path, or its bytes (already read, e.g. to check their hash).
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    if isinstance(source, (bytes, bytearray)):
        data = torch.frombuffer(bytearray(source), dtype=torch.uint8)
    else:
        data = read_file(str(source))
    return decode_image(data, mode=ImageReadMode.RGB)
