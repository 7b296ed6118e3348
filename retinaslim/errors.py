"""The one exception type a user's mistake raises; the CLI turns it into a one-line error."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Bad input or options: the message names the file, key or value and how to fix it.

    An option is named by its config field in backticks (`score_thresh`); each front end shows it as its
    user typed it (the Python API: its keyword; the CLI: --score-thresh) through ``renamed``.
    """

    def renamed(self, name: Callable[[str], str]) -> UserError:
        """This error with each `field` replaced by ``name(field)``."""
        return UserError(re.sub(r"`(\w+)`", lambda m: name(m.group(1)), str(self)))


def not_a_file(path: Path, what: str) -> UserError:
    """The error for a ``path`` that should be ``what`` (e.g. "checkpoint") but is not a file: a folder
    passed in its place is named as one, so the fix is clear; otherwise ``what`` was not found."""
    if path.is_dir():
        return UserError(f"{path}: a folder, expected {what}; pass the file itself")
    return UserError(f"{path}: not found (expected {what})")
