"""The package layout holds: components never import each other, the hub imports nothing, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parent.parent / "edge"
COMPONENTS = ("sources", "decoding", "buffer", "formats", "sinks")
MAX_LINES = 420  # "no module over ~400 lines": past this a module has more than one job
# Every database, the codec catalogue index (edge/buffer/codec_index.py) included, is opened in edge/buffer.
SQLITE_OUTSIDE_BUFFER: set[str] = set()


def _modules() -> list[Path]:
    return sorted(EDGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every `edge.*` module a file imports, lazy imports inside functions included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "edge" or m.startswith("edge.")}


def _rel(path: Path) -> str:
    return path.relative_to(EDGE).as_posix()


@pytest.mark.parametrize("component", COMPONENTS)
def test_layout_components_never_import_each_other(component: str) -> None:
    others = [c for c in COMPONENTS if c != component]
    crossing = [f"{_rel(p)} -> {m}" for p in (EDGE / component).rglob("*.py") for m in _imports(p)
                if m.split(".")[1:2] and m.split(".")[1] in others]
    assert crossing == []


@pytest.mark.parametrize("hub", ["model.py", "errors.py"])
def test_layout_hub_imports_nothing_from_edge(hub: str) -> None:
    assert _imports(EDGE / hub) == set()


def test_layout_nothing_imports_the_top_layers() -> None:
    top = ("edge.cli", "edge.service", "edge.pipeline")
    # The layers on top and the tools that run them.
    allowed = ("cli/", "__main__.py", "service.py", "demo.py", "simulate.py", "pipeline.py")
    wrong = [f"{_rel(p)} -> {m}" for p in _modules() if not _rel(p).startswith(allowed)
             for m in _imports(p) if m.startswith(top)]
    assert wrong == []


def test_layout_modules_stay_small() -> None:
    big = {_rel(p): n for p in _modules() if (n := p.read_text().count("\n")) > MAX_LINES}
    assert big == {}


def test_layout_no_sql_outside_the_buffer() -> None:
    users = {_rel(p) for p in _modules() if not _rel(p).startswith("buffer/") and "sqlite3" in p.read_text()}
    assert users <= SQLITE_OUTSIDE_BUFFER
