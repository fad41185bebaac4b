import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/videos.py helpers

from videos import make_dataset, make_video  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a broken install, not a skip
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def video(tmp_path):
    """Factory: video(name, **make_video options) -> path under tmp_path."""
    def make(name="v.mp4", **kw):
        return make_video(tmp_path / name, **kw)
    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Three classes of 1-second 64x48 videos, imbalanced 6:4:2 (shared; do not modify)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    return make_dataset(root, {"alpha": 6, "beta": 4, "gamma": 2})


@pytest.fixture(scope="session")
def clip_features(tiny_dataset, tmp_path_factory):
    """A real clip ingest (2 clips of 2 frames per video) and its r3d_18 (random) clip file:
    (ingest folder, feature file), shared; do not modify."""
    import shutil
    import warnings

    from vidfeat.extraction._extract import extract
    from vidfeat.ingestion._ingest import ingest

    root = tmp_path_factory.mktemp("clipfeats")
    for label in ("alpha", "gamma"):  # 2 + 2 videos: one train, one val of each
        (root / "src" / label).mkdir(parents=True)
        for video in sorted((tiny_dataset / label).iterdir())[:2]:
            shutil.copy(video, root / "src" / label / video.name)
    ingest(root / "src", root / "ing", clips_per_video=2, clip_len=2, clip_fps=8.0, size=48,
           split=(0.5, 0.5, 0), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract(root / "ing", root / "c.h5", backbone="r3d_18", weights="none", device="cpu",
                dtype="float32", progress=False, workers=0)
    return root / "ing", root / "c.h5"
