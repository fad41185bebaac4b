import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from featfiles import resize_disk, small_disk
from PIL import Image
from torchvision.models import get_model

from vidfeat.cli import main
from vidfeat.extraction._extract import extract
from vidfeat.extraction.backbones import create_backbone, load_image
from vidfeat.extraction.cache import FeatureStore, merge, output_lock
from vidfeat.extraction.defaults import loader_defaults as _defaults
from vidfeat.extraction.defaults import resolve_decode
from vidfeat.extraction.integrity import CorruptFeatureFile, attrs_digest, features_fingerprint
from vidfeat.extraction.single import parse_shard, shard_rows
from vidfeat.files import StorageError
from vidfeat.ingestion.manifest import read_manifest, write_manifest

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* RANDOM", "ignore::DeprecationWarning")
SIZES = [(64, 48), (48, 64), (175, 143)]
OPTS = dict(backbone="resnet18", weights="none", batch_size=2, workers=0, device="cpu",
            dtype="float32", progress=False)


def make_ingest(root: Path, n_videos: int = 6, frames: int = 2) -> Path:
    """An ingest OUTDIR: JPEG frames of varied sizes (one grayscale) and valid manifests."""
    rng = np.random.default_rng(0)
    labels, splits = ["alpha", "beta", "gamma"], ["train", "train", "val", "test", "train", "val"]
    videos, rows = [], []
    for v in range(n_videos):
        label, split, (w, h) = labels[v % 3], splits[v % 6], SIZES[v % 3]
        vid = f"{label}/clip {v}.mp4"
        for k in range(frames):
            rel = f"frames/{vid}/{k:06d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([(xx * 3 + k * 40 + v * 30) % 256, (yy * 5 + v * 40) % 256,
                            rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
            pil = Image.fromarray(img).convert("L") if (v, k) == (1, 1) else Image.fromarray(img)
            pil.save(root / rel, quality=90)
            rows.append(dict(frame_id=f"{vid}#{k}", video_id=vid, label=label, split=split,
                             frame_index=k, timestamp_s=k * 0.1, path=rel, repeat=1 + (v == 2)))
        videos.append(dict(video_id=vid, path=f"/src/{vid}", label=label, split=split,
                           status="ok", error="", duration_s=1.0, fps=10.0, width=w, height=h,
                           n_frames=frames, repeat=1 + (v == 2)))
    write_manifest(root, pd.DataFrame(videos), pd.DataFrame(rows),
                   {"sampling": {"mode": "uniform", "frames_per_video": frames}})
    return root


@pytest.fixture(scope="module")
def ingest_dir(tmp_path_factory):
    return make_ingest(tmp_path_factory.mktemp("ingest"))


@pytest.fixture(scope="module")
def reference(ingest_dir, tmp_path_factory):
    """One uninterrupted fp32/float32 run that the other tests compare against."""
    out = tmp_path_factory.mktemp("ref") / "features.h5"
    result = extract(ingest_dir, out, **OPTS)
    assert not result.skipped and result.n_frames == 12 and result.resumed_rows == 0
    return out


def read_all(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...])
                     if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = dict(f.attrs)
    return out


def assert_same_file(a: Path, b: Path) -> None:
    da, db = read_all(a), read_all(b)
    assert set(da) == set(db)
    for key in da:
        if key == "attrs":
            continue
        assert np.array_equal(da[key], db[key]), key
    attrs_a = {k: v for k, v in da["attrs"].items() if k != "ingest_dir"}
    attrs_b = {k: v for k, v in db["attrs"].items() if k != "ingest_dir"}
    assert json.dumps(attrs_a, default=str) == json.dumps(attrs_b, default=str)


def test_cached_feature_equals_backbone_on_stored_frame(reference, ingest_dir):
    bb = create_backbone("resnet18", "none")
    m = read_manifest(ingest_dir)
    with FeatureStore(reference) as store:
        X = store.load().X
    assert X.std(axis=0).mean() > 1e-3  # random-init features still vary between frames
    for i, rel in list(enumerate(m.frames["path"]))[::2] + [(3, m.frames["path"][3])]:
        with torch.inference_mode():
            expected = bb.model(bb.preprocess(load_image(ingest_dir / rel)[None]))[0].numpy()
        rel_err = np.abs(X[i] - expected).max() / np.abs(expected).max()
        assert rel_err <= 1e-4, (rel, rel_err)


def test_layout_attributes_and_video_means(reference, ingest_dir):
    m = read_manifest(ingest_dir)
    with h5py.File(reference, "r") as f:
        assert f["features"].shape == (12, 512) and f["features"].dtype == np.float32
        assert list(f["frame_id"].asstr()[...]) == m.frames["frame_id"].tolist()
        assert list(f["video_id"].asstr()[...]) == m.frames["video_id"].tolist()
        assert list(f["split"].asstr()[...]) == m.frames["split"].tolist()
        names = json.loads(f.attrs["class_names"])
        assert names == ["alpha", "beta", "gamma"]
        assert [names[i] for i in f["label"][...]] == m.frames["label"].tolist()
        assert f["repeat"][...].tolist() == m.frames["repeat"].tolist()
        assert f["row"][...].tolist() == list(range(12))
        vids = f["videos/video_id"].asstr()[...]
        assert list(vids) == list(dict.fromkeys(m.frames["video_id"]))
        X, vid = f["features"][...], f["video_id"].asstr()[...]
        for j, v in enumerate(vids):
            np.testing.assert_allclose(f["videos/features"][j], X[vid == v].mean(0), rtol=1e-6)
        assert f["videos/n_frames"][...].tolist() == [2] * 6
        assert f["videos/repeat"][...].tolist() == [1, 1, 2, 1, 1, 1]
        a = f.attrs
        assert a["complete"] and a["backbone"] == "resnet18" and a["weights"] == "none"
        assert a["feature_dim"] == 512 and a["input_size"] == 224 and a["resize_size"] == 256
        assert list(a["mean"]) == pytest.approx([0.485, 0.456, 0.406])
        assert a["precision"] == "fp32" and a["dtype"] == "float32"
        assert a["ingest_dir"] == str(ingest_dir.absolute())
        assert json.loads(a["sampling"]) == {"mode": "uniform", "frames_per_video": 2}
        assert len(a["manifest_fingerprint"]) == 32 and a["vidfeat_version"]
    assert not Path(f"{reference}.partial").exists()


def test_rerun_of_a_complete_file_does_nothing(reference, ingest_dir):
    before = reference.stat().st_mtime_ns
    result = extract(ingest_dir, reference, **OPTS)
    assert result.skipped and result.n_frames == 12
    assert reference.stat().st_mtime_ns == before


def _extract_argv(ingest_dir, out, *extra):
    return ["extract", str(ingest_dir), "-o", str(out), "--backbone", "resnet18", "--weights",
            "none", "--batch-size", "2", "--loader-workers", "0", "--device", "cpu", "--dtype",
            "float32", "--no-progress", *extra]


def _cli_extract(ingest_dir, out, *extra):
    cmd = [sys.executable, "-m", "vidfeat", *_extract_argv(ingest_dir, out, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_then_resume_equals_uninterrupted_run(reference, ingest_dir, tmp_path):
    out = tmp_path / "killed.h5"
    rows_bin = Path(f"{out}.partial") / "features.bin"
    proc = _cli_extract(ingest_dir, out)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_bin.exists() and rows_bin.stat().st_size >= 2 * 512 * 4:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that looks complete
    with open(rows_bin, "ab") as f:
        f.write(b"\x01" * 7)  # a torn write: half a row
    result = extract(ingest_dir, out, **OPTS)
    assert 2 <= result.resumed_rows < 12 and result.resumed_rows % 2 == 0
    assert_same_file(out, reference)


def test_second_writer_fails_at_once(ingest_dir, tmp_path):
    out = tmp_path / "locked.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vidfeat.extraction.cache import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="another vidfeat process is writing .*locked.h5"):
            extract(ingest_dir, out, **OPTS)
        assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel released the dead holder's lock
        pass


def test_corrupt_frame_fails_clearly_then_a_changed_manifest_rebuilds(ingest_dir, tmp_path):
    src = tmp_path / "ingest"
    shutil.copytree(ingest_dir, src)
    m = read_manifest(src)
    bad = m.frames["path"].iloc[9]
    (src / bad).write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "f.h5"
    with pytest.raises(RuntimeError, match=f"cannot read stored frame {bad}"):
        extract(src, out, **OPTS)
    assert not out.exists()
    partial = Path(f"{out}.partial")
    assert (partial / "features.bin").stat().st_size == 8 * 512 * 4  # the batches before it
    write_manifest(src, m.videos, m.frames.drop(index=9), m.info)
    # the unfinished run was over other frames: dropped without a flag, the file built anew
    result = extract(src, out, **OPTS)
    assert result.n_frames == 11 and result.resumed_rows == 0 and not partial.exists()
    with FeatureStore(out) as s:
        assert bad.replace("frames/", "") not in " ".join(s.column("frame_id"))
    write_manifest(src, m.videos, m.frames.drop(index=[8, 9]), m.info)
    result = extract(src, out, **OPTS)  # a changed manifest is never "already complete"
    # these hand-made manifests record no frame hashes: no row is provably unchanged
    assert not result.skipped and result.n_frames == 10 and "kept 0 rows" in result.update
    with pytest.raises(FileExistsError, match="backbone='resnet18', this run has 'resnet34'"):
        extract(src, out, **{**OPTS, "backbone": "resnet34"})


def test_shard_rows_split_whole_videos_deterministically(ingest_dir):
    frames = read_manifest(ingest_dir).frames
    parts = [shard_rows(frames, i, 4) for i in range(4)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(frames)))
    for p in parts:
        others = set(np.concatenate([q for q in parts if q is not p]))
        assert not set(frames["video_id"].iloc[p]) & set(frames["video_id"].iloc[list(others)])
    assert all(np.array_equal(a, shard_rows(frames, i, 4)) for i, a in enumerate(parts))
    assert [len(p) for p in [shard_rows(frames, i, 2) for i in range(2)]] == [6, 6]
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) == (0, 1)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shards_merge_into_the_single_run(reference, ingest_dir, tmp_path):
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        r = extract(ingest_dir, path, **OPTS, shard=f"{i}/2")
        assert r.shard == f"{i}/2" and r.n_frames == 6
    with FeatureStore(shards[1]) as s:
        assert s.attrs["shard_index"] == 1 and s.column("row").tolist() == list(range(6, 12))
    merged = merge(shards[::-1], tmp_path / "merged.h5")
    assert_same_file(merged, reference)
    prints = [FeatureStore(p).features_fingerprint for p in (merged, reference, *shards)]
    assert prints[0] == prints[1] and len(set(prints)) == 3  # shards differ from the whole

    with pytest.raises(ValueError, match=r"missing shard\(s\) 1/2"):
        merge(shards[:1], tmp_path / "m1.h5")
    with pytest.raises(ValueError, match="shard 0/2 given twice"):
        merge([shards[0], shards[0]], tmp_path / "m2.h5")
    odd = tmp_path / "odd.h5"
    shutil.copy(shards[1], odd)
    with h5py.File(odd, "a") as f:
        f.attrs["weights"] = "/elsewhere/w.pt"
    with pytest.raises(CorruptFeatureFile, match="odd.h5 is corrupt .*attrs_sha256"):
        merge([shards[0], odd], tmp_path / "m3.h5")  # an edit by hand fails the checksum
    with h5py.File(odd, "a") as f:
        f.attrs["attrs_sha256"] = attrs_digest(f.attrs)  # a shard made with other weights
    with pytest.raises(ValueError, match="shards do not match: weights"):
        merge([shards[0], odd], tmp_path / "m3.h5")
    with pytest.raises(FileExistsError, match="overwrite"):
        merge(shards, merged)
    assert not any(tmp_path.glob("m[123].h5")) and not any(tmp_path.glob(".*.tmp"))
    assert main(["merge", str(shards[0]), "-o", str(tmp_path / "m4.h5")]) == 2


def test_bad_options_and_inputs_fail_clearly(ingest_dir, tmp_path):
    out = tmp_path / "x.h5"
    cases = [(dict(device="tpu"), "device='tpu' is not one of"),
             (dict(precision="int8"), "precision='int8' is not one of"),
             (dict(dtype="float64"), "dtype='float64' is not one of"),
             (dict(batch_size=0), "batch_size must be > 0"),
             (dict(shard="2/2"), "shard"),
             (dict(decode="nvdec"), "decode='nvdec' is not one of 'auto', 'cpu', 'gpu'"),
             (dict(backbone="resnet9"), "unknown backbone")]
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            extract(ingest_dir, out, **{**OPTS, **override})
    with pytest.raises(ValueError, match="ingest output folder not found"):
        extract(tmp_path / "nowhere", out, **OPTS)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(FileExistsError, match="not a usable feature file"):
        extract(ingest_dir, tmp_path / "junk.h5", **OPTS)
    assert not out.exists()


def test_cli_reports_a_complete_file(reference, ingest_dir, capsys):
    argv = ["extract", str(ingest_dir), "-o", str(reference), "--backbone", "resnet18",
            "--weights", "none", "--batch-size", "2", "--device", "cpu", "--dtype", "float32"]
    # the decode choice is no setting of the file: another one still finds it complete
    assert main([*argv, "--decode", "gpu"]) == 0
    assert "already complete (12 frames, 6 videos, resnet18)" in capsys.readouterr().out
    assert main([*argv, "--decode", "nvjpeg"]) == 2
    assert "--decode nvjpeg: not one of auto, cpu, gpu" in capsys.readouterr().err


def test_decode_choices_on_a_cpu_device_both_decode_in_workers(reference, ingest_dir, tmp_path):
    with FeatureStore(reference) as s:
        assert s.attrs["decode"] == "cpu"
        X = s.load().X
    # decode="gpu" without a GPU: the worker path, here with a real worker process
    out = tmp_path / "gpu.h5"
    r = extract(ingest_dir, out, **{**OPTS, "workers": 1}, decode="gpu")
    assert r.decode == "cpu" and "cpu decode" in r.summary()
    assert_same_file(out, reference)
    r = extract(ingest_dir, tmp_path / "cpu.h5", **OPTS, decode="cpu", shard="1/2")
    with FeatureStore(tmp_path / "cpu.h5") as s:
        assert r.decode == "cpu" and np.array_equal(s.load().X, X[6:])


def test_loader_workers_leave_the_file_bit_identical(reference, ingest_dir, tmp_path):
    # why the pipeline leaves extract's workers out of its fingerprint
    import hashlib

    out = tmp_path / "workers.h5"
    extract(ingest_dir, out, **{**OPTS, "workers": 2})
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (reference, out)]
    assert digest[0] == digest[1]


def test_shard_defaults_come_from_extracts_policy(monkeypatch):
    from vidfeat.extraction.multigpu import Slot, _per_shard_defaults

    monkeypatch.setattr("vidfeat.extraction.multigpu.usable_cores", lambda: 16)
    # two CPU shards of 8 cores: 8 torch threads and extract's CPU default of cores/4 workers
    assert _per_shard_defaults({}, [Slot("cpu")] * 2) == {"threads": 8, "decode": "cpu",
                                                          "workers": 2}
    cuda = _per_shard_defaults({"decode": "auto"}, [Slot("cuda", "0"), Slot("cuda", "1")])
    assert cuda == {"threads": 8, "decode": "cpu", "workers": 6}
    given = _per_shard_defaults({"workers": 3, "threads": 1}, [Slot("cuda", "0")] * 4)
    assert given == {"workers": 3, "threads": 1}  # the caller's values, untouched


def test_auto_decode_rule_and_worker_defaults(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_decode("auto", cpu) == resolve_decode("gpu", cpu, 64) == "cpu"
    assert resolve_decode("gpu", cuda, 64) == "gpu" and resolve_decode("cpu", cuda, 1) == "cpu"
    assert resolve_decode("auto", cuda, 8) == "cpu" and resolve_decode("auto", cuda, 7) == "gpu"
    # the module that owns the policy: single-device extract and extract_multi both ask it
    monkeypatch.setattr("vidfeat.extraction.defaults.usable_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_decode("auto", cuda) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # 4 cores per GPU
    assert resolve_decode("auto", cuda) == "gpu"
    assert _defaults(cuda, "cpu", None, None) == (256, 14)
    assert _defaults(cuda, "gpu", None, None) == (256, 8)
    assert _defaults(cpu, "cpu", None, None) == (64, 4)
    assert _defaults(cuda, "cpu", 32, 3) == (32, 3)
    with pytest.raises(ValueError, match="decode='nvdec' is not one of 'auto', 'cpu', 'gpu'"):
        resolve_decode("nvdec", cpu)


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
def test_cuda_pipeline_matches_its_reference_and_the_cpu_rows(reference, ingest_dir, tmp_path,
                                                               no_tf32):
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    out = tmp_path / "gpu.h5"
    r = extract(ingest_dir, out, **{**OPTS, "device": "cuda", "precision": "fp32", "workers": 2},
                decode="gpu")
    assert r.device.startswith("cuda") and r.precision == "fp32" and r.decode == "gpu"
    with FeatureStore(out) as g, FeatureStore(reference) as c:
        Xg, Xc = g.load().X, c.load().X
    bb = create_backbone("resnet18", "none")
    model = bb.model.cuda()
    paths = [str(ingest_dir / p) for p in read_manifest(ingest_dir).frames["path"]]
    for start in range(0, len(paths), 2):  # decoded in the pipeline's own batches of 2
        data = [read_file(p) for p in paths[start:start + 2]]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        with torch.inference_mode():
            ref = torch.cat([model(bb.preprocess(img[None])) for img in images]).cpu().numpy()
        got = Xg[start:start + 2]
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-3
    # nvjpeg upsamples chroma unlike libjpeg, so CPU and GPU rows differ by a few percent; each
    # GPU row must still be nearest to its own frame's CPU row
    dist = ((Xg[:, None, :] - Xc[None, :, :]) ** 2).sum(-1)
    assert dist.argmin(axis=1).tolist() == list(range(len(Xc)))
    bf = extract(ingest_dir, tmp_path / "bf16.h5", **{**OPTS, "device": "cuda",
                                                       "precision": "auto", "dtype": "float16"},
                 decode="gpu")
    assert bf.precision in ("bf16", "fp16")
    with FeatureStore(tmp_path / "bf16.h5") as b:
        Xb = b.load().X
    assert ((Xb[:, None, :] - Xg[None, :, :]) ** 2).sum(-1).argmin(axis=1).tolist() == \
        list(range(len(Xg)))


@pytest.mark.cuda
def test_cuda_decode_in_workers_or_nvjpeg(reference, ingest_dir, tmp_path, no_tf32):
    common = {**OPTS, "device": "cuda", "precision": "fp32", "workers": 2}
    rc = extract(ingest_dir, tmp_path / "cpu.h5", **common, decode="cpu")
    rg = extract(ingest_dir, tmp_path / "gpu.h5", **common, decode="gpu")
    assert (rc.decode, rg.decode) == ("cpu", "gpu")
    with FeatureStore(tmp_path / "cpu.h5") as c, FeatureStore(tmp_path / "gpu.h5") as g, \
            FeatureStore(reference) as ref:
        assert (c.attrs["decode"], g.attrs["decode"]) == ("cpu", "gpu")
        Xc, Xg, Xref = c.load().X, g.load().X, ref.load().X
    # worker decode: the very uint8 input of the CPU run; only the convolution arithmetic differs
    assert np.abs(Xc - Xref).max() / np.abs(Xref).max() < 1e-3
    # nvjpeg upsamples chroma unlike libjpeg: each row is near, and nearest to, its own frame's
    rel = np.linalg.norm(Xg - Xc, axis=1) / np.linalg.norm(Xc, axis=1)
    assert rel.max() < 0.2, rel
    dist = ((Xg[:, None, :] - Xc[None, :, :]) ** 2).sum(-1)
    assert dist.argmin(axis=1).tolist() == list(range(len(Xc)))
    bf = extract(ingest_dir, tmp_path / "bf16.h5", **{**common, "precision": "auto",
                                                       "dtype": "float16", "workers": None},
                 decode="cpu")  # the default worker count, bf16/fp16, features cast on device
    assert bf.precision in ("bf16", "fp16") and bf.decode == "cpu"
    with FeatureStore(tmp_path / "bf16.h5") as b:
        Xb = b.load().X
    assert Xb.dtype == np.float16
    assert ((Xb[:, None, :] - Xc[None, :, :]) ** 2).sum(-1).argmin(axis=1).tolist() == \
        list(range(len(Xc)))


# ----------------------------------------------------------------------------------- full disk
def test_too_little_space_is_refused_before_any_work(reference, ingest_dir, tmp_path):
    with small_disk(tmp_path / "disk", "16k") as disk:  # the raw rows alone need 24 KiB
        out = disk / "f.h5"
        proc = subprocess.run([sys.executable, "-m", "vidfeat", *_extract_argv(ingest_dir, out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr
        errors = [x for x in proc.stderr.splitlines() if not x.startswith("vidfeat: warning:")]
        assert len(errors) == 1 and errors[0].startswith(
            f"vidfeat extract: error: not enough free space for {out}: about 49 kB needed"), errors
        assert list(disk.iterdir()) == []
        resize_disk(disk, "1m")
        extract(ingest_dir, out, **OPTS)
        assert_same_file(out, reference)


@pytest.mark.parametrize("size, stage", [("16k", "rows"), ("48k", "assembly")])
def test_full_disk_is_one_line_and_a_plain_rerun_completes(reference, ingest_dir, tmp_path,
                                                           monkeypatch, size, stage):
    # 16k: features.bin (24 KiB) does not fit; 48k: it does, the HDF5 file beside it does not.
    # The space check before the work would refuse both: switched off to reach the writers.
    monkeypatch.setattr("vidfeat.extraction.single.check_output", lambda path, **kw: path)
    with small_disk(tmp_path / "disk", size) as disk:
        out = disk / "f.h5"
        named = out.with_name("f.h5.partial") / "features.bin" if stage == "rows" else out
        with pytest.raises(StorageError) as caught:
            extract(ingest_dir, out, **OPTS)
        assert str(caught.value) == (f"disk full writing {named}: free space and rerun the "
                                     "same command; nothing was lost")
        assert sorted(p.name for p in disk.iterdir()) == ["f.h5.partial"]  # no temp file
        rows = (disk / "f.h5.partial" / "features.bin").stat().st_size // (512 * 4)
        assert (rows == 12) == (stage == "assembly")
        resize_disk(disk, "1m")
        result = extract(ingest_dir, out, **OPTS)
        assert result.resumed_rows == rows - rows % 2
        assert_same_file(out, reference)
        assert sorted(p.name for p in disk.iterdir()) == ["f.h5"]


def test_a_kill_after_the_rename_leaves_no_partial_run_behind(reference, ingest_dir, tmp_path):
    out = tmp_path / "f.h5"
    killed = ("import os, signal, sys\n"
              "from vidfeat.extraction import partial\n"
              "from vidfeat.cli import main\n"
              "partial.discard = lambda output: os.kill(os.getpid(), signal.SIGKILL)\n"
              "main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", killed, *_extract_argv(ingest_dir, out)],
                          capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftover = Path(f"{out}.partial")
    assert (leftover / "features.bin").stat().st_size == 12 * 512 * 4
    before = out.stat().st_mtime_ns
    result = extract(ingest_dir, out, **OPTS)
    assert result.skipped and out.stat().st_mtime_ns == before
    assert not leftover.exists()
    assert_same_file(out, reference)


# ----------------------------------------------------------------------------------- provenance
@pytest.fixture
def real_ingest(tmp_path):
    """Three real videos ingested (2 frames each); returns (source folder, ingest folder)."""
    from videos import make_video

    from vidfeat.ingestion._ingest import ingest

    src = tmp_path / "src"
    for name, source in (("a", "testsrc2"), ("b", "smptebars"), ("c", "mandelbrot")):
        make_video(src / "x" / f"{name}.mp4", duration=1, fps=10, source=source)
    ing = tmp_path / "ingest"
    ingest(src, ing, frames_per_video=2, split=(1, 0, 0), progress=False)
    return src, ing


def _features(path):
    with FeatureStore(path) as s:
        return dict(zip(s.column("frame_id"), s.load().X))


def test_reingest_brings_the_features_up_to_date(real_ingest, tmp_path):
    from videos import make_video

    from vidfeat.ingestion._ingest import ingest

    src, ing = real_ingest
    out = tmp_path / "f.h5"
    extract(ing, out, **OPTS)
    before = _features(out)
    time.sleep(0.01)  # a new mtime even on coarse clocks
    make_video(src / "x" / "b.mp4", duration=1, fps=10, source="rgbtestsrc")  # same name
    ingest(src, ing, frames_per_video=2, split=(1, 0, 0), progress=False)
    result = extract(ing, out, **OPTS)
    assert not result.skipped
    assert result.update == "kept 4 rows of unchanged frames, computing 2 new or changed, dropping 2"
    after, fresh = _features(out), _features(extract(ing, tmp_path / "fresh.h5", **OPTS).output)
    assert list(after) == list(fresh)
    for frame_id, x in after.items():
        assert np.allclose(x, fresh[frame_id], rtol=1e-5, atol=1e-6), frame_id
        if not frame_id.startswith("x/b.mp4"):
            assert np.array_equal(x, before[frame_id])  # kept, bit for bit
    b_rows = [k for k in after if k.startswith("x/b.mp4")]
    assert b_rows and all(not np.allclose(after[k], before[k]) for k in b_rows if k in before)
    assert extract(ing, out, **OPTS).skipped
    # every JPEG rewritten at another size: nothing is kept
    ingest(src, ing, frames_per_video=2, split=(1, 0, 0), size=128, progress=False)
    result = extract(ing, out, **OPTS)
    assert result.update.startswith("kept 0 rows") and "computing 6" in result.update


def test_a_file_resized_in_float_is_kept_whole_or_rebuilt_whole(real_ingest, tmp_path):
    """Files of an older vidfeat (``resample`` not recorded: resized in float, 1 grey level off
    on 3% of pixels) keep their fingerprint and are used as they are while complete; an update
    after a re-ingest keeps none of their rows, so a file never mixes the two."""
    from videos import make_video

    from vidfeat.ingestion._ingest import ingest

    src, ing = real_ingest
    out = tmp_path / "f.h5"
    extract(ing, out, **OPTS)
    with h5py.File(out, "r+") as f:  # as a vidfeat before the attribute wrote it
        assert f.attrs["resample"] == "uint8"
        new_fp = f.attrs["features_fingerprint"]
        del f.attrs["resample"]
        f.attrs["features_fingerprint"] = features_fingerprint(f.attrs)
        f.attrs["attrs_sha256"] = attrs_digest(f.attrs)
        old_fp = f.attrs["features_fingerprint"]
        assert old_fp != new_fp == features_fingerprint({**f.attrs, "resample": "uint8"})
        assert old_fp == features_fingerprint({**f.attrs, "resample": "float"})
    with FeatureStore(out) as s:
        assert s.verify() == []
    assert extract(ing, out, **OPTS).skipped  # complete: kept as it is
    time.sleep(0.01)
    make_video(src / "x" / "b.mp4", duration=1, fps=10, source="rgbtestsrc")
    ingest(src, ing, frames_per_video=2, split=(1, 0, 0), progress=False)
    result = extract(ing, out, **OPTS)
    assert result.update.startswith("kept 0 rows") and "computing 6" in result.update
    with FeatureStore(out) as s:
        assert s.attrs["resample"] == "uint8"
    fresh = _features(extract(ing, tmp_path / "fresh.h5", **OPTS).output)
    assert all(np.array_equal(x, fresh[k]) for k, x in _features(out).items())


def test_a_frame_rewritten_during_extraction_is_an_error_not_a_mix(real_ingest, tmp_path):
    _, ing = real_ingest
    m = read_manifest(ing)
    last = ing / m.frames["path"].iloc[-1]
    other = ing / m.frames["path"].iloc[0]
    last.write_bytes(other.read_bytes())  # what a concurrent re-ingest's rename leaves
    with pytest.raises(RuntimeError, match="changed since the manifest was written"):
        extract(ing, tmp_path / "f.h5", **OPTS)
    assert not (tmp_path / "f.h5").exists()


def test_shards_left_by_a_kill_after_the_merge_are_removed_on_rerun(reference, ingest_dir,
                                                                    tmp_path):
    from vidfeat.extraction.multigpu import shard_path

    out = tmp_path / "multi.h5"
    shards = [shard_path(out, i, 2) for i in range(2)]
    for i, path in enumerate(shards):
        extract(ingest_dir, path, **OPTS, shard=f"{i}/2")
    merge(shards, out)  # killed here, before extract_multi removed the shards
    unrelated = shard_path(tmp_path / "other.h5", 0, 2)
    shutil.copy(shards[0], unrelated)
    multi = {k: v for k, v in OPTS.items() if k != "device"}
    result = extract(ingest_dir, out, **multi, gpus="cpu:2")
    assert result.skipped and not any(p.exists() for p in shards) and unrelated.exists()
    assert_same_file(out, reference)


# ----------------------------------------------------------------------------------- clips
CLIP_OPTS = dict(OPTS, backbone="r3d_18", batch_size=3)


@pytest.fixture(scope="module")
def clip_ingest(tmp_path_factory):
    """A real clip ingest (2 clips of 3 frames at 8 fps per video; one video shorter than a
    clip, so padded) and a saved random r3d_18 state dict (weights cannot be downloaded)."""
    from videos import make_dataset, make_video

    from vidfeat.ingestion._ingest import ingest

    root = tmp_path_factory.mktemp("clips")
    src = make_dataset(root / "src", {"a": 2, "b": 2})
    make_video(src / "a" / "short.mp4", duration=0.2, fps=10, source="mandelbrot")
    ingest(src, root / "ingest", clips_per_video=2, clip_len=3, clip_fps=8.0, size=64,
           split=(0.6, 0.2, 0.2), progress=False)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        torch.save(get_model("r3d_18").state_dict(), root / "r3d.pt")
    return root / "ingest", root / "r3d.pt"


@pytest.fixture(scope="module")
def clip_reference(clip_ingest, tmp_path_factory):
    ing, weights = clip_ingest
    out = tmp_path_factory.mktemp("clipref") / "clips.h5"
    result = extract(ing, out, **dict(CLIP_OPTS, weights=str(weights)))
    assert result.unit == "clip" and "clips/s" in result.summary()
    return out


def _clip_rows(m):
    """The manifest's clips, computed here from the frames table: (first row, rows) each."""
    f = m.frames
    return [(idx[0], idx) for _, idx in f.groupby("clip_id", sort=False).indices.items()]


def test_clip_feature_equals_torchvision_on_the_stored_frames(clip_ingest, clip_reference):
    from torchvision.models import get_model_weights

    ing, weights = clip_ingest
    m = read_manifest(ing)
    model = get_model("r3d_18")
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.fc = torch.nn.Identity()
    transform = get_model_weights("r3d_18").DEFAULT.transforms()
    with FeatureStore(clip_reference) as s:
        X = s.load().X
    clips = _clip_rows(m)
    assert len(X) == len(clips) == 9
    padded = [k for k, (_, rows) in enumerate(clips) if m.frames["padded"].iloc[rows].any()]
    assert len(padded) == 1  # the short video's one clip
    for k in (0, *padded, len(clips) - 1):
        frames = [torch.from_numpy(np.array(Image.open(ing / p).convert("RGB"))).permute(2, 0, 1)
                  for p in m.frames["path"].iloc[clips[k][1]]]
        with torch.no_grad():
            expected = model.eval()(transform(torch.stack(frames))[None])[0].numpy()
        rel = np.linalg.norm(X[k] - expected) / np.linalg.norm(expected)
        assert rel <= 1e-3, (k, rel)


def test_clip_file_has_one_row_per_clip_and_video_means(clip_ingest, clip_reference):
    ing, _ = clip_ingest
    m = read_manifest(ing)
    clips = _clip_rows(m)
    first = m.frames.iloc[[c[0] for c in clips]]
    last_t = [m.frames["timestamp_s"].iloc[c[1][-1]] for c in clips]
    with h5py.File(clip_reference, "r") as f:
        assert f["features"].shape == (9, 512)
        assert f["clip_id"][...].tolist() == first["clip_id"].tolist()
        assert list(f["video_id"].asstr()[...]) == first["video_id"].tolist()
        assert list(f["split"].asstr()[...]) == first["split"].tolist()
        names = json.loads(f.attrs["class_names"])
        assert [names[i] for i in f["label"][...]] == first["label"].tolist()
        np.testing.assert_allclose(f["start_s"][...], first["timestamp_s"].to_numpy())
        np.testing.assert_allclose(f["end_s"][...], np.array(last_t) + 1 / 8.0)
        assert f["row"][...].tolist() == list(range(9))
        X, vid = f["features"][...], f["video_id"].asstr()[...]
        for j, v in enumerate(f["videos/video_id"].asstr()[...]):
            np.testing.assert_allclose(f["videos/features"][j], X[vid == v].mean(0), rtol=1e-6)
        assert f["videos/n_frames"][...].tolist() == [2, 2, 1, 2, 2]  # clips per video
        a = f.attrs
        assert (a["input_kind"], a["clip_len"], a["clip_fps"]) == ("clip", 3, 8.0)
        assert json.loads(a["resize_size"]) == [128, 171] and a["input_size"] == 112
        assert a["manifest_clips"] == 9 and a["manifest_frames"] == 27
    with FeatureStore(clip_reference) as s:
        assert s.verify() == []


def test_clip_backbone_on_a_frame_ingest_is_one_line(ingest_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^backbone r3d_18 is a clip .* --clips-per-video"):
        extract(ingest_dir, tmp_path / "c.h5", **CLIP_OPTS)
    argv = _extract_argv(ingest_dir, tmp_path / "c.h5")
    argv[argv.index("resnet18")] = "r2plus1d_18"
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ingest with --clips-per-video" in err[0]
    assert not (tmp_path / "c.h5").exists() and not Path(f"{tmp_path / 'c.h5'}.partial").exists()


@pytest.mark.slow
def test_clip_shards_merge_and_resume_into_the_single_run(clip_ingest, clip_reference, tmp_path,
                                                          monkeypatch):
    ing, weights = clip_ingest
    opts = dict(CLIP_OPTS, weights=str(weights))
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        assert extract(ing, path, **opts, shard=f"{i}/2").n_frames in (4, 5)
    merge(shards[::-1], tmp_path / "merged.h5")
    merged, whole = read_all(tmp_path / "merged.h5"), read_all(clip_reference)
    assert set(merged) == set(whole)
    for key in set(whole) - {"attrs", "features", "videos/features"}:
        assert np.array_equal(merged[key], whole[key]), key
    for key in ("features", "videos/features"):  # batches of 3 clips fall otherwise in shards:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-4, atol=1e-5)  # fp32 sums
    with FeatureStore(tmp_path / "merged.h5") as s, FeatureStore(clip_reference) as r:
        assert s.features_fingerprint == r.features_fingerprint and s.verify() == []
    # interrupted after one batch of 3 clips, then rerun: resumed, the same file bit for bit
    import vidfeat.extraction.single as single

    real, calls = single.forward, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(single, "forward", failing)
    with pytest.raises(KeyboardInterrupt):
        extract(ing, tmp_path / "resumed.h5", **opts)
    monkeypatch.setattr(single, "forward", real)
    result = extract(ing, tmp_path / "resumed.h5", **opts)
    assert result.resumed_rows == 3 and not result.skipped
    assert_same_file(tmp_path / "resumed.h5", clip_reference)
    # a 2D backbone on the same clip ingest: one row per stored frame row, as before
    result = extract(ing, tmp_path / "frames.h5", **OPTS)
    assert result.unit == "frame" and result.n_frames == 27


def test_reingested_clips_bring_a_clip_file_up_to_date(tmp_path):
    """One video replaced: its clips are computed again, the other videos' kept bit for bit,
    and the file equals a fresh extraction of the new ingest."""
    from videos import make_video

    from vidfeat.ingestion._ingest import ingest

    src, ing = tmp_path / "src", tmp_path / "ingest"
    for name, source in (("a", "testsrc2"), ("b", "smptebars"), ("c", "mandelbrot")):
        make_video(src / "x" / f"{name}.mp4", duration=1, fps=10, source=source)
    opts = dict(CLIP_OPTS, batch_size=2)
    clip_args = dict(clips_per_video=2, clip_len=2, clip_fps=5.0, split=(1, 0, 0), progress=False)
    ingest(src, ing, **clip_args)
    out = tmp_path / "f.h5"
    extract(ing, out, **opts)
    before = _features(out)
    time.sleep(0.01)
    make_video(src / "x" / "b.mp4", duration=1, fps=10, source="rgbtestsrc")  # same name
    ingest(src, ing, **clip_args)
    result = extract(ing, out, **opts)
    assert result.update == "kept 4 rows of unchanged frames, computing 2 new or changed, dropping 2"
    after, fresh = _features(out), _features(extract(ing, tmp_path / "fresh.h5", **opts).output)
    assert list(after) == list(fresh) == [f"x/{v}.mp4@clip{k}" for v in "abc" for k in (0, 1)]
    for key, x in after.items():
        assert np.allclose(x, fresh[key], rtol=1e-5, atol=1e-6), key
        if not key.startswith("x/b.mp4"):
            assert np.array_equal(x, before[key])
        else:
            assert not np.allclose(x, before[key])
    assert extract(ing, out, **opts).skipped


@pytest.mark.slow
def test_clip_shards_on_two_cpu_processes_merge_into_the_single_run(clip_ingest, clip_reference,
                                                                    tmp_path, capsys):
    ing, weights = clip_ingest
    multi = {k: v for k, v in CLIP_OPTS.items() if k != "device"}
    result = extract(ing, tmp_path / "multi.h5", **dict(multi, weights=str(weights),
                                                          progress=True), gpus="cpu:2")
    assert result.unit == "clip" and result.n_frames == 9
    assert "Extracted 9 clips" in capsys.readouterr().out
    with FeatureStore(tmp_path / "multi.h5") as s, FeatureStore(clip_reference) as r:
        assert s.features_fingerprint == r.features_fingerprint and s.verify() == []
        got, want = s.load().X, r.load().X  # one thread per shard: other fp32 sum orders
        assert (np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)).max() <= 1e-4
        assert s.column("clip_id").tolist() == r.column("clip_id").tolist()


@pytest.mark.cuda
def test_cuda_clip_extraction_in_workers_or_nvjpeg(clip_ingest, clip_reference, tmp_path,
                                                   no_tf32):
    ing, weights = clip_ingest
    common = {**CLIP_OPTS, "weights": str(weights), "device": "cuda", "precision": "fp32",
              "workers": 2}
    rc = extract(ing, tmp_path / "cpu.h5", **common, decode="cpu")
    rg = extract(ing, tmp_path / "gpu.h5", **common, decode="gpu")
    assert (rc.unit, rc.decode, rg.decode) == ("clip", "cpu", "gpu")
    with FeatureStore(tmp_path / "cpu.h5") as c, FeatureStore(tmp_path / "gpu.h5") as g, \
            FeatureStore(clip_reference) as ref:
        Xc, Xg, Xref = c.load().X, g.load().X, ref.load().X
    # worker decode: the CPU run's very uint8 clips; only the convolution arithmetic differs
    assert (np.linalg.norm(Xc - Xref, axis=1) / np.linalg.norm(Xref, axis=1)).max() < 1e-3
    # nvjpeg upsamples chroma unlike libjpeg: near, and nearest to, its own clip's row
    assert (np.linalg.norm(Xg - Xc, axis=1) / np.linalg.norm(Xc, axis=1)).max() < 0.2
    dist = ((Xg[:, None, :] - Xc[None, :, :]) ** 2).sum(-1)
    assert dist.argmin(axis=1).tolist() == list(range(len(Xc)))
    bf = extract(ing, tmp_path / "bf16.h5", **{**common, "precision": "auto", "dtype": "float16",
                                                "batch_size": None, "workers": None})
    assert bf.precision in ("bf16", "fp16")
    with FeatureStore(tmp_path / "bf16.h5") as b:
        Xb = b.load().X
    assert ((Xb[:, None, :] - Xc[None, :, :]) ** 2).sum(-1).argmin(axis=1).tolist() == \
        list(range(len(Xc)))


def test_clip_batches_of_jpeg_bytes_regroup_into_the_decoded_clips(clip_ingest):
    """The nvjpeg route's batching (a clip's JPEG bytes flattened clip after clip, decoded
    together, regrouped into (B,T,...) clips), run with the CPU decoder: the same clips as the
    workers' decode route."""
    from torch.utils.data import DataLoader

    from vidfeat.extraction.backbones import preprocess_for
    from vidfeat.extraction.clips import clip_meta, clip_table, flat_inputs
    from vidfeat.extraction.inputs import FrameFiles, _collate, _nvjpeg_input

    ing, _ = clip_ingest
    m = read_manifest(ing)
    meta = clip_meta(m, np.arange(len(clip_table(m))), {n: i for i, n in enumerate(m.class_names)})
    paths, hashes = flat_inputs(meta)
    pre = preprocess_for("r3d_18")
    batches = {}
    for decode in (True, False):
        files = FrameFiles(ing, paths, pre, decode=decode, hashes=hashes, group=3)
        batches[decode] = list(DataLoader(files, batch_size=4, collate_fn=_collate(decode)))
    to_device = _nvjpeg_input(paths, pre, torch.device("cpu"), torch.float32, group=3)
    start = 0
    for (clips, errors), (data, _) in zip(batches[True], batches[False]):
        assert not errors and clips.shape[1:] == (3, 3, 112, 112) and len(data) == 3 * len(clips)
        torch.testing.assert_close(to_device(data, start), pre.normalize(clips), rtol=0, atol=0)
        start += len(data)
    assert start == len(paths) == 27


def test_compile_gives_eager_features_within_fp32_rounding_and_is_recorded(reference,
                                                                           ingest_dir, tmp_path):
    """``--compile`` (torch.compile of the backbone, inductor's C++ on this CPU): the same
    rows as the eager reference to fp32 rounding, batch 5 of 12 frames (the last batch of 2
    padded to the compiled shape: one graph), and the file says so, fingerprint included. Compiling
    resnet18 with a cold inductor cache takes ~50 s on 2 cores."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    out = tmp_path / "compiled.h5"
    code = main(["extract", str(ingest_dir), "-o", str(out), "--backbone", "resnet18",
                 "--weights", "none", "--device", "cpu", "--dtype", "float32",
                 "--batch-size", "5", "--loader-workers", "0", "--quiet", "--compile"])
    assert code == 0
    # compiled once: the last batch, padded to 5 rows, reuses the graph of the full ones
    assert counters["stats"]["unique_graphs"] - graphs == 1
    with FeatureStore(out) as got, FeatureStore(reference) as ref:
        X, R = got.load().X, ref.load().X
        assert got.attrs["compile"] and not ref.attrs["compile"]
        assert got.features_fingerprint != ref.features_fingerprint
        assert got.fingerprint == ref.fingerprint  # the same frames
    assert X.shape == R.shape == (12, 512)
    np.testing.assert_allclose(X, R, rtol=1e-4, atol=1e-4 * np.abs(R).max())


@pytest.mark.cuda
def test_cuda_compile_bf16_matches_eager_bf16(ingest_dir, tmp_path):
    common = {**OPTS, "device": "cuda", "precision": "bf16", "batch_size": 5}
    extract(ingest_dir, tmp_path / "eager.h5", **common)
    extract(ingest_dir, tmp_path / "compiled.h5", **common, compile=True)
    with FeatureStore(tmp_path / "eager.h5") as e, FeatureStore(tmp_path / "compiled.h5") as c:
        Xe, Xc = e.load().X, c.load().X
        assert c.attrs["compile"] and not e.attrs["compile"]
    # bf16 keeps 8 significant bits: kernels fused differently round differently
    assert np.abs(Xc - Xe).max() / np.abs(Xe).max() < 3e-2
