"""`r1lab <command>`: parse the arguments, run one function, turn user errors into one line.

`parser` holds the argument tables, `commands` what each command does. Under torchrun
(`torchrun --nproc-per-node N -m r1lab train RECIPE`) every rank runs the command; only rank 0
shows progress and results, and the process group is left at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from r1lab.cli.parser import build_parser
from r1lab.core import console
from r1lab.core.errors import UserError
from r1lab.train import dist


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    quiet, json = getattr(args, "quiet", False), getattr(args, "json", False)
    console.configure(quiet=quiet, json=json, silent=not dist.is_main())
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
        dist.stop()
        console.configure()  # the flags were this command's, not the process's
    return 0
