"""vidfeat.synth: command lines built by ffmpeg-python, one-line errors, killed on timeout, and
the generated videos' properties read back with PyAV (not with vidfeat's probe)."""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from vidfeat import synth
from vidfeat.media import ffmpeg_exe


def read_back(path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0] if c.streams.video else None
        out = {"audio": bool(c.streams.audio), "video": v is not None}
        if v is not None:
            frames = list(c.decode(v))
            out.update(codec=v.codec_context.name, size=(v.codec_context.width,
                                                         v.codec_context.height),
                       rate=v.average_rate, n=len(frames),
                       pts=[float(f.pts * v.time_base) for f in frames],
                       duration=float(v.duration * v.time_base),
                       rotation=frames[0].rotation)
    return out


def test_make_video_has_the_asked_properties(tmp_path):
    p = synth.make_video(tmp_path / "a.mp4", duration=1.5, fps=12, size=(80, 60),
                         source="smptebars")
    got = read_back(p)
    assert (got["codec"], got["size"], got["rate"], got["n"]) == ("h264", (80, 60), 12, 18)
    assert got["duration"] == pytest.approx(1.5) and not got["audio"]


def test_make_video_options(tmp_path):
    vfr = read_back(synth.make_video(tmp_path / "vfr.mp4", duration=2, fps=8, vfr=True))
    gaps = {round(b - a, 3) for a, b in zip(vfr["pts"], vfr["pts"][1:])}
    assert gaps == {0.125, 0.5}  # first second at 8 fps, then at 2 fps
    rotated = read_back(synth.make_video(tmp_path / "r.mp4", duration=1, fps=10, rotation=90))
    assert abs(rotated["rotation"]) == 90 and not (tmp_path / ".unrotated-r.mp4").exists()
    audio = read_back(synth.make_video(tmp_path / "au.mp4", duration=1, fps=10, audio=True))
    assert audio["audio"] and audio["n"] == 10
    avi = read_back(synth.make_video(tmp_path / "x.avi", duration=1, fps=10, codec="mpeg4"))
    assert avi["codec"] == "mpeg4" and avi["n"] == 10
    only = read_back(synth.make_audio(tmp_path / "tone.m4a"))
    assert only == {"audio": True, "video": False}


def test_gop_and_extra_options_reach_the_encoder(tmp_path):
    p = synth.make_video(tmp_path / "g.mp4", duration=2, fps=10, gop=5, extra=("-bf", "0"))
    with av.open(str(p)) as c:
        keys = [i for i, pkt in enumerate(c.demux(c.streams.video[0]))
                if pkt.size and pkt.is_keyframe]
    assert keys == [0, 5, 10, 15]


def test_command_lines_are_built_by_ffmpeg_python(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(synth, "run_ffmpeg", lambda cmd, timeout=120: seen.append(cmd))
    synth.make_video(tmp_path / "a.mp4", duration=1, fps=10, gop=4, extra=("-bf", "2"))
    (cmd,) = seen
    assert cmd[0] == ffmpeg_exe()
    assert cmd[1:5] == ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=10"]
    i = cmd.index(str((tmp_path / "a.mp4").absolute()))
    options = cmd[5:i]
    pairs = dict(zip(options[::2], options[1::2]))
    assert pairs == {"-bf": "2", "-c:v": "libx264", "-g": "4", "-keyint_min": "4", "-preset":
                     "ultrafast", "-sc_threshold": "0", "-t": "1", "-vf": "format=yuv420p",
                     "-threads": "1", "-fflags": "+bitexact", "-flags": "+bitexact",
                     "-map_metadata": "-1"}
    assert {"-nostdin", "-y", "-hide_banner"} <= set(cmd[i + 1:])


@pytest.mark.parametrize("extra, message", [(("bf", "2"), "expected an option"),
                                            (("-",), "expected an option")])
def test_bad_extra_options_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        synth.make_video(tmp_path / "a.mp4", extra=extra)


def test_ffmpeg_failure_is_one_line_with_its_reason(tmp_path):
    with pytest.raises(RuntimeError) as info:
        synth.ffmpeg("-f", "lavfi", "-i", "nosuchsource", str(tmp_path / "x.mp4"))
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith("ffmpeg failed (exit ") and "nosuchsource" in msg
    assert not (tmp_path / "x.mp4").exists()


def _running_with(marker: str) -> list[str]:
    """Pids whose command line contains ``marker`` (read from /proc: no pgrep needed)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                pids.append(cmdline.parent.name)
        except OSError:  # the process ended while we looked
            pass
    return pids


def test_timeout_kills_ffmpeg(tmp_path):
    marker = str(tmp_path / "never-written.null")  # unique to this test: finds the child
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^ffmpeg timed out after 0.5 s \(killed\)"):
        synth.run_ffmpeg([ffmpeg_exe(), "-nostdin", "-f", "lavfi", "-i", "testsrc2=d=3600",
                          "-f", "null", marker], timeout=0.5)
    assert time.monotonic() - start < 30
    assert _running_with(marker) == []  # killed and reaped, not left running


def test_demo_dataset_is_reproducible_in_its_properties(tmp_path):
    counts = {"bars": 2, "life": 1}
    a = synth.make_demo_dataset(tmp_path / "a", counts=counts, seed=3)
    b = synth.make_demo_dataset(tmp_path / "b", counts=counts, seed=3)
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.mp4"))
    assert names == ["bars/bars_00.mp4", "bars/bars_01.mp4", "life/life_00.mp4"]
    for name in names:
        pa, pb = read_back(a / name), read_back(b / name)
        assert pa == pb and pa["codec"] == "h264" and pa["rate"] == Fraction(10)
        assert 1.5 <= pa["duration"] <= 3.0 + 0.1


def test_demo_dataset_is_byte_identical_for_the_same_seed(tmp_path):
    # every class: gradients once took its colours from the system RNG, whatever its seed
    counts = dict.fromkeys(synth.DEMO_CLASSES, 1)
    a = synth.make_demo_dataset(tmp_path / "a", counts=counts, seed=5, duration=(0.5, 0.8))
    b = synth.make_demo_dataset(tmp_path / "b", counts=counts, seed=5, duration=(0.5, 0.8))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == len(counts)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = synth.make_demo_dataset(tmp_path / "c", counts=counts, seed=6, duration=(0.5, 0.8))
    assert all((a / n).read_bytes() != (other / n).read_bytes() for n in files)  # seed matters
