"""sample: spec validation and the target times each mode plans (pure arithmetic on a probe)."""
import pytest

from vidfeat.ingestion.probe import ProbeResult, probe_video
from vidfeat.ingestion.sample import SamplingSpec, max_distinct_frames, plan_times


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
