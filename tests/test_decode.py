"""decode: sampled frames are exactly what a full decode shows at each time, found by seeking."""
import hashlib
import random
import struct

import av
import numpy as np
import pytest
from PIL import Image
from videos import ffmpeg, make_video

from vidfeat.ingestion import decode
from vidfeat.ingestion.decode import TIME_EPS, FrameRecord, decode_frames
from vidfeat.ingestion.probe import VideoError, probe_video
from vidfeat.ingestion.sample import SamplingSpec, plan_times


# swscale's default YUV -> RGB rounds down (up to one grey level low); the reference is the
# correctly rounded BT.601 conversion, e.g. Y 44 -> (44 - 16) * 255 / 219 = 32.6 -> 33, not 32
EXACT_RGB = (av.video.reformatter.Interpolation.BILINEAR | av.video.reformatter.Interpolation.ACCURATE_RND
             | av.video.reformatter.Interpolation.FULL_CHR_H_INT)


def full_decode(path):
    """Reference: every frame of a plain front-to-back decode, as (pts seconds, RGB array)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24", interpolation=EXACT_RGB))
                for f in c.decode(s)]


def shown_at(ref, t):
    """Index of the frame a player shows at t: the last one with pts <= t (first if t is earlier)."""
    times = [x for x, _ in ref]
    return max([i for i, x in enumerate(times) if x <= t + TIME_EPS], default=0)


def load(out, rec):
    return np.asarray(Image.open(out / rec.filename).convert("RGB"), dtype=np.float32)


def counter_video(path, *, duration, fps, gop, vfr=False, extra=()):
    """Flat frames whose grey level encodes the frame number (16 + 7n mod 200): every frame is
    told apart from every other by its mean, whatever the JPEG/resize noise."""
    src = f"color=c=black:s=64x48:r={fps}:d={duration},format=yuv420p"
    vf = "geq=lum='16+mod(N*7,200)':cb=128:cr=128"
    args = ["-f", "lavfi", "-i", src]
    if vfr:  # first second at fps, then fps/4, real timestamps kept
        n = int(fps)
        vf = f"settb=1/1000,setpts='if(lt(N,{n}),N*1000/{fps},1000+(N-{n})*4000/{fps})',{vf}"
        args += ["-fps_mode", "passthrough", "-video_track_timescale", "1000"]
    codec = ["-c:v", "mpeg4"] if path.suffix == ".avi" else ["-c:v", "libx264", "-preset", "ultrafast"]
    ffmpeg(*args, "-vf", vf, *codec, "-g", str(gop), *extra, str(path))
    return path


def assert_exact(path, spec, out, *, n=None):
    """Each record is the frame shown at its target: same pts, and the same picture."""
    probe = probe_video(path)
    recs = decode_frames(path, probe, spec, out, n=n)
    ref = full_decode(path)
    expected = sorted({shown_at(ref, t) for t in plan_times(probe, spec, n=n)})
    assert [r.timestamp_s for r in recs] == pytest.approx([ref[i][0] for i in expected], abs=1e-9)
    means = np.array([frame.mean() for _, frame in ref])
    for rec, i in zip(recs, expected):
        err = np.abs(means - load(out, rec).mean())
        assert int(np.argmin(err)) == i and err[i] < 0.6, (rec, i, err[i], err.min())
    return recs


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "bframes.mp4": counter_video(root / "bframes.mp4", duration=4, fps=25, gop=12,
                                     extra=("-bf", "2")),
        "gop.mkv": counter_video(root / "gop.mkv", duration=4, fps=25, gop=10),
        "start.ts": counter_video(root / "start.ts", duration=4, fps=25, gop=10, extra=("-bf", "2")),
        "vfr.mp4": counter_video(root / "vfr.mp4", duration=4, fps=10, gop=5, vfr=True),
        "avi.avi": counter_video(root / "avi.avi", duration=2, fps=10, gop=5),
    }


@pytest.mark.parametrize("name", ["bframes.mp4", "gop.mkv", "start.ts", "vfr.mp4", "avi.avi"])
def test_uniform_frames_are_exact(clips, tmp_path, name):
    recs = assert_exact(clips[name], SamplingSpec(frames_per_video=7, size=48), tmp_path)
    assert len(recs) == 7
    indexes = [r.frame_index for r in recs]
    assert indexes == sorted(set(indexes))
    assert [r.filename for r in recs] == [f"{i:06d}.jpg" for i in indexes]


@pytest.mark.parametrize("name", ["bframes.mp4", "start.ts", "vfr.mp4"])
def test_fps_mode_is_exact(clips, tmp_path, name):
    recs = assert_exact(clips[name], SamplingSpec(mode="fps", fps=3, size=48), tmp_path)
    assert len(recs) >= 8


def _shown_by_cursor(container, targets, clips):
    """(time, RGB) the cursor gives for sorted ``targets``: one ``frames_at`` call, or with
    ``clips`` the targets cut into consecutive clips, each a ``clip_frames`` call."""
    cursor = decode._Cursor(container, container.streams.video[0])
    if not clips:
        shown = list(cursor.frames_at(targets))
    else:
        cuts = sorted({0, len(targets), *random.Random(len(targets)).sample(range(len(targets)),
                                                                           k=len(targets) // 3)})
        groups = [targets[a:b] for a, b in zip(cuts, cuts[1:])]
        shown = []
        for k, group in enumerate(groups):
            then = groups[k + 1][0] if k + 1 < len(groups) else None
            shown += list(cursor.clip_frames(group, then=then))
    return [(t, f.to_ndarray(format="rgb24", interpolation=EXACT_RGB)) for t, f in shown]


@pytest.mark.parametrize("clips_", [False, True], ids=["frames", "clips"])
@pytest.mark.parametrize("name", ["bframes.mp4", "vfr.mp4", "gop.mkv", "start.ts"])
def test_random_targets_give_the_frames_shown_there(clips, name, clips_):
    """The cursor (seek or decode on; in MP4, feeding packets up to a target and draining)
    against a full decode on 25 random sorted target sets: before the first frame, past the
    last, exactly on a frame, repeated. Same pts and the very same pixels."""
    ref = full_decode(clips[name])
    times = [t for t, _ in ref]
    rng = random.Random(name)
    with av.open(str(clips[name])) as c:
        for _ in range(25):
            targets = [rng.uniform(times[0] - 0.3, times[-1] + 0.3) for _ in range(rng.randint(1, 9))]
            targets += rng.sample(times, k=2) + [targets[0]]
            targets.sort()
            got = _shown_by_cursor(c, targets, clips_)
            expected = [ref[shown_at(ref, t)] for t in targets]
            assert [t for t, _ in got] == [t for t, _ in expected], targets
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected)), targets


def test_nonzero_start_timestamps_are_absolute(clips, tmp_path):
    probe = probe_video(clips["start.ts"])
    recs = decode_frames(clips["start.ts"], probe, SamplingSpec(frames_per_video=4, size=48), tmp_path)
    assert probe.start_s > 0.5
    assert all(probe.start_s <= r.timestamp_s <= probe.start_s + probe.duration_s for r in recs)
    assert recs[0].frame_index == round((recs[0].timestamp_s - probe.start_s) * probe.fps)


def test_more_targets_than_frames_gives_each_frame_once(tmp_path):
    p = counter_video(tmp_path / "short.mp4", duration=0.5, fps=10, gop=3)  # 5 frames
    recs = assert_exact(p, SamplingSpec(frames_per_video=16, size=48), tmp_path / "out")
    assert [r.frame_index for r in recs] == [0, 1, 2, 3, 4]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [r.filename for r in recs]


def test_one_frame_video(video, tmp_path):
    p = video("one.mp4", duration=0.1, fps=10)
    for mode in ("uniform", "keyframes"):
        out = tmp_path / mode
        recs = decode_frames(p, probe_video(p), SamplingSpec(mode=mode, size=48), out)
        data = (out / "000000.jpg").read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:32]
        assert recs == [FrameRecord(0, 0.0, "000000.jpg", len(data), digest)]


class _Counter:
    """Counts frames that come out of the decoder (wraps decode._decode; decoding is real)."""

    def __init__(self, monkeypatch):
        self.frames = 0
        real = decode._decode

        def counting(packets):
            for frame in real(packets):
                self.frames += 1
                yield frame
        monkeypatch.setattr(decode, "_decode", counting)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """60 s at 25 fps (1500 frames), a keyframe every second, tiny frames so it is quick."""
    return make_video(tmp_path_factory.mktemp("long") / "long.mp4", duration=60, fps=25, gop=25,
                      size=(32, 24), source="testsrc")


def test_sixteen_frames_do_not_decode_the_whole_video(long_clip, tmp_path, monkeypatch):
    counter = _Counter(monkeypatch)
    probe = probe_video(long_clip)
    recs = decode_frames(long_clip, probe, SamplingSpec(size=24), tmp_path)
    assert len(recs) == 16
    # each target costs at most one GOP prefix (25 frames) + the frame after it
    assert counter.frames <= 16 * 26 < probe.frame_count / 3


class _Fed:
    """Counts the packets with data fed to the decoder (wraps decode._decode; decoding is real)."""

    def __init__(self, monkeypatch):
        self.packets = 0
        real = decode._decode

        def counting(packets):
            def fed():
                for packet in packets:
                    self.packets += packet.size > 0
                    yield packet
            yield from real(fed())
        monkeypatch.setattr(decode, "_decode", counting)


def test_mp4_targets_decode_only_the_frames_up_to_them(long_clip, tmp_path, monkeypatch):
    """In MP4 (real dts) a target followed by a seek decodes its GOP prefix and nothing after
    it: not the next frame that decoding on would need, nor frames in flight a seek drops."""
    fed = _Fed(monkeypatch)
    probe = probe_video(long_clip)
    recs = decode_frames(long_clip, probe, SamplingSpec(size=24), tmp_path, threads=4)
    shown = [int(t * 25 + 1e-6) for t in sorted(plan_times(probe, SamplingSpec()))]  # k at k/25
    assert [r.frame_index for r in recs] == shown
    # 16 targets 3.75 s apart, a keyframe every 25 frames: each decodes from its keyframe
    assert fed.packets == sum(f - f // 25 * 25 + 1 for f in shown)


def test_a_target_before_the_first_frame_shows_the_first_frame(clips):
    """Before the first frame nothing is shown yet; the cursor gives the first frame (as a
    player starting there would), in MP4 too, where decoding stops at the target's packets."""
    for name in ("bframes.mp4", "gop.mkv"):
        ref = full_decode(clips[name])
        with av.open(str(clips[name])) as c:
            shown = list(decode._Cursor(c, c.streams.video[0]).frames_at([-0.5, ref[0][0]]))
        assert [time for time, _ in shown] == [ref[0][0]] * 2


def test_keyframes_mode_decodes_keyframes_only(long_clip, tmp_path, monkeypatch):
    with av.open(str(long_clip)) as c:
        s = c.streams.video[0]
        key_times = [float(p.pts * s.time_base) for p in c.demux(s) if p.is_keyframe]
    counter = _Counter(monkeypatch)
    recs = decode_frames(long_clip, probe_video(long_clip), SamplingSpec(mode="keyframes", size=24),
                         tmp_path)
    assert [r.timestamp_s for r in recs] == pytest.approx(key_times)
    assert len(recs) == 60 and counter.frames == 60
    assert [r.frame_index for r in recs] == [25 * i for i in range(60)]


def test_keyframe_images_match_full_decode(clips, tmp_path):
    path = clips["gop.mkv"]
    recs = decode_frames(path, probe_video(path), SamplingSpec(mode="keyframes", size=48), tmp_path)
    ref = dict(full_decode(path))
    assert len(recs) == 10
    for rec in recs:
        assert abs(load(tmp_path, rec).mean() - ref[rec.timestamp_s].mean()) < 0.6


def test_mp4_keyframes_are_sought_not_demuxed(long_clip, clips, tmp_path, monkeypatch):
    """In MP4 (a sample table lists every keyframe) keyframe mode reads the keyframe packets
    only, and finds the same keyframes and pictures as a full demux, B-frames included."""
    read = []
    real = decode._packets

    def counting(container, stream):
        for packet in real(container, stream):
            read.append(packet.is_keyframe)
            yield packet
    monkeypatch.setattr(decode, "_packets", counting)
    recs = decode_frames(long_clip, probe_video(long_clip), SamplingSpec(mode="keyframes", size=24),
                         tmp_path / "long")
    assert len(recs) == 60 and len(read) == 60 and all(read)  # of 1500 packets
    path = clips["bframes.mp4"]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = [float(p.pts * s.time_base) for p in c.demux(s) if p.is_keyframe]
    recs = decode_frames(path, probe_video(path), SamplingSpec(mode="keyframes", size=48),
                         tmp_path / "b")
    assert [r.timestamp_s for r in recs] == pytest.approx(keys) and len(keys) == 9
    ref = dict(full_decode(path))
    for rec in recs:
        assert abs(load(tmp_path / "b", rec).mean() - ref[rec.timestamp_s].mean()) < 0.6


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_applied_like_ffmpeg(video, tmp_path, rotation):
    p = video(f"rot{rotation}.mp4", rotation=rotation, size=(64, 48), duration=0.3, fps=10)
    ffmpeg("-i", str(p), "-frames:v", "1", str(tmp_path / "ref.png"))  # ffmpeg autorotates
    ref = np.asarray(Image.open(tmp_path / "ref.png").convert("RGB"), dtype=np.float32)
    out = tmp_path / "out"
    recs = decode_frames(p, probe_video(p), SamplingSpec(mode="keyframes", size=48), out)
    img = load(out, recs[0])
    assert img.shape == ref.shape == ((64, 48, 3) if rotation in (90, 270) else (48, 64, 3))
    assert np.abs(img - ref).mean() < 12.0
    if rotation == 180:
        assert np.abs(img - ref[::-1, ::-1]).mean() > 20  # the check can tell orientations apart


def test_resized_to_short_side(tmp_path):
    p = tmp_path / "odd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=175x143:r=10:d=1", "-c:v", "libx264",
           "-preset", "ultrafast", str(p))
    for size in (64, 200):
        out = tmp_path / str(size)
        recs = decode_frames(p, probe_video(p), SamplingSpec(frames_per_video=2, size=size), out)
        with Image.open(out / recs[0].filename) as im:
            assert im.size == (round(175 * size / 143), size)


def test_jpeg_quality_is_used(video, tmp_path):
    p = video("q.mp4", duration=0.3, size=(128, 96), source="mandelbrot")
    sizes = []
    for q in (20, 95):
        out = tmp_path / f"q{q}"
        recs = decode_frames(p, probe_video(p), SamplingSpec(frames_per_video=1, size=96, jpeg_quality=q), out)
        sizes.append((out / recs[0].filename).stat().st_size)
    assert sizes[0] < sizes[1] / 1.5


def _corrupt_after(path, fraction):
    """Random bytes over the coded frames from ``fraction`` of the mdat payload on."""
    data = bytearray(path.read_bytes())
    i = data.find(b"mdat")
    n = struct.unpack(">I", data[i - 4:i])[0]
    a = i + 4 + int((n - 8) * fraction)
    data[a:i - 4 + n] = np.random.default_rng(0).integers(0, 256, i - 4 + n - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("spec", [SamplingSpec(frames_per_video=4, size=48),
                                  SamplingSpec(clips_per_video=2, clip_len=4, size=48)],
                         ids=["frames", "clips"])
def test_undecodable_video_raises_and_leaves_nothing(video, tmp_path, spec):
    p = video("bad.mp4", duration=1.0, fps=10)
    probe = probe_video(p)
    _corrupt_after(p, 0.0)
    out = tmp_path / "out"
    with pytest.raises(VideoError, match="no frame decodes|does not decode"):
        decode_frames(p, probe, spec, out)
    assert list(out.iterdir()) == []


def test_corrupt_tail_keeps_the_good_frames(video, tmp_path):
    p = video("tail.mp4", duration=2.0, fps=10, gop=5)
    probe = probe_video(p)
    _corrupt_after(p, 0.6)
    recs = decode_frames(p, probe, SamplingSpec(frames_per_video=4, size=48), tmp_path)
    assert 1 <= len(recs) <= 4 and recs[0].timestamp_s == pytest.approx(0.2)


def test_hostile_file_refused_at_decode_too(video, tmp_path):
    target = video("t.mp4")
    probe = probe_video(target)
    fake = tmp_path / "x.mp4"
    fake.write_text(f"#EXTM3U\n#EXTINF:1,\n{target}\n#EXT-X-ENDLIST\n")
    with pytest.raises(VideoError, match="playlist"):
        decode_frames(fake, probe, SamplingSpec(size=48), tmp_path / "out")


@pytest.mark.parametrize("name", ["-y.mp4", "a b é.mkv"])
def test_odd_names_decode(video, tmp_path, name):
    p = video(name, duration=0.5)
    recs = decode_frames(p, probe_video(p), SamplingSpec(frames_per_video=3, size=48), tmp_path / "o")
    assert len(recs) == 3


def test_threads_option(video, tmp_path):
    p = video("t.mp4", duration=1.0)
    a = decode_frames(p, probe_video(p), SamplingSpec(size=48), tmp_path / "a", threads=1)
    b = decode_frames(p, probe_video(p), SamplingSpec(size=48), tmp_path / "b", threads=3)
    assert a == b


def test_truncated_download_gives_the_frames_it_has(tmp_path, monkeypatch):
    """moov up front (faststart) but the data cut at half: later targets get the last good frame,
    and the stream's end is decoded once, not once per target."""
    full = counter_video(tmp_path / "fs.mp4", duration=4, fps=25, gop=10,
                         extra=("-movflags", "+faststart"))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    probe = probe_video(cut)
    assert probe.frame_count == 100  # the header still promises the whole video
    counter = _Counter(monkeypatch)
    recs = decode_frames(cut, probe, SamplingSpec(frames_per_video=8, size=48), tmp_path / "out")
    times = [r.timestamp_s for r in recs]
    assert 2 <= len(recs) < 8 and times == sorted(set(times)) and times[-1] < 2.5
    assert counter.frames < 2 * probe.frame_count


# --- clips -------------------------------------------------------------------------------------

def clip_targets(probe, clips, length, fps):
    """Reference targets, from the definition: clip k centred on the centre of segment k of
    ``clips`` equal segments (moved inside the video if it overruns), frames 1/fps apart."""
    span, start, end = length / fps, probe.start_s, probe.start_s + probe.duration_s
    out = []
    for k in range(clips):
        centre = start + (k + 0.5) * probe.duration_s / clips
        first = min(max(centre - span / 2, start), end - span)
        out.append([first + j / fps for j in range(length)])
    return out


@pytest.mark.parametrize("name", ["bframes.mp4", "gop.mkv", "start.ts"])
def test_clip_frames_are_exact_and_one_over_clip_fps_apart(clips, tmp_path, name):
    path = clips[name]
    probe = probe_video(path)
    spec = SamplingSpec(clips_per_video=3, clip_len=6, clip_fps=12.5, size=48)
    recs = decode_frames(path, probe, spec, tmp_path)
    ref = full_decode(path)
    means = np.array([frame.mean() for _, frame in ref])
    targets = clip_targets(probe, 3, 6, 12.5)
    assert [(r.clip, r.pos) for r in recs] == [(k, j) for k in range(3) for j in range(6)]
    for rec, t in zip(recs, [t for clip in targets for t in clip]):
        i = shown_at(ref, t)
        assert rec.timestamp_s == pytest.approx(ref[i][0], abs=1e-9) and not rec.padded
        err = np.abs(means - load(tmp_path, rec).mean())
        assert int(np.argmin(err)) == i and err[i] < 0.6, (rec, i)
    for k in range(3):  # 25 fps video, 12.5 fps clip: every other frame, no gap, no repeat
        shown = [shown_at(ref, t) for t in targets[k]]
        assert np.diff(shown).tolist() == [2] * 5
        assert [r.frame_index for r in recs[6 * k:6 * k + 6]] == \
            [round((ref[i][0] - probe.start_s) * 25) for i in shown]
    # one JPEG per distinct frame
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({r.filename for r in recs})


def test_clip_faster_than_the_video_repeats_frames_and_shares_their_jpeg(clips, tmp_path):
    path = clips["bframes.mp4"]
    spec = SamplingSpec(clips_per_video=1, clip_len=8, clip_fps=50.0, size=48)
    recs = decode_frames(path, probe_video(path), spec, tmp_path)
    assert len(recs) == 8 and len({r.filename for r in recs}) == 4
    assert [r.frame_index for r in recs][::2] == [r.frame_index for r in recs][1::2]
    assert len(list(tmp_path.iterdir())) == 4


def test_short_video_pads_with_its_last_frame_or_is_dropped(tmp_path):
    p = counter_video(tmp_path / "short.mp4", duration=0.8, fps=10, gop=4)  # 8 frames
    probe = probe_video(p)
    ref = full_decode(p)
    spec = SamplingSpec(clips_per_video=2, clip_len=16, clip_fps=15.0, size=48)
    recs = decode_frames(p, probe, spec, tmp_path / "pad")
    assert len(recs) == 16 and {r.clip for r in recs} == {0}  # one clip: the whole video
    assert [r.padded for r in recs] == [j / 15 >= 0.8 - 1e-9 for j in range(16)]
    for j, rec in enumerate(recs):
        assert rec.timestamp_s == pytest.approx(ref[shown_at(ref, j / 15)][0])
    last = ref[-1][0]
    assert all(r.timestamp_s == pytest.approx(last) and r.filename == recs[-1].filename
               for r in recs if r.padded)
    drop = SamplingSpec(clips_per_video=2, clip_len=16, clip_fps=15.0, short_clips="drop")
    with pytest.raises(VideoError, match=r"^shorter than one clip: 0\.8 s < 1\.07 s"):
        decode_frames(p, probe, drop, tmp_path / "drop")
    assert not any((tmp_path / "drop").glob("*.jpg"))


class _Seeks:
    """Counts the cursor's container seeks (wraps decode._Cursor._seek; seeking is real)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = decode._Cursor._seek

        def counting(cursor, at):
            self.count += 1
            return real(cursor, at)
        monkeypatch.setattr(decode._Cursor, "_seek", counting)


def test_sparse_clips_seek_once_each_and_do_not_decode_the_whole_video(tmp_path, monkeypatch):
    """60 s at 25 fps, a keyframe every 2 s: each 1.6 s clip spans a keyframe, where a frame
    sampler would seek again; a clip seeks once and decodes on."""
    path = make_video(tmp_path / "gop50.mp4", duration=60, fps=25, gop=50, size=(32, 24),
                      source="testsrc")
    probe = probe_video(path)
    seeks, counter = _Seeks(monkeypatch), _Counter(monkeypatch)
    spec = SamplingSpec(clips_per_video=4, clip_len=8, clip_fps=5.0, size=24)
    recs = decode_frames(path, probe, spec, tmp_path / "out")
    targets = clip_targets(probe, 4, 8, 5.0)
    keys = [2.0 * i for i in range(30)]
    assert all(any(clip[0] < k <= clip[-1] for k in keys) for clip in targets)
    assert seeks.count == 4
    assert counter.frames <= 4 * (50 + 8 * 5 + 1) < probe.frame_count / 3
    expected = [int(t * 25 + 1e-6) for clip in targets for t in clip]  # CFR from 0: frame k at k/25
    assert [r.frame_index for r in recs] == expected


def test_same_frames_give_the_same_jpeg_bytes(video, tmp_path):
    """A frame's JPEG bytes (hashed as provenance) depend on the frame only, also at sizes that
    are no multiple of the JPEG's 16-pixel blocks, whatever was encoded before."""
    odd = video("odd.mp4", size=(176, 144), duration=0.4, fps=10, source="mandelbrot")
    other = video("other.mp4", size=(320, 240), duration=0.4, fps=10)
    spec = SamplingSpec(frames_per_video=4, size=57)
    hashes = []
    for i, path in enumerate((odd, other, odd, other, odd)):
        recs = decode_frames(path, probe_video(path), spec, tmp_path / str(i))
        hashes.append([r.file_hash for r in recs])
    assert hashes[0] == hashes[2] == hashes[4] and hashes[1] == hashes[3]
