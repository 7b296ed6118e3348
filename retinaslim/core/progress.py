"""How long-running library code reports progress without drawing anything itself.

Stages call a ``Reporter``; the CLI passes one that draws rich progress bars, tests pass ``Reporter()``
which ignores everything.
"""

from __future__ import annotations


class Reporter:
    """No-op base: subclasses draw. ``fields`` are short live values shown beside a bar (loss, lr)."""

    def start(self, task: str, total: int) -> None:
        """Begin a task of ``total`` steps (replaces a finished task of the same name)."""

    def advance(self, task: str, steps: int = 1, **fields: str) -> None:
        """``steps`` more steps of ``task`` are done."""

    def finish(self, task: str) -> None:
        """``task`` is over; its bar can go."""

    def log(self, message: str) -> None:
        """One line worth keeping in the scroll-back (an epoch's metrics, a file written)."""
