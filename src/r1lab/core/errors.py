"""One exception type for mistakes a user can fix.

The CLI turns `UserError` into a one-paragraph message with exit code 2 instead of a traceback,
so every check on user input (config, data files, specs) raises it with a message that says
what was wrong and what would be valid.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a config key, a data file line, an unknown name."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Build the error for an unknown registry name: the closest valid names first (a typo is
    the usual cause), then every valid one.

    >>> str(unknown_name("task", "arth", ["arith", "countdown"]))
    "unknown task 'arth' (did you mean 'arith'?); valid tasks: arith, countdown"
    """
    names = sorted(valid)
    return UserError(
        f"unknown {kind} {name!r}{did_you_mean(name, names)}; valid {kind}s: {', '.join(names)}"
    )


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the valid names closest to a misspelt one; "" when none is.

    >>> did_you_mean("grup_size", ["group_size", "batch_size"])
    " (did you mean 'group_size'?)"
    """
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
