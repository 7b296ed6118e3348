"""Imports point one way: cli -> api -> stages -> engine -> models/data -> core; only the CLI side draws on the terminal."""

import ast
import re
from pathlib import Path

import retinaslim

PACKAGE = Path(retinaslim.__file__).parent
ALLOWED = {
    "core": {"core", "errors"},
    "data": {"data", "core", "errors"},
    "models": {"models", "core", "errors"},
    "engine": {"engine", "models", "data", "core", "errors"},
    "stages": {"stages", "engine", "models", "data", "core", "config", "errors"},
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


FRONT_END = ("cli.py", "console.py", "__main__.py")  # the only modules that may draw, print or exit
TERMINAL_MODULES = ("rich", "typer", "click", "retinaslim.console", "retinaslim.cli")
TERMINAL_NAMES = {"print", "exit", "quit", "input", "breakpoint", "SystemExit", "sys.exit", "os._exit", "sys.stdout",
                  "sys.stderr", "typer.Exit", "typer.Abort", "typer.echo", "click.echo"}
MARKUP = re.compile(r"\[/\]|\[/?(bold|dim|italic|underline|red|green|yellow|blue|magenta|cyan)\b[^\]]*\]")


def _dotted(node: ast.AST) -> str:
    """``sys.exit`` for the expression sys.exit; '' for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def terminal_use(source: str) -> list[str]:
    """What in ``source`` talks to the terminal or ends the process: prints, rich/typer/click or retinaslim's
    console, exits, sys.stdout/stderr, and Rich markup in strings (a library's text is plain)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "retinaslim":
                modules = [f"retinaslim.{a.name}" for a in node.names]
            found += [f"import {m}" for m in modules if any(m == t or m.startswith(t + ".") for t in TERMINAL_MODULES)]
        elif isinstance(node, (ast.Name, ast.Attribute)) and _dotted(node) in TERMINAL_NAMES:
            found.append(_dotted(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MARKUP.search(node.value):
            found.append(f"markup {MARKUP.search(node.value).group()}")
    return found


def test_the_check_finds_each_kind_of_terminal_use():
    for source in ["print('x')", "import rich", "from rich.table import Table", "from retinaslim import console",
                   "from retinaslim.console import info", "import typer", "raise typer.Exit(1)", "import sys\nsys.exit(2)",
                   "raise SystemExit(1)", "exit()", "import sys\nsys.stderr.write('x')", "import os\nos._exit(1)",
                   "reporter.log(f'[bold]train {name}[/]')", "from click import echo"]:
        assert terminal_use(source), source
    assert not terminal_use("reporter.log('train: the boxes [x1, y1, x2, y2] of image [3]')\nwarnings.warn('x')")


def test_library_never_prints_draws_or_exits():
    for path in PACKAGE.rglob("*.py"):
        if path.name in FRONT_END:
            continue
        assert not terminal_use(path.read_text()), f"{path.relative_to(PACKAGE)}: {terminal_use(path.read_text())}"
