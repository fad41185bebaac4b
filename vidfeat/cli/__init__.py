"""``vidfeat`` command line: one subcommand per library function, same arguments.

Each subcommand lives in ``vidfeat/cli/<name>.py`` and defines ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Those modules import only argparse at top level: the library (and
torch) is imported inside ``run``, so ``vidfeat ingest`` never pays for what it does not use.
Defaults and choices are read from the library's source (``vidfeat.cli._options``), and only for
the subcommand being run.

One dialect: whatever a command writes is ``-o/--output``, parallelism is ``--jobs``, replacing an
existing output is ``--overwrite``; a bad value is reported as ``--FLAG VALUE: ...``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from vidfeat import __version__
from vidfeat.cli._options import HelpFormatter

# order in ``vidfeat --help``; modules not listed come after, alphabetically
_ORDER = ["demo", "run", "pipeline", "ingest", "extract", "merge", "train", "evaluate",
          "predict", "report", "export", "verify", "backbones"]

# flags of earlier versions -> their name now (a hint instead of a bare "unrecognized")
RENAMED = {"--outdir": "-o/--output", "--model-dir": "-o/--output", "--workdir": "-o/--output",
           "--force": "--overwrite", "--workers": "--loader-workers"}


def _commands() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [c for c in _ORDER if c in found] + sorted(found - set(_ORDER))


def flag_of(action: argparse.Action) -> str:
    """The name a user types for ``action``: its long option, else its metavar or dest."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if longs or action.option_strings:
        return (longs or action.option_strings)[0]
    return action.metavar if isinstance(action.metavar, str) else action.dest.upper()


class Parser(argparse.ArgumentParser):
    """Choice errors in the CLI's dialect (``--format json: not one of parquet, csv``)."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            allowed = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(None, f"{flag_of(action)} {value}: not one of {allowed}")



class _LazySubParsers(argparse._SubParsersAction):
    """Adds a subcommand's arguments only when that subcommand is parsed (or helped)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, object] = {}

    def __call__(self, parser, namespace, values, option_string=None):
        populate(self, values[0])
        super().__call__(parser, namespace, values, option_string)


def populate(sub: argparse._SubParsersAction, name: str) -> None:
    mod = getattr(sub, "pending", {}).pop(name, None)
    if mod is not None:
        p = sub.choices[name]
        mod.add_arguments(p)
        for action in p._actions:  # argparse shows no default for an option without a text
            if action.help is None and action.option_strings and action.nargs != 0 \
                    and action.default not in (None, "", [], ()):
                action.help = "(default: %(default)s)"
        p.set_defaults(_run=mod.run)


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; ``lazy`` leaves each subcommand's arguments until it is parsed."""
    parser = Parser(prog="vidfeat", description="Labelled videos to a trained video classifier.")
    parser.register("action", "lazy_parsers", _LazySubParsers)
    parser.add_argument("--version", action="version", version=f"vidfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                action="lazy_parsers")
    for name in _commands():
        mod = importlib.import_module(f"vidfeat.cli.{name}")
        sub.add_parser(name, help=mod.HELP, description=mod.HELP, formatter_class=HelpFormatter)
        sub.pending[name] = mod
        if not lazy:
            populate(sub, name)
    return parser


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The fully built parser of subcommand ``name``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    populate(sub, name)
    return sub.choices[name]


def _option_message(exc: Exception, parser: argparse.ArgumentParser, args) -> str:
    """An OptionError raised for a flag's own value, said with that flag; else the text as is."""
    from vidfeat.options import OptionError

    if isinstance(exc, OptionError):
        for action in subparser(parser, args.command)._actions:
            if action.dest == exc.name and getattr(args, action.dest, object()) == exc.value:
                return exc.describe(flag_of(action))
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for bad arguments, after argparse's message)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(lazy=True)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
        for old in dict.fromkeys(a.split("=")[0] for a in argv if a.split("=")[0] in RENAMED):
            if code:
                print(f"vidfeat: {old} is now {RENAMED[old]}", file=sys.stderr)
        return code
    # our own messages at INFO; libraries (distributed, PIL, ...) only when they warn
    handler = logging.StreamHandler()
    handler.setFormatter(_UserFormatter(verbose=args.verbose))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("vidfeat").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # dask's own logging config (read when distributed is imported) would print every
    # scheduler/worker event of a local cluster at INFO
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "debug" if args.verbose else "warning")
    from vidfeat.system import show_warnings_once

    show_warnings_once()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        # user-facing errors (bad option, bad file): one clear line, no traceback
        if args.verbose:
            raise
        print(f"vidfeat {args.command}: error: {_option_message(exc, parser, args)}",
              file=sys.stderr)
        return 2
    except OSError as exc:
        # the environment failed (disk full, read-only, permissions): one line, exit 1
        if args.verbose:
            raise
        print(f"vidfeat {args.command}: error: {_os_message(exc)}", file=sys.stderr)
        return 1


# commands whose files are all closed when main() returns: their process ends without tearing
# down every imported module (0.10-0.15 s once pandas and pyarrow are loaded: a third of a
# small ingest's start-up). Threads are joined and atexit handlers run as on a normal exit.
QUICK_EXIT = frozenset({"ingest"})


def script() -> None:
    """The ``vidfeat`` executable (and ``python -m vidfeat``): ``main()`` on ``sys.argv``, then
    exit with its status (quickly for the commands in ``QUICK_EXIT``)."""
    code = main()
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    # under a profiler or tracer (cProfile, coverage) the normal exit writes their results
    if command in QUICK_EXIT and sys.getprofile() is None and sys.gettrace() is None:
        import atexit
        import threading

        try:
            threading._shutdown()  # what the interpreter does first: join non-daemon threads
            atexit._run_exitfuncs()  # then the handlers: sandbox children, logging's flush
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # pragma: no cover - a private API changed: exit the normal way
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


class _UserFormatter(logging.Formatter):
    """vidfeat's own lines in the user's terms (``vidfeat: warning: ...``, the same shape as the
    CLI's errors and ``VidfeatWarning``); other libraries' as ``LEVEL name: message``; ``-v``
    shows every record's logger."""

    def __init__(self, *, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self.verbose:
            message += "\n" + self.formatException(record.exc_info)
        if record.name.split(".")[0] != "vidfeat" or self.verbose:
            return f"{record.levelname} {record.name}: {message}"
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"vidfeat: {level}{message}"


def _os_message(exc: OSError) -> str:
    """One line for an OSError: a StorageError's own text, else what failed and on which path."""
    from vidfeat.files import StorageError

    if isinstance(exc, StorageError):
        return str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}: fix the cause and rerun the same command"


if __name__ == "__main__":  # pragma: no cover
    script()
