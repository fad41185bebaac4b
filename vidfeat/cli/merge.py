"""``vidfeat merge SHARD.h5... -o FEATURES.h5``: join the shards of one extraction."""
from __future__ import annotations

import argparse

HELP = "join the --shard files of one extraction into one feature file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", metavar="SHARD.h5", help="every shard file, once")
    parser.add_argument("-o", "--output", required=True, metavar="FEATURES.h5")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from vidfeat.cache import merge

    path = merge(args.shards, args.output, overwrite=args.overwrite)
    print(f"Merged {len(args.shards)} shards into {path}.")
    return 0
