"""``vidfeat run CONFIG.toml``: every stage from one config file (``vidfeat.run_pipeline``)."""
from __future__ import annotations

import argparse

HELP = "run ingest, data report, extract, train and evaluation report from one TOML config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML config: [ingest] [extract] [train] [report] tables")
    parser.add_argument("-o", "--workdir", default=None,
                        help="output folder (default: the config's 'workdir' key)")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from vidfeat.pipeline import run_pipeline

    result = run_pipeline(args.config, args.workdir, force=args.force, progress=args.progress)
    print(result.summary())
    return 0
