"""Small shared checks for keyword options (string choices, ranges)."""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """A bad value for the option ``name``: ``allowed`` is the list of choices, or a bound text.

    ``str()`` is the library's message (``fmt='json' is not one of 'parquet', 'csv'``); the CLI
    rewrites it in terms of the flag the user typed (``--format json: not one of parquet, csv``).
    """

    def __init__(self, name: str, value, allowed, message: str | None = None):
        self.name, self.value, self.allowed = name, value, allowed
        if message is None:
            if isinstance(allowed, str):
                message = f"{name} must be {allowed}, got {value!r}"
            else:
                message = f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}"
        super().__init__(message)

    def __reduce__(self):  # picklable across process pools despite the extra arguments
        return type(self), (self.name, self.value, self.allowed, str(self))

    def describe(self, flag: str) -> str:
        """The message for a command line where ``flag`` set this option."""
        if isinstance(self.allowed, str):
            return f"{flag} {self.value}: must be {self.allowed}"
        return f"{flag} {self.value}: not one of {', '.join(map(str, self.allowed))}"


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
