"""``vidfeat report SOURCE [-o REPORT_DIR] [--model MODEL_DIR]``: calls ``vidfeat.report``."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import add_quiet, defaults, print_summary

HELP = ("class-imbalance report (JSON, Markdown, self-contained HTML, PNG plots) for an ingest "
        "output folder, or a pre-flight on a folder of class folders or a labels file; "
        "--model adds per-class evaluation")
LIBRARY = ("vidfeat.reporting._report", "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("source", metavar="SOURCE",
                        help="ingest OUTDIR, folder of class folders, or labels CSV/Parquet")
    parser.add_argument("-o", "--output", metavar="REPORT_DIR", default=d["output"],
                        help="where to write (default: OUTDIR/report, or ./report for a "
                             "pre-flight)")
    parser.add_argument("--model", metavar="MODEL_DIR", default=d["model"],
                        help="trained model folder with metrics.json and config.json")
    parser.add_argument("--labels", metavar="FILE", default=d["labels"],
                        help="labels CSV/Parquet (path,label[,split]) for a pre-flight")
    parser.add_argument("--jobs", type=int, default=d["jobs"], help="parallel probes (pre-flight)")
    parser.add_argument("--timeout", type=float, default=d["timeout"],
                        help="seconds before a pre-flight probe is killed (the video fails)")
    parser.add_argument("--min-videos", type=int, default=d["min_videos"],
                        help="warn about classes with fewer videos than this")
    parser.add_argument("--max-drift", type=float, default=d["max_drift"],
                        help="warn when a split's class distribution is further than this "
                             "(total variation distance) from train's")
    add_quiet(parser, d["progress"])


def run(args: argparse.Namespace) -> int:
    from vidfeat.reporting import report

    result = report(
        args.source, args.output, model=args.model, labels=args.labels, jobs=args.jobs,
        timeout=args.timeout, min_videos=args.min_videos, max_drift=args.max_drift,
        progress=args.progress)
    print_summary(args, result)
    return 0
