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
               "codec", "has_audio", "source_hash", "duration_header_s", "warning"}


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


# --- codec names ------------------------------------------------------------------------------

def _encoders() -> str:
    import subprocess

    from vidfeat.media import ffmpeg_exe

    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True,
                          text=True, check=True).stdout


AV1_ENCODERS = {"libaom-av1": ("-cpu-used", "8"), "libsvtav1": ("-preset", "12"),
                "librav1e": ("-speed", "10")}


def test_codec_is_the_codecs_name_not_the_decoders(video):
    import av

    assert probe_video(video("h.mp4", duration=0.5)).codec == "h264"
    listed = _encoders()
    encoder = next((e for e in AV1_ENCODERS if f" {e} " in listed), None)
    if encoder is None:
        pytest.skip("the ffmpeg binary has no AV1 encoder")
    p = video("av1.mp4", duration=0.5, codec=encoder, extra=AV1_ENCODERS[encoder])
    with av.open(str(p)) as c:
        decoder = c.streams.video[0].codec_context.name  # e.g. libdav1d
    r = probe_video(p)
    assert r.codec == "av1", f"decoder {decoder}"


# --- header durations that lie ----------------------------------------------------------------

def _boxes(data, start, end):
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        yield start, size, kind
        start += size


def _scale_mdhd_duration(path, factor: float):
    """Multiply the track's media duration (``mdhd`` box) by ``factor``: the header lies, the
    sample table (the frames) stays as it was."""
    data = bytearray(path.read_bytes())

    def walk(start, end):
        for i, size, kind in _boxes(data, start, end):
            if kind in (b"moov", b"trak", b"mdia"):
                walk(i + 8, i + size)
            elif kind == b"mdhd":
                fmt = ">Q" if data[i + 8] else ">I"  # version 1: 64-bit times
                # after version/flags, creation and modification times, timescale
                at = i + 12 + 2 * struct.calcsize(fmt) + 4
                n = struct.calcsize(fmt)
                value = struct.unpack(fmt, data[at:at + n])[0]
                data[at:at + n] = struct.pack(fmt, round(value * factor))
    walk(0, len(data))
    path.write_bytes(bytes(data))
    return path


def _set_mkv_duration_tag(path, text: str):
    """Rewrite the track's DURATION tag (same length, so the EBML sizes stay valid)."""
    data = path.read_bytes()
    assert data.count(b"00:00:02.000000000") == 1
    path.write_bytes(data.replace(b"00:00:02.000000000", text.encode()))
    return path


def _lying_video(video, kind: str):
    """(path, what the header claims): a real 2 s, 10 fps video (keyframe every 5 frames)."""
    if kind == "mkv-long":
        p = video("long.mkv", duration=2, fps=10, gop=5)
        return _set_mkv_duration_tag(p, "00:03:20.000000000"), 200.0
    if kind == "mkv-short":
        p = video("short.mkv", duration=2, fps=10, gop=5)
        return _set_mkv_duration_tag(p, "00:00:00.200000000"), 0.2
    return _scale_mdhd_duration(video("short.mp4", duration=2, fps=10, gop=5), 0.1), 0.2


def _shown_frames(path, n: int) -> list[float]:
    """Times of the frames a full PyAV decode shows at the centres of n equal segments of the
    stream as decoded (its last frame's end), per the sampling contract; without vidfeat."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        times = sorted(float(f.pts * s.time_base) for f in c.decode(s))
    end = times[-1] + (times[-1] - times[-2])
    targets = [times[0] + (i + 0.5) * (end - times[0]) / n for i in range(n)]
    return [max(t for t in times if t <= target) for target in targets]


@pytest.mark.parametrize("kind", ["mkv-long", "mkv-short", "mp4-short"])
def test_lying_header_duration_is_measured_and_frames_spread_over_the_stream(
        video, tmp_path, caplog, kind):
    from vidfeat.ingestion.decode import decode_frames
    from vidfeat.ingestion.sample import SamplingSpec

    path, claimed = _lying_video(video, kind)
    with caplog.at_level("WARNING", logger="vidfeat.ingestion.probe"):
        r = probe_video(path)
    assert r.duration_s == pytest.approx(2.0, abs=1e-6) and r.frame_count == 20
    assert r.duration_header_s == pytest.approx(claimed) and "header duration" in r.warning
    assert r.vfr is False and r.avg_fps == pytest.approx(10.0)
    assert [rec.levelname for rec in caplog.records] == ["WARNING"]
    assert str(path) in caplog.records[0].getMessage()
    records = decode_frames(path, r, SamplingSpec(frames_per_video=4, size=32), tmp_path / "out")
    expected = _shown_frames(path, 4)
    assert expected == pytest.approx([0.2, 0.7, 1.2, 1.7])  # the real 2 s, not the header's
    assert [rec.timestamp_s for rec in records] == pytest.approx(expected)


@pytest.mark.parametrize("name, options", [
    ("bf.mp4", {"gop": 4, "extra": ("-bf", "2")}),
    ("bf.avi", {"codec": "mpeg4", "extra": ("-bf", "2")}),
    ("a.ts", {}), ("a.flv", {}), ("a.nut", {}), ("vfr.mkv", {"vfr": True, "duration": 3}),
    ("ntsc.mkv", {"fps": "30000/1001"}), ("a.webm", {"codec": "libvpx-vp9"}),
])
def test_honest_headers_are_not_flagged(video, caplog, name, options):
    options = {"duration": 2, "fps": 10, **options}
    with caplog.at_level("WARNING", logger="vidfeat.ingestion.probe"):
        r = probe_video(video(name, **options))
    assert (r.warning, r.duration_header_s) == ("", None) and not caplog.records


def test_ingest_stores_frames_over_the_real_duration(video, tmp_path, capfd):
    from vidfeat.ingestion._ingest import ingest
    from vidfeat.ingestion.manifest import read_manifest

    lies = {kind: _lying_video(video, kind) for kind in ("mkv-long", "mp4-short")}
    src = tmp_path / "src" / "x"
    src.mkdir(parents=True)
    for path, _ in lies.values():
        path.rename(src / path.name)
    result = ingest(tmp_path / "src", tmp_path / "out", frames_per_video=4, size=32,
                    split=(1, 0, 0), progress=False)
    m = read_manifest(result.outdir, check_files=True)
    v = m.videos.set_index("video_id")
    for path, claimed in lies.values():
        row = v.loc[f"x/{path.name}"]
        assert row["status"] == "ok" and row["duration_s"] == pytest.approx(2.0, abs=1e-6)
        assert row["duration_header_s"] == pytest.approx(claimed) and row["warning"]
        stored = m.frames[m.frames["video_id"] == f"x/{path.name}"]["timestamp_s"].tolist()
        assert stored == pytest.approx(_shown_frames(src / path.name, 4))
    err = capfd.readouterr().err  # the probe's warning, from the sandbox child, once per video
    assert [err.count(f"{p.name}: header duration") for p, _ in lies.values()] == [1, 1]


def test_cut_download_keeps_the_header_duration_with_a_warning(video, caplog):
    """moov up front, data cut at half: the sample table backs the header (100 frames = 4 s),
    so the header is no lie; the duration stays and the warning says the data stops early."""
    full = video("fs.mp4", duration=4, fps=25, gop=10, extra=("-movflags", "+faststart"))
    cut = full.with_name("cut.mp4")
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="vidfeat.ingestion.probe"):
        r = probe_video(cut)
    assert (r.duration_s, r.frame_count, r.duration_header_s, r.vfr) == (4.0, 100, None, False)
    assert "truncated file?" in r.warning and len(caplog.records) == 1
