"""The task interface: data, answer extraction and one grader shared by reward and evaluation.

A task owns its grader so that the accuracy reward during training and the pass@1 reported by
evaluation can never disagree: both call `Task.grade`.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from r1lab.core.errors import UserError, did_you_mean, unknown_name
from r1lab.core.types import Example

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, braces balanced.

    >>> last_boxed(r"so \boxed{\frac{1}{2}} done")
    '\\frac{1}{2}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i].strip()
    return None


def extract_answer(completion: str) -> str | None:
    r"""The final answer a completion commits to, or None when it commits to none.

    The last `<answer>...</answer>` wins (the R1-Zero template asks for it); inside it, a
    `\boxed{}` is unwrapped. Without answer tags, the last `\boxed{}` (the R1 README's math
    instruction, and the summary of R1's readable format: "The answer is \boxed{7}.") is
    used. Free text is never mined for a number: a model must state an answer.
    """
    found = _ANSWER_RE.findall(completion)
    if found:
        inner = found[-1].strip()
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner
    return last_boxed(completion)


def split_of(key: str, test_fraction: float, salt: str = "") -> str:
    """Deterministic train/test assignment from a stable hash of the example's key.

    Hashing the prompt (not the position in the file) keeps the split stable when a dataset is
    reordered or extended, and puts identical prompts on the same side, so the test split never
    leaks into train.
    """
    digest = hashlib.sha256((salt + key).encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


class Task(ABC):
    """A family of verifiable problems.

    Subclasses set `name` and implement `examples` and `grade`. Constructor keyword arguments
    are the task's options (difficulty knobs, file paths, field mappings); `make_task` checks
    user-supplied options against the constructor signature.
    """

    name: str = ""
    description: str = ""

    @abstractmethod
    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        """Examples of `split` ("train" or "test"), deterministic for the task's options."""

    @abstractmethod
    def grade(self, answer: str | None, example: Example) -> bool:
        """Whether an extracted answer is correct for `example`. None is always wrong."""

    def extract(self, completion: str) -> str | None:
        """The answer a completion commits to; tasks with other conventions override this."""
        return extract_answer(completion)

    def score(self, completion: str, example: Example) -> bool:
        """Extract and grade in one call: the single definition of 'correct' for a completion."""
        return self.grade(self.extract(completion), example)

    def grade_many(self, answers: Sequence[str | None], examples: Sequence[Example]) -> list[bool]:
        """`grade` over a batch. Tasks whose grader is costly (code runs in the sandbox)
        override it to grade the whole batch at once; the result must equal the loop."""
        return [self.grade(a, ex) for a, ex in zip(answers, examples, strict=True)]

    def score_many(self, completions: Sequence[str], examples: Sequence[Example]) -> list[bool]:
        """`score` over a batch: what the accuracy reward, the step metrics and evaluation call."""
        return self.grade_many([self.extract(c) for c in completions], examples)

    def test_verdicts(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> list[list[str] | None]:
        """One verdict per test (`r1lab.sandbox.VERDICTS`) for each completion of a problem
        graded by tests; None where the problem has none (everything but code)."""
        return [None] * len(completions)

    def brief(self, example: Example) -> str:
        """A one-line derivation for few-shot prompts.

        Small models copy the length of a worked example: a long `solution` in the prompt
        makes them ramble past the token limit, a brief one shows the format alone.
        """
        return f"The answer is {example.answer}."

    def normalize(self, answer: str | None) -> str | None:
        """A canonical form of an answer, so majority voting can count equal answers together."""
        return None if answer is None else " ".join(answer.split())


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a task to the registry under `name`."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def make_task(spec: str, options: dict[str, Any] | None = None) -> Task:
    """Build a task from a name (`arith`) or a `jsonl:PATH` spec plus an options mapping.

    Unknown names and unknown options are `UserError`s that list what is valid.
    """
    options = dict(options or {})
    name = spec
    if ":" in spec:
        name, arg = spec.split(":", 1)
        options.setdefault("path", arg)
    if name not in TASKS:
        raise unknown_name("task", spec, TASKS)
    cls = TASKS[name]
    params = inspect.signature(cls).parameters
    valid = [p for p in params if p != "self"]
    for key in options:
        if key not in params:
            raise _unknown_option(key, name, valid)
    return cls(**options)


def _unknown_option(key: str, task: str, valid: list[str]) -> UserError:
    return UserError(
        f"unknown option {key!r} for task {task!r}{did_you_mean(key, valid)}; valid options: "
        + ", ".join(valid)
    )


def check_task(spec: str, options: dict[str, Any]) -> None:
    """The task exists and its options fit its constructor, without building it.

    Building a dataset task reads its data (a hub download for `gsm8k`), which a config load
    must not do; option *values* are checked when the run builds the task, before the model.
    """
    name, _, path = spec.partition(":")
    if name not in TASKS:
        raise unknown_name("task", spec, TASKS)
    signature = inspect.signature(TASKS[name])
    kwargs = {"path": path, **options} if path else dict(options)
    valid = list(signature.parameters)
    for key in kwargs:
        if key not in signature.parameters:
            raise _unknown_option(key, name, valid)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise UserError(f"task {spec!r}: {err}; valid options: {', '.join(valid)}") from err
    check_options = getattr(TASKS[name], "check_options", None)
    if check_options is not None:  # a task whose options name other tasks (`mix`)
        check_options(**kwargs)


@dataclass
class TaskConfig:
    """The `task:` section of a recipe: a task name (or `jsonl:PATH`) and its options."""

    name: str = "arith"
    options: dict[str, Any] = field(default_factory=dict)
