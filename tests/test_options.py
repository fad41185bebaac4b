"""Option checks: types from the stage functions' annotations, one message per dialect."""
import inspect
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from vidfeat.options import (
    OptionError,
    check_options,
    checked,
    option_kinds,
    parse_annotation,
    toml_value,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def stages():
    import vidfeat

    return {"ingest": vidfeat.ingest, "extract": vidfeat.extract, "train": vidfeat.train,
            "evaluate": vidfeat.evaluate, "report": vidfeat.report, "predict": vidfeat.predict,
            "run_pipeline": vidfeat.run_pipeline, "demo": vidfeat.demo}


# annotation text -> (values it accepts, values it refuses); the rules of the brief, by hand
RULES = {
    "bool": ([True, False], ["false", "true", 0, 1, None, "no"]),
    "int": ([0, 8, -3, np.int64(4)], [True, False, 2.5, 8.0, "8", None]),
    "float": ([2.5, 3, 0, np.float32(1.5), float("inf")], [True, "2.5", "30", None]),
    "float | None": ([None, 1.0, 2], [False, "1.0"]),
    "int | None": ([None, 3], [2.5, True, "3"]),
    "str": (["x", ""], [1, None, b"x", True]),
    "str | None": (["x", None], [0, False]),
    "int | str | None": ([3, "4GB", None], [2.5, True]),
    "str | tuple[float, float, float]": (["0.8,0.1,0.1", (0.8, 0.1, 0.1), [1, 0, 0]],
                                         [[0.5, 0.5], [0.5, "0.5", 0], (True, 0.0, 0.0), 0.8]),
    "Sequence[int]": ([(512,), [], [1, 2]], ["512", [1.5], [True], 512]),
    "str | Path | None": (["a", Path("a"), None], [1, ["a"]]),
    "Mapping | Sequence[str] | str | None": ([{"lr": [1]}, ["lr=1"], "lr=1", None],
                                             [[1], 3, True]),
    "Iterable[str | os.PathLike] | str | os.PathLike": (
        ["v.mp4", Path("v.mp4"), ["a", Path("b")], (p for p in ["a"])], [3, [3], None]),
    "SomethingElse": ([1, "x", None, object()], []),
}


@pytest.mark.parametrize("annotation", sorted(RULES))
def test_each_annotation_accepts_and_refuses(annotation):
    kind = parse_annotation(annotation)
    good, bad = RULES[annotation]
    for value in good:
        assert kind.accepts(value), (annotation, value)
    for value in bad:
        assert not kind.accepts(value), (annotation, value)


def test_a_generator_is_not_consumed_by_the_check():
    videos = (p for p in ["a.mp4", "b.mp4"])
    check_options(stages()["predict"], {"videos": videos})
    assert list(videos) == ["a.mp4", "b.mp4"]


def test_library_and_config_messages():
    @checked
    def stage(src, *, keyframes: bool = False, frames_per_video: int = 16,
              fps: float | None = None, split: str | tuple[float, float, float] = "0.8,0.1,0.1"):
        return "ran"

    cases = [({"keyframes": "false"}, "keyframes='false': expected a boolean (True or False)",
              '[ingest] keyframes = "false": expected true or false'),
             ({"frames_per_video": "8"}, "frames_per_video='8': expected an integer",
              '[ingest] frames_per_video = "8": expected an integer'),
             ({"frames_per_video": 2.5}, "frames_per_video=2.5: expected an integer",
              "[ingest] frames_per_video = 2.5: expected an integer"),
             ({"frames_per_video": True}, "frames_per_video=True: expected an integer",
              "[ingest] frames_per_video = true: expected an integer"),
             ({"fps": "30"}, "fps='30': expected a number or None",
              '[ingest] fps = "30": expected a number'),
             ({"split": [0.5, 0.5]},
              "split=[0.5, 0.5]: expected a string or a list or tuple of 3 numbers",
              "[ingest] split = [0.5, 0.5]: expected a string or a list of 3 numbers")]
    for given, library, config in cases:
        with pytest.raises(OptionError) as info:
            stage("videos", **given)
        assert str(info.value) == library
        assert info.value.in_config("ingest") == config
        with pytest.raises(OptionError) as info:
            check_options(stage, given, table="ingest")
        assert str(info.value) == config
    assert stage("videos", keyframes=True, frames_per_video=np.int32(3), fps=2, split=[1, 0, 0]) \
        == "ran"
    with pytest.raises(TypeError, match="unexpected keyword argument 'frames'"):
        stage("videos", frames=3)  # Python's own message for an unknown keyword


def test_type_error_crosses_processes_and_names_the_flag():
    with pytest.raises(OptionError) as info:
        check_options(stages()["train"], {"epochs": "30"})
    err = info.value
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "epochs='30': expected an integer"
    assert back.in_config("train") == '[train] epochs = "30": expected an integer'
    assert err.describe("--epochs") == "--epochs 30: expected an integer"


def test_stage_signatures_survive_the_decorator_and_defaults_fit():
    for name, func in stages().items():
        params = inspect.signature(func).parameters
        assert func.__name__ == name and func.__wrapped__  # decorated, signature kept
        kinds = option_kinds(func)
        for param, p in params.items():
            if p.default is not inspect.Parameter.empty and param in kinds:
                assert kinds[param].accepts(p.default), (name, param, p.default)
        unchecked = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in kinds]
        assert unchecked in ([], ["scheduler"]), (name, unchecked)  # a Dask Client: any object


def test_every_stage_refuses_a_bad_type_before_any_work(tmp_path):
    out = tmp_path / "out"
    calls = {"ingest": lambda f: f(tmp_path / "videos", out, keyframes="false"),
             "extract": lambda f: f(tmp_path / "ingest", out, batch_size="64"),
             "train": lambda f: f(tmp_path / "f.h5", out, unfreeze="no"),
             "evaluate": lambda f: f(tmp_path / "m", tmp_path / "f.h5", max_memory=2.5,
                                     output=out),
             "report": lambda f: f(tmp_path / "videos", out, jobs=2.5),
             "predict": lambda f: f(tmp_path / "m", "v.mp4", top_k="3"),
             "run_pipeline": lambda f: f({"ingest": {"src": str(tmp_path)}}, out, progress="no"),
             "demo": lambda f: f(out, jobs="2")}
    for name, func in stages().items():
        with pytest.raises(OptionError, match=r"^\w+=.*: expected "):
            calls[name](func)
        assert not out.exists(), name


def test_toml_value_reads_back_with_tomllib():
    values = [True, False, 3, -2.5, 1e-3, "plain", 'quote " and \\ back', "ünï", [0.8, 0.1, 0.1],
              ["lr=1e-3", "weight_decay=0"], {"lr": [0.001, 0.01], "odd key": "x"}]
    for value in values:
        assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value, value
    assert tomllib.loads(f"v = {toml_value((1, 2))}")["v"] == [1, 2]
