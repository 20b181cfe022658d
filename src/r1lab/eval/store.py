"""Where an evaluation lives on disk: its settings, its per-sample rows, and how it resumes.

An evaluation directory holds `settings.json` (what a sample *is*: written before the first
sample), `results.jsonl` (one row per (problem, sample), appended as problems finish) and
`summary.json` (recomputed from the rows at the end). The rows are the source of truth, so an
interrupted evaluation continues from them and reports what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from r1lab.core.config import choice
from r1lab.core.errors import UserError, unknown_name
from r1lab.core.models import endpoint_parts
from r1lab.core.runfiles import jsonl_text, read_jsonl, write_atomic
from r1lab.eval.metrics import Row
from r1lab.eval.protocol import PROTOCOL
from r1lab.text.formats import SPECIAL_TOKEN, OutputFormat, check_style
from r1lab.text.templates import SHOT_STYLES

RESULTS, SUMMARY, SETTINGS = "results.jsonl", "summary.json", "settings.json"
RESPONSES = "responses.jsonl"  # an endpoint model's answers, cached for a resume
SPLIT = "test"
SPLITS = ("train", "test")
_ADDED_LATER = {"style": "think", "special_token": SPECIAL_TOKEN}
_UNSET = object()


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides what one sample is; a resumed evaluation must match all of it.

    `limit` is deliberately absent: raising it extends an evaluation, lowering it reports a
    prefix of it, and per-problem seeding makes both equal to a fresh run.
    """

    model: str
    task: str
    task_options: dict[str, Any] = field(default_factory=dict)
    template: str = "r1_zero"
    shots: int = 0
    shot_style: str = "brief"
    k: int = PROTOCOL.k
    temperature: float = PROTOCOL.temperature
    top_p: float = PROTOCOL.top_p
    max_new_tokens: int = PROTOCOL.max_new_tokens
    seed: int = 0
    greedy: bool = False
    engine: str = "prefix"
    stop: tuple[str, ...] = ()
    split: str = SPLIT
    style: str = "think"  # the response format `format` is judged in (text.formats)
    special_token: str = SPECIAL_TOKEN

    @property
    def format(self) -> OutputFormat:
        return OutputFormat(self.style, self.special_token)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON would read them back (tuples become lists).

        Settings added after evaluations were first written are left out at their default, so
        an older evaluation directory (and its default name's hash) still matches.
        """
        data = {k: v for k, v in asdict(self).items() if _ADDED_LATER.get(k, _UNSET) != v}
        return json.loads(json.dumps(data, sort_keys=True))


def make_settings(model: str, task: str, **kwargs: Any) -> tuple[EvalSettings, list[str]]:
    """Validated settings plus notes; greedy (or temperature 0) forces k=1 and says so.

    A local model path is made absolute, so `runs/x/final` and its absolute form are one model.
    """
    notes: list[str] = []
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    kwargs["stop"] = tuple(kwargs.get("stop") or ())
    kwargs["task_options"] = dict(kwargs.get("task_options") or {})
    settings = EvalSettings(model=model, task=task, **kwargs)
    if settings.temperature < 0:
        raise UserError(
            f"temperature must be >= 0 (0, or --greedy, means greedy decoding), "
            f"got {settings.temperature}"
        )
    if settings.greedy or settings.temperature == 0:
        if settings.k != 1:
            notes.append(f"greedy decoding: k forced from {settings.k} to 1 (samples identical)")
        settings = replace(settings, greedy=True, k=1, temperature=0.0, top_p=1.0)
    if not 1 <= settings.k <= 1024:
        raise UserError(f"k must be between 1 and 1024, got {settings.k}")
    if settings.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
    if not 0.0 < settings.top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {settings.top_p}")
    if settings.shots < 0:
        raise UserError(f"shots must be >= 0, got {settings.shots}")
    if settings.shot_style not in SHOT_STYLES:
        raise unknown_name("shot style", settings.shot_style, SHOT_STYLES)
    check_style(settings.style, settings.special_token)
    choice("split", settings.split, SPLITS)
    return settings, notes


def default_out_dir(settings: EvalSettings, root: str | Path = "evals") -> Path:
    """`evals/<model>_<task>_<template>_k<k>-<hash>`: readable, and unique per settings.

    The hash covers every setting, so re-running the same command resumes the same
    directory and changing any setting never collides with an older evaluation.
    """
    digest = hashlib.sha256(json.dumps(settings.to_json()).encode()).hexdigest()[:8]
    endpoint = endpoint_parts(settings.model)
    model = endpoint[0] if endpoint else settings.model
    model = re.split(r"[/:\\]", model.rstrip("/"))[-1]
    task = Path(settings.task.split(":", 1)[-1]).stem if ":" in settings.task else settings.task
    mode = "greedy" if settings.greedy else f"k{settings.k}"
    name = f"{model}_{task}_{settings.template}_{mode}-{digest}"
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def problem_seed(seed: int, problem_id: str) -> int:
    """The torch seed for one problem's samples: a stable hash of (seed, problem id)."""
    digest = hashlib.sha256(f"r1lab-eval:{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def read_results(path: Path) -> list[Row]:
    """Rows of results.jsonl; a torn last line (a crash mid-write) is dropped, not an error."""
    return read_jsonl(path, partial_tail=True)


def check_settings(out_dir: Path, settings: EvalSettings) -> None:
    """Create `settings.json`, or refuse to add samples to results made another way."""
    path, results = out_dir / SETTINGS, out_dir / RESULTS
    wanted = settings.to_json()
    if path.exists():
        found = json.loads(path.read_text())
        diffs = [
            f"{key}: {found.get(key)!r} there, {wanted.get(key)!r} now"
            for key in sorted(set(found) | set(wanted))
            if found.get(key) != wanted.get(key)
        ]
        if diffs:
            raise UserError(
                f"{out_dir} holds an evaluation made with other settings ({'; '.join(diffs)}); "
                "pick another --out (or delete the directory) instead of mixing the two"
            )
        return
    if results.exists():
        raise UserError(
            f"{results} exists but {path} does not, so its settings cannot be checked; "
            "pick another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def load_finished(out_dir: Path, k: int) -> dict[str, list[Row]]:
    """Problems whose k samples are all in results.jsonl; partial problems are removed.

    A problem interrupted between its samples is redrawn whole under its own seed, which
    gives the same samples an uninterrupted run would have written.
    """
    path = out_dir / RESULTS
    if not path.exists():
        return {}
    rows = read_results(path)
    by_problem: dict[str, dict[int, Row]] = {}
    for row in rows:  # a duplicated (problem, sample) row keeps the first copy
        by_problem.setdefault(row["id"], {}).setdefault(row["sample"], row)
    finished = {
        pid: [samples[i] for i in range(k)]
        for pid, samples in by_problem.items()
        if sorted(samples) == list(range(k))
    }
    kept = [r for group in finished.values() for r in group]
    if len(kept) != len(rows):
        write_atomic(path, jsonl_text(kept))
    return finished
