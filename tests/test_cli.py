"""The command line: one dialect, the library's defaults and choices, errors that name the flag."""
import argparse
import inspect
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vidfeat.cli import build_parser, main, subparser
from vidfeat.options import OptionError, check_choice, check_positive

README = Path(__file__).resolve().parents[1] / "README.md"
WRITERS = ["demo", "run", "pipeline", "ingest", "extract", "merge", "train", "evaluate", "report"]
RETIRED = {"--outdir", "--model-dir", "--workdir", "--force", "--workers"}


def library():
    """Subcommand -> the library function it calls, imported (the independent source)."""
    import vidfeat

    return {"ingest": vidfeat.ingest, "extract": vidfeat.extract, "merge": vidfeat.merge,
            "train": vidfeat.train, "evaluate": vidfeat.evaluate, "predict": vidfeat.predict,
            "report": vidfeat.report, "run": vidfeat.run_pipeline,
            "pipeline": vidfeat.run_pipeline, "demo": vidfeat.demo}


def tables():
    """(subcommand, dest) -> the choices the library checks that option against."""
    from vidfeat.extraction.defaults import DECODES, DTYPES, PRECISIONS
    from vidfeat.ingestion._ingest import BACKENDS
    from vidfeat.ingestion.balance import MODES
    from vidfeat.ingestion.manifest import FORMATS, SPLITS
    from vidfeat.ingestion.sample import SHORT_CLIPS
    from vidfeat.system import DEVICES
    from vidfeat.training._train import HEADS, SELECT_METRICS
    from vidfeat.training.stacked import SAMPLERS

    found = {("ingest", "balance"): MODES, ("ingest", "fmt"): FORMATS,
             ("ingest", "backend"): BACKENDS, ("ingest", "short_clips"): SHORT_CLIPS,
             ("extract", "precision"): ["auto", *PRECISIONS],
             ("extract", "decode"): DECODES, ("extract", "dtype"): DTYPES,
             ("train", "head"): HEADS, ("train", "select_metric"): SELECT_METRICS,
             ("train", "sampler"): [k for k in SAMPLERS if isinstance(k, str)],
             ("evaluate", "split"): SPLITS, ("pipeline", "head"): HEADS}
    for command in ("extract", "train", "evaluate", "predict", "demo", "pipeline"):
        found[command, "device"] = DEVICES
    return {key: list(value) for key, value in found.items()}


def options(command):
    return [a for a in subparser(build_parser(), command)._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def library_param(command, dest):
    """The (function, parameter) a subcommand's option stands for; None for CLI-only options."""
    import vidfeat

    func = library()[command]
    if command == "pipeline":  # its flags set stage options in the config it builds
        stage = {"labels": vidfeat.ingest, "frames_per_video": vidfeat.ingest,
                 "jobs": vidfeat.ingest, "backbone": vidfeat.extract, "weights": vidfeat.extract,
                 "device": vidfeat.extract, "head": vidfeat.train}
        if dest == "overrides":
            return None
        func = stage.get(dest, func)
    return func, dest


def library_options():
    """(command, action, library function, its parameter) for every option that stands for one."""
    for command in library():
        for action in options(command):
            where = library_param(command, action.dest)
            if where is not None:
                yield (command, action, *where)


def test_every_option_default_and_choices_are_the_librarys():
    expected_choices = tables()
    seen = set()
    for command, action, func, param in library_options():
        params = inspect.signature(func).parameters
        assert param in params, f"vidfeat {command} {action.dest}: {func.__name__}() lacks it"
        if params[param].default is inspect.Parameter.empty:  # the library requires it
            assert action.required, (command, action.dest)
        else:
            assert action.default == params[param].default, (command, action.dest)
        want = expected_choices.get((command, action.dest))
        got = None if action.choices is None else list(action.choices)
        assert got == want, (command, action.dest)
        seen.add((command, action.dest))
    assert set(expected_choices) <= seen
    # the pipeline's --device sets train's device too
    import vidfeat
    assert inspect.signature(vidfeat.train).parameters["device"].default == \
        subparser(build_parser(), "pipeline").get_default("device")


def _number_type(annotation):
    """int or float when an annotation's text is that type (or that or None), else None."""
    parts = {part.strip() for part in str(annotation).split("|")} - {"None"}
    return {"int": int, "float": float}.get(parts.pop()) if len(parts) == 1 else None


def test_every_numeric_option_converts_as_its_annotation_says():
    checked = set()
    for command, action, func, param in library_options():
        annotation = inspect.signature(func).parameters[param].annotation
        if "bool" == annotation:  # an on/off flag, never a value to parse
            assert action.nargs == 0, (command, action.dest)
        want = _number_type(annotation)
        if want is None or action.nargs == 0:
            continue
        got = action.type("3")
        assert type(got) is want, (command, action.dest, annotation)
        if want is float:
            assert action.type("2.5") == 2.5
        else:
            with pytest.raises(ValueError):
                action.type("2.5")  # argparse refuses it: one line, exit 2
        checked.add((command, action.dest))
    assert {("pipeline", "frames_per_video"), ("pipeline", "jobs"), ("ingest", "fps"),
            ("train", "epochs")} <= checked


def test_pipeline_set_values_read_as_in_a_config_file():
    from vidfeat.cli.pipeline import config_from_args

    args = build_parser().parse_args([
        "pipeline", "videos", "-o", "w", "--set", "ingest.keyframes=true",
        "--set", "ingest.strict=false", "--set", "train.epochs=20", "--set", "train.lr=1e-3",
        "--set", "ingest.split=[0.6, 0.2, 0.2]", "--set", "extract.weights=none",
        "--set", "train.sweep=lr=1e-3,1e-2", "--set", "train.unfreeze=True",
        "--set", 'report.labels="a b.csv"', "--set", "train.head=mlp"])
    config = config_from_args(args)
    assert config["ingest"]["keyframes"] is True and config["ingest"]["strict"] is False
    assert config["train"]["epochs"] == 20 and config["train"]["lr"] == 0.001
    assert config["ingest"]["split"] == [0.6, 0.2, 0.2] and config["extract"]["weights"] == "none"
    assert config["train"]["sweep"] == "lr=1e-3,1e-2" and config["train"]["unfreeze"] is True
    assert config["report"]["labels"] == "a b.csv" and config["train"]["head"] == "mlp"


def test_pipeline_bad_set_value_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "pipeline", str(tmp_path), "-o",
                           str(tmp_path / "work"), "--set", 'train.epochs="30"'],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        'vidfeat pipeline: error: [train] epochs = "30": expected an integer']
    assert not (tmp_path / "work").exists()


def test_one_dialect():
    for command in WRITERS:
        flags = {s: a for a in options(command) for s in a.option_strings}
        assert "-o" in flags and flags["-o"] is flags["--output"], command
        assert not RETIRED & set(flags), command
    for command in ("demo", "run", "pipeline", "extract", "merge", "train"):
        assert "--overwrite" in {s for a in options(command) for s in a.option_strings}, command
    for command in ("demo", "pipeline", "ingest", "report"):
        assert "--jobs" in {s for a in options(command) for s in a.option_strings}, command
    assert subparser(build_parser(), "extract").get_default("workers") is None
    assert main(["run", "c.toml", "--force"]) == 2  # a hint, below


def test_help_shows_no_boolean_defaults(capsys):
    for command in library():
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "(default: True)" not in text and "(default: False)" not in text, command
        assert "(default: None)" not in text and "(default: )" not in text, command
    main(["ingest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.8,0.1,0.1)" in text and "(default: 16)" in text


def test_parsing_imports_no_torch():
    code = ("import sys; from vidfeat.cli import build_parser, main; "
            "assert main(['--help']) == 0; assert main(['ingest', '--help']) == 0; "
            "build_parser(); "
            "heavy = {'torch', 'torchvision', 'pandas', 'matplotlib', 'sklearn'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# Run in a fresh interpreter: what a whole ingest run imported.
INGEST_IMPORTS = """
import sys
from vidfeat.cli import main
assert main(["ingest", sys.argv[1], "-o", sys.argv[2], "--no-progress", "--split", "1,0,0"]) == 0
heavy = {"pandas", "torch", "torchvision", "matplotlib", "sklearn", "joblib", "tqdm", "av"}
print(sorted(heavy & set(sys.modules)))
"""


def test_ingest_imports_only_what_it_needs(tmp_path):
    """``vidfeat ingest`` never imports pandas (its planning works on rows, its tables go out
    as Arrow: pandas' import alone would double the command's start-up), torch, joblib
    (threads: its own pool), tqdm (no bar) or PyAV (the child decodes, and reports the
    library versions)."""
    from videos import make_video

    make_video(tmp_path / "src" / "a" / "a.mp4", duration=0.3, fps=10, size=(64, 48))
    out = subprocess.run([sys.executable, "-c", INGEST_IMPORTS, str(tmp_path / "src"),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_quick_exit_keeps_status_output_and_files(tmp_path):
    """``python -m vidfeat ingest`` ends without module teardown (QUICK_EXIT), yet its status,
    its last lines and every file it wrote are there: --strict with a failed video exits 1."""
    from videos import make_video

    from vidfeat.ingestion.manifest import read_manifest

    make_video(tmp_path / "src" / "a" / "a.mp4", duration=0.3, fps=10, size=(64, 48))
    (tmp_path / "src" / "a" / "broken.mp4").write_bytes(b"not a video" * 100)
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "ingest", str(tmp_path / "src"), "-o",
                           str(tmp_path / "out"), "--split", "1,0,0", "--strict"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("Ingested 1 of 2 videos")
    manifest = read_manifest(tmp_path / "out", verify=True)
    assert list(manifest.videos["status"]) == ["ok", "failed"] and len(manifest.frames) == 3


def test_bad_choice_names_the_flag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "ingest", str(tmp_path), "-o",
                           str(tmp_path / "out"), "--format", "json"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "vidfeat ingest: error: --format json: not one of parquet, csv" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_library_option_error_names_the_flag(tmp_path, capsys):
    assert main(["ingest", str(tmp_path), "-o", str(tmp_path / "out"), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vidfeat ingest: error: --jobs 0: must be > 0"]


@pytest.mark.parametrize("argv, line", [
    (["--clips-per-video", "2", "--fps", "3"], "--clips-per-video and --fps exclude each other"),
    (["--keyframes", "--clips-per-video", "2"], "--clips-per-video and --keyframes exclude each other"),
    (["--clips-per-video", "0"], "--clips-per-video 0: must be > 0"),
    (["--clips-per-video", "2", "--clip-len", "0"], "--clip-len 0: must be > 0"),
    (["--clips-per-video", "2", "--clip-fps", "-1"], "--clip-fps -1.0: must be > 0"),
    (["--short-clips", "trim"], "--short-clips trim: not one of pad, drop"),
])
def test_clip_flags_are_checked_in_one_line(tmp_path, capsys, argv, line):
    assert main(["ingest", str(tmp_path), "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"vidfeat ingest: error: {line}") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_clip_flags_reach_the_library(monkeypatch):
    calls = _spy(monkeypatch, "vidfeat.ingestion.ingest")
    assert main(["ingest", "src", "-o", "o", "--clips-per-video", "4", "--clip-len", "8",
                 "--clip-fps", "12.5", "--short-clips", "drop"]) == 2
    assert {k: calls[0][k] for k in ("clips_per_video", "clip_len", "clip_fps", "short_clips")} \
        == {"clips_per_video": 4, "clip_len": 8, "clip_fps": 12.5, "short_clips": "drop"}


def test_option_error_of_another_value_keeps_the_library_text(monkeypatch, capsys):
    import vidfeat.cli.evaluate as cmd

    def fail(args):
        raise OptionError("split", "holdout", ["train", "val", "test"])

    monkeypatch.setattr(cmd, "run", fail)
    assert main(["evaluate", "m", "f.h5"]) == 2  # --split is 'test': not the value that failed
    assert capsys.readouterr().err.strip() == (
        "vidfeat evaluate: error: split='holdout' is not one of 'train', 'val', 'test'")
    assert main(["evaluate", "m", "f.h5", "--split", "val"]) == 2
    capsys.readouterr()


def test_renamed_flags_get_a_hint(capsys):
    for argv, old, new in [(["run", "c.toml", "--force"], "--force", "--overwrite"),
                           (["extract", "d", "-o", "f.h5", "--workers", "2"], "--workers",
                            "--loader-workers"),
                           (["train", "f.h5", "--model-dir", "m"], "--model-dir", "--output")]:
        assert main(argv) == 2
        assert f"{old} is now" in capsys.readouterr().err and new


def test_option_error_keeps_the_library_message():
    with pytest.raises(OptionError) as info:
        check_choice("fmt", "json", {"parquet": ".parquet", "csv": ".csv"})
    err = info.value
    assert isinstance(err, ValueError) and str(err) == "fmt='json' is not one of 'parquet', 'csv'"
    assert (err.name, err.value, err.allowed) == ("fmt", "json", ["parquet", "csv"])
    assert err.describe("--format") == "--format json: not one of parquet, csv"
    with pytest.raises(OptionError, match=r"^jobs must be > 0, got 0$"):
        check_positive("jobs", 0)
    with pytest.raises(ValueError, match=r"^workers must be >= 0, got -1$"):
        check_positive("workers", -1, allow_zero=True)
    back = pickle.loads(pickle.dumps(err))  # crosses process pools intact
    assert str(back) == str(err) and back.allowed == err.allowed


def _spy(monkeypatch, target):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop")  # the CLI prints it and returns 2

    monkeypatch.setattr(target, spy)
    return calls


def test_overwrite_reaches_the_pipeline(monkeypatch, tmp_path):
    for argv in (["run", "c.toml", "--overwrite"], ["pipeline", str(tmp_path), "-o", "w",
                                                    "--overwrite"]):
        calls = _spy(monkeypatch, "vidfeat.pipeline.run_pipeline")
        assert main(argv) == 2
        assert calls[0]["overwrite"] is True and calls[0]["progress"] is True
    calls = _spy(monkeypatch, "vidfeat.pipeline.demo")
    assert main(["demo", "-o", str(tmp_path / "d"), "--overwrite", "--no-progress"]) == 2
    assert calls[0]["overwrite"] is True and calls[0]["progress"] is False


def test_train_overwrite(monkeypatch):
    calls = _spy(monkeypatch, "vidfeat.training.train")
    assert main(["train", "f.h5", "-o", "m", "--overwrite"]) == 2
    assert calls[0]["overwrite"] is True


def _readme_commands():
    text = README.read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if "vidfeat " in line and not line.startswith(("import", "from", "#")):
                command = line[line.index("vidfeat "):].split("&&")[0]
                if command.split()[1] in library():
                    yield shlex.split(command)[1:]


def test_readme_commands_parse():
    commands = list(_readme_commands())
    assert len(commands) > 20
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown flag
        assert args.command == argv[0]


def test_readme_flags_exist():
    ours = {s for command in library() for a in options(command) for s in a.option_strings}
    others = {"--shm-size", "--quick", "--json", "--array", "--gres", "--scheduler-file",
              "--nworkers", "--nthreads"}  # docker, benchmarks, SLURM, dask
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    assert mentioned - others <= ours, sorted(mentioned - others - ours)
