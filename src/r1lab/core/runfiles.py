"""Run-file I/O: the JSONL files a run appends to and reads back, and atomic small writes.

Every run directory, evaluation directory and data file of r1lab is JSONL or a small JSON/YAML
file. The rules live here once: rows are appended and flushed one call at a time (a crash
tears at most the last line), a torn last line is recognised as such when reading back, a
malformed line anywhere else is an error naming the file and the line, and a file that is
replaced is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError

Located = tuple[str, dict[str, Any]]
"""A JSON object and where it came from (``data/x.jsonl:12``)."""


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
        self.muted = False

    def mute(self) -> None:
        """Write nothing from now on: under torchrun, every rank but rank 0."""
        self.muted = True

    def write(self, row: dict[str, Any]) -> None:
        if self.muted:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def clear(self) -> None:
        """Start the file over (a run that starts fresh where an abandoned one left rows)."""
        if self.path.exists() and not self.muted:
            self.path.write_text("")

    def truncate_after(self, step: int) -> None:
        """Drop rows written after `step`: a resumed run re-creates them, without duplicates.

        A half-written last line (the process was killed mid-write) is dropped too, since it
        belongs to a step after the checkpoint. The file is replaced atomically, so a crash
        here cannot lose the rows being kept.
        """
        if not self.path.exists() or self.muted:
            return
        rows = read_jsonl(self.path, partial_tail=True)
        kept = [r for r in rows if r.get("step", 0) <= step]
        write_atomic(self.path, jsonl_text(kept))


def read_jsonl(path: Path, partial_tail: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line is an error naming the file and the line.

    With `partial_tail`, a malformed *last* line without a newline (a write cut short by a
    crash) is skipped instead.
    """
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


def read_records(path: str | Path) -> list[Located]:
    """JSON objects of a user's data file, each with its `file:line`; blank lines skipped.

    Stricter than `read_jsonl`, which reads r1lab's own files: every line must be a JSON
    object, the file must exist and be UTF-8, and each error names the file and 1-based line.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data file {str(path)!r} not found (working directory: {os.getcwd()})")
    rows: list[Located] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: invalid JSON: {err}") from err
                if not isinstance(record, dict):
                    kind = type(record).__name__
                    raise UserError(f"{path}:{number}: expected a JSON object, got {kind}")
                rows.append((f"{path}:{number}", record))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from err
    return rows


def check_out_dir(path: Path, what: str = "output directory") -> None:
    """`path` can be a directory: it is one, or can be made where the nearest existing part of
    it is a directory (not a file)."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise UserError(f"{what} {path}: {part} is a file, not a directory")
            return


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def append_rows(path: Path, rows: Sequence[dict[str, Any]], mode: str = "a") -> None:
    """Write rows in one call and flush them to disk, so an interruption tears at most one line."""
    with Path(path).open(mode) as f:
        f.write(jsonl_text(rows))
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling and rename: a reader sees the old file or the new,
    also after a power loss (the file is flushed before the rename, the rename after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where unsupported."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories, to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
