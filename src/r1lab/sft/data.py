"""Cold-start SFT data: (prompt, completion) rows from tasks, conversation files and earlier runs.

A row is `SFTRow(id, prompt, completion, source)`: `prompt` is the bare user message (the
trainer renders it with the configured template) and `completion` the whole assistant response,
including any text the template prefills (the trainer strips it again). Three sources:

- `task`: a built-in task's train split, each worked `Example.solution` rendered as a long CoT
  with a self-verification step, in one of two formats:
    `think`: `<think> reasoning </think> <answer> answer </answer>` (the R1-Zero format the
             format reward checks; what the mini pipeline cold-starts on);
    `r1`:    `|special_token|\\nreasoning\\n|special_token|\\nsummary`, the paper's readable
             cold-start format, the special token configurable;
- `jsonl`: conversations, one JSON object a line: `{"messages": [{"role": "user", ...},
  {"role": "assistant", ...}]}` or `{"prompt": ..., "completion": ...}`, optional `id`;
- `samples`: an earlier run's samples.jsonl, keeping completions whose accuracy reward is 1
  and whose format is ok (R1's "cleaned R1-Zero outputs").

The held-out split is cut by a hash of the prompt, so it is stable under reordering and every
completion of one prompt lands on the same side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.sft.config import SFTConfig, SourceConfig
from r1lab.tasks import Task, make_task, split_of
from r1lab.text.conversations import SFTRow, digest, json_lines, jsonl_rows
from r1lab.text.formats import THINK, OutputFormat
from r1lab.text.templates import THINK_PREFILL, worked_completion

VERIFY = "Let me re-check each step above: they all hold, so the answer is {answer}."
SUMMARY = "The answer is \\boxed{{{answer}}}."


# --------------------------------------------------------------------------- task solutions
def with_verification(solution: str, answer: str) -> str:
    """The worked solution, ending in a self-verification step (added when it has none).

    >>> with_verification("2 + 2 = 4.", "4")
    '2 + 2 = 4.\\nLet me re-check each step above: they all hold, so the answer is 4.'
    """
    text = solution.strip()
    if "check" in text.lower():  # the built-in tasks end with their own `Check: ...` line
        return text
    return text + "\n" + VERIFY.format(answer=answer)


def render_completion(example: Example, fmt: str, special_token: str) -> str:
    """One worked example as a long CoT in `fmt` ("think" or "r1").

    >>> ex = Example("q", "What is 2 + 2?", "4", solution="2 + 2 = 4.\\nCheck: 4 - 2 = 2 ✓")
    >>> print(render_completion(ex, "r1", "|special_token|"))
    |special_token|
    2 + 2 = 4.
    Check: 4 - 2 = 2 ✓
    |special_token|
    The answer is \\boxed{4}.
    """
    reasoning = with_verification(example.solution or "", example.answer)
    if fmt == "think":
        return worked_completion(replace(example, solution=reasoning))
    if fmt == "r1":
        summary = SUMMARY.format(answer=example.answer)
        return f"{special_token}\n{reasoning}\n{special_token}\n{summary}"
    raise UserError(f"unknown cold-start format {fmt!r}; valid formats: think, r1")


def task_rows(task: Task, fmt: str, special_token: str, limit: int | None = None) -> list[SFTRow]:
    """The task's train examples that have a worked solution, rendered in `fmt`."""
    solved = [ex for ex in task.examples("train") if ex.solution]
    if not solved:
        raise UserError(
            f"task {task.name!r} has no worked solutions in its train split: a `task` source "
            "renders them; use a `jsonl` or `samples` source instead"
        )
    return [
        SFTRow(ex.id, ex.prompt, render_completion(ex, fmt, special_token), f"task:{task.name}")
        for ex in solved[:limit]
    ]


# --------------------------------------------------------------------------- earlier runs
def full_response(sample: dict[str, Any]) -> str:
    """The response as the format reward saw it: a `<think>` the template prefilled + completion."""
    prompt, completion = sample["prompt"], sample["completion"]
    if prompt.rstrip().endswith(THINK_PREFILL.strip()):
        return prompt[prompt.rstrip().rfind(THINK_PREFILL.strip()) :] + completion
    return completion


def samples_rows(
    path: str | Path, task: Task, limit: int | None = None, fmt: OutputFormat = THINK
) -> list[SFTRow]:
    """Correct completions of a run's samples.jsonl in the format `fmt`, each (prompt, text)
    once.

    The recorded accuracy reward decides correctness (the task grades the text when the run
    had no accuracy term); the bare question is looked up by example id in `task`. The format
    is the source's (`format: r1` for a run in R1's readable style), never a fixed one.
    """
    path = Path(path)
    by_id = {ex.id: ex for split in ("train", "test") for ex in task.examples(split)}
    rows: list[SFTRow] = []
    seen: set[tuple[str, str]] = set()
    for where, sample in json_lines(path):
        for key in ("id", "prompt", "completion"):
            if not isinstance(sample.get(key), str):
                raise UserError(f"{where}: missing field {key!r} (not a samples.jsonl row?)")
        example = by_id.get(sample["id"])
        if example is None:
            raise UserError(
                f"{where}: example {sample['id']!r} is not in task {task.name!r}: set the "
                "`task` section to the task (and options) of the run that wrote the samples"
            )
        text = full_response(sample)
        accuracy = (sample.get("rewards") or {}).get("accuracy")
        correct = accuracy == 1.0 if accuracy is not None else task.score(text, example)
        if not (correct and fmt.ok(text)) or (example.id, text) in seen:
            continue
        seen.add((example.id, text))
        rows.append(
            SFTRow(f"{example.id}-{digest(text)}", example.prompt, text, f"samples:{path}")
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows


# --------------------------------------------------------------------------- the dataset
def source_rows(source: SourceConfig, config: SFTConfig) -> list[SFTRow]:
    if source.kind == "jsonl":
        return jsonl_rows(source.path or "", source.limit)
    task = make_task(config.task.name, config.task.options)
    if source.kind == "samples":
        fmt = OutputFormat(source.format, config.data.special_token)
        return samples_rows(source.path or "", task, source.limit, fmt)
    return task_rows(task, source.format, config.data.special_token, source.limit)


def load_rows(config: SFTConfig) -> list[SFTRow]:
    """Every source's rows in order; a repeated id is an error (it would train twice)."""
    rows: list[SFTRow] = []
    seen: dict[str, str] = {}
    for source in config.data.sources:
        for row in source_rows(source, config):
            if row.id in seen:
                raise UserError(f"row id {row.id!r} appears twice ({seen[row.id]}, {row.source})")
            seen[row.id] = row.source
            rows.append(row)
    if not rows:
        raise UserError("the SFT data is empty: no source produced a row")
    return rows


def split_rows(rows: Sequence[SFTRow], eval_fraction: float) -> tuple[list[SFTRow], list[SFTRow]]:
    """(train, held-out): a row is held out by a hash of its prompt, deterministically."""
    train, held_out = [], []
    for row in rows:
        (held_out if split_of(row.prompt, eval_fraction, salt="sft") == "test" else train).append(
            row
        )
    return train, held_out


def write_rows(path: Path, train: Sequence[SFTRow], held_out: Sequence[SFTRow]) -> None:
    """The dataset a run trained on, one row per line with its split (lineage for later stages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**r.to_dict(), "split": "train"}) for r in train]
    lines += [json.dumps({**r.to_dict(), "split": "eval"}) for r in held_out]
    path.write_text("".join(line + "\n" for line in lines))
