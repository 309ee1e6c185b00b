"""The floor plan of docs/ARCHITECTURE.md, read from the code's own imports: every import points
down (or across one floor) and no modules import each other in a circle.

Every import counts, including the ones inside functions and under ``TYPE_CHECKING``: a lazy
import still makes the lower module know the higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scorer"

# Lowest first. A module's floor is that of the longest prefix listed.
FLOORS: dict[str, int] = {
    "scorer._version": 1,
    "scorer.errors": 1,
    "scorer.arrow": 1,
    "scorer.partitions": 1,
    "scorer.storage": 2,
    "scorer.config": 2,
    "scorer.metrics": 2,
    "scorer.model": 3,
    "scorer.pipeline": 4,
    "scorer.jobs": 5,
    "scorer.cli": 6,
    "scorer": 7,  # the library's front door (scorer.score, scorer.load_model) and __main__
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _floor(module: str) -> int:
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[prefix]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The scorer modules a file imports (``from scorer.x import y`` counts ``scorer.x.y`` when
    that is a module, else ``scorer.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in known:
                    found.add(child)
                elif node.module in known:
                    found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # A package's __init__ is where its children are imported from, not a dependency on them.
    return {
        name: {m for m in _imports(path, known) if m != name and not name.startswith(m + ".")}
        for name, path in modules.items()
    }


def test_every_module_has_a_floor() -> None:
    assert all(_floor(module) for module in _modules())


def test_imports_only_point_down() -> None:
    upward = [
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if _floor(target) > _floor(module)
    ]
    assert upward == []


def test_no_import_circles() -> None:
    graph = import_graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_is_a_hub(module: str) -> None:
    """One job per module: none grows past ~700 lines."""
    lines = _modules()[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 720, f"{module} has {lines} lines"
