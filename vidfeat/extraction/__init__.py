"""Extract: backbone features of stored frames, cached in one HDF5 feature file."""
from vidfeat.extraction._extract import extract
from vidfeat.extraction.backbones import create_backbone, list_backbones
from vidfeat.extraction.cache import FeatureStore, merge
from vidfeat.extraction.multigpu import extract_multi
from vidfeat.extraction.single import ExtractResult, discard_output

__all__ = ["ExtractResult", "FeatureStore", "create_backbone", "discard_output", "extract",
           "extract_multi", "list_backbones", "merge"]
