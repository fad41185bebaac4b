"""``verify(path)``: check an ingest folder, a feature file or a model folder end to end.

Each stage's owner knows what sound output looks like; this module only recognises which kind
of output ``path`` is and asks that owner:

* ingest folder: ``read_manifest`` (the three files are one published unit) and every frame
  re-hashed against the manifest (``manifest.frame_problems``);
* feature file: ``FeatureStore.verify`` (checksums, attributes, video means), and whether the
  ingest folder it was made from still holds the same content;
* model folder: ``model_dir.verify_model_dir`` (each recorded file's hash, loads), and whether
  the feature file it was trained on still holds the same features.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("ingest folder", "feature file", "model folder")


@dataclass
class VerifyResult:
    """What ``verify`` found: the kind of output, what it checked, and the problems (if any)."""

    path: Path
    kind: str
    checked: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.path}: {self.kind} is sound ({self.checked})."
        lines = [f"{self.path}: {self.kind} has {len(self.problems)} problem(s) "
                 f"({self.checked}):"]
        lines += [f"  - {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


def kind_of(path: Path) -> str:
    """Which vidfeat output ``path`` is (one of KINDS); ValueError naming what it looks like."""
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "feature file"
        raise ValueError(f"{path} is not a vidfeat output (not an HDF5 feature file)")
    if not path.is_dir():
        raise FileNotFoundError(f"not found: {path}")
    names = {p.name for p in path.iterdir()}
    if names & {"ingest.json", "videos.parquet", "videos.csv", "ingest_journal.jsonl"}:
        return "ingest folder"
    if names & {"head.pt", "config.json"}:
        return "model folder"
    raise ValueError(f"{path} is not a vidfeat output: expected an ingest folder (ingest.json), "
                     "a feature file (.h5) or a model folder (head.pt, config.json)")


def verify(path: str | os.PathLike) -> VerifyResult:
    """Check the vidfeat output at ``path`` end to end; returns what was found.

    ``path``: an ingest folder, a feature file or a model folder (recognised by content).
    Reads everything (every frame, every HDF5 chunk): as slow as one pass over the data.
    """
    path = Path(path)
    kind = kind_of(path)
    check = {"ingest folder": _ingest_folder, "feature file": _feature_file,
             "model folder": _model_folder}[kind]
    checked, problems = check(path)
    return VerifyResult(path, kind, checked, problems)


def _ingest_folder(path: Path) -> tuple[str, list[str]]:
    from vidfeat.ingestion.manifest import ManifestError, frame_problems, read_manifest

    try:
        m = read_manifest(path)
    except ManifestError as exc:
        return "manifests", [str(exc)]
    problems = frame_problems(m, verify=True)
    return f"manifests and {len(m.frames)} frames re-hashed", problems


def _feature_file(path: Path) -> tuple[str, list[str]]:
    from vidfeat.extraction.cache import FeatureStore

    try:
        store = FeatureStore(path)
    except ValueError as exc:
        return "attributes", [str(exc)]
    with store:
        problems = list(store.verify())
        n, source = len(store), store.attrs.get("ingest_dir")
        recorded = store.attrs.get("manifest_fingerprint")
    problems += _stale_features(source, recorded)
    return f"{n} rows, every dataset's checksums", problems


def _stale_features(source, recorded) -> list[str]:
    """A problem when the ingest folder the file was made from now holds other content."""
    from vidfeat.extraction.single import manifest_fingerprint
    from vidfeat.ingestion.manifest import ManifestError, read_manifest

    if not source or not Path(source).is_dir():
        return []
    try:
        m = read_manifest(source)
    except ManifestError as exc:
        return [f"its ingest folder {source} is not usable now: {exc}"]
    if manifest_fingerprint(m) != recorded:
        return [f"its ingest folder {source} changed since extraction (ingest ran again): rerun "
                "the same extract command to bring the features up to date"]
    return []


def _model_folder(path: Path) -> tuple[str, list[str]]:
    from vidfeat.training.model_dir import verify_model_dir

    return "recorded files, hashes and loads", list(verify_model_dir(path))
