"""``vidfeat export FEATURES.h5 -o DIR``: one ``.npy`` + ``.json`` per video
(``vidfeat.exporting.export``)."""
from __future__ import annotations

import argparse
import sys

from vidfeat.cli._options import add_quiet, defaults, print_summary

HELP = "write one <video_id>.npy (rows x D, time order) and .json (timestamps) per video"
LIBRARY = ("vidfeat.exporting", "export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("features", metavar="FEATURES.h5", help="a file written by vidfeat extract")
    parser.add_argument("-o", "--output", dest="outdir", metavar="DIR", required=True,
                        help="export folder; video ids with slashes become subfolders; reruns "
                             "skip files that would not change")
    add_quiet(parser, d["progress"])


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every video was exported, 1 when some could not be."""
    from vidfeat.exporting import export

    result = export(args.features, args.outdir, progress=args.progress)
    print_summary(args, result, stream=sys.stderr)
    return result.exit_code
