"""The one exception type that means "the user gave us something we cannot use"."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line (what is wrong and how to fix it), exit code 2, no traceback."""


EXIT_USER_ERROR = 2
