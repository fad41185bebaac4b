"""vidfeat verify: each kind of output checked end to end, problems named, exit codes."""
import subprocess
import sys

import pytest

from vidfeat.ingestion._ingest import ingest
from vidfeat.ingestion.manifest import read_manifest
from vidfeat.verification import kind_of, verify


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vidfeat", "verify", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ingest_dir(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "ingest"
    ingest(tiny_dataset, out, frames_per_video=2, split=(1, 0, 0), progress=False)
    return out


def test_sound_ingest_folder(ingest_dir):
    result = verify(ingest_dir)
    assert result.ok and result.kind == "ingest folder"
    proc = run_cli(ingest_dir)
    assert proc.returncode == 0 and "is sound" in proc.stdout


def test_damaged_frames_are_named(ingest_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ingest_dir, copy)
    frames = read_manifest(copy).frames["path"].tolist()
    (copy / frames[0]).unlink()
    data = bytearray((copy / frames[5]).read_bytes())
    data[-10] ^= 1  # same length, other bytes
    (copy / frames[5]).write_bytes(bytes(data))
    result = verify(copy)
    assert len(result.problems) == 2
    assert any(frames[0] in p and "missing" in p for p in result.problems)
    assert any(frames[5] in p and "hash mismatch" in p for p in result.problems)
    proc = run_cli(copy)
    assert proc.returncode == 1 and "2 problem(s)" in proc.stdout and frames[5] in proc.stdout


def test_unfinished_ingest_is_a_problem(ingest_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ingest_dir, copy)
    (copy / "ingest.json").unlink()
    result = verify(copy)
    assert not result.ok and "did not finish" in result.problems[0]


def test_not_a_vidfeat_output(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a vidfeat output"):
        kind_of(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="expected an ingest folder"):
        kind_of(tmp_path)
    proc = run_cli(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
