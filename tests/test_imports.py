"""The first-party import graph has no cycle (every import statement counts,
also one deferred into a function or kept under TYPE_CHECKING), and every
module imports first, on its own, in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "handlers", "storage")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


FILES = {
    module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).glob("*.py"))
} | {"imagelist": ROOT / "imagelist.py"}


def imports_of(module: str) -> set[str]:
    """The first-party modules `module` imports, anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(FILES[module].read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from handlers import base` imports handlers.base, too.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {name for name in names if name in FILES and name != module}
    return found


def find_cycle() -> list[str] | None:
    graph = {module: imports_of(module) for module in FILES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_every_package_module_is_seen() -> None:
    assert {"config", "handlers", "handlers.base", "storage.postgres", "imagelist"} <= set(FILES)


@pytest.mark.parametrize("module", sorted(FILES))
def test_module_imports_first(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
