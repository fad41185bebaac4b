"""``vidfeat verify PATH``: check an ingest folder, feature file or model folder end to end."""
from __future__ import annotations

import argparse

HELP = "check an ingest folder, a feature file or a model folder end to end (hashes, checksums)"
LIBRARY = ("vidfeat.verification", "verify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an ingest folder, a feature file (.h5) or a model folder")


def run(args: argparse.Namespace) -> int:
    from vidfeat.verification import verify

    result = verify(args.path)
    print(result.summary())
    return 0 if result.ok else 1
