"""probe: every field from real generated videos, and every bad-input kind as one-line VideoError."""
import os
import random
import struct

import pytest
from videos import ffmpeg, make_audio

from vidfeat.ingestion.probe import (
    ProbeResult,
    VideoError,
    normalize_rotation,
    probe_video,
)

ROW_COLUMNS = {"duration_s", "fps", "avg_fps", "vfr", "frame_count", "width", "height", "rotation",
               "codec", "has_audio"}


def test_probe_basic_fields(video):
    r = probe_video(video("a.mp4", duration=2.0, fps=25, size=(64, 48)))
    assert (r.duration_s, r.fps, r.avg_fps, r.frame_count) == (2.0, 25.0, 25.0, 50)
    assert (r.width, r.height, r.rotation, r.codec) == (64, 48, 0, "h264")
    assert r.vfr is False and r.has_audio is False and r.start_s == 0.0


def test_row_has_the_manifest_columns(video):
    row = probe_video(video("a.mp4")).row()
    assert set(row) == ROW_COLUMNS
    assert row["frame_count"] == 50 and row["codec"] == "h264"


def test_probe_audio_and_matroska_duration(video):
    r = probe_video(video("a.mkv", duration=2.0, fps=25, audio=True))
    assert r.has_audio is True
    assert r.duration_s == pytest.approx(2.0, abs=0.05)  # from the DURATION tag, not the audio
    assert r.frame_count == 50 and r.fps == 25.0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_rotation_gives_display_size(video, rotation):
    r = probe_video(video(f"r{rotation}.mp4", rotation=rotation, size=(64, 48), duration=0.5))
    assert r.rotation == rotation
    assert (r.width, r.height) == ((48, 64) if rotation in (90, 270) else (64, 48))


def test_probe_vfr_flagged(video):
    # 10 fps for the first second, then 2.5 fps: 10 + 7 frames over 2.8 s
    r = probe_video(video("vfr.mp4", vfr=True, fps=10, duration=3.0))
    assert r.vfr is True
    assert r.avg_fps == pytest.approx(r.frame_count / r.duration_s)
    assert r.avg_fps < 0.8 * r.fps


def test_probe_cfr_not_flagged_with_ntsc_rate(video):
    r = probe_video(video("ntsc.mkv", fps="30000/1001", duration=2.0))
    assert r.vfr is False and r.fps == pytest.approx(29.97, abs=0.01)


def test_probe_odd_size(tmp_path):
    p = tmp_path / "odd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=175x143:r=10:d=1", "-c:v", "libx264",
           "-preset", "ultrafast", str(p))
    r = probe_video(p)
    assert (r.width, r.height, r.frame_count) == (175, 143, 10)


def test_probe_one_frame_video(video):
    r = probe_video(video("one.mp4", duration=0.1, fps=10))
    assert r.frame_count == 1 and r.duration_s == pytest.approx(0.1)


def test_probe_nonzero_start_time(video):
    r = probe_video(video("a.ts", duration=2.0, fps=25))
    assert r.start_s > 0.5  # MPEG-TS starts at 1.4 s by default
    assert r.duration_s == pytest.approx(2.0, abs=0.05) and r.frame_count == 50


@pytest.mark.parametrize("name", ["-y.mp4", "-i.mkv", "name with spaces.mp4", "vidéo-日本語.mp4"])
def test_probe_odd_names(video, name):
    assert probe_video(video(name, duration=0.5)).frame_count > 0


def _corrupt_mdat(path):
    """Overwrite the coded frames (mdat payload) with random bytes; boxes stay valid."""
    data = bytearray(path.read_bytes())
    i = data.find(b"mdat")
    n = struct.unpack(">I", data[i - 4:i])[0]
    data[i + 4:i - 4 + n] = os.urandom(n - 8)
    path.write_bytes(bytes(data))
    return path


def test_probe_first_frame_does_not_decode(video):
    p = _corrupt_mdat(video("bad.mp4", duration=0.5))
    with pytest.raises(VideoError, match="first frame does not decode"):
        probe_video(p)
    r = probe_video(p, check_decode=False)  # the header is fine: fields still come back
    assert r.frame_count > 0 and r.rotation == 0


def _bad_inputs(tmp_path, video):
    full = video("full.mp4", duration=2.0).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(full[: len(full) // 3])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "rand.mp4").write_bytes(random.Random(0).randbytes(20000))
    (tmp_path / "text.mp4").write_text("hello, I am not a video\n")
    (tmp_path / "hls.mp4").write_text("#EXTM3U\n#EXTINF:1,\nfull.mp4\n#EXT-X-ENDLIST\n")
    (tmp_path / "dir.mp4").mkdir()
    make_audio(tmp_path / "audio.m4a")
    return {
        "cut.mp4": r"truncated MP4 \(moov atom not found\)",
        "zero.mp4": r"empty file \(0 bytes\)",
        "rand.mp4": "not a video container",
        "text.mp4": "not a video container",
        "hls.mp4": "HLS/M3U playlist, not a video: refused",
        "dir.mp4": "not a file: it is a directory",
        "audio.m4a": r"no video stream \(audio-only file\)",
        "missing.mp4": "file not found",
    }


def test_probe_bad_inputs_one_line_reasons(tmp_path, video):
    for name, reason in _bad_inputs(tmp_path, video).items():
        with pytest.raises(VideoError, match=reason) as err:
            probe_video(tmp_path / name)
        assert "\n" not in str(err.value), name


def test_probe_refuses_url():
    with pytest.raises(VideoError, match="not a local file"):
        probe_video("https://example.com/v.mp4")


def test_normalize_rotation():
    assert [normalize_rotation(x) for x in (0, -90, 90.0, 180, -180, 270, 359.9, None)] == \
        [0, 270, 90, 180, 180, 270, 0, 0]


def test_probe_result_is_frozen(video):
    r = probe_video(video("a.mp4", duration=0.5))
    with pytest.raises(AttributeError):
        r.fps = 1.0
    assert isinstance(r, ProbeResult)
