"""What a trainer shows while it runs and when it ends: its progress (one live line on a
terminal, a plain line per step elsewhere: `core.console.StepProgress`), messages, and the
table of its evaluation rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from r1lab.core import console
from r1lab.core.console import StepProgress as ProgressDisplay
from r1lab.core.console import log
from r1lab.core.runfiles import read_jsonl

__all__ = ["ProgressDisplay", "eval_rows", "eval_table", "log"]


def eval_rows(run_dir: Path) -> list[dict[str, Any]]:
    """A run's evaluation rows (metrics.jsonl rows with `eval/...`), one per evaluated step."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    return [row for row in rows if any(key.startswith("eval/") for key in row)]


def eval_table(run_dir: Path, keys: Sequence[str]) -> Table | str:
    """A finished run's evaluation rows as a table, one per step; a line saying there are
    none otherwise."""
    rows = eval_rows(run_dir)
    if not rows:
        return "no evaluation rows (eval.size 0, or no test split)"
    table = console.table("step", *(key.replace("/", " ") for key in keys))
    for row in rows:
        table.add_row(str(row["step"]), *(_cell(key, row.get(key)) for key in keys))
    return table


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if key.endswith("length") else f"{value:.3f}"
