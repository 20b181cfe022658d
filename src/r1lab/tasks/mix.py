"""Several tasks as one: a reasoning task plus general prompts, as in R1's all-scenario RL.

    task:
      name: mix
      options:
        tasks:
          - {name: arith, options: {digits: 2}, weight: 3}
          - {name: "general:data/general_prompts.jsonl", weight: 1}

The train split gives each sub-task its share `weight / sum(weights)` of `size` examples
(default: all sub-tasks' train examples together), its own examples in order, repeated when
it has fewer, and interleaved evenly, so a prefix (`limit`) and every shuffled draw see the
mix. The test split is every sub-task's test split, interleaved and unweighted; evaluation
skips the general prompts in it. Both are deterministic for the options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks.base import Task, check_task, make_task, register_task

T = TypeVar("T")
ENTRY_KEYS = ("name", "options", "weight")


def interleave(parts: Sequence[Sequence[T]]) -> list[T]:
    """Merge lists evenly: item j of a list of n sits near fraction (j + 0.5) / n of the result.

    >>> interleave([["a1", "a2", "a3"], ["b1"]])
    ['a1', 'a2', 'b1', 'a3']
    """
    keyed = [
        ((j + 0.5) / len(part), k, item)
        for k, part in enumerate(parts)
        for j, item in enumerate(part)
    ]
    return [item for _, _, item in sorted(keyed, key=lambda x: (x[0], x[1]))]


def shares(weights: Sequence[float], size: int) -> list[int]:
    """`size` split in proportion to `weights`, by largest remainder (the counts sum to size).

    >>> shares([3, 1], 10)
    [8, 2]
    """
    total = sum(weights)
    exact = [size * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def check_entries(tasks: Any, size: Any = None) -> list[tuple[str, dict[str, Any], float]]:
    """(spec, options, weight) of each sub-task, or a UserError naming the bad entry.

    Called at config load (sub-task names and options are checked like a top-level task's,
    without building them) and again when the mix is built.
    """
    if not isinstance(tasks, list) or not tasks:
        raise UserError("task mix: option tasks must be a non-empty list of sub-task mappings")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise UserError(f"task mix: option size must be an integer >= 1, got {size!r}")
    entries = []
    for i, entry in enumerate(tasks):
        where = f"task mix: tasks.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{where} must be a mapping with a task `name`, got {entry!r}")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(ENTRY_KEYS)}")
        options, weight = entry.get("options") or {}, entry.get("weight", 1.0)
        if not isinstance(options, dict):
            raise UserError(f"{where}.options must be a mapping, got {options!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise UserError(f"{where}.weight must be a number > 0, got {weight!r}")
        try:
            check_task(entry["name"], options)
        except UserError as err:
            raise UserError(f"{where}: {err}") from err
        entries.append((entry["name"], dict(options), float(weight)))
    return entries


@register_task("mix")
class MixTask(Task):
    """A weighted mix of tasks, e.g. a reasoning task and general prompts (see the module doc).

    Grading goes to the sub-task an example came from. `extract` and `normalize` (majority
    voting) have no example to go by: they use the first sub-task with checkable examples
    (every built-in task extracts answers the same way).
    """

    description = "a weighted mix of tasks, e.g. reasoning problems plus general prompts"
    check_options = staticmethod(check_entries)

    def __init__(self, tasks: list[dict[str, Any]], size: int | None = None) -> None:
        entries = check_entries(tasks, size)
        self._tasks = [make_task(spec, options) for spec, options, _ in entries]
        self._weights = [weight for _, _, weight in entries]
        self._size = size
        self._splits: dict[str, list[Example]] | None = None
        self._owner: dict[str, Task] = {}
        self._lead: Task = self._tasks[0]

    def _build(self) -> dict[str, list[Example]]:
        """Both splits and each example's sub-task, built on first use (like `arith`'s)."""
        if self._splits is not None:
            return self._splits
        train = [task.examples("train") for task in self._tasks]
        test = [task.examples("test") for task in self._tasks]
        for task, examples in zip(self._tasks, train, strict=True):
            if not examples:
                raise UserError(f"task mix: sub-task {task.name!r} has no train examples")
        counts = shares(self._weights, self._size or sum(map(len, train)))
        weighted = [
            [examples[j % len(examples)] for j in range(n)]
            for examples, n in zip(train, counts, strict=True)
        ]
        for task, examples in zip([*self._tasks, *self._tasks], [*train, *test], strict=True):
            for example in examples:
                owner = self._owner.setdefault(example.id, task)
                if owner is not task:
                    raise UserError(
                        f"task mix: example id {example.id!r} is in sub-tasks {owner.name!r} "
                        f"and {task.name!r}; list each source once"
                    )
        checkable = [any(e.checkable for e in a + b) for a, b in zip(train, test, strict=True)]
        self._lead = next((t for t, c in zip(self._tasks, checkable, strict=True) if c), self._lead)
        self._splits = {"train": interleave(weighted), "test": interleave(test)}
        return self._splits

    def _of(self, example: Example) -> Task:
        self._build()
        if example.id not in self._owner:
            raise UserError(f"example {example.id!r} is not from this task mix")
        return self._owner[example.id]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        splits = self._build()
        if split not in splits:
            raise UserError(f"unknown split {split!r} for task mix; valid: train, test")
        return list(splits[split][:limit])

    def grade(self, answer: str | None, example: Example) -> bool:
        return self._of(example).grade(answer, example)

    def score(self, completion: str, example: Example) -> bool:
        return self._of(example).score(completion, example)

    def _by_owner(self, examples: Sequence[Example]) -> dict[int, tuple[Task, list[int]]]:
        """Indices of a batch grouped by the sub-task each example came from."""
        groups: dict[int, tuple[Task, list[int]]] = {}
        for i, example in enumerate(examples):
            owner = self._of(example)
            groups.setdefault(id(owner), (owner, []))[1].append(i)
        return groups

    def _batched(self, method: str, items: Sequence[Any], examples: Sequence[Example]) -> list:
        """`owner.method(items, examples)` once per sub-task, so each grades its batch at once."""
        out: list[Any] = [None] * len(items)
        for owner, indices in self._by_owner(examples).values():
            values = getattr(owner, method)(
                [items[i] for i in indices], [examples[i] for i in indices]
            )
            for i, value in zip(indices, values, strict=True):
                out[i] = value
        return out

    def grade_many(self, answers: Sequence[str | None], examples: Sequence[Example]) -> list[bool]:
        return self._batched("grade_many", answers, examples)

    def score_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[bool]:
        return self._batched("score_many", completions, examples)

    def test_verdicts(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> list[list[str] | None]:
        return self._batched("test_verdicts", completions, examples)

    def extract(self, completion: str) -> str | None:
        self._build()
        return self._lead.extract(completion)

    def normalize(self, answer: str | None) -> str | None:
        self._build()
        return self._lead.normalize(answer)

    def brief(self, example: Example) -> str:
        return self._of(example).brief(example)
