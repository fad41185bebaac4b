"""Ingest: videos -> probed, split, balanced, stored JPEG frames and validated manifests.

Re-exported lazily: the sandbox child imports ``vidfeat.ingestion.probe`` and
``vidfeat.ingestion.decode`` per video and must not pay for pandas.
"""
from vidfeat._lazy import lazy_exports

_EXPORTS = {
    "IngestResult": "vidfeat.ingestion._ingest",
    "ingest": "vidfeat.ingestion._ingest",
    "Manifest": "vidfeat.ingestion.manifest",
    "ManifestError": "vidfeat.ingestion.manifest",
    "read_manifest": "vidfeat.ingestion.manifest",
    "ProbeResult": "vidfeat.ingestion.probe",
    "probe_video": "vidfeat.ingestion.probe",
    "scan_source": "vidfeat.ingestion.scan",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
