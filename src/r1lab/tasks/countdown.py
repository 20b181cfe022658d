"""Countdown: reach a target by combining given numbers with + - * /.

The task TinyZero used to reproduce the R1-Zero "aha moment" on small models: answers are easy
to check and hard to guess, and search (try, fail, backtrack) pays off. Every target is
reachable by construction: we build a random expression over a subset of the numbers and take
its value as the target, so each example stores one known solution.

The grader parses the model's equation with `ast` and evaluates it with exact fractions; it
never calls eval/exec, so text like ``__import__('os')`` is rejected without running anything.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks.base import Task, last_boxed, register_task, split_of

MAX_EQUATION_CHARS = 200
"""Longer answers are rejected unparsed, which bounds parse time and nesting depth."""

_SALT = "countdown"
_MAX_MISSES = 5000  # consecutive rejected draws before the problem space counts as exhausted
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "\\times": "*", "\\cdot": "*", "\\div": "/"}
_INTEGER = re.compile(r"\s*\d+\s*")


class _Invalid(Exception):
    """The answer uses something other than given integers, + - * / and parentheses."""


# --- grading ----------------------------------------------------------------------------


def _eval(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an allowed expression node; records the integers it uses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        left, right = _eval(node.left, used), _eval(node.right, used)
        op = _AST_OPS[type(node.op)]
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        return left / right  # ZeroDivisionError is caught by the caller
    raise _Invalid(type(node).__name__)


def _split_claim(text: str) -> tuple[str, int | None] | None:
    """Separate ``expr = 65`` (or ``65 = expr``) into the expression and the claimed value."""
    parts = text.split("=")
    if len(parts) == 1:
        return text, None
    if len(parts) != 2:
        return None
    left, right = parts
    if _INTEGER.fullmatch(right):
        return left, int(right)
    if _INTEGER.fullmatch(left):
        return right, int(left)
    return None


def evaluate(answer: str | None) -> tuple[Fraction, list[int]] | None:
    r"""Value and used numbers of an equation answer; None when it is not a valid equation.

    Accepts ``$...$``, ``\boxed{}``, ``×``/``÷``/``\times`` and a trailing ``= N`` (which must
    equal the value). Rejects anything `ast` finds besides integer literals, + - * / and
    parentheses (no unary minus, no powers, no names, no calls), and division by zero.

    >>> evaluate("(55 - 36) * 7 = 133")
    (Fraction(133, 1), [55, 36, 7])
    """
    if answer is None:
        return None
    text = answer.strip()
    if "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text) or ""
    if len(text) > MAX_EQUATION_CHARS:
        return None
    for symbol, op in _SYMBOLS.items():
        text = text.replace(symbol, op)
    text = text.replace("\\left", "").replace("\\right", "").strip().strip("$").strip()
    claim = _split_claim(text)
    if claim is None:
        return None
    expression, claimed = claim
    used: list[int] = []
    try:
        value = _eval(ast.parse(expression.strip(), mode="eval").body, used)
    except (_Invalid, SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None
    if claimed is not None and value != claimed:
        return None
    return value, used


def check_equation(answer: str | None, numbers: list[int], target: int) -> bool:
    """Whether `answer` reaches `target` using each given number at most once."""
    result = evaluate(answer)
    if result is None:
        return False
    value, used = result
    return value == target and not Counter(used) - Counter(numbers)


# --- generation -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    value: int
    text: str
    prec: int  # 3 for a literal, else the precedence of the top operator


def _join(a: _Node, op: str, b: _Node) -> _Node:
    """Combine two nodes, adding only the parentheses precedence requires."""
    p = _PREC[op]
    left = a.text if a.prec >= p else f"({a.text})"
    right_ok = b.prec > p or (b.prec == p and op in "+*")
    right = b.text if right_ok else f"({b.text})"
    value = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value}.get(op)
    return _Node(a.value // b.value if value is None else value, f"{left} {op} {right}", p)


def _legal_ops(a: int, b: int) -> list[str]:
    """Operations keeping every intermediate a positive integer of sane size."""
    ops = ["+"]
    if a > b:
        ops.append("-")
    if a * b <= 10**6:
        ops.append("*")
    if b > 1 and a % b == 0:
        ops.append("/")
    return ops


def _build(rng: random.Random, numbers: list[int]) -> tuple[_Node, list[str]]:
    """A random expression over a subset (all, or all but one) of `numbers`, with its steps."""
    k = rng.randint(max(2, len(numbers) - 1), len(numbers))
    pool = [_Node(n, str(n), 3) for n in rng.sample(numbers, k)]
    steps = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        op = rng.choice(_legal_ops(a.value, b.value))
        node = _join(a, op, b)
        steps.append(f"{a.value} {op} {b.value} = {node.value}")
        pool = [n for idx, n in enumerate(pool) if idx not in (i, j)] + [node]
    return pool[0], steps


def _solution(numbers: list[int], root: _Node, steps: list[str]) -> str:
    used = Counter(int(t) for t in re.findall(r"\d+", root.text))
    unused = sorted((Counter(numbers) - used).elements())
    lines = ["Combine two numbers at a time:", *steps]
    if unused:
        lines.append(f"Not needed: {', '.join(map(str, unused))}.")
    lines.append(f"So {root.text} = {root.value}.")
    return "\n".join(lines)


@register_task("countdown")
class CountdownTask(Task):
    """Reach a target from 3-6 numbers with + - * /, each number used at most once.

    The stored answer is one known solution (the expression, without ``= target``); any other
    valid equation grades as correct too.
    """

    description = "countdown number puzzles graded by safe exact evaluation"

    def __init__(
        self,
        numbers: int = 4,
        max_number: int = 100,
        seed: int = 0,
        train_size: int = 2000,
        test_size: int = 200,
    ) -> None:
        if not isinstance(numbers, int) or not 3 <= numbers <= 6:
            raise UserError(f"countdown option numbers must be an integer 3..6, got {numbers!r}")
        if not isinstance(max_number, int) or not 10 <= max_number <= 10_000:
            raise UserError(
                f"countdown option max_number must be an integer 10..10000, got {max_number!r}"
            )
        for key, size in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(size, int) or size < 0:
                raise UserError(f"countdown option {key} must be an integer >= 0, got {size!r}")
        self.numbers, self.max_number, self.seed = numbers, max_number, seed
        self.sizes = {"train": train_size, "test": test_size}
        self._splits: dict[str, list[Example]] | None = None

    def _draw(self, rng: random.Random) -> Example | None:
        """One puzzle, or None when its target is trivial or out of range."""
        numbers = [rng.randint(1, self.max_number) for _ in range(self.numbers)]
        root, steps = _build(rng, numbers)
        if not 1 <= root.value <= 10 * self.max_number or root.value in numbers:
            return None
        prompt = (
            f"Using the numbers {numbers}, create an equation that equals {root.value}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number can be "
            "used at most once."
        )
        return Example(
            id="countdown-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
            prompt=prompt,
            answer=root.text,
            meta={"numbers": numbers, "target": root.value},
            solution=_solution(numbers, root, steps),
        )

    def _generate(self) -> dict[str, list[Example]]:
        """Like arith: each prompt's side is fixed by its hash, so the splits are disjoint."""
        total = self.sizes["train"] + self.sizes["test"]
        fraction = self.sizes["test"] / total if total else 0.0
        rng = random.Random(f"countdown:{self.seed}:{self.numbers}:{self.max_number}")
        splits: dict[str, list[Example]] = {"train": [], "test": []}
        seen: set[str] = set()
        misses = 0
        while misses < _MAX_MISSES and any(len(splits[s]) < self.sizes[s] for s in splits):
            example = self._draw(rng)
            side = split_of(example.prompt, fraction, salt=_SALT) if example else "train"
            if example is None or example.prompt in seen or len(splits[side]) >= self.sizes[side]:
                misses += 1
                continue
            misses = 0
            seen.add(example.prompt)
            splits[side].append(example)
        return splits

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(
                f"unknown split {split!r} for task countdown; valid splits: train, test"
            )
        if self._splits is None:
            self._splits = self._generate()
        return list(self._splits[split][:limit])

    def brief(self, example: Example) -> str:
        return f"{example.answer} = {example.meta['target']}"

    def grade(self, answer: str | None, example: Example) -> bool:
        return check_equation(answer, list(example.meta["numbers"]), int(example.meta["target"]))

    def normalize(self, answer: str | None) -> str | None:
        """Canonical form for voting: the exact value and the sorted multiset of numbers used.

        Correctness depends on exactly these two things (value == target, numbers a sub-multiset
        of those given), so equations in one voting class are either all right or all wrong:
        ``(55 - 36) * 7`` and ``7 * (55 - 36)`` vote together, while voting on the raw text
        would split one correct answer into many spellings. Invalid text votes as itself.
        """
        result = evaluate(answer)
        if result is None:
            return super().normalize(answer)
        value, used = result
        return f"{value} using {sorted(used)}"
