"""Procedural integer arithmetic: the smallest task on which a 135M model shows real learning.

Problems are generated from a seeded RNG, so they need no download and every run sees the same
data. Difficulty is set by the number of digits per operand and the number of operands; with
several operands normal precedence applies (``12 + 7 * 3 - 5`` is 28). Each example carries a
worked, school-style derivation (column addition with carries, borrows, partial products) and a
check line, which is what cold-start SFT data is rendered from.
"""

from __future__ import annotations

import hashlib
import random
import re
from decimal import Decimal, InvalidOperation

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks.base import Task, last_boxed, register_task, split_of

_SALT = "arith"
_MAX_MISSES = 5000  # consecutive rejected draws before the problem space counts as exhausted
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def parse_number(answer: str | None) -> Decimal | None:
    r"""Read a stated number tolerantly; None when the answer is not exactly one number.

    Accepted decorations: whitespace, ``1,234`` thousands separators (properly grouped), a
    trailing period, a leading ``=``, surrounding ``$...$`` or ``\boxed{}``, ``95.0``, the
    unicode minus sign. Anything else (``95 or 96``, ``95 apples``, ``1e2``) is not a number:
    a model must commit to one answer.

    >>> parse_number(" $1,234.$ ")
    Decimal('1234')
    """
    if answer is None:
        return None
    text = answer.strip()
    if "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text) or ""
    text = text.strip().strip("$").strip().lstrip("=").strip().rstrip(".").strip()
    text = text.replace("\u2212", "-")
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


# --- worked derivations ------------------------------------------------------------------


def _column_add(a: int, b: int) -> str:
    """Column addition of two non-negative integers, digit by digit with carries."""
    da, db = str(a)[::-1], str(b)[::-1]
    parts, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        sums = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = total // 10
        parts.append(f"{sums} = {total}, write {total % 10}" + (f" carry {carry}" if carry else ""))
    if carry:
        parts.append(f"write the final carry {carry}")
    return f"{a} + {b}: " + "; ".join(parts) + f"; so {a + b}."


def _column_sub(a: int, b: int) -> str:
    """Column subtraction a - b for a >= b >= 0, digit by digit with borrows."""
    da, db = str(a)[::-1], str(b)[::-1]
    parts, borrow = [], 0
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        shown = f"{da[i]} - {borrow}" if borrow else da[i]
        if x < y:
            parts.append(f"{shown} - {y} needs a borrow: {x + 10} - {y} = {x + 10 - y}")
            borrow = 1
        else:
            parts.append(f"{shown} - {y} = {x - y}")
            borrow = 0
    return f"{a} - {b}: " + "; ".join(parts) + f"; so {a - b}."


def _long_mul(a: int, b: int) -> str:
    """Multiplication of non-negative integers by partial products, one per digit of b."""
    if a == 0 or b == 0:
        return f"{a} * {b} = 0, since anything times 0 is 0."
    digits = str(b)[::-1]
    if len(digits) == 1:
        return _times_digit(a, b)
    partials, lines = [], []
    for place, d in enumerate(digits):
        if d == "0":
            continue
        value = a * int(d) * 10**place
        shift = f" = {a} * {d} * {10**place}" if place else ""
        lines.append(f"{a} * {int(d) * 10**place}{shift} = {value}")
        partials.append(value)
    total = " + ".join(str(p) for p in partials)
    return "; ".join(lines) + f"; adding the partial products: {total} = {a * b}."


def _times_digit(a: int, d: int) -> str:
    """a * d for one digit d, digit by digit with carries: the base case of long multiplication."""
    if a < 10:
        return f"{a} * {d} = {a * d}."
    parts, carry, da = [], 0, str(a)[::-1]
    for i, ch in enumerate(da):
        total = int(ch) * d + carry
        shown = f"{ch} * {d}" + (f" + {carry}" if carry else "")
        if i == len(da) - 1:
            parts.append(f"{shown} = {total}, write {total}")
            break
        carry = total // 10
        parts.append(f"{shown} = {total}, write {total % 10}" + (f" carry {carry}" * bool(carry)))
    return f"{a} * {d}: " + "; ".join(parts) + f"; so {a * d}."


def _add_signed(a: int, b: int) -> str:
    """a + b for integers of any sign, reduced to a column addition or subtraction."""
    if a >= 0 and b >= 0:
        return _column_add(a, b)
    if a < 0 and b < 0:
        return f"{a} + ({b}) = -({-a} + {-b}). " + _column_add(-a, -b) + f" So {a + b}."
    big, small = (a, b) if abs(a) >= abs(b) else (b, a)
    sign = "" if big >= 0 else "-"
    text = f"{a} + ({b}) = {sign}({abs(big)} - {abs(small)}). "
    return text + _column_sub(abs(big), abs(small)) + f" So {a + b}."


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    """One binary operation with its worked text."""
    if op == "+":
        return a + b, _add_signed(a, b)
    if op == "-":
        if a >= b >= 0:
            return a - b, _column_sub(a, b)
        return a - b, f"{a} - {b} = {a} + ({-b}). " + _add_signed(a, -b)
    product = abs(a) * abs(b)
    sign = "-" if (a < 0) != (b < 0) and product else ""
    text = _long_mul(abs(a), abs(b))
    if a < 0 or b < 0:
        text = f"{a} * {b}: multiply the sizes, then the sign is {sign or '+'}. " + text
    return a * b, text + (f" So {a * b}." if sign else "")


def _check(a: int, op: str, b: int, result: int) -> str:
    """Verify the last step by its inverse operation."""
    if op == "+":
        return f"Check: {result} - {b} = {result - b} ✓"
    if op == "-":
        return f"Check: {result} + {b} = {result + b} ✓"
    if b == 0:
        return f"Check: anything times 0 is 0, and {result} = 0 ✓"
    return f"Check: {result} / {b} = {result // b} ✓"


def solve(numbers: list[int], ops: list[str]) -> tuple[int, str]:
    """Evaluate with normal precedence, writing each step: products first, then left to right."""
    nums, rest_ops, lines = list(numbers), list(ops), []
    last = (nums[0], "+", 0, nums[0])
    while "*" in rest_ops:
        i = rest_ops.index("*")
        value, text = _step(nums[i], "*", nums[i + 1])
        lines.append(text)
        last = (nums[i], "*", nums[i + 1], value)
        nums[i : i + 2] = [value]
        del rest_ops[i]
    while rest_ops:
        op = rest_ops.pop(0)
        value, text = _step(nums[0], op, nums[1])
        lines.append(text)
        last = (nums[0], op, nums[1], value)
        nums[0:2] = [value]
    expression = " ".join(_interleave(numbers, ops))
    if len(numbers) > 2:
        lines.insert(0, f"Multiplication comes before addition and subtraction in {expression}.")
    lines.append(f"So {expression} = {nums[0]}.")
    lines.append(_check(*last))
    return nums[0], "\n".join(lines)


def _interleave(numbers: list[int], ops: list[str]) -> list[str]:
    out = [str(numbers[0])]
    for op, n in zip(ops, numbers[1:], strict=True):
        out += [op, str(n)]
    return out


# --- the task ----------------------------------------------------------------------------


@register_task("arith")
class ArithTask(Task):
    """Integer arithmetic: ``What is 37 + 58?``, graded as an exact integer.

    Options: `digits` per operand (1-9), `operands` (2-6), `ops` (a subset of ``+-*``), `seed`,
    and the split sizes. When the problem space is smaller than the sizes asked for (one digit,
    two operands: 100 sums) the splits hold every distinct problem there is, so fewer examples.
    """

    description = "integer arithmetic with worked column-method solutions"

    def __init__(
        self,
        digits: int = 2,
        operands: int = 2,
        ops: str = "+-*",
        seed: int = 0,
        train_size: int = 2000,
        test_size: int = 200,
    ) -> None:
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise UserError(f"arith option digits must be an integer 1..9, got {digits!r}")
        if not isinstance(operands, int) or not 2 <= operands <= 6:
            raise UserError(f"arith option operands must be an integer 2..6, got {operands!r}")
        if not isinstance(ops, str) or not ops or set(ops) - set("+-*"):
            raise UserError(f"arith option ops must be a non-empty subset of '+-*', got {ops!r}")
        for key, size in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(size, int) or size < 0:
                raise UserError(f"arith option {key} must be an integer >= 0, got {size!r}")
        self.digits, self.operands, self.ops = digits, operands, "".join(sorted(set(ops)))
        self.seed, self.sizes = seed, {"train": train_size, "test": test_size}
        self._splits: dict[str, list[Example]] | None = None

    def _draw(self, rng: random.Random) -> tuple[list[int], list[str]]:
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        numbers = [rng.randint(low, 10**self.digits - 1) for _ in range(self.operands)]
        return numbers, [rng.choice(self.ops) for _ in range(self.operands - 1)]

    def _example(self, numbers: list[int], ops: list[str]) -> Example:
        expression = " ".join(_interleave(numbers, ops))
        value, solution = solve(numbers, ops)
        prompt = f"What is {expression}?"
        return Example(
            id="arith-" + hashlib.sha256(prompt.encode()).hexdigest()[:12],
            prompt=prompt,
            answer=str(value),
            meta={"expression": expression, "digits": self.digits, "operands": self.operands},
            solution=solution,
        )

    def _generate(self) -> dict[str, list[Example]]:
        """Draw candidates until both splits are full; each prompt's side is fixed by its hash.

        A prompt whose side is already full is skipped, never moved, so no test prompt can
        appear in train. Many misses in a row mean the problem space is exhausted.
        """
        total = self.sizes["train"] + self.sizes["test"]
        fraction = self.sizes["test"] / total if total else 0.0
        rng = random.Random(f"arith:{self.seed}:{self.digits}:{self.operands}:{self.ops}")
        splits: dict[str, list[Example]] = {"train": [], "test": []}
        seen: set[str] = set()
        misses = 0
        while misses < _MAX_MISSES and any(len(splits[s]) < self.sizes[s] for s in splits):
            numbers, ops = self._draw(rng)
            prompt = f"What is {' '.join(_interleave(numbers, ops))}?"
            side = split_of(prompt, fraction, salt=_SALT)
            if prompt in seen or len(splits[side]) >= self.sizes[side]:
                misses += 1
                continue
            misses = 0
            seen.add(prompt)
            splits[side].append(self._example(numbers, ops))
        return splits

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        if split not in ("train", "test"):
            raise UserError(f"unknown split {split!r} for task arith; valid splits: train, test")
        if self._splits is None:
            self._splits = self._generate()
        return list(self._splits[split][:limit])

    def brief(self, example: Example) -> str:
        return f"{example.meta['expression']} = {example.answer}"

    def grade(self, answer: str | None, example: Example) -> bool:
        value = parse_number(answer)
        return value is not None and value == int(example.answer)

    def normalize(self, answer: str | None) -> str | None:
        """``1,234``, ``1234.0`` and ``$1234$`` vote together as ``1234``."""
        value = parse_number(answer)
        if value is None or value != value.to_integral_value():
            return super().normalize(answer)
        return str(int(value))
