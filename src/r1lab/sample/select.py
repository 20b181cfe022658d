"""Which drawn samples rejection sampling keeps, and the non-reasoning rows mixed in.

Every drawn sample ends in exactly one list: kept, or rejected with the first filter it
failed (`dropped_by`), checked in the order of `applied_filters`:
    empty -> unchecked / incorrect (rule or judge) -> the text filters of `sample.filters` ->
    duplicate (of an earlier kept sample of the same prompt) -> max_per_prompt.
Each row carries its provenance (model, task, prompt id, sample index, grade, judge verdict,
filter verdicts), so a dataset row can always be traced back to the sample it came from.
Pure Python over saved rows: refiltering never samples again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from r1lab.core.types import Example
from r1lab.eval.metrics import Row
from r1lab.eval.store import EvalSettings
from r1lab.sample.config import SampleConfig
from r1lab.sample.filters import duplicates, enabled_checks, text_checks
from r1lab.sample.judge import Verdict
from r1lab.text.conversations import SFTRow


@dataclass(frozen=True)
class Drawn:
    """One drawn sample: its prompt, its results.jsonl row, and the full response text."""

    example: Example
    row: Row  # id, sample, completion, answer, correct, gold, length, truncated, ...
    text: str  # template prefill + completion: what the filters and the SFT data see

    @property
    def key(self) -> tuple[str, int]:
        return (self.example.id, self.row["sample"])


@dataclass
class Selection:
    """Kept and rejected rows, and how many each filter dropped (in the order applied)."""

    dropped: dict[str, int]
    kept: list[Row]
    rejected: list[Row]

    def reject(self, row: Row, reason: str, **extra: Any) -> None:
        self.rejected.append({**row, "dropped_by": reason, **extra})
        self.dropped[reason] += 1


def applied_filters(config: SampleConfig) -> list[str]:
    """The drop reasons a run can give, in the order they are checked."""
    names = ["empty"]
    if config.filters.correct:
        names += ["unchecked", "incorrect"]
    names += list(enabled_checks(config.filters))
    if config.filters.dedup:
        names.append("duplicate")
    if config.max_per_prompt is not None:
        names.append("max_per_prompt")
    return names


def grade_of(drawn: Drawn, verdict: Verdict | None) -> dict[str, Any]:
    """Whether a sample is correct, and by whose word: the judge's verdict, else the rule's.

    `correct` is None for a general prompt nobody judged (no rule can check it).
    """
    rule = bool(drawn.row["correct"]) if drawn.example.checkable else None
    if verdict is not None:
        correct, by = verdict.correct is True, "judge"
    else:
        correct, by = rule, None if rule is None else "rule"
    gold = drawn.example.answer or None
    return {"correct": correct, "by": by, "rule": rule, "answer": drawn.row["answer"], "gold": gold}


def first_failure(
    drawn: Drawn, grade: dict[str, Any], checks: dict[str, bool], config: SampleConfig
) -> str | None:
    """The first filter a sample fails, in `applied_filters` order; None when it passes all."""
    if not drawn.row["completion"].strip():
        return "empty"  # the model wrote nothing (a prefill alone teaches nothing)
    if config.filters.correct:
        if grade["correct"] is None:
            return "unchecked"
        if not grade["correct"]:
            return "incorrect"
    return next((name for name, ok in checks.items() if not ok), None)


def data_row(
    drawn: Drawn,
    settings: EvalSettings,
    grade: dict[str, Any],
    verdict: Verdict | None,
    checks: dict[str, bool],
) -> Row:
    """A data.jsonl row: the SFT `jsonl` source reads `id`, `prompt`, `completion`."""
    return {
        "id": f"{drawn.example.id}-s{drawn.row['sample']}",
        "prompt": drawn.example.prompt,
        "completion": drawn.text,
        "provenance": {
            "model": settings.model,
            "task": settings.task,
            "task_options": settings.task_options,
            "template": settings.template,
            "split": settings.split,
            "seed": settings.seed,
            "prompt_id": drawn.example.id,
            "sample": drawn.row["sample"],
            "grade": grade,
            "judge": None if verdict is None else asdict(verdict),
            "filters": checks,
            "length": drawn.row["length"],
            "truncated": drawn.row.get("truncated", False),
        },
    }


def select(
    config: SampleConfig,
    settings: EvalSettings,
    drawn: Sequence[Drawn],
    verdicts: dict[tuple[str, int], Verdict],
) -> tuple[list[Row], list[Row], dict[str, int]]:
    """(kept rows, rejected rows, drops per filter): every drawn sample lands in one list."""
    selection = Selection(dict.fromkeys(applied_filters(config), 0), [], [])
    by_prompt: dict[str, list[Drawn]] = {}
    for d in drawn:
        by_prompt.setdefault(d.example.id, []).append(d)
    for group in by_prompt.values():
        survivors = []
        for d in group:
            verdict = verdicts.get(d.key)
            grade = grade_of(d, verdict)
            checks = text_checks(d.text, config.filters)
            row = data_row(d, settings, grade, verdict, checks)
            reason = first_failure(d, grade, checks, config)
            if reason is None:
                survivors.append(row)
            else:
                selection.reject(row, reason)
        keep_unique(config, survivors, selection)
    return selection.kept, selection.rejected, selection.dropped


def keep_unique(config: SampleConfig, rows: Sequence[Row], selection: Selection) -> None:
    """Keep one prompt's rows that duplicate no earlier one, at most `max_per_prompt`."""
    filters = config.filters
    twins = (
        duplicates([r["completion"] for r in rows], filters.near_duplicate, filters.shingle_words)
        if filters.dedup
        else [None] * len(rows)
    )
    kept = 0
    for row, twin in zip(rows, twins, strict=True):
        if twin is not None:
            selection.reject(row, "duplicate", duplicate_of=rows[twin]["id"])
        elif config.max_per_prompt is not None and kept >= config.max_per_prompt:
            selection.reject(row, "max_per_prompt")
        else:
            selection.kept.append(row)
            kept += 1


def pick_mix(
    rows: Sequence[SFTRow], kept: int, config: SampleConfig, notes: list[str]
) -> list[Row]:
    """`mix.ratio` non-reasoning rows per kept sample, drawn without replacement with the
    seed, in file order; the file's rows all, with a note, when it has fewer."""
    wanted = math.floor(config.mix.ratio * kept + 0.5)
    if wanted > len(rows):
        notes.append(f"mix: {wanted} rows wanted but {config.mix.path} has {len(rows)}: all used")
        wanted = len(rows)
    chosen = sorted(random.Random(config.seed).sample(range(len(rows)), wanted))
    return [
        {
            "id": f"mix-{rows[i].id}",
            **_conversation(rows[i]),
            "provenance": {"source": "mix", "file": config.mix.path, "row": rows[i].id},
        }
        for i in chosen
    ]


def _conversation(row: SFTRow) -> dict[str, Any]:
    """A mixed-in row as the SFT `jsonl` source reads it: all its turns, not just the last."""
    if row.history:
        return {"messages": row.messages()}
    return {"prompt": row.prompt, "completion": row.completion}
