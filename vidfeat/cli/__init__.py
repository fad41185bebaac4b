"""``vidfeat`` command line: one subcommand per library function, same arguments.

Each subcommand lives in ``vidfeat/cli/<name>.py`` and defines ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Those modules import only argparse at top level: the library (and
torch) is imported inside ``run``, so ``vidfeat ingest`` never pays for what it does not use.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from vidfeat import __version__

# order in ``vidfeat --help``; modules not listed come after, alphabetically
_ORDER = ["demo", "run", "pipeline", "ingest", "extract", "merge", "train", "evaluate",
          "predict", "report"]


def _commands() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [c for c in _ORDER if c in found] + sorted(found - set(_ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidfeat", description="Labelled videos to a trained video classifier.")
    parser.add_argument("--version", action="version", version=f"vidfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _commands():
        mod = importlib.import_module(f"vidfeat.cli.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # our own messages at INFO; libraries (distributed, PIL, ...) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vidfeat").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # dask's own logging config (read when distributed is imported) would print every
    # scheduler/worker event of a local cluster at INFO
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "debug" if args.verbose else "warning")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        # user-facing errors (bad option, bad file): one clear line, no traceback
        if args.verbose:
            raise
        print(f"vidfeat {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
