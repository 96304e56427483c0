"""edge/buffer's shape, read from the source: no import circle among its modules, and its SQL stays inside it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edge" / "buffer"
NAME = "edge.buffer"


def _module(path: Path) -> str:
    return NAME if path.stem == "__init__" else f"{NAME}.{path.stem}"


def _imports(path: Path) -> set[str]:
    """The edge.buffer modules `path` imports, at the top or inside functions (a lazy import is still an edge).

    `from edge.buffer import x` is an edge to the submodule x when there is one, else to the package
    itself (its __init__, which imports every role).
    """
    submodules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == NAME or a.name.startswith(NAME + "."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this file is in
                base = ".".join([NAME, *([base] if base else [])])
            if base == NAME:
                found.update(f"{NAME}.{a.name}" if a.name in submodules else NAME for a in node.names)
            elif base.startswith(NAME + "."):
                found.add(".".join(base.split(".")[:3]))
    return found - {_module(path)}


def test_no_import_circle_within_edge_buffer() -> None:
    graph = {_module(p): _imports(p) for p in PACKAGE.glob("*.py")}
    assert f"{NAME}.store" in graph and f"{NAME}.registry" in graph
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_roles_never_import_the_package_itself() -> None:
    """Importing the package's names from inside it would run __init__ (every role) half-way: a circle."""
    for path in PACKAGE.glob("*.py"):
        if path.stem != "__init__":
            assert NAME not in _imports(path), f"{path.name} imports from {NAME}; import the role's module instead"
