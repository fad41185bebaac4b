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
