"""What r1lab shows, and in which shape, wherever it runs.

On a terminal: rich live progress bars, and tables fitted to the window (a cell folds onto a
second line, never "…"). Anywhere else (a pipe, a file, `nohup`, a batch scheduler): a plain
line per training step, flushed as it happens, a line every few seconds for sampling bars, and
tables at their natural width, so a log holds every number and every identifier whole. The
CLI's `--quiet` drops the per-step lines; `--json` puts machine-readable rows on stdout
instead of tables (messages, warnings and progress stay on stderr).

Every command writes through here, so "terminal or not" is decided in one place.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

WIDE = 10_000  # the page width off a terminal: a table takes its natural width
RULE_WIDTH = 80  # a heading rule off a terminal (and at most this on one)
PLAIN_EVERY = 10.0  # seconds between two plain lines of a sampling bar (the last always shows)


@dataclass
class Mode:
    """How the CLI was asked to talk (`--quiet`, `--json`); scripts get the defaults."""

    quiet: bool = False  # no per-step or per-batch progress lines
    json: bool = False  # JSON rows on stdout instead of tables
    silent: bool = False  # a torchrun rank other than 0: rank 0 speaks for every rank


MODE = Mode()


def configure(quiet: bool = False, json: bool = False, silent: bool = False) -> None:
    """Set the output mode for this process (the CLI does, from its flags and its rank)."""
    MODE.quiet, MODE.json, MODE.silent = quiet, json, silent


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr): the window's width on a terminal, unbounded off one."""
    if MODE.silent:
        return Console(stderr=stderr, quiet=True)
    found = Console(stderr=stderr)
    return found if found.is_terminal else Console(stderr=stderr, width=WIDE)


def log(message: str) -> None:
    """A message for the user on stderr, one line (above a live progress bar when one shows)."""
    console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr: `warning: ...`, one line, at the moment it can still save a run."""
    text = Text("warning: ", style="yellow") + Text(message)
    console(stderr=True).print(text, soft_wrap=True, highlight=False)


def heading(title: str) -> None:
    """A rule with a title on stdout, at most `RULE_WIDTH` wide."""
    out = console()
    out.print(Rule(Text(title, style="bold")), width=min(out.width, RULE_WIDTH))


def say(text: str | Text, style: str | None = None) -> None:
    """A line on stdout, never wrapped by r1lab (a prompt stays one paragraph)."""
    console().print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def table(*headers: str, title: str | None = None) -> Table:
    """A table that never cuts a cell: on a narrow terminal a long cell folds, whole.

    The first column (the row's name: a model spec, a task, a stage) does not wrap at all
    while the window leaves room for it.
    """
    found = Table(title=title)
    for index, header in enumerate(headers):
        found.add_column(header, overflow="fold", no_wrap=index == 0)
    return found


def show(renderable: RenderableType) -> None:
    """A table (or any rich renderable; a string as plain text) on stdout."""
    if isinstance(renderable, str):
        say(renderable)
    else:
        console().print(renderable)


def emit(record: Any) -> None:
    """One JSON line on stdout, flushed (the `--json` output)."""
    if MODE.silent:
        return
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def result(records: Iterable[Any], render: Callable[[], RenderableType | None]) -> None:
    """A command's result: each record as a JSON line with `--json`, else `render()` shown."""
    if MODE.json:
        for record in records:
            emit(record)
        return
    shown = render()
    if shown is not None:
        show(shown)


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(42.4), duration(185), duration(7300)
    ('42s', '3m05s', '2h01m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """A trainer's progress: one live line on a terminal, one plain line per step elsewhere.

    `stats(row)` is the trainer's key numbers for a step's row. With `--json` each step's row
    also goes to stdout as a JSON line.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        stats: Callable[[dict[str, Any]], str] = lambda row: "",
    ) -> None:
        self.total, self.start, self.stats = total, start, stats
        self.enabled = enabled and not (MODE.quiet or MODE.silent)
        err = console(stderr=True)
        self.live: Progress | None = None
        if self.enabled and err.is_terminal:
            self.live = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=err,
            )
            self.task = self.live.add_task("train", total=total, completed=start, stats="")
        self.began = time.monotonic()

    def __enter__(self) -> StepProgress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, step: int, row: dict[str, Any]) -> None:
        """Show step `step`'s row (and emit it with `--json`)."""
        if MODE.json:
            emit(row)
        if self.live is not None:
            self.live.update(self.task, completed=step, stats=self.stats(row))
        elif self.enabled:
            elapsed = time.monotonic() - self.began
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            log(f"step {step}/{self.total}  {self.stats(row)}  eta {duration(eta)}")


@contextmanager
def counting(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar over `total` items (problems, prompts); yields `advance(n)`.

    On a terminal a rich bar; elsewhere `label: done/total, elapsed, eta` lines, at most one
    every `PLAIN_EVERY` seconds and always the last.
    """
    enabled = enabled and not (MODE.quiet or MODE.silent)
    err = console(stderr=True)
    if enabled and err.is_terminal:
        columns = (label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err) as bar:
            job = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(job, n)
        return
    began = shown = time.monotonic()
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done, shown
        done += n
        now = time.monotonic()
        if not enabled or (done < total and now - shown < PLAIN_EVERY):
            return
        shown = now
        eta = (now - began) / done * (total - done)
        log(f"{label}: {done}/{total}, {duration(now - began)} elapsed, eta {duration(eta)}")

    yield advance
