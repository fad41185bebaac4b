"""sample: spec validation and the target times each mode plans (pure arithmetic on a probe)."""
import pytest

from vidfeat.ingestion.probe import ProbeResult, probe_video
from vidfeat.ingestion.sample import (
    SamplingSpec,
    max_distinct_frames,
    plan_clips,
    plan_times,
    short_clip_reason,
)


def probe(duration=2.0, fps=25.0, start=0.0, frames=None):
    return ProbeResult(duration_s=duration, fps=fps, avg_fps=fps, vfr=False,
                       frame_count=frames or round(duration * fps), width=64, height=48,
                       rotation=0, codec="h264", has_audio=False, start_s=start)


def test_defaults():
    s = SamplingSpec()
    assert (s.mode, s.frames_per_video, s.fps, s.size, s.jpeg_quality) == ("uniform", 16, None, 256, 90)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "dense"}, r"mode='dense' is not one of 'uniform', 'fps', 'keyframes'"),
    ({"mode": "fps"}, "mode='fps' needs fps="),
    ({"mode": "fps", "fps": 0}, "fps must be > 0"),
    ({"frames_per_video": 0}, "frames_per_video must be > 0"),
    ({"size": -1}, "size must be > 0"),
    ({"jpeg_quality": 0}, r"jpeg_quality must be in 1\.\.100"),
    ({"jpeg_quality": 101}, r"jpeg_quality must be in 1\.\.100"),
])
def test_spec_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingSpec(**kwargs)


def test_uniform_segment_centres():
    assert plan_times(probe(duration=2.0), SamplingSpec(frames_per_video=4)) == \
        pytest.approx([0.25, 0.75, 1.25, 1.75])


def test_uniform_times_are_absolute():
    times = plan_times(probe(duration=1.0, start=1.4), SamplingSpec(frames_per_video=2))
    assert times == pytest.approx([1.65, 2.15])


def test_n_overrides_frames_per_video():
    spec = SamplingSpec(frames_per_video=16)
    assert len(plan_times(probe(), spec, n=3)) == 3
    assert len(plan_times(probe(), spec)) == 16
    with pytest.raises(ValueError, match="n must be > 0"):
        plan_times(probe(), spec, n=0)


def test_uniform_with_as_many_targets_as_frames_hits_each_frame_centre():
    p = probe(duration=1.0, fps=10)
    times = plan_times(p, SamplingSpec(frames_per_video=10))
    assert [int(t * p.fps) for t in times] == list(range(10))  # one target inside each frame


def test_fps_grid():
    assert plan_times(probe(duration=2.0), SamplingSpec(mode="fps", fps=2)) == \
        pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert plan_times(probe(duration=2.1, start=3.0), SamplingSpec(mode="fps", fps=1)) == \
        pytest.approx([3.0, 4.0, 5.0])
    # a clip shorter than one period still gives its first frame
    assert plan_times(probe(duration=0.1), SamplingSpec(mode="fps", fps=1)) == [0.0]


def test_keyframes_plans_nothing():
    assert plan_times(probe(), SamplingSpec(mode="keyframes")) == []


def test_max_distinct_frames():
    p = probe(duration=2.0, fps=25)
    assert max_distinct_frames(p, SamplingSpec()) == 50
    assert max_distinct_frames(p, SamplingSpec(mode="fps", fps=2)) == 4
    assert max_distinct_frames(p, SamplingSpec(mode="fps", fps=100)) == 50
    assert max_distinct_frames(probe(duration=0.1, fps=10), SamplingSpec()) == 1


def test_plan_from_a_real_probe(video):
    p = probe_video(video("a.mp4", duration=2.0, fps=25))
    times = plan_times(p, SamplingSpec(frames_per_video=8))
    assert len(times) == 8 and times == sorted(times)
    assert p.start_s < times[0] and times[-1] < p.start_s + p.duration_s


# --- clips -------------------------------------------------------------------------------------

def clip_spec(**kw):
    return SamplingSpec(**{"clips_per_video": 3, "clip_len": 4, "clip_fps": 8.0, **kw})


def test_clip_spec_defaults_and_record():
    s = SamplingSpec(clips_per_video=2)
    assert (s.clips, s.clip_len, s.clip_fps, s.short_clips) == (True, 16, 15.0, "pad")
    assert s.record()["clips_per_video"] == 2 and s.record()["clip_len"] == 16
    # a frame spec records what it recorded before clips existed (fingerprints stay)
    assert not SamplingSpec().clips
    assert set(SamplingSpec().record()) == {"mode", "frames_per_video", "fps", "size",
                                            "jpeg_quality"}


@pytest.mark.parametrize("kwargs,match", [
    ({"clips_per_video": 0}, "clips_per_video must be > 0"),
    ({"clips_per_video": 2, "clip_len": 0}, "clip_len must be > 0"),
    ({"clips_per_video": 2, "clip_fps": -1.0}, "clip_fps must be > 0"),
    ({"clips_per_video": 2, "short_clips": "trim"}, r"short_clips='trim' is not one of 'pad', 'drop'"),
    ({"clips_per_video": 2, "mode": "fps", "fps": 2}, "clips_per_video and fps exclude each other"),
    ({"clips_per_video": 2, "mode": "keyframes"}, "clips_per_video and keyframes exclude each other"),
])
def test_clip_spec_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingSpec(**kwargs)


def test_clips_centred_in_equal_segments_frames_one_over_fps_apart():
    # 6 s, 3 clips of 4 frames at 8 fps (0.5 s): segment centres 1, 3, 5 s
    clips = plan_clips(probe(duration=6.0, start=2.0), clip_spec())
    assert len(clips) == 3
    for k, clip in enumerate(clips):
        times = [t for t, _ in clip]
        assert times == pytest.approx([2.0 + 2 * k + 0.75 + j / 8 for j in range(4)])
        assert (times[0] + times[-1] + 1 / 8) / 2 == pytest.approx(2.0 + 2 * k + 1)  # centred
        assert not any(p for _, p in clip)


def test_clips_near_the_ends_are_shifted_inside_the_video():
    # 2 s, 4 clips of 1 s: centres 0.25 .. 1.75 would overrun both ends
    clips = plan_clips(probe(duration=2.0), clip_spec(clips_per_video=4, clip_fps=4.0))
    firsts = [clip[0][0] for clip in clips]
    assert firsts == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert all(clip[-1][0] + 0.25 <= 2.0 + 1e-9 for clip in clips)


def test_n_overrides_clips_per_video():
    assert len(plan_clips(probe(duration=6.0), clip_spec(), n=5)) == 5


def test_short_video_gives_one_padded_clip_and_a_reason():
    p = probe(duration=0.8, fps=10)
    spec = clip_spec(clip_len=16, clip_fps=15.0)
    assert short_clip_reason(p, spec) == \
        "shorter than one clip: 0.8 s < 1.07 s (16 frames at 15 fps)"
    [clip] = plan_clips(p, spec)
    assert [t for t, _ in clip] == pytest.approx([j / 15 for j in range(16)])
    assert [padded for _, padded in clip] == [j / 15 >= 0.8 - 1e-9 for j in range(16)]
    assert sum(padded for _, padded in clip) == 4  # 0.8, 0.867, 0.933, 1.0 s
    assert short_clip_reason(probe(duration=2.0), spec) is None
    assert short_clip_reason(p, SamplingSpec()) is None


def test_clip_capacity_counts_non_overlapping_clips():
    spec = clip_spec(clip_fps=8.0)  # 0.5 s clips
    assert max_distinct_frames(probe(duration=6.0), spec) == 12
    assert max_distinct_frames(probe(duration=0.2), spec) == 1
