"""What a trainer shows while it runs: one live progress line, and log messages beside it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from r1lab.core.runfiles import read_jsonl
from r1lab.train import dist

_CONSOLE = Console(stderr=True)


def log(message: str) -> None:
    """A message for the user on stderr (above a live progress line, when one is shown);
    under torchrun rank 0 speaks for all."""
    if dist.is_main():
        _CONSOLE.log(message)


def eval_table(run_dir: Path, keys: Sequence[str]) -> Table | str:
    """A finished run's evaluation rows (metrics.jsonl rows with `eval/...`), one per step;
    a line saying there are none otherwise."""
    rows = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if any("eval/" in k for k in r)]
    if not rows:
        return "no evaluation rows (eval.size 0, or no test split)"
    table = Table("step", *(key.replace("/", " ") for key in keys))
    for row in rows:
        table.add_row(str(row["step"]), *(_cell(key, row.get(key)) for key in keys))
    return table


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if key.endswith("length") else f"{value:.3f}"


class ProgressDisplay:
    """One live line: step, the trainer's key metrics (`stats` of the last row), ETA."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        stats: Callable[[dict[str, Any]], str] = lambda row: "",
    ) -> None:
        self.stats = stats
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=_CONSOLE,
            disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, row: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=step, stats=self.stats(row))
