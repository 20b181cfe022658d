"""General prompts: writing, factual QA, self-cognition, which no rule can check.

R1's last RL stage trains on these next to reasoning problems and scores them with reward
models (`r1lab.rewards.reward_model`). Each row of a JSONL file needs a prompt (field `prompt`,
`question` or `instruction`, or the one named by `prompt_field`) and no answer: its examples
have `answer == ""`, so `Example.checkable` is False, the `accuracy` reward skips them and
evaluation leaves them out of pass@1. Mix them with a reasoning task through the `mix` task.
"""

from __future__ import annotations

import hashlib

from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_records
from r1lab.core.types import Example
from r1lab.tasks.base import Task, register_task, split_of
from r1lab.tasks.datasets import (
    SPLIT_SALT,
    FieldMap,
    _check_fraction,
    _key,
    _meta,
    _pick,
)

GENERAL_PROMPT_KEYS = ("prompt", "question", "instruction")


@register_task("general")
class GeneralTask(Task):
    """General prompts without a checkable answer from a JSONL file (``general:PATH``).

    The train/test split is a hash of the prompt (`test_fraction` of prompts go to test), so
    it is deterministic and stable when the file is reordered; repeated prompts are kept once.
    A row with a non-empty `answer` is an error: it belongs in a `jsonl` task, where it can be
    graded.
    """

    description = "general prompts (no rule-checkable answer), scored by reward models"

    def __init__(
        self, path: str, prompt_field: str | None = None, test_fraction: float = 0.1
    ) -> None:
        fraction = _check_fraction(test_fraction)
        mapping = FieldMap(prompt=prompt_field)
        self._splits: dict[str, list[Example]] = {"train": [], "test": []}
        seen: set[str] = set()
        rows = read_records(path)
        if not rows:
            raise UserError(f"{path}: no records found")
        for where, record in rows:
            key = _pick(record, prompt_field, GENERAL_PROMPT_KEYS, "prompt", mapping, where)
            answer_key = _key(record, "answer")
            if answer_key is not None and str(record[answer_key] or "").strip():
                raise UserError(
                    f"{where}: a general prompt has no answer, but this row has "
                    f"{answer_key!r}; put rule-checkable problems in a `jsonl` task and mix "
                    "the two with the `mix` task"
                )
            prompt = str(record[key]).strip()
            if not prompt:
                raise UserError(f"{where}: the prompt field {key!r} is empty")
            if prompt in seen:
                continue
            seen.add(prompt)
            example = Example(
                id=f"general-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
                prompt=prompt,
                answer="",
                meta=_meta(record, {key}, where),
            )
            self._splits[split_of(prompt, fraction, salt=SPLIT_SALT)].append(example)

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in self._splits:
            raise UserError(f"unknown split {split!r} for task general; valid: train, test")
        return list(self._splits[split][:limit])

    def grade(self, answer: str | None, example: Example) -> bool:
        """No rule can check a general prompt: never correct (the accuracy reward never asks)."""
        return False
