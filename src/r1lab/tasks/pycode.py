"""`pycode`: procedural Python function specifications with hidden tests, for training.

A problem names a small function and says what it returns, with one worked call:

    Write a Python function `add_7(x)` that returns x plus 7. For example, `add_7(3)` should
    return `10`. Write the code in a ```python block.

and is graded by hidden asserts on other inputs (`tests` of them), run in the sandbox. The
expected values come from a reference computation in r1lab itself, never from running a
model's code; the tests check that each reference program passes its own problem's tests.
Like `arith`, it needs no download, and a family of problems with a parameter gives a small
model a ladder: `level` 1 is arithmetic on one number, 2 adds lists, 3 adds strings. The
split is a hash of the problem's meaning (family and parameter), so no test problem appears
in train under another wording. Each example carries a worked solution (the reasoning, the
program, a check on the example call) for cold-start data.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks.base import register_task, split_of
from r1lab.tasks.code import CODE_INSTRUCTION, CodeTask, encode_tests, fence

_SALT = "pycode"
LETTERS = tuple(string.ascii_lowercase)


@dataclass(frozen=True)
class Family:
    """Problems `name(arg)` that `does`, one per parameter p: `{p}` in the name and the text,
    `{q}` (its repr) in the reference `body`; `compute(p, argument)` is the expected value."""

    key: str
    level: int
    arg: str  # x: an integer, xs: a list of integers, s: a string
    name: str
    does: str
    body: str
    compute: Callable[[Any, Any], Any]
    params: tuple[Any, ...]


FAMILIES = (
    Family("plus", 1, "x", "add_{p}", "returns x plus {p}", "return x + {q}",
           lambda p, x: x + p, tuple(range(1, 100))),
    Family("minus", 1, "x", "subtract_{p}", "returns x minus {p}", "return x - {q}",
           lambda p, x: x - p, tuple(range(1, 100))),
    Family("times", 1, "x", "times_{p}", "returns x times {p}", "return x * {q}",
           lambda p, x: x * p, tuple(range(2, 100))),
    Family("square_plus", 1, "x", "square_plus_{p}", "returns x squared plus {p}",
           "return x * x + {q}", lambda p, x: x * x + p, tuple(range(1, 50))),
    Family("divisible", 1, "x", "divisible_by_{p}",
           "returns True if x is divisible by {p}, otherwise False", "return x % {q} == 0",
           lambda p, x: x % p == 0, tuple(range(2, 31))),
    Family("at_least", 1, "x", "at_least_{p}", "returns the larger of x and {p}",
           "return max(x, {q})", lambda p, x: max(x, p), tuple(range(1, 50))),
    Family("distance", 1, "x", "distance_to_{p}",
           "returns the absolute difference between x and {p}", "return abs(x - {q})",
           lambda p, x: abs(x - p), tuple(range(1, 50))),
    Family("sum_above", 2, "xs", "sum_above_{p}",
           "returns the sum of the numbers in the list xs that are greater than {p}",
           "return sum(v for v in xs if v > {q})",
           lambda p, xs: sum(v for v in xs if v > p), tuple(range(0, 10))),
    Family("count_above", 2, "xs", "count_above_{p}",
           "returns how many numbers in the list xs are greater than {p}",
           "return len([v for v in xs if v > {q}])",
           lambda p, xs: len([v for v in xs if v > p]), tuple(range(0, 10))),
    Family("scale", 2, "xs", "scale_by_{p}",
           "returns a new list with every number of the list xs multiplied by {p}",
           "return [v * {q} for v in xs]", lambda p, xs: [v * p for v in xs], tuple(range(2, 13))),
    Family("shift", 2, "xs", "add_to_all_{p}",
           "returns a new list with {p} added to every number of the list xs",
           "return [v + {q} for v in xs]", lambda p, xs: [v + p for v in xs], tuple(range(1, 13))),
    Family("take", 2, "xs", "first_{p}", "returns the first {p} elements of the list xs",
           "return xs[:{q}]", lambda p, xs: xs[:p], tuple(range(1, 7))),
    Family("count_char", 3, "s", "count_{p}",
           "returns how many times the letter '{p}' appears in the string s",
           "return s.count({q})", lambda p, s: s.count(p), LETTERS),
    Family("repeat", 3, "s", "repeat_{p}", "returns the string s repeated {p} times",
           "return s * {q}", lambda p, s: s * p, tuple(range(2, 10))),
    Family("starts", 3, "s", "starts_with_{p}",
           "returns True if the string s starts with the letter '{p}', otherwise False",
           "return s.startswith({q})", lambda p, s: s.startswith(p), LETTERS),
    Family("remove", 3, "s", "remove_{p}",
           "returns the string s with every letter '{p}' removed",
           "return s.replace({q}, '')", lambda p, s: s.replace(p, ""), LETTERS),
)  # fmt: skip


def _argument(rng: random.Random, arg: str, p: Any) -> Any:
    """A random input: an integer, a short list of small integers, or a short word that
    often contains the parameter's letter (so letter tests are not all trivially 0)."""
    if arg == "x":
        return rng.randint(-30, 30)
    if arg == "xs":
        return [rng.randint(-9, 9) for _ in range(rng.randint(0, 6))]
    alphabet = (p * 3 if isinstance(p, str) else "") + "abcdexyz"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))


def _inputs(rng: random.Random, family: Family, p: Any, count: int) -> list[Any]:
    """`count` distinct inputs (fewer only when the space is that small). For a yes/no
    function they alternate between inputs whose answer is True and False where both exist,
    so `return False` cannot pass the tests of `divisible_by_10`."""
    pool: list[Any] = []
    for _ in range(30 * count):
        value = _argument(rng, family.arg, p)
        if value not in pool:
            pool.append(value)
    if not isinstance(family.compute(p, pool[0]), bool):
        return pool[:count]
    yes = [v for v in pool if family.compute(p, v)]
    no = [v for v in pool if not family.compute(p, v)]
    mixed = [v for pair in zip(no, yes, strict=False) for v in pair]
    return (mixed + [v for v in pool if v not in mixed])[:count]


def make_problem(family: Family, p: Any, tests: int, seed: int) -> Example:
    """One problem: prompt with one example call, `tests` hidden asserts on other inputs."""
    name, does = family.name.format(p=p), family.does.format(p=p)
    body = family.body.format(q=repr(p))
    rng = random.Random(f"pycode:{seed}:{family.key}:{p}")
    example_in, *hidden = _inputs(rng, family, p, tests + 1)
    example_out = family.compute(p, example_in)
    prompt = (
        f"Write a Python function `{name}({family.arg})` that {does}. For example, "
        f"`{name}({example_in!r})` should return `{example_out!r}`. {CODE_INSTRUCTION}"
    )
    asserts = [f"assert {name}({v!r}) == {family.compute(p, v)!r}" for v in hidden]
    solution = (
        f"The function {name} takes {family.arg} and {does}, so its body is `{body}`.\n"
        f"Check: {name}({example_in!r}) gives {example_out!r} ✓"
    )
    return Example(
        id=f"pycode-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
        prompt=prompt,
        answer=fence(f"def {name}({family.arg}):\n    {body}"),
        meta={
            "family": family.key,
            "level": family.level,
            "function": name,
            "tests": encode_tests(asserts),
            "brief": f"{name} {does}: {body}.",
        },
        solution=solution,
    )


@register_task("pycode")
class PyCodeTask(CodeTask):
    """Procedural Python functions graded by hidden tests in the sandbox (training data).

    Options: `level` (1: one number, 2: + lists, 3: + strings), `tests` hidden asserts per
    problem, `seed`, split sizes (capped by the problems there are: 472 at level 1, 521 at
    level 2, 607 at level 3), `sandbox` (see `CodeTask`).
    """

    description = "procedural Python function specs with hidden tests, graded in the sandbox"

    def __init__(
        self,
        level: int = 3,
        tests: int = 5,
        seed: int = 0,
        train_size: int = 500,
        test_size: int = 100,
        sandbox: dict[str, Any] | None = None,
    ) -> None:
        for key, value, low, high in (("level", level, 1, 3), ("tests", tests, 1, 20)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UserError(
                    f"pycode option {key} must be an integer {low}..{high}, got {value!r}"
                )
        for key, size in (("train_size", train_size), ("test_size", test_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise UserError(f"pycode option {key} must be an integer >= 0, got {size!r}")
        super().__init__(sandbox)
        self.level, self.tests, self.seed = level, tests, seed
        self.sizes = {"train": train_size, "test": test_size}
        self._splits: dict[str, list[Example]] | None = None

    def _generate(self) -> dict[str, list[Example]]:
        """Every (family, parameter) of the level in a seeded order, each on the side its
        hash picks, until both sides are full."""
        keys = [(f, p) for f in FAMILIES if f.level <= self.level for p in f.params]
        random.Random(f"pycode-order:{self.seed}").shuffle(keys)
        total = self.sizes["train"] + self.sizes["test"]
        fraction = self.sizes["test"] / total if total else 0.0
        splits: dict[str, list[Example]] = {"train": [], "test": []}
        for family, p in keys:
            side = split_of(f"{family.key}:{p}", fraction, salt=_SALT)
            if len(splits[side]) < self.sizes[side]:
                splits[side].append(make_problem(family, p, self.tests, self.seed))
        return splits

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(f"unknown split {split!r} for task pycode; valid splits: train, test")
        if self._splits is None:
            self._splits = self._generate()
        return list(self._splits[split][:limit])
