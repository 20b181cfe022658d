"""The countdown task: reachable targets, a safe ast-based grader, disjoint splits."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks import make_task
from r1lab.tasks.countdown import CountdownTask, check_equation, evaluate

NUMBERS, TARGET = [19, 36, 55, 7], 65
EXAMPLE = Example(
    id="countdown-test",
    prompt="(unused here)",
    answer="55 + 36 - 19 - 7",
    meta={"numbers": NUMBERS, "target": TARGET},
)


def grade(answer: str | None) -> bool:
    return CountdownTask(train_size=0, test_size=0).grade(answer, EXAMPLE)


@pytest.mark.parametrize(
    "answer",
    [
        "55 + 36 - 19 - 7",
        "55 + 36 - 19 - 7 = 65",
        "65 = 55 + 36 - 19 - 7",
        "(55 + 36) - (19 + 7)",
        "$55 + 36 - 19 - 7$",
        r"\boxed{55 + 36 - 19 - 7}",
        "36 + 55 - 19 - 7",
        "55 + (36 - 19 - 7)",
    ],
)
def test_correct_equations(answer: str) -> None:
    assert grade(answer)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("55 + 55 - 19 - 26", "number used twice / not given"),
        ("55 + 10", "10 is not given"),
        ("36 + 36 - 7", "36 given once, used twice"),
        ("55 + 36 - 19 - 7 = 66", "claims the wrong value"),
        ("55 + 36 - 19 - 8", "8 not given"),
        ("55 + 36 - 19", "evaluates to 72"),
        ("55 / (36 - 36) + 65", "division by zero"),
        ("55 / (7 - 7)", "division by zero"),
        ("-19 + 36 + 55 - 7", "unary minus not allowed"),
        ("55 + 36 - 19 - 7.0", "floats not allowed"),
        ("7 ** 2 + 19 - 3", "powers not allowed"),
        ("55 + 36 - 19 - 7 = 65 = 65", "two '='"),
        ("", "empty"),
        (None, "no answer"),
        ("65", "65 is not a given number"),
        ("(" * 120 + "55" + ")" * 120, "too long"),
    ],
)
def test_invalid_equations(answer: str | None, why: str) -> None:
    assert not grade(answer), why


@pytest.mark.parametrize(
    "junk",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd').read()",
        "(lambda: 65)()",
        "[55, 36][0] + 10",
        "55 if True else 0",
        "x + 65",
        "True * 65",
    ],
)
def test_code_is_rejected_without_running(junk: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    assert evaluate(junk) is None
    assert not check_equation(junk, NUMBERS, TARGET)
    assert calls == []


def test_unused_numbers_are_fine_and_duplicates_count() -> None:
    assert check_equation("19 × 3 + 8", [19, 3, 8], 65)
    assert check_equation(r"\left(19 \times 3\right) + 24 \div 3", [19, 3, 24, 3], 65)
    assert check_equation("55 + 7 + 3", [55, 7, 3, 99], 65)
    assert check_equation("5 * 5 + 40", [5, 5, 40], 65)
    assert not check_equation("5 * 5 + 40", [5, 40, 1], 65)


def test_normalize_groups_by_value_and_numbers_used() -> None:
    task = CountdownTask(train_size=0, test_size=0)
    assert task.normalize("(55 - 36) * 7") == task.normalize("7 * (55 - 36) = 133")
    assert task.normalize("55 + 10") != task.normalize("55 + 7 + 3")
    assert task.normalize("not an equation") == "not an equation"
    assert task.normalize(None) is None


def test_examples_shape_and_prompt() -> None:
    task = make_task("countdown", {"train_size": 40, "test_size": 10})
    ex = task.examples("train")[0]
    numbers, target = ex.meta["numbers"], ex.meta["target"]
    assert len(numbers) == 4 and all(1 <= n <= 100 for n in numbers)
    assert ex.prompt == (
        f"Using the numbers {numbers}, create an equation that equals {target}. You can use "
        "basic arithmetic operations (+, -, *, /) and each number can be used at most once."
    )
    assert target not in numbers and ex.solution and ex.solution.endswith(f"= {target}.")


def test_deterministic_and_disjoint() -> None:
    a = CountdownTask(seed=1, train_size=200, test_size=50)
    b = CountdownTask(seed=1, train_size=200, test_size=50)
    c = CountdownTask(seed=2, train_size=200, test_size=50)
    assert a.examples("train") == b.examples("train")
    assert a.examples("test") == b.examples("test")
    assert a.examples("train") != c.examples("train")
    train, test = a.examples("train"), a.examples("test")
    assert (len(train), len(test)) == (200, 50)
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in test})
    assert {e.id for e in train}.isdisjoint({e.id for e in test})


@pytest.mark.parametrize(
    "options", [{"numbers": 2}, {"numbers": 7}, {"max_number": 5}, {"test_size": -3}]
)
def test_bad_options(options: dict) -> None:
    with pytest.raises(UserError):
        make_task("countdown", options)


@settings(max_examples=20, deadline=None)
@given(numbers=st.integers(3, 6), max_number=st.integers(10, 500), seed=st.integers(0, 10**6))
def test_stored_solution_always_accepted(numbers: int, max_number: int, seed: int) -> None:
    task = CountdownTask(numbers, max_number, seed, train_size=20, test_size=5)
    for ex in task.examples("train") + task.examples("test"):
        assert task.grade(ex.answer, ex), ex
        assert task.grade(f"{ex.answer} = {ex.meta['target']}", ex)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_grader_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(check_equation(text, NUMBERS, TARGET), bool)
