"""`r1lab <command>`: parse the arguments, run one function, turn user errors into one line.

`parser` holds the argument tables, `commands` what each command does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from r1lab.cli.parser import build_parser
from r1lab.core import console
from r1lab.core.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    console.configure(quiet=getattr(args, "quiet", False), json=getattr(args, "json", False))
    try:
        args.fn(args)
    except UserError as err:
        # soft_wrap: a message piped to a log file stays one line, greppable
        Console(stderr=True).print(Text("error: ", style="red") + Text(str(err)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted[/yellow]; resume with --resume (a pipeline: run it again)"
        )
        return 130
    finally:
        console.configure()  # the flags were this command's, not the process's
    return 0
