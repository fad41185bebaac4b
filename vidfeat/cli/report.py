"""``vidfeat report SOURCE [-o REPORT_DIR] [--model MODEL_DIR]``: calls ``vidfeat.report``."""
from __future__ import annotations

import argparse

HELP = ("class-imbalance report (JSON, Markdown, self-contained HTML, PNG plots) for an ingest "
        "output folder, or a pre-flight on a folder of class folders or a labels file; "
        "--model adds per-class evaluation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="ingest OUTDIR, folder of class folders, or labels CSV/Parquet")
    parser.add_argument("-o", "--output", metavar="REPORT_DIR", default=None,
                        help="where to write (default: OUTDIR/report, or ./report for a pre-flight)")
    parser.add_argument("--model", metavar="MODEL_DIR", default=None,
                        help="trained model folder with metrics.json and config.json")
    parser.add_argument("--labels", metavar="FILE", default=None,
                        help="labels CSV/Parquet (path,label[,split]) for a pre-flight")
    parser.add_argument("--jobs", type=int, default=1, help="parallel probes (pre-flight)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before a pre-flight probe is killed (the video fails)")
    parser.add_argument("--min-videos", type=int, default=10,
                        help="warn about classes with fewer videos than this")
    parser.add_argument("--max-drift", type=float, default=0.2,
                        help="warn when a split's class distribution is further than this "
                             "(total variation distance) from train's")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    from vidfeat.report import report

    report(args.source, args.output, model=args.model, labels=args.labels, jobs=args.jobs,
           timeout=args.timeout, min_videos=args.min_videos, max_drift=args.max_drift,
           progress=args.progress)
    return 0
