"""``vidfeat ingest SRC -o OUTDIR``: probe, split, balance and store frames (``vidfeat.ingest``)."""
from __future__ import annotations

import argparse
import sys

from vidfeat.cli._options import add_quiet, choices, defaults, print_summary

HELP = ("probe, sample, split, balance and store frames of labelled videos (or, --unlabelled, "
        "of any videos), with manifests")
LIBRARY = ("vidfeat.ingestion._ingest", "ingest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("src", nargs="?", default=None,
                        help="folder of class folders SRC/<label>/**/<video> (omit with --labels); "
                             "--unlabelled: a folder tree of videos, a CSV/Parquet with a path "
                             "column, or a text file of paths, one per line")
    parser.add_argument("-o", "--output", dest="outdir", metavar="OUTDIR", required=True,
                        help="output folder (reruns resume)")
    parser.add_argument("--labels", default=d["labels"],
                        help="CSV or Parquet with path,label[,split]; relative paths resolve "
                             "against the file's folder")
    parser.add_argument("--unlabelled", action="store_true", default=d["unlabelled"],
                        help="no labels: every video goes to one split 'all' (extract, report "
                             "and export work on it; train does not); --split, --seed, "
                             "--balance and --max-per-class/--max-frames-per-video are refused")
    _add_sampling(parser, d)
    data = parser.add_argument_group("split and balance")
    data.add_argument("--split", default=d["split"],
                      help="train,val,test fractions, stratified by class at the video level")
    data.add_argument("--seed", type=int, default=d["seed"])
    data.add_argument("--balance", default=d["balance"],
                      choices=choices("vidfeat.ingestion.balance", "MODES"),
                      help="train split only")
    data.add_argument("--max-frames-per-video", type=int, default=d["max_frames_per_video"],
                      help="--balance frames: cap per video (default 4x --frames-per-video; "
                           "with clips, 4x --clips-per-video clips of --clip-len frames)")
    data.add_argument("--max-per-class", type=int, default=d["max_per_class"],
                      help="cap train videos per class")
    run = parser.add_argument_group("run")
    run.add_argument("--format", dest="fmt", default=d["fmt"],
                     choices=choices("vidfeat.ingestion.manifest", "FORMATS"),
                     help="manifest file format")
    run.add_argument("--jobs", type=int, default=d["jobs"], help="videos processed in parallel")
    run.add_argument("--timeout", type=float, default=d["timeout"],
                     help="seconds per video and phase before its work is killed")
    run.add_argument("--backend", default=d["backend"], choices=choices(*LIBRARY[:1], "BACKENDS"),
                     help="joblib's threading, loky or multiprocessing on this machine, or dask "
                          "(--scheduler's cluster, else a local cluster of --jobs processes)")
    run.add_argument("--scheduler", default=d["scheduler"], metavar="ADDRESS|FILE",
                     help="--backend dask: a running Dask scheduler (tcp://HOST:PORT) or its "
                          "scheduler file; OUTDIR must be on a filesystem the workers share")
    run.add_argument("--strict", action="store_true", default=d["strict"],
                     help="exit non-zero if any video failed")
    run.add_argument("--retry-failed", action="store_true", default=d["retry_failed"],
                     help="retry videos that failed in an earlier run into OUTDIR")
    add_quiet(run, d["progress"])


def _add_sampling(parser: argparse.ArgumentParser, d: dict) -> None:
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--frames-per-video", type=int, default=d["frames_per_video"],
                          help="frames per video, uniform over the duration")
    sampling.add_argument("--fps", type=float, default=d["fps"], help="dense: frames per second")
    sampling.add_argument("--keyframes", action="store_true", default=d["keyframes"],
                          help="every keyframe, nothing else")
    sampling.add_argument("--size", type=int, default=d["size"], help="short side of stored JPEGs")
    sampling.add_argument("--jpeg-quality", type=int, default=d["jpeg_quality"])
    clips = parser.add_argument_group("clips (instead of single frames)")
    clips.add_argument("--clips-per-video", type=int, default=d["clips_per_video"], metavar="K",
                       help="K clips per video, centred in K equal segments (frames.parquet "
                            "gains clip_id, clip_pos, padded); not with --fps or --keyframes")
    clips.add_argument("--clip-len", type=int, default=d["clip_len"], metavar="T",
                       help="frames per clip")
    clips.add_argument("--clip-fps", type=float, default=d["clip_fps"], metavar="F",
                       help="frames per second within a clip (frames 1/F s apart)")
    clips.add_argument("--short-clips", default=d["short_clips"],
                       choices=choices("vidfeat.ingestion.sample", "SHORT_CLIPS"),
                       help="a video shorter than one clip: pad (repeat its last frame, rows "
                            "marked padded) or drop (the video fails with the reason)")


def run(args: argparse.Namespace) -> int:
    from vidfeat.ingestion import ingest

    if args.src is None and args.labels is None:
        raise ValueError("give SRC (a folder of class folders) or --labels FILE")
    if args.clips_per_video is not None and (args.fps is not None or args.keyframes):
        other = "--fps" if args.fps is not None else "--keyframes"
        raise ValueError(f"--clips-per-video and {other} exclude each other: clips are sampled "
                         "uniformly over the video (give one of them)")
    result = ingest(args.src, args.outdir, labels=args.labels, unlabelled=args.unlabelled,
                    frames_per_video=args.frames_per_video, fps=args.fps,
                    keyframes=args.keyframes, size=args.size, jpeg_quality=args.jpeg_quality,
                    clips_per_video=args.clips_per_video, clip_len=args.clip_len,
                    clip_fps=args.clip_fps, short_clips=args.short_clips,
                    split=args.split, seed=args.seed, balance=args.balance,
                    max_frames_per_video=args.max_frames_per_video,
                    max_per_class=args.max_per_class, fmt=args.fmt, jobs=args.jobs,
                    timeout=args.timeout, strict=args.strict, retry_failed=args.retry_failed,
                    backend=args.backend, scheduler=args.scheduler, progress=args.progress)
    print_summary(args, result, stream=sys.stderr)
    return result.exit_code
