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


def _flip_a_feature_bit(path):
    import h5py

    with h5py.File(path, "r") as f:
        info = f["features"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x04]))


def test_feature_file_and_model_folder(tmp_path):
    from featfiles import make_features, write_features

    from vidfeat.training._train import train

    path = write_features(tmp_path / "f.h5", make_features({"a": 6, "b": 6}, dim=8, seed=0))
    train(path, tmp_path / "m", device="cpu", progress=False, epochs=2)
    assert verify(path).ok and verify(path).kind == "feature file"
    model = verify(tmp_path / "m")
    assert model.ok and model.kind == "model folder", model.problems
    head = tmp_path / "m" / "head.pt"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0x01
    head.write_bytes(bytes(data))
    model = verify(tmp_path / "m")
    assert not model.ok and any("head.pt" in p for p in model.problems)
    _flip_a_feature_bit(path)
    result = verify(path)
    assert not result.ok and "checksum" in " ".join(result.problems)
    proc = run_cli(path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "problem" in proc.stdout


def test_a_feature_file_whose_ingest_changed_is_stale(ingest_dir, tiny_dataset, tmp_path):
    import shutil

    from vidfeat.extraction._extract import extract

    copy = tmp_path / "ingest"
    shutil.copytree(ingest_dir, copy)
    out = tmp_path / "f.h5"
    extract(copy, out, backbone="resnet18", weights="none", device="cpu", batch_size=8,
            workers=0, progress=False)
    assert verify(out).ok
    ingest(tiny_dataset, copy, frames_per_video=2, split=(1, 0, 0), size=64, progress=False)
    result = verify(out)
    assert len(result.problems) == 1 and "changed since extraction" in result.problems[0]
