"""Run outputs other tools read: metrics.jsonl, samples.jsonl, and a live progress line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Append-only JSONL file, flushed per row so a crash loses at most the current row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def clear(self) -> None:
        """Start the file over (a run that starts fresh where an abandoned one left rows)."""
        if self.path.exists():
            self.path.write_text("")

    def truncate_after(self, step: int) -> None:
        """Drop rows written after `step`: a resumed run re-creates them, without duplicates.

        A half-written last line (the process was killed mid-write) is dropped too, since it
        belongs to a step after the checkpoint. The file is replaced atomically, so a crash
        here cannot lose the rows being kept.
        """
        if not self.path.exists():
            return
        rows = read_jsonl(self.path, partial_tail=True)
        kept = [r for r in rows if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)


def read_jsonl(path: Path, partial_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line is an error naming the file and the line.

    With `partial_tail`, a malformed *last* line without a newline (a write cut short by a
    crash) is skipped instead.
    """
    from r1lab.errors import UserError

    rows = []
    lines = Path(path).read_text().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if partial_tail and number == len(lines):  # no newline after it: cut short
                break
            raise UserError(f"{path}:{number}: invalid JSON: {err.msg}") from err
    return rows


class ProgressDisplay:
    """One live line: step, reward, accuracy, length, seconds per step, ETA."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        stats = (
            f"reward {metrics.get('reward', 0):.3f}  acc {metrics.get('accuracy') or 0:.2f}  "
            f"fmt {metrics.get('format', 0):.2f}  len {metrics.get('completion_len_mean', 0):.0f}  "
            f"{metrics.get('step_seconds', 0):.1f}s/step"
        )
        self.progress.update(self.task, completed=step, stats=stats)

    def log(self, message: str) -> None:
        self.console.log(message)
