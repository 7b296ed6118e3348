"""The one exception type a user's mistake raises; the CLI turns it into a one-line error."""

from __future__ import annotations

import re
from collections.abc import Callable


class UserError(Exception):
    """Bad input or options: the message names the file, key or value and how to fix it.

    An option is named by its config field in backticks (`score_thresh`); each front end shows it as its
    user typed it (the Python API: its keyword; the CLI: --score-thresh) through ``renamed``.
    """

    def renamed(self, name: Callable[[str], str]) -> UserError:
        """This error with each `field` replaced by ``name(field)``."""
        return UserError(re.sub(r"`(\w+)`", lambda m: name(m.group(1)), str(self)))
