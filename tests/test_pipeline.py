import hashlib
import json
import subprocess
import sys

import pytest

from vidfeat.cli import main
from vidfeat.options import OptionError
from vidfeat.pipeline import demo, effective_options, load_config, run_pipeline, to_toml
from vidfeat.synth import make_demo_dataset

SMALL = {"bars": 6, "gradient": 4, "fractal": 3, "life": 3, "automaton": 3}


def config_for(src, **train):
    return {
        "ingest": {"src": str(src), "frames_per_video": 3, "size": 96, "split": [0.5, 0.25, 0.25],
                   "jobs": 2},
        "extract": {"backbone": "mobilenet_v3_small", "weights": "none", "dtype": "float32",
                    "device": "cpu", "workers": 0},
        "train": {"epochs": 30, "seed": 0, "device": "cpu", **train},
        "report": {},
    }


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo_videos"), counts=SMALL, seed=1,
                             duration=(1.0, 1.5))


def statuses(result):
    return {s.name: s.status for s in result.stages}


def test_pipeline_runs_skips_and_reruns_changed_stages(small_videos, tmp_path):
    work = tmp_path / "work"
    first = run_pipeline(config_for(small_videos), work, progress=False)
    assert set(statuses(first).values()) == {"ran"}
    for key in ("manifests", "features", "model", "report", "data_report", "config"):
        assert first.paths[key].exists(), key
    assert json.loads((work / "report" / "report.json").read_text())["model"]
    features_mtime = (work / "features.h5").stat().st_mtime_ns
    head_mtime = (work / "model" / "head.pt").stat().st_mtime_ns

    # a bad value in a changed stage is refused before that stage's outputs are discarded
    with pytest.raises(OptionError, match=r'^\[train\] epochs = "5": expected an integer$'):
        run_pipeline(config_for(small_videos, epochs="5"), work, progress=False)
    with pytest.raises(OptionError, match=r'^\[train\] head = "svm": not one of linear, mlp$'):
        run_pipeline(config_for(small_videos, head="svm"), work, progress=False)
    assert (work / "model" / "head.pt").stat().st_mtime_ns == head_mtime

    again = run_pipeline(config_for(small_videos), work, progress=False)
    assert set(statuses(again).values()) == {"skipped"}
    assert again.metrics == first.metrics

    changed = run_pipeline(config_for(small_videos, epochs=5), work, progress=False)
    assert statuses(changed) == {"ingest": "skipped", "data_report": "skipped",
                                 "extract": "skipped", "train": "ran", "report": "ran"}
    assert (work / "features.h5").stat().st_mtime_ns == features_mtime
    cfg = load_config(work / "config.toml")
    assert cfg["train"]["epochs"] == 5 and cfg["extract"]["backbone"] == "mobilenet_v3_small"


# run records: timings, creation time and the options used differ on every run, same options or not
RUN_RECORDS = {"ingest.json", "ingest_journal.jsonl"}


def digests(work):
    """sha256 of every ingest data file (frames, manifests), the feature file and the trained head."""
    files = sorted(p for p in (work / "ingest").rglob("*")
                   if p.is_file() and p.name not in RUN_RECORDS)
    files += [work / "features.h5", work / "model" / "head.pt", work / "model" / "metrics.json"]
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_speed_only_options_keep_outputs_bit_identical_and_skip(small_videos, tmp_path):
    # extract workers, ingest jobs and progress are left out of the fingerprints: the proof
    work = tmp_path / "work"
    base = config_for(small_videos)  # extract workers=0, ingest jobs=2
    run_pipeline(base, work, progress=False)
    before = digests(work)
    other = config_for(small_videos)
    other["extract"]["workers"], other["ingest"]["jobs"] = 2, 1
    rerun = run_pipeline(other, work, overwrite=True, progress=True)
    assert set(statuses(rerun).values()) == {"ran"}
    assert digests(work) == before
    again = run_pipeline(base, work, progress=False)
    assert set(statuses(again).values()) == {"skipped"}


def head_weights(work):
    import torch

    saved = torch.load(work / "model" / "head.pt", map_location="cpu", weights_only=True)
    return {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}


def test_options_that_change_outputs_rerun_their_stage(small_videos, tmp_path):
    import torch

    work = tmp_path / "work"
    run_pipeline(config_for(small_videos), work, progress=False)
    features = digests(work)["features.h5"]
    head = head_weights(work)
    batch = run_pipeline(config_for(small_videos, batch_size=8), work, progress=False)
    assert statuses(batch) == {"ingest": "skipped", "data_report": "skipped",
                               "extract": "skipped", "train": "ran", "report": "ran"}
    new = head_weights(work)
    assert any(not torch.equal(head[k], new[k]) for k in head)  # another head, not a stale one
    cfg = config_for(small_videos, batch_size=8)
    cfg["extract"]["precision"] = "bf16"
    precision = run_pipeline(cfg, work, progress=False)
    assert statuses(precision) == {"ingest": "skipped", "data_report": "skipped",
                                   "extract": "ran", "train": "ran", "report": "ran"}
    assert digests(work)["features.h5"] != features
    assert not (work / "features.h5.partial").exists()


def test_changed_ingest_option_reruns_everything_after_it(small_videos, tmp_path):
    work = tmp_path / "work"
    run_pipeline(config_for(small_videos), work, progress=False)
    cfg = config_for(small_videos)
    cfg["ingest"]["frames_per_video"] = 2
    result = run_pipeline(cfg, work, progress=False)
    assert set(statuses(result).values()) == {"ran"}
    import pandas as pd
    frames = pd.read_parquet(work / "ingest" / "frames.parquet")
    assert frames.groupby("video_id").size().max() == 2


def test_new_source_video_reruns_ingest(small_videos, tmp_path):
    import shutil
    src = tmp_path / "src"
    shutil.copytree(small_videos, src)
    work = tmp_path / "work"
    run_pipeline(config_for(src), work, progress=False)
    shutil.copy(src / "bars" / "bars_00.mp4", src / "bars" / "bars_new.mp4")
    result = run_pipeline(config_for(src), work, progress=False)
    assert statuses(result)["ingest"] == "ran"
    import pandas as pd
    assert "bars/bars_new.mp4" in set(pd.read_parquet(work / "ingest" / "videos.parquet")["video_id"])


def test_config_errors_name_the_bad_key(tmp_path):
    with pytest.raises(ValueError, match="unknown option 'frames_per_vid'"):
        effective_options({"ingest": {"src": "x", "frames_per_vid": 3}})
    with pytest.raises(ValueError, match="unknown config table 'trian'"):
        effective_options({"ingest": {"src": "x"}, "trian": {}})
    with pytest.raises(ValueError, match="needs 'src'"):
        effective_options({"ingest": {}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest\nsrc=1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)


def test_toml_round_trip(tmp_path):
    cfg = {"workdir": "w", "ingest": {"src": "v", "split": [0.8, 0.1, 0.1], "strict": False,
                                       "labels": None, "size": 256, "timeout": 600.0}}
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    back = load_config(path)
    assert back["ingest"]["split"] == [0.8, 0.1, 0.1] and back["ingest"]["strict"] is False
    assert "labels" not in back["ingest"] and back["ingest"]["src"] == str((tmp_path / "v").resolve())


def test_run_cli_with_config_file(small_videos, tmp_path, capsys):
    cfg = config_for(small_videos)
    cfg["workdir"] = str(tmp_path / "w")
    path = tmp_path / "vidfeat.toml"
    path.write_text(to_toml(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Pipeline done" in out and "test accuracy" in out
    assert (tmp_path / "w" / "model" / "metrics.json").is_file()


def test_demo_small_is_clearly_above_chance(tmp_path):
    counts = {"bars": 12, "gradient": 8, "fractal": 6, "life": 6, "automaton": 6}
    result = demo(tmp_path / "demo", counts=counts, weights="none", device="cpu", progress=False)
    chance = 1 / len(counts)
    for split in ("val", "test"):  # a random-init backbone still separates the demo classes
        assert result.metrics[split]["frame"]["balanced_accuracy"] >= 2.5 * chance, split
    assert result.paths["report"].is_file()


# TOML text -> (table, key, value as written, what the one-line error says is expected)
BAD_TYPES = [("ingest", "keyframes", '"false"', "expected true or false"),
             ("train", "unfreeze", '"no"', "expected true or false"),
             ("ingest", "frames_per_video", "true", "expected an integer"),
             ("ingest", "strict", '"no"', "expected true or false"),
             ("ingest", "frames_per_video", '"8"', "expected an integer"),
             ("ingest", "frames_per_video", "2.5", "expected an integer"),
             ("ingest", "fps", '"30"', "expected a number"),
             ("train", "epochs", '"30"', "expected an integer")]
MORE_BAD_TYPES = [("train", "lr", "true", "expected a number"),
                  ("extract", "batch_size", "2.5", "expected an integer"),
                  ("report", "min_videos", "1.0", "expected an integer"),
                  ("train", "hidden", '["512"]', "expected a list of integers"),
                  ("ingest", "split", "[0.5, 0.5]", "expected a string or a list of 3 numbers"),
                  ("ingest", "src", "5", "expected a path (a string)"),
                  ("extract", "gpus", "[0, true]", "expected a string or a list of integers")]


def toml_config(src, work, section=None, key=None, raw=None) -> str:
    """A config written as a user would, with ``[section] key = raw`` set (raw is TOML text)."""
    tables = {"ingest": {"src": json.dumps(str(src)), "frames_per_video": "3", "size": "96",
                         "jobs": "2"},
              "extract": {"backbone": '"mobilenet_v3_small"', "weights": '"none"',
                          "device": '"cpu"', "workers": "0"},
              "train": {"epochs": "5", "device": '"cpu"'}, "report": {}}
    if section:
        tables[section][key] = raw
    text = f"workdir = {json.dumps(str(work))}\n"
    for name, options in tables.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
    return text


def vidfeat_run(*args):
    return subprocess.run([sys.executable, "-m", "vidfeat", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("section,key,raw,expected", BAD_TYPES)
def test_run_refuses_a_bad_type_before_any_stage(small_videos, tmp_path, section, key, raw,
                                                 expected):
    work = tmp_path / "work"
    config = tmp_path / "config.toml"
    config.write_text(toml_config(small_videos, work, section, key, raw))
    proc = vidfeat_run(config, "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"vidfeat run: error: [{section}] {key} = {raw}: {expected}"]
    assert not (work / "ingest").exists() and not work.exists()


@pytest.mark.parametrize("section,key,raw,expected", MORE_BAD_TYPES)
def test_run_refuses_more_bad_types(tmp_path, capsys, section, key, raw, expected):
    work = tmp_path / "work"
    config = tmp_path / "config.toml"
    config.write_text(toml_config(tmp_path, work, section, key, raw))
    assert main(["run", str(config), "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vidfeat run: error: [{section}] {key} = {raw}: {expected}"]
    assert not work.exists()


def test_bad_choices_and_ranges_of_later_stages_fail_before_ingest(small_videos, tmp_path):
    work = tmp_path / "work"
    cases = [("train", {"epoch": 5}, r"^\[train\] has unknown option 'epoch'; allowed: "),
             ("extract", {"backbone": "resnet5"}, r'\[extract\] backbone = "resnet5": not one of'),
             ("extract", {"precision": "fp8"}, r'\[extract\] precision = "fp8": not one of'),
             ("extract", {"backbone": "r3d_18"}, r"^\[extract\] backbone r3d_18 is a clip .*\[ingest\] "
                                                 "clips_per_video"),
             ("train", {"epochs": 0}, r"^\[train\] epochs = 0: must be > 0$"),
             ("train", {"sweep": "lr=1e-3,-1"}, r'^\[train\] sweep = "lr=1e-3,-1": lr must be > 0'),
             ("train", {"class_weight": "effective:2"}, r"^\[train\] class_weight='effective:2'"),
             ("report", {"max_drift": 1.5}, r"^\[report\] max_drift = 1.5: must be in \(0, 1\]$"),
             ("ingest", {"split": [0.5, 0.6, 0.1]}, r"^\[ingest\] split=\[0.5, 0.6, 0.1\] must sum")]
    for section, options, message in cases:
        config = config_for(small_videos)
        config[section].update(options)
        with pytest.raises(ValueError, match=message):
            run_pipeline(config, work, progress=False)
        assert not work.exists(), options


def test_output_folder_must_be_a_writable_folder(small_videos, tmp_path):
    config = tmp_path / "config.toml"
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for work in (taken, taken / "work"):
        config.write_text(toml_config(small_videos, work))
        proc = vidfeat_run(config, "--no-progress")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"vidfeat run: error: output folder {work}: {taken} is a file, not a folder; give "
            "another output folder"]
    assert taken.read_text() == "not a folder"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                             capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        config.write_text(toml_config(small_videos, readonly / "work"))
        proc = vidfeat_run(config, "--no-progress")
    finally:
        subprocess.run(["umount", str(readonly)], check=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"vidfeat run: error: read-only filesystem writing {readonly / 'work'}: write to a "
        "writable location and rerun the same command; nothing was lost"]
