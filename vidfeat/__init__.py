"""vidfeat: labelled videos to a trained video classifier.

Stages (one module each): probe, sample, decode, balance, manifest -> ``ingest``;
backbones, cache -> ``extract``; heads -> ``train``; ``report``; ``pipeline``.

Everything here is imported lazily: ``import vidfeat`` (and ``vidfeat ingest``) must not pay
for torch, torchvision or matplotlib, which only the later stages need.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ingest": "vidfeat.ingest",
    "IngestResult": "vidfeat.ingest",
    "read_manifest": "vidfeat.manifest",
    "Manifest": "vidfeat.manifest",
    "ManifestError": "vidfeat.manifest",
    "probe_video": "vidfeat.probe",
    "ProbeResult": "vidfeat.probe",
    "create_backbone": "vidfeat.backbones",
    "list_backbones": "vidfeat.backbones",
    "extract": "vidfeat.extract",
    "extract_multi": "vidfeat.multigpu",
    "merge": "vidfeat.cache",
    "FeatureStore": "vidfeat.cache",
    "FeatureDataset": "vidfeat.dataset",
    "LinearHead": "vidfeat.heads",
    "MLPHead": "vidfeat.heads",
    "train": "vidfeat.train",
    "evaluate": "vidfeat.train",
    "predict": "vidfeat.predict",
    "report": "vidfeat.report",
    "run_pipeline": "vidfeat.pipeline",
    "demo": "vidfeat.pipeline",
}

# Stage functions share their module's name (vidfeat.extract is both).
_SHADOWED = {"ingest", "extract", "train", "report", "predict"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # The import system binds each submodule onto its package once loaded; for the stage
        # modules that would replace the public function vidfeat.extract(...) by the module.
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
