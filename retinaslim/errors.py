"""The one exception type a user's mistake raises; the CLI turns it into a one-line error."""


class UserError(Exception):
    """Bad input or options: the message names the file, key or value and how to fix it."""
