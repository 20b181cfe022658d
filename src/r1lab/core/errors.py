"""One exception type for mistakes a user can fix.

The CLI turns `UserError` into a one-paragraph message with exit code 2 instead of a traceback,
so every check on user input (config, data files, specs) raises it with a message that says
what was wrong and what would be valid.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a config key, a data file line, an unknown name."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Build the error for an unknown registry name, listing what would have been valid."""
    options = ", ".join(sorted(valid))
    return UserError(f"unknown {kind} {name!r}; valid {kind}s: {options}")
