"""The code's shape: no import cycle among the project's own modules, no module over
600 lines, and pyflakes finds nothing.

Every import counts, wherever it is written: at module level, under ``if TYPE_CHECKING:``
and inside a function. An import moved into a function still makes the two modules
depend on each other; it only hides the cycle from the interpreter until the call."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAX_LINES = 600


def project_files() -> list[Path]:
    """The project's Python files: the ones git tracks or would (the virtualenvs and the
    model zoo are ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                            cwd=ROOT, capture_output=True, check=True)
    return sorted({ROOT / name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in its text. ``from package import
    name`` is the submodule ``package.name`` when there is one, else the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # The longest project module the dotted name starts with.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    modules = {module_name(path) for path in files}
    return {module_name(path): imported_modules(path, modules) for path in files}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(tuple(sorted(component)))
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_wherever_they_are_written(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.two import Two\n"
        "def f():\n    from . import three\n    import pkg.four.inner\n"
    )
    for name in ("two", "three"):
        (package / f"{name}.py").write_text("")
    (package / "four").mkdir()
    (package / "four" / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules = {"pkg", "pkg.one", "pkg.two", "pkg.three", "pkg.four"}
    assert imported_modules(package / "one.py", modules) == {"pkg.two", "pkg.three", "pkg.four"}


def test_no_import_cycle_among_the_project_modules():
    assert cycles(import_graph()) == []


def test_no_module_is_over_600_lines():
    long = {}
    for path in project_files():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[str(path.relative_to(ROOT))] = lines
    assert long == {}


def test_pyflakes_finds_nothing():
    files = [str(path.relative_to(ROOT)) for path in project_files()]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *files], cwd=ROOT, capture_output=True, text=True)
    assert not result.stderr
    # "path:line:column: message", the line and column left out: they move as files change.
    found = sorted(tuple(re.sub(r":\d+:\d+:", ":", line).split(": ", 1)) for line in result.stdout.splitlines())
    assert found == [], result.stdout
    assert result.returncode == 0
