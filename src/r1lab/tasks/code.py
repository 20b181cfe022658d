"""Code problems: the model writes a program, the sandbox runs it against the problem's tests.

R1's reasoning RL rewards code the way it rewards math: by a rule, here "the program passes
the test cases". Every code task shares this module's pieces:

- `extract_code`: the program a completion commits to, the fenced block inside
  `<answer>...</answer>` (else the last fenced block of the completion);
- `CodeTask`: grading through `r1lab.sandbox` (strict isolation unless the task's `sandbox:`
  option names the weaker mode), one verdict per test, a whole batch of completions queued
  across the worker pool at once, and a cache so the accuracy reward, the `code_tests`
  reward and the step metrics of one batch run each program once;
- `CodeJsonlTask` (`code:PATH`): user files in the two common shapes, MBPP-style assert
  lists and APPS/LiveCodeBench-style stdin/stdout pairs.

A problem's tests live in `Example.meta["tests"]` (`{"asserts": [...], "setup": "...",
"stdio": [[input, output], ...]}`), its reference program (when known) fenced in
`Example.answer`, which is what worked few-shot examples show inside `<answer>`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from r1lab.core.types import Example
from r1lab.sandbox import Tests, get_sandbox, sandbox_config
from r1lab.tasks.base import Task

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n", re.IGNORECASE)
CACHE_SIZE = 8192
CODE_INSTRUCTION = "Write the code in a ```python block."


def _fenced(text: str) -> str | None:
    """The last complete fenced block of `text`, else what follows an unclosed fence."""
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    opened = list(_OPEN_FENCE.finditer(text))
    return text[opened[-1].end() :] if opened else None


def extract_code(completion: str) -> str | None:
    """The program a completion commits to, or None.

    Inside the last `<answer>...</answer>`: its fenced block (```python, ```py or ```), or
    the answer's text when it has no fence; without answer tags, the last fenced block of
    the completion.

    >>> extract_code("<think>easy</think> <answer> ```python\\nx = 1\\n``` </answer>")
    'x = 1\\n'
    >>> extract_code("<answer>def f(): return 2</answer>"), extract_code("no code") is None
    ('def f(): return 2', True)
    """
    answers = _ANSWER.findall(completion)
    if answers:
        inner = answers[-1]
        code = _fenced(inner)
        return code if code is not None else (inner.strip() or None)
    return _fenced(completion)


def normalize_code(code: str | None) -> str | None:
    """A canonical form for majority voting: the parsed program unparsed (formatting and
    comments do not split a vote), else the text with whitespace collapsed.

    >>> normalize_code("def f(x):\\n    return x+1  # one more")
    'def f(x):\\n    return x + 1'
    >>> normalize_code("def f(x): return x + 1")
    'def f(x):\\n    return x + 1'
    """
    if code is None:
        return None
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return " ".join(code.split())


def fence(code: str) -> str:
    """A program as the answer a worked example shows: one ```python block."""
    return f"```python\n{code.strip()}\n```"


def problem_tests(example: Example) -> Tests | None:
    """The tests stored in an example's meta, or None when it is not a code problem."""
    spec = example.meta.get("tests")
    if not isinstance(spec, dict):
        return None
    return Tests(
        asserts=tuple(spec.get("asserts", ())),
        stdio=tuple((str(given), str(want)) for given, want in spec.get("stdio", ())),
        setup=spec.get("setup", ""),
    )


def encode_tests(asserts: Sequence[str] = (), stdio: Sequence[Sequence[str]] = (), setup: str = ""):
    """The JSON-friendly `meta["tests"]` of a problem (the inverse of `problem_tests`)."""
    return {"asserts": list(asserts), "stdio": [list(pair) for pair in stdio], "setup": setup}


class CodeTask(Task):
    """A task whose answers are programs graded by tests in the sandbox (see the module doc).

    `sandbox` is the task option `sandbox:` (`r1lab.sandbox.SandboxConfig`: `mode`,
    `workers`, `timeout`, `memory_mb`, ...). The sandbox is set up when the task is built,
    so a host where strict isolation cannot run fails before any model is loaded.
    """

    def __init__(self, sandbox: dict[str, Any] | None = None) -> None:
        self.sandbox_settings = sandbox_config(sandbox, f"task {self.name} option sandbox")
        self.sandbox = get_sandbox(self.sandbox_settings)
        self._cache: OrderedDict[str, list[str]] = OrderedDict()

    def extract(self, completion: str) -> str | None:
        return extract_code(completion)

    def normalize(self, answer: str | None) -> str | None:
        return normalize_code(answer)

    def brief(self, example: Example) -> str:
        return example.meta.get("brief") or "I write the program and check it on the examples."

    def program(self, code: str, example: Example) -> str:
        """The file that runs: the model's code (HumanEval adds the problem's own prompt)."""
        return code

    def verdicts_of(
        self, codes: Sequence[str | None], examples: Sequence[Example]
    ) -> list[list[str] | None]:
        """Per-test verdicts of each extracted program; every test fails when there is no
        program. Uncached programs of the batch run together across the pool."""
        out: list[list[str] | None] = [None] * len(codes)
        todo: dict[str, tuple[str, Tests, list[int]]] = {}
        for i, (code, example) in enumerate(zip(codes, examples, strict=True)):
            tests = problem_tests(example)
            if tests is None:
                continue
            if code is None or not code.strip():
                out[i] = ["failed"] * len(tests)
                continue
            program = self.program(code, example)
            key = hashlib.sha256(
                json.dumps([program, tests.asserts, tests.stdio, tests.setup]).encode()
            ).hexdigest()
            if key in self._cache:
                self._cache.move_to_end(key)
                out[i] = list(self._cache[key])
            else:
                todo.setdefault(key, (program, tests, []))[2].append(i)
        if todo:
            limits = self.sandbox_settings.limits
            results = self.sandbox.check([(p, t) for p, t, _ in todo.values()], limits)
            for key, (_, _, indices), verdicts in zip(todo, todo.values(), results, strict=True):
                self._remember(key, verdicts)
                for i in indices:
                    out[i] = list(verdicts)
        return out

    def _remember(self, key: str, verdicts: list[str]) -> None:
        self._cache[key] = verdicts
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def grade(self, answer: str | None, example: Example) -> bool:
        return self.grade_many([answer], [example])[0]

    def grade_many(self, answers: Sequence[str | None], examples: Sequence[Example]) -> list[bool]:
        """Correct = every test passed (a problem with no tests is never correct)."""
        verdicts = self.verdicts_of(answers, examples)
        return [bool(v) and all(x == "passed" for x in v) for v in verdicts]

    def test_verdicts(
        self, completions: Sequence[str], examples: Sequence[Example]
    ) -> list[list[str] | None]:
        return self.verdicts_of([self.extract(c) for c in completions], examples)
