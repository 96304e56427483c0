"""The exception tree lives in one module: edge/errors.py defines every exception that leaves its module."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import edge.errors

EDGE = Path(edge.errors.__file__).resolve().parent
ERRORS = EDGE / "errors.py"

# Private exceptions used for control flow: each is raised and caught inside its own module.
MODULE_INTERNAL = {
    ("decoding/builtin/adeunis.py", "_Truncated"),
    ("decoding/builtin/elvaco.py", "_Malformed"),
    ("decoding/js/runtime.py", "_Failure"),
    ("decoding/js/runtime.py", "_TimedOut"),
    ("config/tables.py", "_Wrong"),
}
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def _base_name(node: ast.expr) -> str:
    """`ValueError` for `ValueError`, `JSException` for `quickjs.JSException`."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _classes() -> list[tuple[str, ast.ClassDef, ast.Module]]:
    found = []
    for path in sorted(EDGE.rglob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"))
        found.extend((path.relative_to(EDGE).as_posix(), node, module) for node in ast.walk(module)
                     if isinstance(node, ast.ClassDef))
    return found


def _exception_classes() -> list[tuple[str, ast.ClassDef, ast.Module]]:
    """Classes deriving from an exception: a builtin one, a third-party `...Error`/`...Exception`,
    or (to a fixed point) another exception class defined in edge/."""
    classes = _classes()
    names = set(BUILTIN_EXCEPTIONS)
    while True:
        more = {node.name for _, node, _ in classes
                if any(_base_name(b) in names or _base_name(b).endswith(("Error", "Exception")) for b in node.bases)}
        if more <= names:
            break
        names |= more
    return [(where, node, module) for where, node, module in classes
            if any(_base_name(b) in names or _base_name(b).endswith(("Error", "Exception")) for b in node.bases)]


def test_every_exception_class_is_defined_in_errors_py_or_module_internal():
    outside = sorted((where, node.name) for where, node, _ in _exception_classes() if where != "errors.py")
    strays = [f"{where}: {name}" for where, name in outside if (where, name) not in MODULE_INTERNAL]
    assert not strays, ("exception classes outside edge/errors.py (move them there, or make them private,"
                        f" caught in their module and listed in MODULE_INTERNAL): {strays}")
    assert set(outside) == MODULE_INTERNAL, "MODULE_INTERNAL lists a class that no longer exists"


def test_module_internal_exceptions_are_caught_where_they_are_raised():
    for where, node, module in _exception_classes():
        if (where, node.name) not in MODULE_INTERNAL:
            continue
        assert node.name.startswith("_"), f"{where}: {node.name} must be private"
        handled = {_base_name(n) for handler in ast.walk(module) if isinstance(handler, ast.ExceptHandler)
                   and handler.type is not None
                   for n in (handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type])}
        assert node.name in handled, f"{where}: {node.name} is never caught in its own module"


def test_the_docstring_draws_every_class_of_the_tree():
    drawn = edge.errors.__doc__ or ""
    defined = [node.name for node in ast.parse(ERRORS.read_text(encoding="utf-8")).body
               if isinstance(node, ast.ClassDef)]
    assert defined[0] == "EdgeError" and "\n    EdgeError\n" in drawn
    assert [name for name in defined[1:] if f"── {name} " not in drawn] == []
    for name in defined:
        assert issubclass(getattr(edge.errors, name), edge.errors.EdgeError), f"{name} is outside the tree"


def test_second_bases_keep_old_handlers_working():
    # The MQTT read path's callers catch ConnectionError; field-map, unit, bounds and command
    # errors were ValueErrors before they joined the tree.
    assert issubclass(edge.errors.ProtocolError, ConnectionError)
    assert issubclass(edge.errors.ConnectionRefused, ConnectionError)
    for cls in (edge.errors.MapError, edge.errors.UnitMismatch, edge.errors.OverLimit, edge.errors.CommandError):
        assert issubclass(cls, ValueError)
