"""Imports point one way: cli -> api -> stages -> models/data -> core; only the CLI side draws on the terminal."""

import ast
from pathlib import Path

import retinaslim

PACKAGE = Path(retinaslim.__file__).parent
ALLOWED = {
    "core": {"core", "errors"},
    "data": {"data", "core", "errors"},
    "models": {"models", "core", "errors"},
    "stages": {"stages", "models", "data", "core", "config", "errors"},
    "api": {"stages", "core", "config", "errors"},
    "config": {"core", "errors"},
    "console": {"core"},
}


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        parts |= {n.split(".")[1] for n in names if n.startswith("retinaslim.")}
    return parts


def test_imports_point_one_way():
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if layer in ALLOWED:
            extra = imported_parts(path) - ALLOWED[layer]
            assert not extra, f"{path.relative_to(PACKAGE)} imports retinaslim.{sorted(extra)}"


def test_library_never_prints_or_draws():
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "console.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "print" not in calls, path
        assert "import rich" not in path.read_text() and "from rich" not in path.read_text(), path
