"""The layout stays as docs/architecture.md draws it: short functions in the library, imports at module level."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("influence", "embedded", "experiments", "analysis")
MAX_LINES = 60


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_library_function_is_longer_than_60_lines():
    long = [
        f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for p in sorted((ROOT / "influence").rglob("*.py"))
        for f in _functions(p)
        if f.end_lineno - f.lineno + 1 > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines in influence/ (split them): {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_project_modules_are_imported_at_module_level(package):
    """A function-level import of a project module hides a cycle or a layering problem (lint-imports checks the layers)."""
    hidden = []
    for p in sorted((ROOT / package).rglob("*.py")):
        for f in _functions(p):
            for node in ast.walk(f):
                if isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
                ):
                    hidden.append(f"{p.relative_to(ROOT)}:{node.lineno} in {f.name}")
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in PACKAGES for a in node.names):
                    hidden.append(f"{p.relative_to(ROOT)}:{node.lineno} in {f.name}")
    assert not hidden, f"function-level imports of project modules: {hidden}"
