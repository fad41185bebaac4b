"""Ingest speed and memory, measured side by side in one run; prints ratios, writes JSON.

Whole commands are timed (a subprocess each, start-up included), on generated H.264 videos
(cached under ``.bench/ingest``). Against the decoders a user would script themselves (peers
that are not installed are skipped with a note; ``pip install vidfeat[bench]`` adds decord),
each writing the same JPEGs (short side 256, quality 90); runs alternate, the median of
``--runs`` is kept and the load average is printed with each row:

* 20 short clips (10 s, 640x360, GOP 30), 16 frames each: ``vidfeat ingest`` vs a minimal
  decord script (VideoReader + get_batch + PIL resize and save): target >= 1 (vidfeat faster).
* keyframes of a 5-minute GOP-250 720p video: ``vidfeat ingest --keyframes`` vs PyAV with
  ``skip_frame="NONKEY"`` (target >= 1) and vs ``ffmpeg -skip_frame nokey`` (target >= 0.83,
  i.e. within 1.2x).
* one GOP-250 video in isolation, 16 frames: the decode limit (as many frames as the 16 seeks
  must decode, decoded front to back with the same threads, timed in this run) over the time
  ``decode_frames`` takes in a fresh process whose imports are a worker's (its sandbox child
  imports them before the first video; start-up is the row below): target >= 0.95. Also over
  a bare PyAV loop decoding the very same GOP prefixes (seek, feed packets up to the target,
  drain; 16 keyframes where the front-to-back decode meets 9): target >= 0.95.
* start-up: ``vidfeat ingest`` of one 1-s video minus ``python -c "import av"``: <= 0.5 s
  (the command never imports pandas: its tables are rows and Arrow).

and, against the HowTo100M-style baseline (ffmpeg fps filter over a full decode, one process per
video, GOP 250 and GOP 60 720p videos; ``--rows all``):

* ``vidfeat ingest`` 16 frames/video vs that baseline: target >= 4x.
* ``--keyframes`` on the GOP-250 videos vs that baseline writing as many JPEGs: target >= 10x.
* dense ``--fps 1`` vs the plain ffmpeg command line writing the same JPEGs: within 10%.
* ``--jobs 2`` vs ``--jobs 1`` (16 frames/video): target >= 1.7x.
* provenance: the share of ``vidfeat ingest``'s time spent hashing (every stored JPEG's bytes
  and every source's ``source_hash``, re-done on the same files right after the same run): the
  slow-down over an ingest without hashing, target <= 1.05.
* peak RSS of one worker (probe + decode in a fresh process) on a 30-minute video: < 500 MB.

    python benchmarks/bench_ingest.py [--quick] [--rows peers|all] [--runs N] [--json PATH]
    (JSON only with --json)

``--jobs-scaling N`` runs the many-core rows instead (issue 14, a 16-core machine; see
``many_core_rows``): ``--jobs N`` vs ``--jobs 1`` over 64 small generated videos (target
>= 10x), and on ``--minutes``-minute 720p videos 16 frames/video (>= 10x) and ``--keyframes``
(>= 20x) vs the full-decode baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _provenance import provenance

from vidfeat.media import ffmpeg_exe

ROOT = Path(__file__).resolve().parents[1]
VIDFEAT = [sys.executable, "-m", "vidfeat"]


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
                   check=True)


def make_long(path: Path, *, gop: int, duration: int, chunk: int) -> Path:
    """A ``duration``-second 1280x720 25 fps H.264 video: one encoded chunk, stream-copied."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    piece = path.with_name(f".chunk-g{gop}-{chunk}.mp4")
    if not piece.exists():
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=s=1280x720:r=25:d={chunk}", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(gop),
               "-keyint_min", str(gop), "-sc_threshold", "0", str(piece))
    listing = path.with_suffix(".txt")  # our own file list: the concat demuxer is trusted here
    listing.write_text("".join(f"file '{piece.name}'\n" for _ in range(duration // chunk)))
    # the file's name in its metadata: two videos of one chunk are distinct files (ingest counts
    # byte-identical copies as one video and skips the second)
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
           "-metadata", f"title={path.name}", str(path))
    listing.unlink()
    return path


def dataset(cache: Path, quick: bool) -> dict[str, list[Path]]:
    """Class-folder trees ``mix`` (2x GOP 250 + 2x GOP 60), ``g250`` and ``long`` (30 min)."""
    minutes = 1 if quick else 5
    chunk = 10 if quick else 60
    tag = "quick-v2" if quick else "full-v2"  # v2: distinct files (v1's pairs were identical)
    videos = {
        "g250": [make_long(cache / tag / "g250" / "x" / f"g250_{i}.mp4", gop=250,
                           duration=60 * minutes, chunk=chunk) for i in range(2)],
        "g60": [make_long(cache / tag / "g60" / "x" / f"g60_{i}.mp4", gop=60,
                          duration=60 * minutes, chunk=chunk) for i in range(2)],
        "long": [make_long(cache / tag / "long" / "x" / "long.mp4", gop=250,
                           duration=(180 if quick else 1800), chunk=chunk)],
    }
    videos["mix"] = linked_mix(cache / tag / "mix" / "x", videos["g250"] + videos["g60"])
    return videos


def linked_mix(mix: Path, videos: list[Path]) -> list[Path]:
    """``videos`` hard-linked into the class folder ``mix`` (no copy); its sorted listing."""
    mix.mkdir(parents=True, exist_ok=True)
    for v in videos:
        if not (mix / v.name).exists():
            os.link(v, mix / v.name)
    return sorted(mix.iterdir())


REPEAT = 2  # each timing is the best of this many runs (the machine may be shared)


def best_of(measure):
    """Run ``measure()`` (-> (seconds, *rest)) REPEAT times; keep the fastest run."""
    return min((measure() for _ in range(REPEAT)), key=lambda r: r[0])


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Seconds ``cmd`` ran; its output is dropped (its stderr shown if it fails)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))}... failed:\n"
                           f"{proc.stderr.decode(errors='replace')[-3000:]}")
    return seconds


def ingest_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [*VIDFEAT, "ingest", str(src), "-o", str(out), "--no-progress", "--split", "1,0,0",
            *extra]


def ours(src: Path, work: Path, *extra: str, env: dict | None = None) -> tuple[float, int]:
    """Seconds for the whole ``vidfeat ingest`` command, and the JPEGs it wrote (best run)."""
    return best_of(lambda: _ours_once(src, work, *extra, env=env))


def _ours_once(src: Path, work: Path, *extra: str, env: dict | None = None) -> tuple[float, int]:
    out = work / f"ours-{time.monotonic_ns()}"
    seconds = timed(ingest_cmd(src, out, *extra), env)
    n = sum(1 for _ in (out / "frames").rglob("*.jpg"))
    shutil.rmtree(out)
    return seconds, n


def hashing_cost(src: Path, work: Path, *extra: str) -> tuple[float, float, int]:
    """(ingest seconds, seconds of the hashing it does, frames): the hashes ingest computes,
    timed again on the same bytes (frames from memory, as ingest hashes them before writing;
    sources read from disk, as the probe does)."""
    from vidfeat.files import hash_bytes, source_hash

    out = work / f"hash-{time.monotonic_ns()}"
    seconds = timed(ingest_cmd(src, out, *extra))
    frames = [p.read_bytes() for p in (out / "frames").rglob("*.jpg")]
    start = time.perf_counter()
    for data in frames:
        hash_bytes(data)
    for video in src.rglob("*.mp4"):
        source_hash(video)
    hashing = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds, hashing, len(frames)


def duration_of(path: Path) -> float:
    from vidfeat.ingestion.probe import probe_video

    return probe_video(path).duration_s


def baseline(videos: list[Path], work: Path, **kw) -> float:
    """ffmpeg fps filter over a full decode, one process per video, writing JPEGs (best run)."""
    return best_of(lambda: (_baseline_once(videos, work, **kw),))[0]


def _baseline_once(videos: list[Path], work: Path, *, per_video: int | None = None,
                   fps: float | None = None, size: int = 256) -> float:
    start = time.perf_counter()
    for v in videos:
        rate = fps if fps is not None else per_video / duration_of(v)
        out = work / f"base-{v.stem}"
        out.mkdir(parents=True, exist_ok=True)
        ffmpeg("-i", str(v.absolute()), "-vf",
               f"fps={rate},scale='if(lt(iw,ih),{size},-2)':'if(lt(iw,ih),-2,{size})'",
               "-q:v", "2", str(out / "%06d.jpg"))
        shutil.rmtree(out)
    return time.perf_counter() - start


WORKER = """
import resource, sys, tempfile
from vidfeat.ingestion.probe import probe_video
from vidfeat.ingestion.decode import decode_frames
from vidfeat.ingestion.sample import SamplingSpec
path, mode = sys.argv[1], sys.argv[2]
spec = SamplingSpec(mode="fps", fps=1.0) if mode == "fps" else SamplingSpec()
with tempfile.TemporaryDirectory() as out:
    n = len(decode_frames(path, probe_video(path), spec, out))
peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(n, peak)
"""


def worker_peak_mb(video: Path, mode: str) -> tuple[float, int]:
    """Peak RSS (MB) of probe + decode of ``video`` in a fresh process, and frames written."""
    out = subprocess.run([sys.executable, "-c", WORKER, str(video), mode], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[1]) / 1024, int(out[0])


# --------------------------------------------------------------------------------------------
# Side by side with the decoders a user would script: each peer is a whole process writing the
# same JPEGs (short side SIZE, quality QUALITY); runs alternate and the median is kept.
# --------------------------------------------------------------------------------------------

SIZE, QUALITY, PER_VIDEO = 256, 90, 16
RUNS = 5  # runs per command in the side-by-side rows (median kept)

_RESIZE = f"""
from PIL import Image
def save(array_or_image, path):
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    w, h = im.size
    s = {SIZE} / min(w, h)
    im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR).save(path, quality={QUALITY})
"""

DECORD_CLIPS = _RESIZE + f"""
import os, sys
from decord import VideoReader, cpu
src, out = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    vr = VideoReader(os.path.join(src, name), ctx=cpu(0))
    idx = [int((i + 0.5) * len(vr) / {PER_VIDEO}) for i in range({PER_VIDEO})]
    folder = os.path.join(out, name)
    os.makedirs(folder)
    for i, frame in zip(idx, vr.get_batch(idx).asnumpy()):
        save(frame, os.path.join(folder, f"{{i:06d}}.jpg"))
"""

PYAV_KEYFRAMES = _RESIZE + """
import os, sys
import av
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
with av.open(src) as c:
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    s.codec_context.skip_frame = "NONKEY"
    for i, frame in enumerate(c.decode(s)):
        save(frame.to_image(), os.path.join(out, f"{i:06d}.jpg"))
"""

# the frames the sampled seeks must decode, decoded front to back (no conversion) with the
# threads vidfeat's one worker uses: the best any seeking decoder can do on this video
DECODE_LIMIT = """
import sys, time
import av
from vidfeat.system import decode_threads
path, n = sys.argv[1], int(sys.argv[2])
with av.open(path) as c:
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    s.codec_context.thread_count = decode_threads(1)
    start = time.perf_counter()
    done = sum(1 for _, f in zip(range(n), c.decode(s)))
print(done, time.perf_counter() - start)
"""

# decode_frames as a worker runs it: its sandbox child has imported CHILD_PRELOAD (numpy,
# simplejpeg...) before the first video, as the limit has imported av before its timer starts;
# those imports are start-up, measured by the start-up row
# the same GOP prefixes as the seeks decode, by a bare PyAV loop: per target, seek to the keyframe
# before it (or decode on when none lies between), feed packets up to the target, drain
DECODE_PREFIXES = """
import bisect, sys, time
import av
from vidfeat.ingestion.probe import probe_video
from vidfeat.ingestion.sample import SamplingSpec, plan_times
from vidfeat.system import decode_threads
path = sys.argv[1]
probe = probe_video(path)
with av.open(path) as c:
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    s.codec_context.thread_count = decode_threads(1)
    keys = sorted(e.timestamp for e in s.index_entries if e.is_keyframe)
    ticks = [int(t / s.time_base + 1e-6) for t in sorted(plan_times(probe, SamplingSpec()))]
    drain, done, pos, held, drained = av.Packet(), 0, None, None, False
    drain.stream = s
    start = time.perf_counter()
    for i, tick in enumerate(ticks):
        key = keys[bisect.bisect_right(keys, tick) - 1]
        if pos is None or key > pos or drained:
            c.seek(key, stream=s, backward=True, any_frame=False)
            packets, held, drained = c.demux(s), None, False
        while not drained:
            p, held = (held if held is not None else next(packets, drain)), None
            if p.dts is not None and p.dts > tick:
                held = p  # past the target: fed only if the next target decodes on
                break
            drained = p.size == 0  # the end of the stream drains the decoder
            done += len(p.decode())
        pos = tick
        later = ticks[i + 1] if i + 1 < len(ticks) else None
        if not drained and (later is None or keys[bisect.bisect_right(keys, later) - 1] > pos):
            done += len(drain.decode())
            drained = True
print(done, time.perf_counter() - start)
"""

DECODE_ONE = """
import importlib, sys, tempfile, time
from vidfeat.ingestion.decode import decode_frames
from vidfeat.ingestion.probe import probe_video
from vidfeat.ingestion.sample import SamplingSpec
from vidfeat.ingestion.tasks import CHILD_PRELOAD
from vidfeat.system import decode_threads
for name in CHILD_PRELOAD:
    importlib.import_module(name.split(":")[0])
path = sys.argv[1]
probe = probe_video(path)
with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    n = len(decode_frames(path, probe, SamplingSpec(), out, threads=decode_threads(1)))
print(n, time.perf_counter() - start)
"""


def have(module: str) -> bool:
    """True when ``module`` imports here; else prints the note that its peer is skipped."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return True
    print(f"note: {module} is not installed: its peer is skipped (pip install vidfeat[bench])",
          file=sys.stderr)
    return False


def make_clip(path: Path, i: int) -> Path:
    """A 10-s 640x360 30 fps H.264 clip, GOP 30, its hue shifted by ``i`` (distinct bytes)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ffmpeg("-f", "lavfi", "-i", "testsrc2=s=640x360:r=30:d=10", "-vf", f"hue=h={i * 17}",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30",
               "-keyint_min", "30", "-sc_threshold", "0", str(path))
    return path


def peer_videos(cache: Path, quick: bool) -> dict[str, Path]:
    """Folders ``clips`` (20 clips), ``tiny`` (one 1-s video) and ``one`` (one GOP-250 video)."""
    tag = "quick" if quick else "full"
    for i in range(20):
        make_clip(cache / "clips" / "x" / f"clip{i:02d}.mp4", i)
    tiny = cache / "tiny" / "x" / "tiny.mp4"
    if not tiny.exists():
        tiny.parent.mkdir(parents=True, exist_ok=True)
        ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=1", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(tiny))
    one = cache / tag / "one" / "x" / "g250.mp4"
    if not one.exists():
        minutes = 1 if quick else 5
        make_long(one, gop=250, duration=60 * minutes, chunk=10 if quick else 60)
    return {"clips": cache / "clips", "tiny": tiny.parent.parent, "one": one.parent.parent}


def in_fresh_dir(cmd, work: Path):
    """A measure: run ``cmd(out)`` (an argv) into a new folder under ``work``, timed, removed."""
    def measure() -> float:
        out = work / f"run-{time.monotonic_ns()}"
        seconds = timed(cmd(out))
        shutil.rmtree(out, ignore_errors=True)
        return seconds
    return measure


def side_by_side(measures: dict, runs: int) -> dict[str, float]:
    """Median seconds of each measure, the measures alternating (rotated order each round)."""
    names, seconds = list(measures), {name: [] for name in measures}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(measures[name]())
    return {name: statistics.median(v) for name, v in seconds.items()}


def frames_to_decode(path: Path) -> int:
    """Frames the 16 uniform targets of ``path`` need decoded when each seeks to the keyframe
    before it and decodes on (or decodes on from the previous target when no keyframe lies
    between): from the container index, independently of vidfeat's cursor."""
    import av

    from vidfeat.ingestion.probe import probe_video
    from vidfeat.ingestion.sample import SamplingSpec, plan_times

    probe = probe_video(path)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        keys = sorted(round((e.timestamp * s.time_base - probe.start_s) * probe.fps)
                      for e in s.index_entries if e.is_keyframe)
    total, pos = 0, -1
    for t in sorted(plan_times(probe, SamplingSpec())):
        frame = int((t - probe.start_s) * probe.fps + 1e-6)  # the last frame at or before t
        key = max(k for k in keys if k <= frame)
        total += frame - max(pos, key - 1)  # from pos+1 or from the keyframe
        pos = frame
    return total


def peer_rows(videos: dict[str, Path], work: Path, runs: int) -> list[tuple]:
    """The side-by-side rows: (name, ratio, target, ours s, other s, frames, load)."""
    rows = []
    clips = videos["clips"]
    if have("decord"):
        t = side_by_side({
            "ours": in_fresh_dir(lambda o: ingest_cmd(clips, o), work),
            "decord": in_fresh_dir(lambda o: [sys.executable, "-c", DECORD_CLIPS,
                                               str(clips / "x"), str(o)], work)}, runs)
        rows.append(("20 clips x16: decord script / vidfeat", t["decord"] / t["ours"], ">= 1",
                     t["ours"], t["decord"], 320, os.getloadavg()[0]))
    one = videos["one"] / "x" / "g250.mp4"  # not glob: the folder also holds .chunk-*.mp4
    rows += keyframe_rows(videos["one"], one, work, runs)
    rows += decode_limit_rows(one, runs)
    rows += startup_rows(videos["tiny"], work, runs)
    return rows


def keyframe_rows(src: Path, video: Path, work: Path, runs: int) -> list[tuple]:
    ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-skip_frame", "nokey",
          "-i", str(video), "-fps_mode", "passthrough", "-vf",
          f"scale='if(lt(iw,ih),{SIZE},-2)':'if(lt(iw,ih),-2,{SIZE})'", "-q:v", "2"]
    t = side_by_side({
        "ours": in_fresh_dir(lambda o: ingest_cmd(src, o, "--keyframes"), work),
        "pyav": in_fresh_dir(lambda o: [sys.executable, "-c", PYAV_KEYFRAMES, str(video), str(o)],
                             work),
        "ffmpeg": in_fresh_dir(lambda o: (o.mkdir(), [*ff, str(o / "%06d.jpg")])[1], work)}, runs)
    load, n = os.getloadavg()[0], keyframe_count(video)
    return [("keyframes: PyAV skip_frame NONKEY / vidfeat", t["pyav"] / t["ours"], ">= 1",
             t["ours"], t["pyav"], n, load),
            ("keyframes: ffmpeg -skip_frame nokey / vidfeat", t["ffmpeg"] / t["ours"], ">= 0.83",
             t["ours"], t["ffmpeg"], n, load)]


def keyframe_count(video: Path) -> int:
    import av

    with av.open(str(video)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.is_keyframe)


def decode_limit_rows(video: Path, runs: int) -> list[tuple]:
    need = frames_to_decode(video)

    def seconds_of(code: str, *args: str):
        return lambda: float(subprocess.run([sys.executable, "-c", code, *args], check=True,
                                            capture_output=True, text=True).stdout.split()[1])
    t = side_by_side({"ours": seconds_of(DECODE_ONE, str(video)),
                      "limit": seconds_of(DECODE_LIMIT, str(video), str(need)),
                      "prefixes": seconds_of(DECODE_PREFIXES, str(video))}, runs)
    load = os.getloadavg()[0]
    return [("one GOP-250 video x16: decode limit / decode_frames", t["limit"] / t["ours"],
             ">= 0.95", t["ours"], t["limit"], need, load),
            ("one GOP-250 video x16: bare PyAV seek loop / decode_frames",
             t["prefixes"] / t["ours"], ">= 0.95", t["ours"], t["prefixes"], need, load)]


def startup_rows(src: Path, work: Path, runs: int) -> list[tuple]:
    t = side_by_side({
        "ours": in_fresh_dir(lambda o: ingest_cmd(src, o), work),
        "av": lambda: timed([sys.executable, "-c", "import av"])}, runs)
    print(f"start-up: vidfeat ingest (one 1-s video) {t['ours']:.2f} s, python -c 'import av' "
          f"{t['av']:.2f} s", file=sys.stderr)
    return [("start-up: vidfeat ingest - import av (s)", t["ours"] - t["av"], "<= 0.5",
             t["ours"], t["av"], PER_VIDEO, os.getloadavg()[0])]


def baseline_rows(videos: dict[str, list[Path]], work: Path) -> list[tuple]:
    """The rows against the ffmpeg fps-filter baseline and the scaling/hashing rows."""
    mix, g250 = videos["mix"][0].parent.parent, videos["g250"][0].parent.parent
    rows = []
    t_ours, n = ours(mix, work, "--frames-per-video", "16")
    t_base = baseline(videos["mix"], work, per_video=16)
    rows.append(("16 frames/video vs ffmpeg fps filter (mix)", t_base / t_ours, ">= 4", t_ours, t_base, n))
    t_kf, n_kf = ours(g250, work, "--keyframes")
    t_base_kf = baseline(videos["g250"], work, per_video=n_kf // len(videos["g250"]))
    rows.append(("--keyframes vs ffmpeg fps filter (GOP 250)", t_base_kf / t_kf, ">= 10", t_kf, t_base_kf, n_kf))
    t_dense, n_dense = ours(mix, work, "--fps", "1")
    t_ff = baseline(videos["mix"], work, fps=1)
    rows.append(("--fps 1 time / ffmpeg command line time", t_dense / t_ff, "<= 1.10", t_dense, t_ff, n_dense))
    t_j2, _ = ours(mix, work, "--frames-per-video", "16", "--jobs", "2")
    rows.append(("--jobs 2 speed-up over --jobs 1", t_ours / t_j2, ">= 1.7", t_j2, t_ours, n))
    # --jobs 1 already decodes with every core's threads; this row isolates worker scaling
    one = {"VIDFEAT_DECODE_THREADS": "1"}
    t_s1, _ = ours(mix, work, "--frames-per-video", "16", env=one)
    t_s2, _ = ours(mix, work, "--frames-per-video", "16", "--jobs", "2", env=one)
    rows.append(("--jobs 2 vs --jobs 1, 1 decoder thread each", t_s1 / t_s2, ">= 1.7", t_s2, t_s1, n))
    t_h, t_hash, n_h = best_of(lambda: hashing_cost(mix, work, "--frames-per-video", "16"))
    rows.append(("ingest time / ingest without hashing (16 f/v)", t_h / (t_h - t_hash),
                 "<= 1.05", t_h, t_h - t_hash, n_h))
    return [(*row, os.getloadavg()[0]) for row in rows]


def run(quick: bool, cache: Path, *, rows_kind: str = "all", runs: int = RUNS) -> dict:
    t0 = time.perf_counter()
    peers = peer_videos(cache, quick)
    videos = dataset(cache, quick) if rows_kind == "all" else {"long": [make_long(
        cache / ("quick-v2" if quick else "full-v2") / "long" / "x" / "long.mp4", gop=250,
        duration=180 if quick else 1800, chunk=10 if quick else 60)]}
    print(f"videos ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench_ingest-"))
    try:
        rows = peer_rows(peers, work, runs)
        if rows_kind == "all":
            rows += baseline_rows(videos, work)
        peak_u, _ = worker_peak_mb(videos["long"][0], "uniform")
        peak_f, n_f = worker_peak_mb(videos["long"][0], "fps")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    long_s = duration_of(videos["long"][0])
    results = {
        **provenance(),
        "quick": quick,
        "runs": runs,
        "repeat": REPEAT,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_end": os.getloadavg()},
        "videos": {k: [p.name for p in v] for k, v in videos.items()},
        "ratios": [{"name": name, "ratio": round(r, 3), "target": target, "ours_s": round(a, 3),
                    "other_s": round(b, 3), "frames": frames, "load1": round(load, 2)}
                   for name, r, target, a, b, frames, load in rows],
        "worker_peak_rss_mb": {"video_s": long_s, "uniform16": round(peak_u, 1),
                               "fps1": round(peak_f, 1), "fps1_frames": n_f, "target": "< 500"},
    }
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(f"{'measure':52s} {'ratio':>7s} {'target':>8s} {'ours s':>8s} {'other s':>8s} "
          f"{'frames':>7s} {'load':>5s}")
    for r in results["ratios"]:
        print(f"{r['name']:52s} {r['ratio']:7.2f} {r['target']:>8s} {r['ours_s']:8.2f} "
              f"{r['other_s']:8.2f} {r['frames']:7d} {r['load1']:5.2f}")
    m = results["worker_peak_rss_mb"]
    print(f"worker peak RSS on a {m['video_s'] / 60:.0f}-minute 720p video: uniform 16 "
          f"{m['uniform16']:.0f} MB, --fps 1 {m['fps1']:.0f} MB (target < 500 MB)")


# ---------------------------------------------------------- issue 14: the many-core rows
def small_videos(root: Path, n: int, *, seconds: float, size: tuple[int, int]) -> Path:
    """``n`` distinct small H.264 videos (4 class folders, GOP 50), made in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from vidfeat.synth import make_video

    sources = ("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc")

    def one(i: int) -> None:
        path = root / f"c{i % 4}" / f"v{i:03d}.mp4"
        if not path.exists():  # the title tag keeps same-source videos distinct files
            make_video(path, duration=seconds, fps=25, size=size, source=sources[i % 4],
                       gop=50, extra=("-metadata", f"title=v{i}"))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    return root


def long_720p(cache: Path, minutes: float) -> dict[str, list[Path]]:
    """Two GOP-250 and two GOP-60 ``minutes``-minute 720p videos (one encoded chunk each,
    stream-copied), in class folders ``g250``/``mix`` as ``dataset`` lays them out."""
    seconds = max(1, round(60 * minutes))
    chunk = next(c for c in (60, 30, 20, 10, 5, 2, 1) if seconds % c == 0 and c <= seconds)
    base = cache / f"m{seconds}s"
    videos = {}
    for gop in (250, 60):  # make_long tags each file with its name: distinct bytes
        videos[f"g{gop}"] = [make_long(base / f"g{gop}" / "x" / f"g{gop}_{i}.mp4", gop=gop,
                                       duration=seconds, chunk=chunk) for i in range(2)]
    videos["mix"] = linked_mix(base / "mix" / "x", videos["g250"] + videos["g60"])
    return videos


def jobs_rows(src: Path, work: Path, jobs: int, n_videos: int) -> list[tuple]:
    """``--jobs N`` vs ``--jobs 1``, 16 frames/video, whole commands (start-up included)."""
    t1, n = ours(src, work, "--frames-per-video", "16", "--jobs", "1")
    tn, _ = ours(src, work, "--frames-per-video", "16", "--jobs", str(jobs))
    return [(f"--jobs {jobs} speed-up over --jobs 1 ({n_videos} small videos)", t1 / tn,
             ">= 10", tn, t1, n)]


def long_rows(videos: dict[str, list[Path]], work: Path, minutes: float) -> list[tuple]:
    """16 frames/video and ``--keyframes`` vs the ffmpeg full-decode baseline (fps filter)."""
    mix, g250 = videos["mix"][0].parent.parent, videos["g250"][0].parent.parent
    t_ours, n = ours(mix, work, "--frames-per-video", "16")
    t_base = baseline(videos["mix"], work, per_video=16)
    t_kf, n_kf = ours(g250, work, "--keyframes")
    t_base_kf = baseline(videos["g250"], work, per_video=max(1, n_kf // len(videos["g250"])))
    return [(f"16 frames/video vs full decode ({minutes:g}-min 720p, mix)", t_base / t_ours,
             ">= 10", t_ours, t_base, n),
            (f"--keyframes vs full decode ({minutes:g}-min 720p, GOP 250)", t_base_kf / t_kf,
             ">= 20", t_kf, t_base_kf, n_kf)]


def many_core_rows(args, save=None) -> dict:
    """Issue 14's rows for a many-core machine, each saved (``save(results)``) once measured:
    ``--jobs N`` vs ``--jobs 1`` over ``--scaling-videos`` small videos, then (unless
    ``--minutes 0``) the 720p rows. Video generation time is reported apart."""
    cache = Path(args.cache)
    w, h = (int(v) for v in args.scaling_size.split("x"))
    results = {**provenance(), "cores": len(os.sched_getaffinity(0)), "jobs": args.jobs_scaling,
               "repeat": REPEAT, "minutes": args.minutes, "scaling_videos": args.scaling_videos,
               "scaling_video": {"seconds": args.scaling_seconds, "size": args.scaling_size},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "generate_s": {}, "ratios": []}
    save = save or (lambda r: None)
    work = Path(tempfile.mkdtemp(prefix="bench_ingest-"))
    try:
        t0 = time.perf_counter()
        src = small_videos(cache / f"small-{args.scaling_videos}-{args.scaling_seconds:g}s-"
                           f"{args.scaling_size}", args.scaling_videos,
                           seconds=args.scaling_seconds, size=(w, h))
        results["generate_s"]["small"] = round(time.perf_counter() - t0, 2)
        rows = jobs_rows(src, work, args.jobs_scaling, args.scaling_videos)
        results["ratios"] += _ratio_dicts(rows)
        save(results)
        if args.minutes > 0:
            t0 = time.perf_counter()
            videos = long_720p(cache, args.minutes)
            results["generate_s"]["720p"] = round(time.perf_counter() - t0, 2)
            results["ratios"] += _ratio_dicts(long_rows(videos, work, args.minutes))
            save(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _ratio_dicts(rows: list[tuple]) -> list[dict]:
    return [{"name": name, "ratio": round(r, 3), "target": target, "ours_s": round(a, 3),
             "other_s": round(b, 3), "frames": frames} for name, r, target, a, b, frames in rows]


def main(argv=None) -> int:
    # every timed Python program (vidfeat and the peers alike) runs from cached bytecode, as an
    # installed package does: with this set, each start-up recompiles vidfeat's ~35 modules
    # (0.06 s here), a cost no user pays
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        print("note: PYTHONDONTWRITEBYTECODE unset for the timed commands", file=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1-minute videos, 3-minute 'long'")
    parser.add_argument("--json", help="write the results here too (e.g. "
                        "benchmarks/results/bench_ingest.json); nothing is written without it")
    parser.add_argument("--cache", default=str(ROOT / ".bench" / "ingest"))
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help="best of N runs per timing (rows against the ffmpeg baseline)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs per command in the side-by-side rows, median kept "
                             f"(default {RUNS}, 3 with --quick)")
    parser.add_argument("--rows", choices=("peers", "all"), default="all",
                        help="peers: the side-by-side rows and memory only")
    parser.add_argument("--jobs-scaling", type=int, default=0, metavar="N",
                        help="only the many-core rows (many_core_rows), --jobs N vs --jobs 1")
    parser.add_argument("--scaling-videos", type=int, default=64)
    parser.add_argument("--scaling-seconds", type=float, default=10.0)
    parser.add_argument("--scaling-size", default="640x360", metavar="WxH")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="720p video length of the many-core rows; 0 skips those rows")
    args = parser.parse_args(argv)
    globals()["REPEAT"] = args.repeat
    if args.jobs_scaling:
        results = many_core_rows(args, save=lambda r: _write_json(args.json, r))
        print_many_core(results)
        _write_json(args.json, results)
        return 0
    runs = args.runs or (3 if args.quick else RUNS)
    results = run(args.quick, Path(args.cache), rows_kind=args.rows, runs=runs)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def print_many_core(results: dict) -> None:
    print(f"{results['cores']} cores; videos generated in {results['generate_s']} s")
    print(f"{'measure':58s} {'ratio':>7s} {'target':>8s} {'ours s':>8s} {'other s':>8s} "
          f"{'frames':>7s}")
    for r in results["ratios"]:
        print(f"{r['name']:58s} {r['ratio']:7.2f} {r['target']:>8s} {r['ours_s']:8.2f} "
              f"{r['other_s']:8.2f} {r['frames']:7d}")


if __name__ == "__main__":
    sys.exit(main())
