r"""Dataset-backed math tasks: GSM8K, MATH-500, AIME 2024 and any user JSONL, behind one class.

Every source is a list of records (dicts) plus a field mapping. `RecordTask` turns each record
into an `Example` (prompt, gold answer extracted per format, worked solution when there is one)
and grades with math-verify (`mathgrade`). Two rules protect the reward:

- the gold answer is parsed at load time, and a row whose gold does not parse is an error naming
  the file line or dataset row (never a free reward, never silently dropped);
- the train/test split is a hash of the prompt (`split_of`) unless the source has its own splits,
  so it is deterministic, disjoint, and stable when the file is reordered or extended.

Answer formats: ``gsm8k`` (``...reasoning...\n#### 72``), ``math`` (the last ``\boxed{}`` of a
solution), ``plain`` (the field as is); ``auto`` picks per row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.hub import hub_unreachable
from r1lab.core.runfiles import Located, read_records
from r1lab.core.types import Example
from r1lab.tasks.base import Task, last_boxed, register_task, split_of

FORMATS = ("auto", "plain", "gsm8k", "math")
PROMPT_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "solution")
SPLIT_VALUES = {"train": "train", "test": "test", "validation": "test", "val": "test"}
SPLIT_SALT = "r1lab-data"
"""One salt for every dataset task, so a file splits the same way whichever task loads it."""

def _grader() -> ModuleType:
    """`tasks.mathgrade`, imported on first use: it pulls in sympy and math-verify (half a
    second), which listing tasks or loading a recipe does not need."""
    from r1lab.tasks import mathgrade

    return mathgrade


_CALCULATOR = re.compile(r"<<[^<>]*>>")
_META_SKIP = set(PROMPT_KEYS) | set(ANSWER_KEYS)
Row = Located
"""A record and where it came from (``data/x.jsonl:12`` or ``openai/gsm8k[test] row 5``)."""


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold what; None means auto-detect per row."""

    prompt: str | None = None
    answer: str | None = None
    format: str = "auto"
    split: str | None = None


def _key(record: dict[str, Any], name: str) -> str | None:
    """The record's key for `name`, matched exactly, else case-insensitively (``Problem``)."""
    if name in record:
        return name
    return next((k for k in record if k.lower() == name.lower()), None)


def _pick(
    record: dict[str, Any],
    wanted: str | None,
    auto: tuple[str, ...],
    role: str,
    mapping: FieldMap,
    where: str,
) -> str:
    """The key holding `role`, or a UserError naming the field, the mapping and the keys."""
    for name in (wanted,) if wanted else auto:
        key = _key(record, name)
        if key is not None and record[key] is not None:
            return key
    field = repr(wanted) if wanted else f"one of {', '.join(auto)} (auto-detected)"
    raise UserError(
        f"{where}: missing {role} field {field}; field mapping: prompt_field={mapping.prompt!r}, "
        f"answer_field={mapping.answer!r}; the record has keys: {', '.join(sorted(record))}"
    )


def extract_gold(text: str, fmt: str) -> tuple[str | None, str | None]:
    r"""(gold answer, worked solution) from an answer field in format `fmt`.

    ``gsm8k``: the text after the last ``####`` with thousands commas removed; the reasoning
    before it, without calculator annotations ``<<48/2=24>>``, is the solution. ``math``: the
    last ``\boxed{}``; the whole text is the solution. ``plain``: the text itself, no solution.
    A missing marker gives a None answer, which the loader reports.
    """
    if fmt == "auto":
        fmt = "gsm8k" if "####" in text else "math" if "\\boxed" in text else "plain"
    if fmt == "gsm8k":
        if "####" not in text:
            return None, None
        reasoning, _, answer = text.rpartition("####")
        return answer.strip().replace(",", ""), _CALCULATOR.sub("", reasoning).strip() or None
    if fmt == "math":
        return last_boxed(text), text
    return text.strip(), None


def _meta(record: dict[str, Any], used: set[str], where: str) -> dict[str, Any]:
    """Short scalar fields (level, subject, source id...) worth keeping for reports."""
    meta: dict[str, Any] = {"source": where}
    for key, value in record.items():
        if key in used or key.lower() in _META_SKIP:
            continue
        if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) < 200):
            meta[key] = value
    return meta


def record_to_example(record: dict[str, Any], mapping: FieldMap, name: str, where: str) -> Example:
    """One record as an Example; the answer may be None (reported by the caller)."""
    prompt_key = _pick(record, mapping.prompt, PROMPT_KEYS, "prompt", mapping, where)
    answer_key = _pick(record, mapping.answer, ANSWER_KEYS, "answer", mapping, where)
    prompt = str(record[prompt_key]).strip()
    answer, solution = extract_gold(str(record[answer_key]), mapping.format)
    solution_key = _key(record, "solution")
    if solution is None and solution_key and solution_key != answer_key:
        solution = str(record[solution_key]) or None
    return Example(
        id=f"{name}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
        prompt=prompt,
        answer=answer or "",
        meta=_meta(record, {prompt_key, answer_key}, where),
        solution=solution,
    )


def _side(
    record: dict[str, Any],
    example: Example,
    mapping: FieldMap,
    fixed: str | None,
    test_fraction: float,
    where: str,
) -> str:
    """Which split a record belongs to: the source's, the split field's, or the prompt hash's."""
    if fixed is not None:
        return fixed
    if mapping.split is None:
        return split_of(example.prompt, test_fraction, salt=SPLIT_SALT)
    key = _pick(record, mapping.split, (), "split", mapping, where)
    value = str(record[key]).strip().lower()
    if value not in SPLIT_VALUES:
        raise UserError(
            f"{where}: split field {key!r} is {record[key]!r}; valid values: "
            + ", ".join(SPLIT_VALUES)
        )
    return SPLIT_VALUES[value]


def _report_bad_golds(bad: list[tuple[str, str]], total: int, source: str) -> None:
    if not bad:
        return
    shown = "; ".join(
        f"{where}: {answer!r}" if answer else f"{where}: no answer found"
        for where, answer in bad[:5]
    )
    raise UserError(
        f"{source}: {len(bad)} of {total} rows have a gold answer that cannot be parsed as math "
        f"(a missing '####'/\\boxed{{}} marker, or text math-verify does not understand); "
        f"grading them would be meaningless, so fix or remove them. First: {shown}"
    )


class RecordTask(Task):
    """Examples built from records plus a `FieldMap`, graded with math-verify.

    Subclasses load their rows and call `_load`. Golds are parsed once here and cached by answer
    text, so grading thousands of completions against one example never re-parses the gold.
    """

    def __init__(self) -> None:
        self._splits: dict[str, list[Example]] = {"train": [], "test": []}
        self._gold: dict[str, list[Any]] = {}

    def _load(
        self,
        rows: Iterable[Row],
        mapping: FieldMap,
        source: str,
        test_fraction: float = 0.1,
        fixed_split: str | None = None,
    ) -> None:
        """Add rows to the splits; duplicate prompts are kept once (first wins)."""
        if mapping.format not in FORMATS:
            raise UserError(
                f"unknown format {mapping.format!r}; valid formats: " + ", ".join(FORMATS)
            )
        seen = {e.prompt for split in self._splits.values() for e in split}
        bad: list[tuple[str, str]] = []
        total = 0
        for where, record in rows:
            total += 1
            example = record_to_example(record, mapping, self.name, where)
            gold = self._gold.get(example.answer) or _grader().parse_gold(example.answer)
            if not gold:
                bad.append((where, example.answer))
                continue
            self._gold[example.answer] = gold
            side = _side(record, example, mapping, fixed_split, test_fraction, where)
            if example.prompt not in seen:
                seen.add(example.prompt)
                self._splits[side].append(example)
        if total == 0:
            raise UserError(f"{source}: no records found")
        _report_bad_golds(bad, total, source)

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in self._splits:
            raise UserError(f"unknown split {split!r} for task {self.name}; valid: train, test")
        return list(self._splits[split][:limit])

    def grade(self, answer: str | None, example: Example) -> bool:
        gold = self._gold.get(example.answer)
        if gold is None:  # an Example built elsewhere (e.g. read back from a samples file)
            gold = self._gold[example.answer] = _grader().parse_gold(example.answer)
        return _grader().verify_answer(gold, answer)

    def normalize(self, answer: str | None) -> str | None:
        return _grader().normalize_math(answer)


def _check_fraction(test_fraction: float) -> float:
    if not isinstance(test_fraction, int | float) or not 0.0 <= test_fraction <= 1.0:
        raise UserError(f"option test_fraction must be a number in [0, 1], got {test_fraction!r}")
    return float(test_fraction)


@register_task("jsonl")
class JsonlTask(RecordTask):
    """Math problems from a local JSONL file (``jsonl:PATH``), one JSON object per line.

    Fields are auto-detected (prompt: question/problem/prompt; answer: answer/solution) unless
    named. `format` says how to read the answer field (see `extract_gold`). With `split_field`
    each record names its split (train/test/validation/val); otherwise a share `test_fraction`
    of prompts, chosen by hash, is the test split.
    """

    description = "math problems from a local JSONL file, graded with math-verify"

    def __init__(
        self,
        path: str,
        prompt_field: str | None = None,
        answer_field: str | None = None,
        format: str = "auto",
        test_fraction: float = 0.1,
        split_field: str | None = None,
    ) -> None:
        super().__init__()
        mapping = FieldMap(prompt_field, answer_field, format, split_field)
        self._load(read_records(path), mapping, path, _check_fraction(test_fraction))


# --- Hugging Face hub datasets ----------------------------------------------------------


def load_hub_rows(name: str, repo: str, config: str | None, split: str, sample: str) -> list[Row]:
    """Rows of one split of a hub dataset, or a UserError that says how to work offline."""
    reason = hub_unreachable()
    if reason is None:
        try:
            from datasets import load_dataset

            data = load_dataset(repo, config, split=split)
            return [(f"{repo}[{split}] row {i}", dict(row)) for i, row in enumerate(data)]
        except Exception as err:  # offline, missing package, auth, renamed dataset: all the same
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            reason = f"{type(err).__name__}: {first}"
    raise UserError(
        f"could not load {name} from the Hugging Face hub ({reason}); offline, use a local "
        f"file: task: {{name: {name}, options: {{path: {sample}}}}} or jsonl:PATH "
        "(a copy already in the local datasets cache loads with HF_HUB_OFFLINE=1)"
    )


class HubTask(RecordTask):
    """A benchmark on the hub, or the same format from a local JSONL file (option `path`).

    `hub_splits` maps each hub split to ours; None means "split by prompt hash with
    `test_fraction`", used when the source has a single split and for every local file.
    """

    repo: str = ""
    config: str | None = None
    hub_splits: dict[str, str | None] = {}
    mapping = FieldMap()
    sample = ""

    def __init__(self, path: str | None, test_fraction: float) -> None:
        super().__init__()
        fraction = _check_fraction(test_fraction)
        if path is not None:
            self._load(read_records(path), self.mapping, path, fraction)
            return
        for hub_split, ours in self.hub_splits.items():
            rows = load_hub_rows(self.name, self.repo, self.config, hub_split, self.sample)
            source = f"{self.repo}[{hub_split}]"
            self._load(rows, self.mapping, source, fraction, fixed_split=ours)


@register_task("gsm8k")
class Gsm8kTask(HubTask):
    """GSM8K grade-school word problems (openai/gsm8k, official train/test splits)."""

    description = "GSM8K word problems, graded with math-verify"
    repo, config = "openai/gsm8k", "main"
    hub_splits = {"train": "train", "test": "test"}
    mapping = FieldMap("question", "answer", "gsm8k")
    sample = "data/gsm8k_sample.jsonl"

    def __init__(self, path: str | None = None, test_fraction: float = 0.1) -> None:
        super().__init__(path, test_fraction)


@register_task("math500")
class Math500Task(HubTask):
    """MATH-500 (HuggingFaceH4/MATH-500). A benchmark: every problem is test by default."""

    description = "MATH-500 competition problems, graded with math-verify"
    repo = "HuggingFaceH4/MATH-500"
    hub_splits = {"test": None}
    mapping = FieldMap("problem", None, "auto")
    sample = "data/math_sample.jsonl"

    def __init__(self, path: str | None = None, test_fraction: float = 1.0) -> None:
        super().__init__(path, test_fraction)


@register_task("aime2024")
class Aime2024Task(HubTask):
    """AIME 2024 (HuggingFaceH4/aime_2024). A benchmark: every problem is test by default."""

    description = "AIME 2024 problems (integer answers), graded with math-verify"
    repo = "HuggingFaceH4/aime_2024"
    hub_splits = {"train": None}
    mapping = FieldMap("problem", "answer", "plain")
    sample = "data/aime_sample.jsonl"

    def __init__(self, path: str | None = None, test_fraction: float = 1.0) -> None:
        super().__init__(path, test_fraction)
