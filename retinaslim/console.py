"""Everything that draws on the terminal: progress bars, result tables, error lines.

Every text these functions get is data (file names, reasons, class names hold ``[...]`` as often as not):
they escape it, and Rich markup comes only from the constant styles written here.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from retinaslim.core.progress import Reporter

console = Console()
err_console = Console(stderr=True)


class RichReporter(Reporter):
    """Draws each task as a rich progress bar with rate and ETA; ``log`` lines scroll above the bars."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, task: str, total: int) -> None:
        self.finish(task)
        self.tasks[task] = self.progress.add_task(escape(task), total=total, rate="", info="")

    def advance(self, task: str, steps: int = 1, **fields: str) -> None:
        task_id = self.tasks[task]
        speed = next(t.speed for t in self.progress.tasks if t.id == task_id)
        rate = f"{speed:.1f} it/s" if speed else ""
        info = escape("  ".join(f"{k} {v}" for k, v in fields.items()))
        self.progress.update(task_id, advance=steps, rate=rate, **({"info": info} if fields else {}))

    def finish(self, task: str) -> None:
        if task in self.tasks:
            self.progress.remove_task(self.tasks.pop(task))

    def log(self, message: str) -> None:
        self.progress.console.print(escape(message), soft_wrap=True)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(escape(message), highlight=False, soft_wrap=True)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A results table; columns of numbers right-aligned; None shows as "-" (no such number).

    Too wide for the terminal, it is drawn transposed (a row per column; the first column's names, such
    as checkpoints, head the columns) when that fits, as Ultralytics and spaCy print metrics per row;
    whatever is still too wide wraps. No name or number is ever cut short to "...".
    """
    t = _table(title, columns, rows)
    if _width(t) > console.width:
        flipped = _table(title, *_transposed(columns, rows))
        t = flipped if _width(flipped) <= _width(t) else t
    t.show_header = any(column.header for column in t.columns)  # a transposed single row has no names to head it
    for column in t.columns:
        column.overflow = "fold"
    console.print(t)


def _width(t: Table) -> int:
    """Columns the table takes when nothing is wrapped."""
    return Measurement.get(console, console.options.update(width=1 << 16), t).maximum


def _transposed(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> tuple[list[str], list[list[object]]]:
    """One row per column; when the first column holds names, they head the new columns."""
    if rows and all(isinstance(row[0], str) for row in rows):
        return [columns[0], *(str(row[0]) for row in rows)], [[name, *(row[i] for row in rows)]
                                                              for i, name in enumerate(columns) if i]
    return ["", *("" for _ in rows)], [[name, *(row[i] for row in rows)] for i, name in enumerate(columns)]


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    t = Table(title=escape(title), title_justify="left")
    for i, name in enumerate(columns):
        numeric = all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        t.add_column(escape(name), justify="right" if numeric else "left")
    for row in rows:
        t.add_row(*(escape(_fmt(v)) for v in row))
    return t


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
