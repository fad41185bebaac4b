"""``vidfeat run CONFIG.toml``: every stage from one config file (``vidfeat.run_pipeline``)."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import add_quiet, defaults

HELP = "run ingest, data report, extract, train and evaluation report from one TOML config"
LIBRARY = ("vidfeat.pipeline", "run_pipeline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("config", help="TOML config: [ingest] [extract] [train] [report] tables")
    parser.add_argument("-o", "--output", dest="workdir", metavar="WORKDIR", default=d["workdir"],
                        help="output folder (default: the config's 'workdir' key)")
    parser.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                        help="rerun every stage, replacing its outputs")
    add_quiet(parser, d["progress"], what="the pipeline's closing summary is still printed")


def run(args: argparse.Namespace) -> int:
    from vidfeat.pipeline import run_pipeline

    result = run_pipeline(args.config, args.workdir, overwrite=args.overwrite,
                          progress=args.progress)
    print(result.summary())
    return 0
