"""vidfeat: labelled videos to cached backbone features and trained classifiers.

Stages, one package each, in data-flow order: ``vidfeat.ingestion`` (videos -> frames and
manifests), ``vidfeat.extraction`` (frames -> HDF5 features), ``vidfeat.training`` (features ->
heads), ``vidfeat.prediction`` (new videos -> labels), ``vidfeat.reporting`` (reports), and
``vidfeat.pipeline`` (all of them). This module only re-exports their public names, lazily:
``import vidfeat`` (and ``vidfeat ingest``) must not pay for torch or matplotlib.
"""
from __future__ import annotations

from vidfeat._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ingest": "vidfeat.ingestion",
    "IngestResult": "vidfeat.ingestion",
    "read_manifest": "vidfeat.ingestion",
    "Manifest": "vidfeat.ingestion",
    "ManifestError": "vidfeat.ingestion",
    "probe_video": "vidfeat.ingestion",
    "ProbeResult": "vidfeat.ingestion",
    "create_backbone": "vidfeat.extraction",
    "list_backbones": "vidfeat.extraction",
    "extract": "vidfeat.extraction",
    "extract_multi": "vidfeat.extraction",
    "merge": "vidfeat.extraction",
    "FeatureStore": "vidfeat.extraction",
    "FeatureDataset": "vidfeat.training",
    "LinearHead": "vidfeat.training",
    "MLPHead": "vidfeat.training",
    "train": "vidfeat.training",
    "evaluate": "vidfeat.training",
    "predict": "vidfeat.prediction",
    "report": "vidfeat.reporting",
    "run_pipeline": "vidfeat.pipeline",
    "demo": "vidfeat.pipeline",
    "verify": "vidfeat.verification",
    "export": "vidfeat.exporting",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
