"""`code:PATH`: code problems from a local JSONL file, in either of the two common shapes.

- **asserts** (MBPP): a prompt (`text`, `prompt`, `question` or `problem`), a list of assert
  statements (`test_list` or `tests`), optional `test_setup_code` (imports the tests need)
  and an optional reference program (`code`, `solution` or `canonical_solution`). The prompt
  shows the first `show_tests` asserts, as MBPP's does: they name the function.
- **stdio** (APPS, LiveCodeBench, Codeforces): a prompt (`question`, `question_content`,
  `prompt` or `problem`), test cases as APPS's `input_output` (`{"inputs": [...],
  "outputs": [...]}`, or that as a JSON string) or as a list of `{"input", "output"}`
  (`tests`, `public_test_cases`; a JSON string of one too), and an optional reference
  program (`solution`, or APPS's `solutions`, a JSON list of programs: the first is used).

`format: auto` tells them apart per row. A row without tests is an error naming the line (a
problem nothing can grade would be a free zero). Splits are by prompt hash (`test_fraction`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_records
from r1lab.core.types import Example
from r1lab.tasks.base import register_task, split_of
from r1lab.tasks.code import CODE_INSTRUCTION, CodeTask, encode_tests, fence
from r1lab.tasks.datasets import SPLIT_SALT, _check_fraction, _key

FORMATS = ("auto", "asserts", "stdio")
PROMPT_KEYS = ("prompt", "question", "question_content", "text", "problem")
ASSERT_KEYS = ("test_list", "tests")
STDIO_KEYS = ("input_output", "tests", "public_test_cases")
SOLUTION_KEYS = ("solution", "code", "canonical_solution", "solutions")
STDIO_INSTRUCTION = "Read the input from standard input and print the answer to standard output."


def _field(record: dict[str, Any], wanted: str | None, auto: tuple[str, ...]) -> str | None:
    for name in (wanted,) if wanted else auto:
        key = _key(record, name)
        if key is not None and record[key] not in (None, "", []):
            return key
    return None


def _decoded(value: Any) -> Any:
    """A field that may hold JSON text (APPS and LiveCodeBench store lists as strings)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _stdio_cases(value: Any) -> list[tuple[str, str]] | None:
    """(input, output) pairs from either stdio layout, or None when `value` is neither."""
    value = _decoded(value)
    if isinstance(value, dict) and {"inputs", "outputs"} <= set(value):
        if len(value["inputs"]) != len(value["outputs"]):
            raise ValueError(f"{len(value['inputs'])} inputs but {len(value['outputs'])} outputs")
        pairs = zip(value["inputs"], value["outputs"], strict=True)
    elif isinstance(value, list) and value and all(isinstance(c, dict) for c in value):
        if not all({"input", "output"} <= set(c) for c in value):
            return None
        if any(c.get("testtype", "stdin") != "stdin" for c in value):
            raise ValueError("functional (LeetCode-style) test cases are not supported, only stdin")
        pairs = ((c["input"], c["output"]) for c in value)
    else:
        return None
    return [(_text(given), _text(want)) for given, want in pairs]


def _text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _asserts(value: Any) -> list[str] | None:
    value = _decoded(value)
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        return value
    return None


def _solution(record: dict[str, Any], wanted: str | None) -> str | None:
    key = _field(record, wanted, SOLUTION_KEYS)
    if key is None:
        return None
    value = _decoded(record[key]) if key.lower() == "solutions" else record[key]
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value else None


def parse_row(record: dict[str, Any], fields: dict[str, Any], where: str) -> dict[str, Any]:
    """(prompt, tests meta, reference program, format) of one row, or a UserError."""
    prompt_key = _field(record, fields["prompt_field"], PROMPT_KEYS)
    if prompt_key is None:
        raise UserError(
            f"{where}: no prompt field ({', '.join(PROMPT_KEYS)}); keys: {sorted(record)}"
        )
    fmt, tests_key = fields["format"], fields["tests_field"]
    asserts = stdio = None
    if fmt in ("auto", "asserts"):
        key = _field(record, tests_key, ASSERT_KEYS)
        asserts = _asserts(record[key]) if key else None
    if asserts is None and fmt in ("auto", "stdio"):
        key = _field(record, tests_key, STDIO_KEYS)
        try:
            stdio = _stdio_cases(record[key]) if key else None
        except ValueError as err:
            raise UserError(f"{where}: {key}: {err}") from err
    if not asserts and not stdio:
        raise UserError(
            f"{where}: no tests found for format {fmt!r} (asserts: a list of assert statements "
            f"in {'/'.join(ASSERT_KEYS)}; stdio: input/output cases in {'/'.join(STDIO_KEYS)})"
        )
    setup_key = _key(record, "test_setup_code")
    return {
        "prompt": str(record[prompt_key]).strip(),
        "asserts": asserts or [],
        "stdio": stdio or [],
        "setup": str(record[setup_key] or "") if setup_key else "",
        "solution": _solution(record, fields["solution_field"]),
    }


@register_task("code")
class CodeJsonlTask(CodeTask):
    """Code problems from a local JSONL file (``code:PATH``), graded in the sandbox.

    Rows are MBPP-style assert lists or APPS/LiveCodeBench-style stdin/stdout cases (see the
    module doc); `show_tests` asserts are shown in the prompt.
    """

    description = "code problems from a local JSONL file (asserts or stdio), graded in the sandbox"

    def __init__(
        self,
        path: str,
        format: str = "auto",
        prompt_field: str | None = None,
        tests_field: str | None = None,
        solution_field: str | None = None,
        show_tests: int = 1,
        test_fraction: float = 0.1,
        sandbox: dict[str, Any] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise UserError(f"task code: unknown format {format!r}; valid: {', '.join(FORMATS)}")
        if isinstance(show_tests, bool) or not isinstance(show_tests, int) or show_tests < 0:
            raise UserError(f"task code: show_tests must be an integer >= 0, got {show_tests!r}")
        fraction = _check_fraction(test_fraction)
        super().__init__(sandbox)
        fields = {"format": format, "prompt_field": prompt_field, "tests_field": tests_field}
        fields["solution_field"] = solution_field
        self._splits: dict[str, list[Example]] = {"train": [], "test": []}
        rows = read_records(path)
        if not rows:
            raise UserError(f"{path}: no records found")
        seen: set[str] = set()
        for where, record in rows:
            example = self._example(parse_row(record, fields, where), show_tests, where)
            if example.prompt not in seen:
                seen.add(example.prompt)
                self._splits[split_of(example.prompt, fraction, salt=SPLIT_SALT)].append(example)

    @staticmethod
    def _example(row: dict[str, Any], show_tests: int, where: str) -> Example:
        prompt = row["prompt"]
        if row["asserts"] and show_tests:
            shown = "\n".join(row["asserts"][:show_tests])
            these = "this test" if show_tests == 1 else "these tests"
            prompt += f"\nYour code should pass {these}:\n{shown}"
        elif row["stdio"]:
            prompt += f"\n{STDIO_INSTRUCTION}"
        prompt += f"\n{CODE_INSTRUCTION}"
        count = len(row["asserts"]) + len(row["stdio"])
        return Example(
            id=f"code-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
            prompt=prompt,
            answer=fence(row["solution"])
            if row["solution"]
            else f"(a program passing {count} tests)",
            meta={
                "source": where,
                "tests": encode_tests(row["asserts"], row["stdio"], row["setup"]),
            },
        )

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in self._splits:
            raise UserError(f"unknown split {split!r} for task code; valid: train, test")
        return list(self._splits[split][:limit])
