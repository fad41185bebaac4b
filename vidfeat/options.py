"""Shared checks for keyword options: types (from annotations), string choices, ranges.

A stage function's annotated signature is its option table: ``@checked`` checks every argument
of a call against its annotation before the body runs, the pipeline checks each config table
against the same annotations before the first stage runs, and the CLI derives its ``type=``
from them (``vidfeat.cli._options``, on the source, without importing the stage). The rules are
strict on purpose: a boolean is ``True``/``False`` only (the string ``"false"`` is truthy), an
integer is not a bool, a float or a digit string, a float accepts ints but not bools or strings.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


# ----------------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Kind:
    """What an annotation allows. ``name``: any | none | bool | int | float | str | path | map |
    seq (a list or tuple) | iter (any iterable but a string) | union. ``items``: a union's
    alternatives, or a sequence's item kinds: one per position when ``size`` is set, else one
    for every item."""
    name: str
    items: tuple = ()
    size: int | None = None

    def accepts(self, value) -> bool:
        """Whether ``value`` is of this kind (a generator is accepted as an iterable unread)."""
        test = _TESTS.get(self.name)
        if test is not None:
            return test(value)
        if self.name == "union":
            return any(k.accepts(value) for k in self.items)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            return False
        if not isinstance(value, (list, tuple)):
            return self.name == "iter"  # reading an iterator to check it would consume it
        if self.size is not None:
            return len(value) == self.size and all(map(Kind.accepts, self.items, value))
        return all(self.items[0].accepts(v) for v in value)

    def describe(self, *, toml: bool = False) -> str:
        """``a boolean (True or False)``; with ``toml``, in a config file's words (``true or
        false``; ``None`` is left out: a TOML file has none, leaving the key out is its way)."""
        if self.name == "union":
            parts = [k.describe(toml=toml) for k in self.items if not (toml and k.name == "none")]
            return _either(parts)
        if self.name in ("seq", "iter"):
            container = "a list" if toml else (
                "a list or tuple" if self.name == "seq" else "an iterable")
            if self.size is not None and len(set(self.items)) == 1:
                return f"{container} of {self.size} {self.items[0].plural(toml=toml)}"
            if self.size is None and self.items[0].name != "any":
                return f"{container} of {self.items[0].plural(toml=toml)}"
            return container
        return _WORDS[self.name][1 if toml else 0]

    def plural(self, *, toml: bool = False) -> str:
        if self.name == "union":
            return " or ".join(k.plural(toml=toml) for k in self.items)
        if self.name in ("seq", "iter"):
            return "lists"
        return _WORDS[self.name][3 if toml else 2]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_TESTS = {"any": lambda v: True, "none": lambda v: v is None,
          "bool": lambda v: isinstance(v, bool), "int": _is_int, "float": _is_number,
          "str": lambda v: isinstance(v, str), "path": lambda v: isinstance(v, (str, os.PathLike)),
          "map": lambda v: isinstance(v, Mapping)}
# kind -> (library words, config words, library plural, config plural)
_WORDS = {"any": ("anything", "anything", "values", "values"),
          "none": ("None", "nothing", "None", "nothing"),
          "bool": ("a boolean (True or False)", "true or false", "booleans", "true or false"),
          "int": ("an integer", "an integer", "integers", "integers"),
          "float": ("a number", "a number", "numbers", "numbers"),
          "str": ("a string", "a string", "strings", "strings"),
          "path": ("a path", "a path (a string)", "paths", "paths"),
          "map": ("a dict", "a table", "dicts", "tables")}


def _either(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def _union(*kinds: Kind) -> Kind:
    flat: list[Kind] = []
    for k in kinds:
        flat += k.items if k.name == "union" else [k]
    names = {k.name for k in flat}
    if "any" in names:
        return Kind("any")
    if "path" in names:  # a path is a str or an os.PathLike: the str is said already
        flat = [k for k in flat if k.name != "str"]
    flat = list(dict.fromkeys(flat))
    return flat[0] if len(flat) == 1 else Kind("union", tuple(flat))


_SCALARS = {"bool", "int", "float", "str"}
_PATHS = {"PathLike", "Path", "PurePath"}
_SEQUENCES = {"tuple", "Tuple", "list", "List", "Sequence"}
_ITERABLES = {"Iterable", "Collection", "Iterator"}
_MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}


def kind_of(node: ast.expr) -> Kind:
    """The Kind of an annotation's syntax tree; names it cannot check allow anything."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return Kind("none")
        if isinstance(node.value, str):  # a quoted annotation
            return kind_of(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union(kind_of(node.left), kind_of(node.right))
    base, args = node, []
    if isinstance(node, ast.Subscript):
        base = node.value
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
    if name in _SCALARS or name == "None":
        return Kind(name.lower()) if not args else Kind("any")
    if name in _PATHS:
        return Kind("path")
    if name in ("Optional", "Union"):
        return _union(*map(kind_of, args), *([Kind("none")] if name == "Optional" else []))
    if name in _MAPPINGS:
        return Kind("map")
    if name in _SEQUENCES or name in _ITERABLES:
        return _sequence("seq" if name in _SEQUENCES else "iter", name, args)
    return Kind("any")


def _sequence(kind: str, name: str, args: list) -> Kind:
    if not args:
        return Kind(kind, (Kind("any"),))
    variadic = len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is ...
    if name in ("tuple", "Tuple") and not variadic:
        return Kind(kind, tuple(map(kind_of, args)), size=len(args))
    return Kind(kind, (kind_of(args[0]),))


def parse_annotation(annotation) -> Kind:
    """The Kind of an annotation: its text (``from __future__ import annotations``) or object."""
    if annotation is inspect.Parameter.empty:
        return Kind("any")
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    try:
        return kind_of(ast.parse(text, mode="eval").body)
    except SyntaxError:
        return Kind("any")


# ----------------------------------------------------------------------------------- errors
class OptionError(ValueError):
    """A bad value for the option ``name``: ``allowed`` is the list of choices, a bound text,
    or the Kind the value should be.

    ``str()`` is the library's message (``fmt='json' is not one of 'parquet', 'csv'``); the CLI
    rewrites it in terms of the flag the user typed (``--format json: not one of parquet, csv``)
    and the pipeline in terms of the config key (``[ingest] fmt = "json": not one of ...``).
    """

    def __init__(self, name: str, value, allowed, message: str | None = None):
        self.name, self.value, self.allowed = name, value, allowed
        if message is None:
            if isinstance(allowed, Kind):
                message = f"{name}={value!r}: expected {allowed.describe()}"
            elif isinstance(allowed, str):
                message = f"{name} must be {allowed}, got {value!r}"
            else:
                message = f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}"
        super().__init__(message)

    def __reduce__(self):  # picklable across process pools despite the extra arguments
        return type(self), (self.name, self.value, self.allowed, str(self))

    def describe(self, flag: str) -> str:
        """The message for a command line where ``flag`` set this option."""
        return f"{flag} {self.value}: {self._problem(toml=False)}"

    def in_config(self, table: str) -> str:
        """The message for a config file where ``[table] name = value`` set this option."""
        return f"[{table}] {self.name} = {toml_value(self.value)}: {self._problem(toml=True)}"

    def _problem(self, *, toml: bool) -> str:
        if isinstance(self.allowed, Kind):
            return f"expected {self.allowed.describe(toml=toml)}"
        if isinstance(self.allowed, str):
            return f"must be {self.allowed}"
        return f"not one of {', '.join(map(str, self.allowed))}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value) -> str:
    """``value`` written as a TOML value (a string in quotes, ``true``, ``[1, 2]``...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        keys = [k if _BARE_KEY.fullmatch(str(k)) else json.dumps(str(k)) for k in value]
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in zip(keys, value.values())) + "}"
    if value is None:
        return "None"  # only in messages: to_toml leaves None values out
    return json.dumps(str(value))  # a JSON string literal is a valid TOML basic string


# ----------------------------------------------------------------------------------- checks
@functools.cache
def option_kinds(func) -> dict[str, Kind]:
    """Parameter -> Kind of every annotated parameter of ``func`` (its option table)."""
    params = inspect.signature(inspect.unwrap(func)).parameters
    return {name: parse_annotation(p.annotation) for name, p in params.items()
            if p.annotation is not inspect.Parameter.empty}


def check_options(func, values: Mapping, *, table: str | None = None) -> None:
    """Raise an OptionError for the first of ``values`` (parameter -> value) that does not fit
    ``func``'s annotation. ``table``: the config table they came from, named in the message."""
    kinds = option_kinds(func)
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is not None and not kind.accepts(value):
            error = OptionError(name, value, kind)
            if table is not None:
                error = OptionError(name, value, kind, error.in_config(table))
            raise error


def checked(func):
    """Decorator: a call of ``func`` first checks every argument against its annotation."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            given = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return func(*args, **kwargs)  # Python's own message for a missing or extra argument
        check_options(func, given)
        return func(*args, **kwargs)

    return call


def check_choice(name: str, value: str, allowed: Mapping[str, T] | Iterable[str]) -> T | str:
    """Return ``allowed[value]`` (or ``value``) if known; else an OptionError naming both sides."""
    keys = list(allowed)
    if value not in keys:
        raise OptionError(name, value, keys)
    return allowed[value] if isinstance(allowed, Mapping) else value


def check_positive(name: str, value, *, allow_zero: bool = False):
    """Raise an OptionError naming the option when ``value`` is not > 0 (or >= 0)."""
    if value is None:
        return value
    if value < 0 or (value == 0 and not allow_zero):
        raise OptionError(name, value, ">= 0" if allow_zero else "> 0")
    return value
