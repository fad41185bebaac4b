"""Lazy re-exports for package ``__init__`` modules (PEP 562 ``__getattr__``).

A package that lists its public names here imports the defining module only when a name is first
used, so importing the package (or a light submodule of it: the sandbox child imports
``vidfeat.ingestion.probe``) never pays for pandas, torch or matplotlib.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` re-exporting ``exports`` (name -> module)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
