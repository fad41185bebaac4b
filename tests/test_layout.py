"""The package layout the design promises, measured on the source (ast), not on our word.

Every module imports as a module; the import graph (function-level imports included) has no
cycle; no module is over 500 non-blank lines and no function body over 60 lines; package
``__init__`` files only re-export.
"""
import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidfeat"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """vidfeat modules that ``name`` imports anywhere in its body (inner imports included)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def _lazy_exports(path: Path) -> set[str]:
    """Modules named as strings in an ``_EXPORTS`` dict (the lazy re-exports)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS"
                                                for t in node.targets):
            return {v.value for v in node.value.values if isinstance(v, ast.Constant)}
    return set()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = _imported(name, path) | (_lazy_exports(path) & set(MODULES))
        # importing a.b.c runs a/__init__ and a/b/__init__ first: not an edge of a.b.c's own
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_every_submodule_imports_as_a_module():
    for name in MODULES:
        if name.startswith("vidfeat.cli.") or name == "vidfeat.__main__":
            continue
        module = importlib.import_module(name)
        assert isinstance(module, types.ModuleType), name
    # the stage functions and their modules no longer share a name
    import vidfeat
    import vidfeat.ingestion._ingest as ingest_module

    assert callable(vidfeat.ingest) and isinstance(ingest_module, types.ModuleType)


def test_string_paths_patch_the_module(monkeypatch):
    import vidfeat.ingestion._ingest as ingest_module

    sentinel = object()
    monkeypatch.setattr("vidfeat.ingestion._ingest.decode_frames", sentinel)
    assert ingest_module.decode_frames is sentinel


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}   # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_are_small():
    big_modules, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = sum(1 for line in text.splitlines() if line.strip())
        if lines > MAX_MODULE_LINES:
            big_modules.append(f"{name} ({lines} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    first = node.body[1] if len(node.body) > 1 else first  # docstring not counted
                body = node.end_lineno - first.lineno + 1
                if body > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({body} lines)")
    assert not big_modules, big_modules
    assert not long_functions, long_functions


def test_package_inits_only_reexport():
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "vidfeat.cli":
            continue
        defined = [n.name for n in ast.parse(path.read_text()).body
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{name} defines {defined}: __init__ files only re-export"


def test_import_vidfeat_stays_light():
    code = ("import sys, vidfeat, vidfeat.ingestion, vidfeat.sandbox;"
            "print(sorted({'torch', 'pandas', 'matplotlib', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
