"""Imports point one way: cli -> api -> stages -> engine -> models/data -> core; only the CLI side draws on the terminal."""

import ast
from pathlib import Path

from rich.errors import StyleSyntaxError
from rich.markup import RE_TAGS
from rich.style import Style

import retinaslim

PACKAGE = Path(retinaslim.__file__).parent
ALLOWED = {  # every top-level module or package of retinaslim, and what it may import of retinaslim
    "core": {"core", "errors"},
    "data": {"data", "core", "errors"},
    "models": {"models", "core", "errors"},
    "engine": {"engine", "models", "data", "core", "errors"},
    "stages": {"stages", "engine", "models", "data", "core", "config", "errors"},
    "api": {"stages", "core", "config", "errors"},
    "config": {"core", "errors"},
    "console": {"core"},
    "errors": set(),
    "cli": {"cli", "api", "console", "config", "errors", "stages", "engine"},
    "__init__": {"api", "errors"},
    "__main__": {"cli"},
}


def imported_parts(source: str) -> set[str]:
    """The top-level parts of retinaslim ``source`` imports (``from retinaslim import api`` and
    ``from retinaslim.api import x`` alike)."""
    parts = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "retinaslim":
            names = [f"retinaslim.{a.name}" for a in node.names]
        else:
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
        parts |= {n.split(".")[1] for n in names if n.startswith("retinaslim.")}
    return parts


def test_the_import_check_sees_both_forms():
    assert imported_parts("from retinaslim import console, api") == {"console", "api"}
    assert imported_parts("from retinaslim.engine import ddp\nimport retinaslim.cli.train") == {"engine", "cli"}


def test_imports_point_one_way():
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert layer in ALLOWED, f"{path.relative_to(PACKAGE)}: a new layer; say what it may import in ALLOWED"
        extra = imported_parts(path.read_text()) - ALLOWED[layer]
        assert not extra, f"{path.relative_to(PACKAGE)} imports retinaslim.{sorted(extra)}"


FRONT_END = ("cli", "console", "__main__")  # the only layers that may draw, print or exit
TERMINAL_MODULES = ("rich", "typer", "click", "retinaslim.console", "retinaslim.cli")
TERMINAL_NAMES = {"print", "exit", "quit", "input", "breakpoint", "SystemExit", "sys.exit", "os._exit", "sys.stdout",
                  "sys.stderr", "typer.Exit", "typer.Abort", "typer.echo", "click.echo"}


def _dotted(node: ast.AST) -> str:
    """``sys.exit`` for the expression sys.exit; '' for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def markup(text: str) -> str | None:
    """The first Rich markup tag in ``text`` as Rich reads it (a closing tag, an @-handler, or a tag that parses
    as a style: [b], [red on white], [link=...], [#ff0000]); None when there is none. [x1, y1] and [3] are text."""
    for match in RE_TAGS.finditer(text):
        escapes, tag = match.group(2), match.group(3)
        if len(escapes) % 2:  # \[ is a literal bracket
            continue
        if tag.startswith(("/", "@")):
            return f"[{tag}]"
        try:
            Style.parse(tag.replace("=", " ", 1))  # [link=URL] is the style "link URL", as Rich renders it
        except StyleSyntaxError:
            continue
        return f"[{tag}]"
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: text for readers of the code, never shown on a terminal."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def terminal_use(source: str) -> list[str]:
    """What in ``source`` talks to the terminal or ends the process: prints, rich/typer/click or retinaslim's
    console, exits, sys.stdout/stderr, and Rich markup in strings (a library's text is plain)."""
    found = []
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module == "retinaslim":
                modules = [f"retinaslim.{a.name}" for a in node.names]
            found += [f"import {m}" for m in modules if any(m == t or m.startswith(t + ".") for t in TERMINAL_MODULES)]
        elif isinstance(node, (ast.Name, ast.Attribute)) and _dotted(node) in TERMINAL_NAMES:
            found.append(_dotted(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and markup(node.value):
            found.append(f"markup {markup(node.value)}")
    return found


def test_the_check_finds_each_kind_of_terminal_use():
    for source in ["print('x')", "import rich", "from rich.table import Table", "from retinaslim import console",
                   "from retinaslim.console import info", "import retinaslim.cli", "import typer", "raise typer.Exit(1)",
                   "import sys\nsys.exit(2)", "raise SystemExit(1)", "exit()", "import sys\nsys.stderr.write('x')",
                   "import os\nos._exit(1)", "from click import echo",
                   "reporter.log(f'[bold]train {name}[/]')", "reporter.log('[b]best[/b] epoch')", "x = '[i]note'",
                   "reporter.log('[red on white]error')", "note = '[link=https://x.org]docs'", "s = '[#ff0000]hot'",
                   "s = 'done [/]'", "s = '[bright_cyan]ok'"]:
        assert terminal_use(source), source
    assert not terminal_use("reporter.log('train: the boxes [x1, y1, x2, y2] of image [3], shard [I/N]')\n"
                            "s = r'escaped \\[bold]'\nwarnings.warn('x')\n"
                            "def f():\n    '''paths[i]: a docstring is not shown'''")


def test_library_never_prints_draws_or_exits():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") in FRONT_END:
            continue
        assert not terminal_use(path.read_text()), f"{path.relative_to(PACKAGE)}: {terminal_use(path.read_text())}"
