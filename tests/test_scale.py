"""Scale-out on a real Dask LocalCluster (worker processes on loopback) and CPU-shard multi-GPU.

Top-level imports stay light: Dask workers and their sandbox children import this module to
unpickle the work functions below.
"""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from videos import make_dataset, make_video

import vidfeat.ingestion.cluster as scale
from vidfeat.cli import main as cli_main
from vidfeat.ingestion._ingest import ingest
from vidfeat.ingestion.decode import decode_frames
from vidfeat.ingestion.manifest import read_manifest
from vidfeat.ingestion.tasks import JOURNAL, PARTIAL

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* RANDOM", "ignore::DeprecationWarning")
OPTS = dict(frames_per_video=3, size=32, split=(0.5, 0.25, 0.25), seed=3, progress=False)


# --- work functions run in the sandbox children of the Dask workers -------------------------

def slow_then_decode(path, probe, spec, out_dir, **kwargs):
    """For 'slow*' videos: leave a half-written frame and the worker's pid, wait, then decode."""
    if "slow" in os.path.basename(path):
        Path(out_dir, "000000.jpg").write_bytes(b"half")
        Path(out_dir, "worker.pid").write_text(str(os.getppid()))
        time.sleep(4)
        for name in ("000000.jpg", "worker.pid"):  # a decode that ends leaves only its frames
            Path(out_dir, name).unlink()
    return decode_frames(path, probe, spec, out_dir, **kwargs)


def hang_or_record_threads(path, probe, spec, out_dir, **kwargs):
    """'hang*' videos never return; the others record their decoder threads, then decode."""
    if "hang" in os.path.basename(path):
        time.sleep(3600)
    Path(path + ".threads").write_text(str(kwargs["threads"]))
    return decode_frames(path, probe, spec, out_dir, **kwargs)


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(**scale.local_cluster_options(2)) as c, Client(c) as client:
        client.wait_for_workers(2, timeout=120)
        yield c


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Three classes of good videos plus a corrupt, a truncated and an audio-less-video file."""
    root = make_dataset(tmp_path_factory.mktemp("src"), {"alpha": 4, "beta": 3, "gamma": 2})
    (root / "alpha" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    good = make_video(root / "beta" / "full.mp4", duration=2, fps=10)
    (root / "beta" / "truncated.mp4").write_bytes(good.read_bytes()[:1500])
    (root / "gamma" / "empty.mkv").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def local_run(messy, tmp_path_factory):
    return ingest(messy, tmp_path_factory.mktemp("local") / "out", jobs=2, **OPTS)


def journal(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / JOURNAL).read_text().splitlines()]


# --- ingest on Dask --------------------------------------------------------------------------

def test_dask_run_equals_local_run_and_resumes(messy, local_run, cluster, tmp_path):
    result = ingest(messy, tmp_path / "out", backend="dask", scheduler=cluster.scheduler_address,
                    **OPTS)
    for name in ("videos.parquet", "frames.parquet"):
        assert (result.outdir / name).read_bytes() == (local_run.outdir / name).read_bytes()
    assert result.n_failed == local_run.n_failed == 3
    assert result.failures == local_run.failures
    m = read_manifest(result.outdir, check_files=True)
    for rel in m.frames["path"]:
        assert (m.root / rel).read_bytes() == (local_run.outdir / rel).read_bytes()
    info = m.info
    assert info["arguments"]["backend"] == "dask"
    assert info["arguments"]["scheduler"] == cluster.scheduler_address
    assert info["counts"] == local_run.manifest.info["counts"]
    assert not any((result.outdir / PARTIAL).glob("*"))
    # a rerun, through the CLI, reuses every video and works none again
    lines = len(journal(result.outdir))
    code = cli_main(["ingest", str(messy), "-o", str(result.outdir), "--frames-per-video", "3",
                     "--size", "32", "--split", "0.5,0.25,0.25", "--seed", "3", "--backend",
                     "dask", "--scheduler", cluster.scheduler_address, "--no-progress"])
    assert code == 0 and len(journal(result.outdir)) == lines
    again = read_manifest(result.outdir)
    assert again.info["counts"]["videos"]["reused"] == 12  # all but empty.mkv (scan-time)
    pd.testing.assert_frame_equal(again.frames, m.frames)


def test_worker_killed_mid_video_loses_and_duplicates_nothing(cluster, tmp_path, monkeypatch):
    from distributed import Client

    src = tmp_path / "src"
    for name in ("a.mp4", "slow.mp4", "z.mp4"):
        make_video(src / "x" / name, duration=1, fps=10)
    make_video(src / "y" / "b.mp4", duration=1, fps=10)
    monkeypatch.setattr("vidfeat.ingestion._ingest.decode_frames", slow_then_decode)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_worker_with_the_slow_video():
        with Client(cluster.scheduler_address) as client:
            pids = set(client.run(os.getpid).values())
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                marks = list((out / PARTIAL).glob("*/worker.pid"))
                if marks:
                    pid = int(marks[0].read_text())
                    assert pid in pids  # the sandbox's parent is a Dask worker process
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker_with_the_slow_video)
    killer.start()
    result = ingest(src, out, frames_per_video=2, split=(1, 0, 0), backend="dask",
                    scheduler=cluster.scheduler_address, progress=False)
    killer.join()
    assert killed, "the slow video was never in flight"
    m = read_manifest(out, check_files=True)
    assert (m.videos["status"] == "ok").all() and (m.videos["n_frames"] == 2).all()
    assert len(m.frames) == 8 and not m.frames["frame_id"].duplicated().any()
    slow = out / "frames" / "x" / "slow.mp4"
    assert sorted(p.name for p in slow.iterdir()) == sorted(
        Path(p).name for p in m.frames.loc[m.frames["video_id"] == "x/slow.mp4", "path"])
    assert all((slow / name).read_bytes()[:2] == b"\xff\xd8" for name in os.listdir(slow))
    decodes = [e["video_id"] for e in journal(out) if e["phase"] == "decode"]
    assert sorted(decodes) == sorted(m.videos["video_id"])  # each video journaled once
    assert not (out / PARTIAL).exists() or not any((out / PARTIAL).iterdir())
    assert result.n_ok == 4 and result.n_failed == 0
    with Client(cluster.scheduler_address) as client:
        client.wait_for_workers(2, timeout=120)  # the nanny restarted it, for the next tests
        assert killed[0] not in client.run(os.getpid).values()


def test_timeouts_and_worker_sized_decoder_threads(cluster, tmp_path, monkeypatch):
    src = tmp_path / "src"
    for name in ("a.mp4", "hang.mp4", "b.mp4"):
        make_video(src / "x" / name, duration=1, fps=5)
    monkeypatch.setattr("vidfeat.ingestion._ingest.decode_frames", hang_or_record_threads)
    start = time.monotonic()
    result = ingest(src, tmp_path / "out", frames_per_video=2, split=(1, 0, 0), timeout=4,
                    backend="dask", scheduler=cluster.scheduler_address, progress=False)
    assert time.monotonic() - start < 60
    v = result.manifest.videos.set_index("video_id")
    assert v.loc["x/hang.mp4", "status"] == "failed"
    assert result.failures == {"timed out after 4s (work killed)": 1}
    assert (v.loc[["x/a.mp4", "x/b.mp4"], "status"] == "ok").all()
    assert not (result.outdir / "frames" / "x" / "hang.mp4").exists()
    cores = len(os.sched_getaffinity(0))
    # two one-thread workers on this machine share its cores (the driver alone would say cores)
    for name in ("a.mp4", "b.mp4"):
        assert int((src / "x" / f"{name}.threads").read_text()) == max(1, cores // 2)


def test_dask_without_scheduler_starts_and_closes_a_local_cluster(tmp_path):
    from distributed.deploy.spec import SpecCluster

    for name in ("a.mp4", "b.mp4"):
        make_video(tmp_path / "src" / "x" / name, duration=1, fps=5)
    before = set(map(id, SpecCluster._instances))
    result = ingest(tmp_path / "src", tmp_path / "out", frames_per_video=2, split=(1, 0, 0),
                    backend="dask", jobs=2, progress=False)
    assert result.n_ok == 2 and len(result.manifest.frames) == 4
    started = [c for c in SpecCluster._instances if id(c) not in before]
    assert all(c.status.name == "closed" for c in started)


def test_bad_scheduler_options_fail_clearly(cluster, tmp_path, monkeypatch):
    from distributed import Client

    make_video(tmp_path / "src" / "x" / "a.mp4", duration=1, fps=5)
    with pytest.raises(ValueError, match="scheduler= needs backend='dask'"):
        ingest(tmp_path / "src", tmp_path / "o1", scheduler="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(ValueError, match="neither an address"):
        ingest(tmp_path / "src", tmp_path / "o2", backend="dask", scheduler="nowhere",
               progress=False)
    monkeypatch.setattr(scale, "CONNECT_TIMEOUT_S", 2.0)
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        ingest(tmp_path / "src", tmp_path / "o3", backend="dask", scheduler="tcp://127.0.0.1:1",
               progress=False)
    assert cli_main(["ingest", str(tmp_path / "src"), "-o", str(tmp_path / "o4"), "--backend",
                     "dask", "--scheduler", "nowhere", "--no-progress"]) == 2
    with Client(cluster.scheduler_address) as client:
        with pytest.raises(RuntimeError, match="cannot see the output folder /no/such/dir"):
            with scale.DaskRunner(client, outdir="/no/such/dir"):
                pass
        assert client.status == "running"  # a Client passed in is the caller's: left open


# --- multi-GPU extraction, CPU shards standing in for GPUs -----------------------------------

def test_cpu_shards_merge_into_the_single_run(tmp_path):
    from test_extract import OPTS as EXTRACT
    from test_extract import assert_same_file, make_ingest

    from vidfeat.extraction._extract import extract
    from vidfeat.extraction.multigpu import extract_multi, parse_gpus, shard_path

    ingest_dir = make_ingest(tmp_path / "in")
    options = {k: v for k, v in EXTRACT.items() if k != "device"}
    single = extract(ingest_dir, tmp_path / "single.h5", device="cpu", **options)
    multi = extract_multi(ingest_dir, tmp_path / "multi.h5", gpus="cpu:2", **options)
    assert_same_file(tmp_path / "multi.h5", tmp_path / "single.h5")
    assert (multi.n_frames, multi.n_videos, multi.shard) == (single.n_frames, 6, "0/1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("multi")) == \
        ["multi.h5"]  # shards, their logs, results and lock files removed
    again = extract(ingest_dir, tmp_path / "multi.h5", gpus="cpu:2", **options)  # the wiring
    assert again.skipped
    assert cli_main(["extract", str(ingest_dir), "-o", str(tmp_path / "multi.h5"), "--gpus",
                     "cpu:2", "--backbone", "resnet18", "--weights", "none", "--batch-size", "2",
                     "--dtype", "float32", "--no-progress"]) == 0
    with pytest.raises(ValueError, match="not both"):
        extract(ingest_dir, tmp_path / "x.h5", gpus="cpu:2", shard="0/2", **options)
    with pytest.raises(FileExistsError, match="dtype"):
        extract_multi(ingest_dir, tmp_path / "multi.h5", gpus="cpu:2",
                      **{**options, "dtype": "float16"})
    # a shard that fails is named with its device and reason; the other shard is kept
    bad = tmp_path / "bad"
    make_ingest(bad)
    frames = read_manifest(bad).frames
    (bad / frames["path"].iloc[-1]).write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match=r"1 of 2 extraction shards failed: shard 1/2 on CPU: "
                                           r"RuntimeError: cannot read stored frame"):
        extract_multi(bad, tmp_path / "bad.h5", gpus="cpu:2", **options)
    assert shard_path(tmp_path / "bad.h5", 0, 2).exists() and not (tmp_path / "bad.h5").exists()
    assert [s.device for s in parse_gpus("cpu:3")] == ["cpu"] * 3
    for gpus, message in [("cpu:0", "at least one"), ("0,0", "distinct"), ("x", "GPU indices")]:
        with pytest.raises(ValueError, match=message):
            parse_gpus(gpus)


MISSING_DASK = """
import sys
sys.modules["distributed"] = None  # as if the dask extra were not installed
from vidfeat.cli import main
sys.exit(main(["ingest", sys.argv[1], "-o", sys.argv[2], "--backend", "dask"]))
"""


def test_dask_backend_without_the_extra_names_the_pip_command(tiny_dataset, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MISSING_DASK, str(tiny_dataset),
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'vidfeat[dask]'" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()  # refused before any work
