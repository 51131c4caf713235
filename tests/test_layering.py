"""The package's layers, read from the imports of its source files (every import, at the top
or inside a function; those under `if TYPE_CHECKING:` are left out, as they never run).

From the bottom: safe_yaml.py (reading YAML safely), mixers and tasks (and the presets, data only), models, the study engine
(study/), analysis, the kinds of study (controlled/, pretrained/), and the command line on top
(kinds.py: the table of kinds, and bench.py; export.py over the table; cli.py over them). A module imports only from its own layer's
package and from the layers below; the kinds do not import each other, and outside them only
the table of kinds names one; and there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import longarch

PACKAGE = Path(longarch.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """The longarch modules a source file imports (a package import counts as its __init__)."""
    module = _module(path)
    known = {_module(p) for p in PACKAGE.rglob("*.py")}
    found = _imported(path.read_text(encoding="utf-8"), module if path.name == "__init__.py" else
                      module.rpartition(".")[0], known)
    return {name for name in found if name in known and name != module}


def _imported(source: str, package: str, modules: set[str] = frozenset()) -> set[str]:
    """Every longarch module the source imports, relative imports resolved against `package`.
    `from pkg import mod` imports the module `pkg.mod`, and `pkg` itself only when some name
    taken from it is not one of `modules` (then the name lives in pkg's __init__)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("longarch"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("longarch"):
                    names = {f"{base}.{a.name}" for a in child.names}
                    found.update(names & set(modules) if modules else names)  # `from . import models`
                    if not modules or names - set(modules):
                        found.add(base)
            visit(child)

    visit(ast.parse(source))
    return found


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


RANK = {"safe_yaml": -1, "mixers": 0, "tasks": 0, "presets": 0, "models": 1, "study": 2, "analysis": 3, "controlled": 4,
        "pretrained": 4, "kinds": 5, "bench": 5, "export": 6, "cli": 7, "": 8}
KINDS = {"controlled", "pretrained"}


def test_every_module_has_a_layer():
    assert {_layer(m) for m in GRAPH} <= set(RANK), {_layer(m) for m in GRAPH} - set(RANK)


@pytest.mark.parametrize("layer", sorted(set(RANK) - {""}))
def test_each_layer_imports_only_what_is_below_it(layer):
    """Its own package, and lower layers: a kind never imports the other kind."""
    wrong = {m: sorted(t for t in GRAPH[m] if t != "longarch" and _layer(t) != layer
                       and RANK[_layer(t)] >= RANK[layer]) for m in GRAPH if _layer(m) == layer}
    assert {m: t for m, t in wrong.items() if t} == {}, f"{layer} imports from its level or above"


def test_only_the_table_of_kinds_names_a_kind():
    """Outside a kind's own package, only kinds.py imports it: the engine, analysis and the
    command line take the kind they are handed."""
    naming = {m for m in GRAPH for t in GRAPH[m] if _layer(t) in KINDS and _layer(m) not in KINDS}
    assert naming == {"longarch.kinds"}


def test_the_reader_sees_relative_lazy_and_package_imports():
    """The graph is read right, or the layer test above proves nothing."""
    assert "longarch.study.store" in GRAPH["longarch.study.driver"]  # from .store import Store
    assert "longarch.models" in GRAPH["longarch.controlled.runner"]  # from .. import models
    assert "longarch.controlled.grid" in GRAPH["longarch.controlled.runner"]  # imported inside `grid_rows`
    snippet = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..runner import ModelPlan\n"
               "def f():\n    from ..tasks import needle\n")
    assert _imported(snippet, "longarch.study") == {"longarch.tasks", "longarch.tasks.needle"}
    assert _imported(snippet, "longarch.study", {"longarch.tasks.needle"}) == {"longarch.tasks.needle"}


def _cycle() -> list[str] | None:
    """One import cycle among the package's modules (lazy imports included), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    """Every cycle is a layering error (`from . import plots` is an edge to plots, not to the
    package's __init__)."""
    assert _cycle() is None, " -> ".join(_cycle())


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen():
    """A function a reader takes in at once: at most 60 lines, its docstring included."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_module(path)}.{node.name}: {lines} lines")
    assert long == []
