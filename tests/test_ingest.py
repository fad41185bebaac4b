"""Ingest end to end on real generated videos: scan, failures as rows, timeout kill, resume."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from videos import make_audio, make_video

from vidfeat.cli import main as cli_main
from vidfeat.ingestion._ingest import ingest
from vidfeat.ingestion.decode import decode_frames
from vidfeat.ingestion.manifest import ManifestError, read_manifest
from vidfeat.ingestion.tasks import JOURNAL, PARTIAL

TESTS = Path(__file__).parent


# --- functions the sandbox child runs (top level, so they pickle by reference) ---------------

def hang_on_marker(path, *args, **kwargs):
    """decode_frames, except for videos whose name holds 'hang': those never return."""
    if "hang" in os.path.basename(path):
        time.sleep(3600)
    return decode_frames(path, *args, **kwargs)


def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)


def hang_after_writing(path, probe, spec, out_dir, **kwargs):
    """Writes one JPEG, then hangs for videos named 'hang*': a decode killed half-way."""
    if "hang" in os.path.basename(path):
        Path(out_dir, "000000.jpg").write_bytes(b"half")
        time.sleep(3600)
    return decode_frames(path, probe, spec, out_dir, **kwargs)


def fail(*args, **kwargs):
    raise ValueError("boom\nsecond line")


# --- scanning --------------------------------------------------------------------------------

def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- ingest end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Good videos in odd names plus every bad-input kind, in class folders."""
    root = tmp_path_factory.mktemp("messy")
    for i in range(3):
        make_video(root / "cat" / f"cat {i} é.mp4", duration=1, fps=10)
        make_video(root / "dog" / f"-dog{i}.mp4", duration=1, fps=10, source="smptebars")
    make_video(root / "cat" / "sub" / "cat 0 é.mp4", duration=1, fps=10, rotation=90)
    touch(root / "dog" / "zero.mp4", b"")
    good = (root / "cat" / "cat 0 é.mp4").read_bytes()
    touch(root / "dog" / "truncated.mp4", good[: len(good) // 3] if good[4:8] == b"ftyp" else good[:40])
    touch(root / "dog" / "text.mp4", b"just some text, not a video\n" * 20)
    make_audio(root / "dog" / "audio.mp4")
    touch(root / "dog" / "playlist.mp4", b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n")
    return root


BAD = {"dog/zero.mp4", "dog/truncated.mp4", "dog/text.mp4", "dog/audio.mp4", "dog/playlist.mp4"}


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out")
    return ingest(messy, out, frames_per_video=4, size=32, split=(0.5, 0.25, 0.25), seed=1,
                  progress=False)


def test_bad_inputs_become_failed_rows_and_the_run_goes_on(messy_run):
    v = messy_run.manifest.videos.set_index("video_id")
    assert set(v.index[v["status"] == "failed"]) == BAD
    assert (v.loc[list(BAD), "error"].str.len() > 0).all()
    assert "moov atom not found" in v.loc["dog/truncated.mp4", "error"]
    assert "no video stream" in v.loc["dog/audio.mp4", "error"]
    assert "playlist" in v.loc["dog/playlist.mp4", "error"].lower()
    assert (v.loc[list(BAD), "split"] == "").all() and (v.loc[list(BAD), "n_frames"] == 0).all()
    assert messy_run.n_ok == 7 and messy_run.n_failed == 5 and messy_run.exit_code == 0
    assert sum(messy_run.failures.values()) == 5
    assert sum(messy_run.manifest.info["failures"].values()) == 5


def test_manifests_and_frames_on_disk(messy_run):
    m = read_manifest(messy_run.outdir, check_files=True)
    ok = m.videos[m.videos["status"] == "ok"]
    assert (ok["n_frames"] == 4).all() and len(m.frames) == 4 * len(ok)
    assert m.frames.groupby("video_id")["split"].nunique().max() == 1  # no video in two splits
    assert set(m.frames["video_id"]) == set(ok["video_id"])
    rotated = ok.set_index("video_id").loc["cat/sub/cat 0 é.mp4"]
    assert (rotated["width"], rotated["height"]) == (48, 64)
    for rel in m.frames["path"].iloc[::5]:
        with Image.open(m.root / rel) as im:
            assert min(im.size) == 32
    assert not (messy_run.outdir / PARTIAL).exists() or not any((messy_run.outdir / PARTIAL).iterdir())
    info = json.loads((messy_run.outdir / "ingest.json").read_text())
    assert info["counts"]["videos"] == {"total": 12, "ok": 7, "failed": 5, "dropped": 0, "reused": 0}
    assert info["arguments"]["frames_per_video"] == 4 and info["versions"]["av"]
    assert info["counts"]["frames"] == len(m.frames) and info["elapsed_s"] > 0


def test_rerun_reuses_everything_and_retry_failed_retries(messy, messy_run, tmp_path):
    again = ingest(messy, messy_run.outdir, frames_per_video=4, size=32, split=(0.5, 0.25, 0.25),
                   seed=1, progress=False)
    assert again.n_reused == 11  # all but zero.mp4, which fails at scan time every run
    pd.testing.assert_frame_equal(again.manifest.frames, messy_run.manifest.frames)
    lines = (messy_run.outdir / JOURNAL).read_text().splitlines()
    retried = ingest(messy, messy_run.outdir, frames_per_video=4, size=32,
                     split=(0.5, 0.25, 0.25), seed=1, retry_failed=True, progress=False)
    new = [json.loads(x) for x in (messy_run.outdir / JOURNAL).read_text().splitlines()[len(lines):]]
    assert sorted(e["video_id"] for e in new) == sorted(BAD - {"dog/zero.mp4"})  # zero: scan-time
    assert retried.n_failed == 5


def test_same_seed_identical_manifests(messy, messy_run, tmp_path):
    other = ingest(messy, tmp_path / "out", frames_per_video=4, size=32,
                   split=(0.5, 0.25, 0.25), seed=1, jobs=2, progress=False)
    for name in ("videos.parquet", "frames.parquet"):
        assert (other.outdir / name).read_bytes() == (messy_run.outdir / name).read_bytes()


def test_timeout_kills_a_hung_decode_and_the_run_goes_on(tmp_path, monkeypatch):
    for name in ("a.mp4", "hang.mp4", "b.mp4"):
        make_video(tmp_path / "src" / "x" / name, duration=1, fps=5)
    monkeypatch.setattr("vidfeat.ingestion._ingest.decode_frames", hang_on_marker)
    start = time.monotonic()
    result = ingest(tmp_path / "src", tmp_path / "out", frames_per_video=2, split=(1, 0, 0),
                    timeout=5, jobs=2, progress=False)
    assert time.monotonic() - start < 60
    v = result.manifest.videos.set_index("video_id")
    assert v.loc["x/hang.mp4", "status"] == "failed"
    assert v.loc["x/hang.mp4", "error"].startswith("timed out after 5s")
    assert (v.loc[["x/a.mp4", "x/b.mp4"], "status"] == "ok").all()
    assert not (result.outdir / "frames" / "x" / "hang.mp4").exists()
    assert result.failures == {"timed out after 5s (work killed)": 1}


def test_exit_codes_all_failed_and_strict(tmp_path, monkeypatch):
    make_video(tmp_path / "src" / "x" / "a.mp4", duration=1, fps=5)
    touch(tmp_path / "src" / "x" / "bad.mp4", b"nope" * 100)
    args = ["ingest", str(tmp_path / "src"), "-o", str(tmp_path / "o1"), "--no-progress",
            "--frames-per-video", "2"]
    assert cli_main(args) == 0
    assert cli_main(args + ["--strict"]) == 1
    assert cli_main(args + ["--balance", "smote"]) == 2
    monkeypatch.setattr("vidfeat.ingestion._ingest.decode_frames", fail)
    result = ingest(tmp_path / "src", tmp_path / "o2", frames_per_video=2, progress=False)
    assert result.n_ok == 0 and result.exit_code == 1
    assert result.failures["ValueError"] == 1 and sum(result.failures.values()) == 2


def test_labels_file_with_url_row_and_split_column(tmp_path):
    a = make_video(tmp_path / "v" / "a b.mp4", duration=1, fps=5)
    make_video(tmp_path / "v" / "c.mp4", duration=1, fps=5, source="smptebars")
    pd.DataFrame({"path": ["v/a b.mp4", "v/c.mp4", "https://example.com/evil.mp4"],
                  "label": ["1", "2", "1"], "split": ["val", "test", ""]}).to_parquet(tmp_path / "l.parquet")
    result = ingest(None, tmp_path / "out", labels=tmp_path / "l.parquet", frames_per_video=2,
                    fmt="csv", progress=False)
    m = read_manifest(result.outdir, check_files=True)
    assert (result.outdir / "videos.csv").exists() and not (result.outdir / "videos.parquet").exists()
    v = m.videos.set_index("video_id")
    assert v.loc["v/a b.mp4", "split"] == "val" and v.loc["v/c.mp4", "split"] == "test"
    assert v.loc["v/a b.mp4", "path"] == str(a)
    assert v.loc["_rejected/line4", "status"] == "failed" and "URL" in v.loc["_rejected/line4", "error"]
    assert m.class_names == ["1", "2"]


@pytest.mark.parametrize("mode", ["undersample", "oversample", "frames"])
def test_balancing_through_ingest(tiny_dataset, tmp_path, mode):
    result = ingest(tiny_dataset, tmp_path / mode, frames_per_video=2, balance=mode,
                    split=(1, 0, 0), max_frames_per_video=8, progress=False)
    m = read_manifest(result.outdir, check_files=True)
    v = m.videos
    if mode == "undersample":
        kept = v[v["repeat"] > 0]
        assert kept.groupby("label").size().to_dict() == {"alpha": 2, "beta": 2, "gamma": 2}
        assert set(m.frames["video_id"]) == set(kept["video_id"])
        assert result.manifest.info["counts"]["videos"]["dropped"] == 6
    elif mode == "oversample":
        assert v.groupby("label")["repeat"].sum().to_dict() == {"alpha": 6, "beta": 6, "gamma": 6}
        assert (m.frames.groupby("label")["repeat"].sum() == 12).all()
    else:
        per_class = m.frames.groupby("label").size().to_dict()
        assert per_class == {"alpha": 12, "beta": 12, "gamma": 12}  # 6x2 = 4x3 = 2x6
        assert not m.frames["frame_id"].duplicated().any()


def test_fps_and_keyframes_modes(tmp_path):
    make_video(tmp_path / "src" / "x" / "a.mp4", duration=2, fps=10, gop=5)
    dense = ingest(tmp_path / "src", tmp_path / "fps", fps=2, split=(1, 0, 0), progress=False)
    assert dense.manifest.frames["timestamp_s"].tolist() == [0.0, 0.5, 1.0, 1.5]
    keys = ingest(tmp_path / "src", tmp_path / "kf", keyframes=True, split=(1, 0, 0), progress=False)
    assert keys.manifest.frames["frame_index"].tolist() == [0, 5, 10, 15]
    with pytest.raises(ValueError, match="fps or keyframes"):
        ingest(tmp_path / "src", tmp_path / "x", fps=1, keyframes=True)
    with pytest.raises(ValueError, match="balance='frames' needs uniform"):
        ingest(tmp_path / "src", tmp_path / "x", fps=1, balance="frames")


def test_second_ingest_into_same_outdir_is_refused(tmp_path):
    import fcntl

    make_video(tmp_path / "src" / "x" / "a.mp4", duration=1, fps=5)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".ingest.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another vidfeat process is writing into .*out"):
            ingest(tmp_path / "src", tmp_path / "out", progress=False)


KILLED_RUN = """
import sys, test_ingest
import vidfeat.ingestion._ingest as m
m.decode_frames = test_ingest.hang_after_writing
m.ingest(sys.argv[1], sys.argv[2], frames_per_video=2, split=(1, 0, 0), jobs=1, progress=False)
"""


def test_resume_after_a_killed_run(tmp_path):
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4", "hang.mp4", "z.mp4"):
        make_video(src / "x" / name, duration=1, fps=5)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(src), str(out)], env=env)
    try:  # wait until the 'hang' video is half-written, then SIGKILL the whole run
        deadline = time.monotonic() + 120
        while not list((out / PARTIAL).glob("*/000000.jpg")) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list((out / PARTIAL).glob("*/000000.jpg")), "the run never reached the hang"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    journal = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines()]
    decoded = {e["video_id"] for e in journal if e["phase"] == "decode"}
    assert decoded == {"x/a.mp4", "x/b.mp4"}  # sorted order: a, b done; hang killed; z not begun
    assert not (out / "frames" / "x" / "hang.mp4").exists() and not (out / "videos.parquet").exists()
    result = ingest(src, out, frames_per_video=2, split=(1, 0, 0), progress=False)
    m = read_manifest(out, check_files=True)
    assert (m.videos["status"] == "ok").all() and (m.videos["n_frames"] == 2).all()
    assert result.n_reused == 4  # all four probed before the kill; a and b decoded too
    assert not any((out / PARTIAL).glob("*"))
    with Image.open(out / m.frames.set_index("video_id").loc["x/hang.mp4", "path"].iloc[0]) as im:
        assert im.size[1] == 256 or im.size[0] == 256  # a real JPEG, not the half-written bytes


INTERRUPTED_RUN = KILLED_RUN.replace("jobs=1", "jobs=2, timeout=600")


def test_ctrl_c_ends_the_run_at_once(tmp_path):
    """Ctrl-C while a worker thread waits on a hung decode (600 s timeout): the run stops within
    seconds, its sandbox children killed, and a rerun resumes."""
    src = tmp_path / "src"
    for name in ("a.mp4", "hang.mp4", "z.mp4"):
        make_video(src / "x" / name, duration=1, fps=5)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RUN, str(src), str(out)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / PARTIAL).glob("*/000000.jpg")) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list((out / PARTIAL).glob("*/000000.jpg")), "the run never reached the hang"
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        stderr = proc.communicate(timeout=60)[1]
        assert time.monotonic() - start < 20 and "KeyboardInterrupt" in stderr
    finally:
        proc.kill()
        proc.wait()
    result = ingest(src, out, frames_per_video=2, split=(1, 0, 0), progress=False)
    assert result.n_ok == 3 and result.n_reused >= 3  # all probed before the interrupt


def test_cli_does_not_import_torch(tiny_dataset, tmp_path):
    code = ("import sys; from vidfeat.cli import main; "
            f"rc = main(['ingest', {str(tiny_dataset)!r}, '-o', {str(tmp_path / 'o')!r}, "
            "'--no-progress', '--frames-per-video', '1']); "
            "assert rc == 0; bad = {'torch', 'torchvision', 'matplotlib', 'sklearn'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --- provenance: what the frames are, atomic publication, environment failures -------------

def _ingest(src, out, **kw):
    kw = {"frames_per_video": 2, "split": (1, 0, 0), "progress": False, **kw}
    return ingest(src, out, **kw)


def test_frames_record_their_length_and_hash(tiny_dataset, tmp_path):
    import hashlib

    _ingest(tiny_dataset, tmp_path / "o")
    m = read_manifest(tmp_path / "o", verify=True)
    for row in m.frames.itertuples():
        data = (tmp_path / "o" / row.path).read_bytes()
        assert row.file_bytes == len(data)
        assert row.file_hash == hashlib.sha256(data).hexdigest()[:32]
    assert len(m.fingerprint) == 32 and m.info["fingerprint"] == m.fingerprint


def test_fingerprint_follows_content_not_timing(tiny_dataset, tmp_path):
    a = _ingest(tiny_dataset, tmp_path / "a").manifest.fingerprint
    b = _ingest(tiny_dataset, tmp_path / "b").manifest.fingerprint
    c = _ingest(tiny_dataset, tmp_path / "c", size=32).manifest.fingerprint
    assert a != c  # other frames
    # same sources and settings: the frame bytes agree, so only the output folder differs
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert ma.frames["file_hash"].tolist() == mb.frames["file_hash"].tolist()
    assert a == b


def pandas_fingerprint(videos, frames, info) -> str:
    """vidfeat's content fingerprint as computed before ingest stopped using pandas (to_csv of
    the validated tables): the reference every ingest folder made since was fingerprinted by."""
    import hashlib

    h = hashlib.sha256(json.dumps(info.get("sampling", {}), sort_keys=True).encode())
    for df in (videos.drop(columns=[c for c in ("elapsed_s",) if c in videos.columns]), frames):
        h.update(json.dumps(list(map(str, df.columns))).encode())
        h.update(df.to_csv(index=False, header=False).encode())
    return h.hexdigest()[:32]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_recorded_fingerprint_is_the_one_pandas_gave(messy, clip_src, tmp_path, fmt):
    """Tables built as rows and written as Arrow get the fingerprint the pandas tables got
    (failed rows with no probe, odd names, clips with padding), and are the very bytes pandas
    writes for them (Parquet metadata included: each table's own dtypes): existing feature
    caches stay current when their ingest is rerun."""
    runs = [ingest(messy, tmp_path / "m", frames_per_video=4, size=32, split=(0.5, 0.25, 0.25),
                   seed=1, fmt=fmt, progress=False),
            _clips(clip_src, tmp_path / "c", fmt=fmt)]
    for run in runs:
        m = read_manifest(run.outdir)
        assert m.info["fingerprint"] == pandas_fingerprint(m.videos, m.frames, m.info)
        for name, df in (("videos", m.videos), ("frames", m.frames)):  # the bytes pandas writes
            buf = io.BytesIO()
            df.to_csv(buf, index=False) if fmt == "csv" else df.to_parquet(buf, index=False)
            assert (run.outdir / f"{name}.{fmt}").read_bytes() == buf.getvalue(), name


def test_deleted_truncated_or_damaged_frames_are_remade_by_a_plain_rerun(tiny_dataset, tmp_path):
    out = tmp_path / "o"
    _ingest(tiny_dataset, out)
    m = read_manifest(out)
    first, second, third = (out / p for p in m.frames["path"].iloc[:3])
    good = first.read_bytes()
    first.unlink()
    second.write_bytes(second.read_bytes()[:100])  # truncated, as a short write would leave it
    damaged = bytearray(third.read_bytes())
    damaged[len(damaged) // 2] ^= 0x20  # same length, other bytes
    third.write_bytes(bytes(damaged))
    with pytest.raises(ManifestError, match="2 frame files missing or changed"):
        read_manifest(out, check_files=True)  # lengths only: the third needs verify=True
    result = _ingest(tiny_dataset, out)
    assert result.n_ok == 12
    m2 = read_manifest(out, verify=True)
    assert first.read_bytes() == good
    assert m2.frames["file_hash"].tolist() == m.frames["file_hash"].tolist()


def test_verify_finds_a_same_length_change(tiny_dataset, tmp_path):
    out = tmp_path / "o"
    _ingest(tiny_dataset, out)
    path = out / read_manifest(out).frames["path"].iloc[3]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    read_manifest(out, check_files=True)  # the length still agrees
    with pytest.raises(ManifestError, match="hash mismatch"):
        read_manifest(out, verify=True)


def test_tables_from_different_runs_are_refused(tiny_dataset, tmp_path):
    """A kill between publishing videos.parquet and frames.parquet leaves a mix: refused."""
    out = tmp_path / "o"
    _ingest(tiny_dataset, out)
    videos = pd.read_parquet(out / "videos.parquet")
    videos.loc[0, "n_frames"] = 99
    videos.to_parquet(out / "videos.parquet", index=False)  # what an interrupted rerun leaves
    with pytest.raises(ManifestError, match="not the table ingest.json recorded"):
        read_manifest(out)
    _ingest(tiny_dataset, out)
    assert read_manifest(out).videos["n_frames"].tolist() == [2] * 12


KILLED_RERUN = """
import sys
sys.path.insert(0, sys.argv[3])
import test_ingest as t
import vidfeat.ingestion._ingest as m
m.ingest(sys.argv[1], sys.argv[2], frames_per_video=2, split=(1, 0, 0), jobs=1, size=32,
         progress=False)
"""


def test_killed_rerun_with_new_options_leaves_no_manifest_describing_other_frames(tmp_path):
    src = tmp_path / "src"
    for name in ("a.mp4", "b.mp4", "hang.mp4"):
        make_video(src / "x" / name, duration=1, fps=5)
    out = tmp_path / "out"
    _ingest(src, out)  # size 256
    read_manifest(out, check_files=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]),
               VIDFEAT_TEST_HANG="1")
    code = KILLED_RERUN.replace("import vidfeat.ingestion._ingest as m",
                                "import vidfeat.ingestion._ingest as m\n"
                                "m.decode_frames = t.hang_after_writing")
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out), str(TESTS)], env=env)
    try:  # a and b re-decoded at size 32, then SIGKILL half-way through 'hang'
        deadline = time.monotonic() + 120
        while not list((out / PARTIAL).glob("*/000000.jpg")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list((out / PARTIAL).glob("*/000000.jpg")), "the rerun never reached the hang"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(ManifestError, match="did not finish"):
        read_manifest(out)
    _ingest(src, out, size=32)
    m = read_manifest(out, verify=True)
    for p in m.frames["path"]:
        with Image.open(out / p) as im:
            assert min(im.size) == 32


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only); skipped where mounting is refused."""
    import featfiles

    with featfiles.small_disk(tmp_path / "disk", "3m") as mnt:
        yield mnt


def test_full_disk_stops_the_run_records_nothing_and_a_rerun_completes(small_disk, tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        make_video(src / "c" / f"v{i}.mp4", duration=1, fps=10, size=(320, 240))
    ballast = small_disk / "ballast"
    free = os.statvfs(small_disk)
    ballast.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 150_000))  # ~150 kB left
    out = small_disk / "out"
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "ingest", str(src), "-o", str(out),
                           "--frames-per-video", "8", "--size", "240", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "disk full writing" in lines[0] and "rerun" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    if (out / JOURNAL).exists():
        journal = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines() if x.strip()]
        assert all(e["status"] == "ok" for e in journal), journal  # nothing recorded as failed
    ballast.unlink()
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "ingest", str(src), "-o", str(out),
                           "--frames-per-video", "8", "--size", "240", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(out, verify=True)
    assert (m.videos["status"] == "ok").all() and len(m.frames) == 6 * 8
    assert not list(out.rglob("*.tmp"))


def test_frame_folders_follow_the_umask(tiny_dataset, tmp_path):
    old = os.umask(0o022)
    try:
        _ingest(tiny_dataset, tmp_path / "o")
    finally:
        os.umask(old)
    folders = [p for p in (tmp_path / "o" / "frames").rglob("*") if p.is_dir()]
    assert folders and all(p.stat().st_mode & 0o777 == 0o755 for p in folders)
    files = list((tmp_path / "o" / "frames").rglob("*.jpg"))
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files)


@pytest.mark.parametrize("where", ["below_a_file", "read_only", "pseudo_fs"])
def test_unwritable_output_is_one_line_before_any_work(tiny_dataset, tmp_path, where):
    if where == "below_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif where == "read_only":
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a read-only tmpfs here (needs root)")
        out = ro / "out"
    else:
        out = Path("/proc/vidfeat-out")
    try:
        proc = subprocess.run([sys.executable, "-m", "vidfeat", "ingest", str(tiny_dataset),
                               "-o", str(out)], capture_output=True, text=True, timeout=120)
    finally:
        if where == "read_only":
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "probe" not in proc.stderr, proc.stderr


# --- unlabelled ingest -----------------------------------------------------------------------

def _unlabelled_tree(root):
    """Three tiny videos at three depths, no class folders."""
    for rel, source in (("top.mp4", "testsrc2"), ("a/mid.mp4", "smptebars"),
                        ("a/b/deep.mp4", "mandelbrot")):
        make_video(root / rel, duration=0.6, fps=5, size=(32, 24), source=source)
    return root


@pytest.fixture(scope="module")
def unlabelled_src(tmp_path_factory):
    return _unlabelled_tree(tmp_path_factory.mktemp("unlabelled_src"))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unlabelled_folder_tree_goes_to_split_all(unlabelled_src, tmp_path, fmt):
    res = ingest(unlabelled_src, tmp_path / "out", unlabelled=True, frames_per_video=2, fmt=fmt,
                 progress=False)
    m = read_manifest(tmp_path / "out")
    assert m.videos["video_id"].tolist() == ["a/b/deep.mp4", "a/mid.mp4", "top.mp4"]
    assert set(m.videos["split"]) == {"all"} and set(m.videos["label"]) == {""}
    assert set(m.frames["split"]) == {"all"} and len(m.frames) == 6
    assert m.unlabelled and m.class_names == [""]
    assert m.info["unlabelled"] is True
    assert m.info["counts"]["videos_per_split"] == {"all": 3}
    assert res.exit_code == 0 and "(unlabelled; splits: all 3)" in res.summary()


def test_unlabelled_text_list_and_table(unlabelled_src, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# mine\n{unlabelled_src / 'top.mp4'}\nhttp://x/y.mp4\n\n"
                       f"{unlabelled_src / 'a/mid.mp4'}\n")
    ingest(listing, tmp_path / "a", unlabelled=True, frames_per_video=1, progress=False)
    v = read_manifest(tmp_path / "a").videos.set_index("video_id")
    assert v["status"].to_dict() == {"_rejected/line3": "failed",
                                     f"_external{unlabelled_src}/a/mid.mp4": "ok",
                                     f"_external{unlabelled_src}/top.mp4": "ok"}
    assert v.loc["_rejected/line3", "split"] == ""
    pd.DataFrame({"path": ["a/b/deep.mp4", "a/nope.mp4"]}).to_csv(unlabelled_src / "p.csv",
                                                                  index=False)
    try:
        ingest(None, tmp_path / "b", labels=unlabelled_src / "p.csv", unlabelled=True,
               frames_per_video=1, progress=False)
    finally:
        (unlabelled_src / "p.csv").unlink()
    v = read_manifest(tmp_path / "b").videos.set_index("video_id")
    assert v["error"].to_dict() == {"a/b/deep.mp4": "", "a/nope.mp4": "file not found"}
    assert v.loc["a/b/deep.mp4", "split"] == "all"


@pytest.mark.parametrize("option, value, flag", [
    ("split", "0.5,0.25,0.25", "--split"), ("balance", "oversample", "--balance"),
    ("max_per_class", 3, "--max-per-class"), ("seed", 7, "--seed"),
    ("max_frames_per_video", 8, "--max-frames-per-video")])
def test_unlabelled_refuses_split_and_balance_options(unlabelled_src, tmp_path, capsys, option,
                                                      value, flag):
    from vidfeat.options import OptionError

    with pytest.raises(OptionError, match=f"^{option} must be left at its default for an "
                                          "unlabelled ingest"):
        ingest(unlabelled_src, tmp_path / "out", unlabelled=True, progress=False,
               **{option: value})
    assert not (tmp_path / "out").exists()  # refused before any work
    assert cli_main(["ingest", str(unlabelled_src), "-o", str(tmp_path / "out"), "--unlabelled",
                     flag, str(value)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vidfeat ingest: error: {flag} {value}: must be left at its default for an "
                   "unlabelled ingest (no classes to split, stratify or balance: every video "
                   "goes to split 'all')"]


def test_unlabelled_accepts_the_default_split_spelled_out(unlabelled_src, tmp_path):
    res = ingest(unlabelled_src, tmp_path / "out", unlabelled=True, split="0.8,0.1,0.1",
                 frames_per_video=1, progress=False)
    assert res.n_ok == 3


# --- clips ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_src(tmp_path_factory):
    """2 s videos (a: 4 train + 1 val, b: 1 train + 1 val) and a 0.8 s one (b, test), with a
    labels file giving every split."""
    root = tmp_path_factory.mktemp("clip_src")
    rows = ["path,label,split"]
    plan = [("a", i, "train" if i < 4 else "val", 2.0) for i in range(5)]
    plan += [("b", 0, "train", 2.0), ("b", 1, "val", 2.0), ("b", "short", "test", 0.8)]
    for label, i, split, duration in plan:
        name = f"{label}/{label}_{i}.mp4"
        make_video(root / name, duration=duration, fps=10, size=(64, 48),
                   source="testsrc" if label == "a" else "smptebars")
        rows.append(f"{name},{label},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def _clips(labels, out, **kw):
    kw = {"clips_per_video": 3, "clip_len": 16, "clip_fps": 15.0, "progress": False, **kw}
    return ingest(None, out, labels=labels, **kw)


def test_clip_ingest_ids_positions_and_padding(clip_src, tmp_path):
    result = _clips(clip_src, tmp_path / "o")
    m = read_manifest(tmp_path / "o", verify=True)
    f = m.frames
    assert result.exit_code == 0 and m.clips and m.clip_len == 16
    assert "Stored 352 frames (22 clips of 16)" in result.summary()
    # 7 two-second videos x 3 clips + 1 clip of the short one, numbered across the dataset
    assert f["clip_id"].tolist() == [c for c in range(22) for _ in range(16)]
    assert f["clip_pos"].tolist() == list(range(16)) * 22
    assert f["frame_id"].is_unique and f.groupby("clip_id")["video_id"].nunique().max() == 1
    assert (f.groupby("video_id").size() == m.videos.set_index("video_id")["n_frames"]).all()
    # within a clip frames are 1/15 s apart at a 10 fps video: indexes step by 0 or 1, never 2
    steps = f.groupby("clip_id")["frame_index"].diff().dropna()
    assert set(steps) <= {0, 1}
    short = f[f["video_id"] == "b/b_short.mp4"]
    assert short["padded"].tolist() == [j / 15 >= 0.8 - 1e-9 for j in range(16)]
    assert not f.loc[f["video_id"] != "b/b_short.mp4", "padded"].any()
    last = short[~short["padded"]].iloc[-1]
    assert (short.loc[short["padded"], "path"] == last["path"]).all()  # the last frame, repeated
    assert last["frame_index"] == 7 and last["timestamp_s"] == pytest.approx(0.7)
    sampling = m.info["sampling"]
    assert {k: sampling[k] for k in ("clips_per_video", "clip_len", "clip_fps", "short_clips")} \
        == {"clips_per_video": 3, "clip_len": 16, "clip_fps": 15.0, "short_clips": "pad"}


def test_short_clips_drop_fails_the_video_with_the_reason(clip_src, tmp_path):
    result = _clips(clip_src, tmp_path / "o", short_clips="drop")
    v = result.manifest.videos.set_index("video_id")
    assert v.loc["b/b_short.mp4", "status"] == "failed"
    assert v.loc["b/b_short.mp4", "error"] == \
        "shorter than one clip: 0.8 s < 1.07 s (16 frames at 15 fps)"
    assert (v.drop("b/b_short.mp4")["status"] == "ok").all()
    assert result.failures == {"shorter than one clip": 1}
    assert "b/b_short.mp4" not in set(result.manifest.frames["video_id"])
    assert len(result.manifest.frames) == 7 * 3 * 16


def _decodes(out):
    return sum(json.loads(line)["phase"] == "decode" for line in (out / JOURNAL).open())


def test_every_clip_option_is_in_the_fingerprint_and_a_change_remakes_frames(tmp_path):
    make_video(tmp_path / "src" / "x" / "a.mp4", duration=2, fps=10)
    out = tmp_path / "o"
    options = {"clips_per_video": 2, "clip_len": 4, "clip_fps": 5.0, "short_clips": "pad"}
    first = ingest(tmp_path / "src", out, split=(1, 0, 0), progress=False, **options)
    seen, decodes = {first.manifest.fingerprint}, _decodes(out)
    again = ingest(tmp_path / "src", out, split=(1, 0, 0), progress=False, **options)
    assert again.manifest.fingerprint in seen and _decodes(out) == decodes  # already done
    for name, value in [("clip_len", 6), ("clips_per_video", 3), ("clip_fps", 8.0),
                        ("short_clips", "drop")]:
        options[name] = value
        result = ingest(tmp_path / "src", out, split=(1, 0, 0), progress=False, **options)
        assert result.manifest.fingerprint not in seen, name
        assert _decodes(out) == decodes + 1, name  # re-made, not reused
        seen.add(result.manifest.fingerprint)
        decodes += 1
        m = read_manifest(out, verify=True)
        assert len(m.frames) == options["clips_per_video"] * options["clip_len"]
        assert m.info["sampling"][name] == value


def test_balance_frames_gives_minority_train_videos_more_clips(clip_src, tmp_path):
    # clips of 4 frames at 10 fps (0.4 s): a 2 s video holds 5; train has a: 4 videos, b: 1
    result = _clips(clip_src, tmp_path / "o", clips_per_video=1, clip_len=4, clip_fps=10.0,
                    balance="frames")
    f = result.manifest.frames
    assert (f.groupby("clip_id").size() == 4).all()  # more clips, never longer ones
    clips = f.groupby("video_id")["clip_id"].nunique().to_dict()
    assert clips == {"a/a_0.mp4": 1, "a/a_1.mp4": 1, "a/a_2.mp4": 1, "a/a_3.mp4": 1,
                     "a/a_4.mp4": 1, "b/b_0.mp4": 4, "b/b_1.mp4": 1, "b/b_short.mp4": 1}
    capped = _clips(clip_src, tmp_path / "cap", clips_per_video=1, clip_len=4, clip_fps=10.0,
                    balance="frames", max_frames_per_video=8)  # 8 frames: 2 clips of 4
    assert capped.manifest.frames.groupby("video_id")["clip_id"].nunique()["b/b_0.mp4"] == 2
    with pytest.raises(ValueError, match=r"max_frames_per_video=3 is below one video's clips"):
        _clips(clip_src, tmp_path / "x", clips_per_video=1, clip_len=4, balance="frames",
               max_frames_per_video=3)


def test_clip_options_are_checked_before_any_work(clip_src, tmp_path):
    for kw, match in [({"clip_len": 0}, "clip_len must be > 0"),
                      ({"clip_fps": 0.0}, "clip_fps must be > 0"),
                      ({"clips_per_video": 0}, "clips_per_video must be > 0"),
                      ({"short_clips": "cut"}, "short_clips='cut' is not one of 'pad', 'drop'"),
                      ({"fps": 2.0}, "clips_per_video and fps exclude each other"),
                      ({"keyframes": True}, "clips_per_video and keyframes exclude each other")]:
        with pytest.raises(ValueError, match=match):
            _clips(clip_src, tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_2d_backbone_extracts_trains_and_predicts_on_clips(clip_src, tmp_path, capsys):
    """End to end on the command line: clip ingest -> resnet18 (weights none) -> train ->
    predict, one feature per frames.parquet row; predict samples the clips the model's ingest
    did."""
    import h5py

    out, feats, model = tmp_path / "out", tmp_path / "f.h5", tmp_path / "model"
    assert cli_main(["ingest", "--labels", str(clip_src), "-o", str(out), "--clips-per-video",
                     "2", "--clip-len", "4", "--clip-fps", "5", "--size", "64", "-q"]) == 0
    m = read_manifest(out)
    assert len(m.frames) == 8 * 2 * 4  # 0.8 s holds one 4-frame clip at 5 fps: not short
    assert cli_main(["extract", str(out), "-o", str(feats), "--backbone", "resnet18",
                     "--weights", "none", "--device", "cpu", "--loader-workers", "0", "-q"]) == 0
    with h5py.File(feats, "r") as f:
        assert list(f["frame_id"].asstr()[...]) == m.frames["frame_id"].tolist()
        assert f["features"].shape[0] == len(m.frames)
    assert cli_main(["train", str(feats), "-o", str(model), "--device", "cpu", "--epochs", "3",
                     "-q"]) == 0
    capsys.readouterr()
    video = clip_src.parent / "a" / "a_0.mp4"
    assert cli_main(["predict", str(model), str(video), "--device", "cpu"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["n_frames"] == 2 * 4

def test_one_warm_child_per_worker_for_the_whole_run(tiny_dataset, tmp_path, monkeypatch):
    """12 videos, 2 phases, --jobs 2: two sandbox children in all (started once, borrowed by
    each video's probe and decode), not one per worker thread per phase."""
    from vidfeat import sandbox

    started = []
    start = sandbox.Sandbox._start
    monkeypatch.setattr(sandbox.Sandbox, "_start", lambda box: (started.append(1), start(box)))
    result = ingest(tiny_dataset, tmp_path / "out", frames_per_video=2, size=32, jobs=2,
                    progress=False)
    assert result.n_ok == 12 and len(started) == 2


def test_resume_hashes_a_jpeg_shared_by_clip_rows_once(tmp_path, monkeypatch):
    """A frame shown by several clip rows has one JPEG: checking a journal entry reads and
    hashes it once, and a damaged one still makes the entry not intact."""
    import hashlib

    import vidfeat.files
    from vidfeat.ingestion.tasks import frames_dir, frames_intact

    folder = frames_dir(tmp_path, "v")
    folder.mkdir(parents=True)
    rows = []
    for name, data in (("000000.jpg", b"a" * 10), ("000001.jpg", b"b" * 12)):
        (folder / name).write_bytes(data)
        rows.append([0, 0.0, name, len(data), hashlib.sha256(data).hexdigest()[:32]])
    shared = [rows[0], rows[0], rows[1], rows[0], rows[1]]  # padded and repeated clip rows
    calls = []
    real = vidfeat.files.hash_bytes
    monkeypatch.setattr(vidfeat.files, "hash_bytes", lambda d: calls.append(d) or real(d))
    assert frames_intact(tmp_path, "v", shared) and len(calls) == 2
    (folder / "000001.jpg").write_bytes(b"c" * 12)  # same length, other bytes
    assert not frames_intact(tmp_path, "v", shared)
