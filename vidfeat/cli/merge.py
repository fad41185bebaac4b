"""``vidfeat merge SHARD.h5... -o FEATURES.h5``: join the shards of one extraction."""
from __future__ import annotations

import argparse

from vidfeat.cli._options import defaults

HELP = "join the --shard files of one extraction into one feature file"
LIBRARY = ("vidfeat.extraction.cache", "merge")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = defaults(*LIBRARY)
    parser.add_argument("shards", nargs="+", metavar="SHARD.h5", help="every shard file, once")
    parser.add_argument("-o", "--output", required=True, metavar="FEATURES.h5")
    parser.add_argument("--overwrite", action="store_true", default=d["overwrite"],
                        help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from vidfeat.extraction import merge

    path = merge(args.shards, args.output, overwrite=args.overwrite)
    print(f"Merged {len(args.shards)} shards into {path}.")
    return 0
