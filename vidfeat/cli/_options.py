"""Library defaults and option tables for the CLI, read from the library's source, not imported.

The CLI restates no default, no list of choices and no type: each subcommand asks
``defaults(module, func)`` for the keyword defaults of the library function it calls,
``choices(module, NAME)`` for the option table that function checks against, and
``arg_type(module, func, param)`` for the ``type=`` its annotation implies (``int``, ``float``;
the same annotations ``vidfeat.options.checked`` checks library calls against). Both read the module's source with :mod:`ast`
(literal defaults, and the keys of a table whose values need not be literals, such as
``PRECISIONS = {"fp32": torch.float32, ...}``), so building a parser imports neither torch nor
pandas, whatever module defines the option. ``tests/test_cli.py`` checks every option against
``inspect.signature`` of the imported functions and the imported tables.
"""
from __future__ import annotations

import argparse
import ast
import functools
from pathlib import Path

from vidfeat.options import Kind, kind_of

_PACKAGE = Path(__file__).resolve().parents[1]  # the vidfeat package folder


@functools.cache
def _module(module: str) -> ast.Module:
    parts = module.split(".")
    if parts[0] != "vidfeat":
        raise ValueError(f"not a vidfeat module: {module}")
    path = _PACKAGE.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(module: str, name: str, _seen: frozenset = frozenset()) -> tuple[str, ast.AST]:
    """``(module, node)`` where ``name`` is defined: in ``module`` itself, or followed through a
    top-level ``from vidfeat.x import name`` (re-exports), so tables and functions may move."""
    if (module, name) in _seen:
        raise ValueError(f"import cycle resolving {module}.{name}")
    for node in reversed(_module(module).body):  # the last binding wins, as at run time
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node.value
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id == name and node.value is not None):
            return module, node.value
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = node.module or ""
                    if node.level:  # relative import
                        base = module.split(".")
                        keep = len(base) - node.level + (1 if _is_package(module) else 0)
                        source = ".".join(base[:keep] + ([source] if source else []))
                    if not source.startswith("vidfeat"):
                        break
                    return _resolve(source, alias.name, _seen | {(module, name)})
    raise ValueError(f"{module} defines no {name}")


def _is_package(module: str) -> bool:
    return _PACKAGE.joinpath(*module.split(".")[1:]).is_dir()


def _literal(module: str, node: ast.expr):
    """A literal, or a module-level constant the default names (``timeout=DEFAULT_TIMEOUT``)."""
    if isinstance(node, ast.Name):
        module, node = _resolve(module, node.id)
    return ast.literal_eval(node)


def _function(module: str, func: str) -> tuple[str, ast.FunctionDef]:
    """``(defining module, node)`` of the function ``func`` of ``module``; else ValueError."""
    where, node = _resolve(module, func)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ValueError(f"{module}.{func} is not a function")
    return where, node


@functools.cache
def defaults(module: str, func: str) -> dict[str, object]:
    """Parameter -> default of the function ``func`` of ``module`` (as its source says)."""
    where, node = _function(module, func)
    a = node.args
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
    pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    return {arg.arg: _literal(where, d) for arg, d in pairs}


@functools.cache
def choices(module: str, name: str) -> tuple:
    """The string entries of the table ``name`` in ``module``: dict keys or tuple/list/set items."""
    _, node = _resolve(module, name)
    if isinstance(node, ast.Dict):
        items = [ast.literal_eval(k) for k in node.keys if k is not None]
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [ast.literal_eval(e) for e in node.elts]
    else:
        raise ValueError(f"{module}.{name} is not a literal option table")
    return tuple(i for i in items if isinstance(i, str))  # SAMPLERS' None key is no flag value


@functools.cache
def kinds(module: str, func: str) -> dict[str, Kind]:
    """Parameter -> Kind of each annotated parameter of ``func`` (as its source says)."""
    _, node = _function(module, func)
    a = node.args
    return {arg.arg: kind_of(arg.annotation) for arg in a.posonlyargs + a.args + a.kwonlyargs
            if arg.annotation is not None}


def arg_type(module: str, func: str, param: str):
    """argparse ``type=`` for ``param`` of ``func``: ``int`` or ``float`` when its annotation is
    that (or that or None), else None (the flag's text is passed as is)."""
    kind = kinds(module, func).get(param, Kind("any"))
    names = {k.name for k in (kind.items if kind.name == "union" else (kind,))} - {"none"}
    return {"int": int, "float": float}.get(names.pop()) if len(names) == 1 else None


def auto_or_int(text: str) -> int | None:
    """``auto`` -> None (the library picks), else an int."""
    return None if text == "auto" else int(text)


def _show(action: argparse.Action) -> str:
    value = action.default
    if isinstance(value, (list, tuple)):
        sep = " " if action.nargs not in (None, "?") else ","
        return sep.join(map(str, value))
    return str(value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has a value; not for on/off flags, nor for None."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.nargs == 0 or action.default in (None, argparse.SUPPRESS, "", [], ())
                or "%(default)" in text or not action.option_strings):
            return text
        shown = _show(action).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def add_quiet(parser, default: bool, *, what: str = "the closing summary is still printed"):
    """``-q/--quiet`` (also ``--no-progress``): no progress bars; ``what`` says what remains."""
    parser.add_argument("-q", "--quiet", "--no-progress", dest="progress", action="store_false",
                        default=default, help=f"no progress bars ({what})")


def print_summary(args: argparse.Namespace, result, *, stream=None) -> None:
    """With ``--quiet`` the library printed nothing: the summary still closes the command."""
    import sys

    if not args.progress and result is not None:
        summary = result.summary() if callable(result.summary) else result.summary
        print(summary, file=stream or sys.stdout)
