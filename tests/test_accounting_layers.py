"""The accounts package's modules import each other in layers: no circle, counting every
import (at the top, under ``TYPE_CHECKING``, inside a function), and the accounting
runs on Django's connections only (no ``sqlite3`` of its own)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "accounts"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, by its dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from accounts import hotsql
    return names


def _graph() -> dict[str, set[str]]:
    modules = {f"accounts.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the modules along it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_module_of_accounts_imports_another_that_imports_it_back():
    assert _circle(_graph()) is None


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _circle(graph) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_the_accounting_layers_import_downwards_only():
    graph = _graph()
    assert graph["accounts.records"] == {"accounts.models"}
    assert graph["accounts.hotsql"] == set()
    assert "accounts.books" not in graph["accounts.limits"] | graph["accounts.settlement"]
    assert graph["accounts.books"] >= {"accounts.limits", "accounts.settlement", "accounts.records"}


def test_accounting_opens_no_database_connection_of_its_own():
    assert [path.name for path in PACKAGE.glob("*.py") if "sqlite3" in _imports(path)] == []
