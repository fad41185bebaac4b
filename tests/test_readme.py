"""README.md stays true: every Python snippet runs against (a small copy of) the demo data.

The snippets use the paths the README's commands write (``out``, ``features.h5``, ``model``);
a fixture makes them in a scratch folder from the demo's own generator with fewer videos, and
each snippet runs there in a fresh interpreter, as a user pasting it would. Two snippets need
what a test machine lacks (a SLURM cluster; a download of ImageNet weights): they are compiled
and their calls checked against the library's signatures, not run.
"""
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = {"SLURMCluster": "needs a SLURM cluster and dask_jobqueue",
           "IMAGENET1K_V2": "downloads ImageNet weights"}


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def demo_work(tmp_path_factory):
    """``out`` (ingest), ``features.h5`` (extract) and ``model`` (train) of a small demo set."""
    import vidfeat
    from vidfeat.synth import DEMO_COUNTS, make_demo_dataset

    work = tmp_path_factory.mktemp("readme")
    videos = make_demo_dataset(work / "videos", counts={c: 4 for c in DEMO_COUNTS},
                               duration=(1.0, 1.5))
    vidfeat.ingest(videos, work / "out", frames_per_video=2, split=(0.5, 0.25, 0.25),
                   progress=False)
    vidfeat.extract(work / "out", work / "features.h5", backbone="resnet18", weights="none",
                    device="cpu", batch_size=16, workers=0, progress=False)
    vidfeat.train(work / "features.h5", work / "model", device="cpu", epochs=5,
                  progress=False)
    return work


def test_the_readme_has_python_snippets():
    assert len(snippets()) >= 4


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs(demo_work, index):
    code = snippets()[index]
    compile(code, f"README snippet {index + 1}", "exec")
    skip = next((why for marker, why in NOT_RUN.items() if marker in code), None)
    if skip:
        _check_calls(code)
        pytest.skip(f"compiled and checked, not run: {skip}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=demo_work, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README snippet {index + 1} failed:\n{code}\n{proc.stderr}"


def _check_calls(code: str) -> None:
    """Every ``vidfeat.NAME(..., key=...)`` in ``code`` names a real function and keywords."""
    import vidfeat

    for name, args in re.findall(r"vidfeat\.(\w+)\(([^)]*)\)", code):
        params = inspect.signature(getattr(vidfeat, name)).parameters
        for key in re.findall(r"(\w+)=", args):
            assert key in params, f"vidfeat.{name} has no keyword {key!r}"
