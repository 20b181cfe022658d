"""math-verify grading: equivalences, rejections, gold handling, thread safety."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from r1lab.tasks.mathgrade import normalize_math, parse_gold, verify_answer

HALF = r"\frac{1}{2}"


@pytest.mark.parametrize("answer", ["1/2", "0.5", HALF, r"\dfrac12", "$0.5$", r"\boxed{\frac12}"])
def test_forms_of_one_half_are_equal(answer: str) -> None:
    assert verify_answer(parse_gold(HALF), answer)


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("1234", "1,234"),
        ("1,234", "1234"),
        ("1234", r"1\,234"),
        ("72", "72.0"),
        ("72", r"\boxed{72}"),
        ("72", "$72"),
        ("72", r"\$72"),
        ("72", "72 dollars"),
        ("5", "x=5"),
        ("5", "x = 5"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})"),
        ("-2, 4", "4, -2"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
        ("(4, \\infty)", "(4, \\infty)"),
    ],
)
def test_equivalent_answers_accepted(gold: str, answer: str) -> None:
    assert verify_answer(parse_gold(gold), answer)


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        (HALF, "0.6"),
        ("72", "72.5"),
        ("72", "73"),
        ("96", "95 or 96"),  # a bare parse would read only the last number, 96
        ("2", r"2\sqrt{3}"),  # a bare parse would read only the leading 2
        (r"\text{Evelyn}", "Bob"),
        ("-2, 4", "4"),
        ("72", ""),
        ("72", "   "),
        ("72", "x" * 2000),
    ],
)
def test_wrong_answers_rejected(gold: str, answer: str) -> None:
    assert not verify_answer(parse_gold(gold), answer)


def test_none_is_wrong() -> None:
    assert not verify_answer(parse_gold("72"), None)


@pytest.mark.parametrize("gold", ["", "   ", r"\$", "#### ", "}{"])
def test_unparseable_gold_is_empty_and_never_rewards(gold: str) -> None:
    parsed = parse_gold(gold)
    assert parsed == []
    assert not verify_answer(parsed, "0")
    assert not verify_answer(parsed, gold)


@pytest.mark.parametrize(
    "answer", [r"9^{9^{9^{9}}}", r"(10^{10})!", r"(x+1)^{10^{9}}", r"\binom{10^{9}}{5}"]
)
def test_pathological_answers_rejected_quickly(answer: str) -> None:
    start = time.perf_counter()
    assert not verify_answer(parse_gold("72"), answer)
    assert time.perf_counter() - start < 5


def test_grading_works_inside_a_thread() -> None:
    """math-verify's default signal.alarm timeout raises outside the main thread."""
    results: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            gold = parse_gold(HALF)
            results.extend([verify_answer(gold, "0.5"), verify_answer(gold, "0.25")])
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors
    assert results == [True, False]


@pytest.mark.parametrize(
    ("a", "b"),
    [("0.5", HALF), ("1/2", r"\dfrac12"), ("72.0", "72"), ("1,234", "1234"), ("x=5", "5")],
)
def test_normalize_puts_equal_values_together(a: str, b: str) -> None:
    assert normalize_math(a) == normalize_math(b)


def test_normalize_keeps_different_values_apart_and_falls_back_to_text() -> None:
    assert normalize_math("0.5") != normalize_math("0.6")
    assert normalize_math(None) is None
    assert normalize_math("  no   math here }{ ") is not None


def test_task_modules_import_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, r1lab.tasks, r1lab.tasks.mathgrade\n"
        "bad = {m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'datasets'}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_timeout_warning_reaches_the_user(caplog):
    """Timeouts are off on purpose (thread safety); math-verify's warning about it is noise."""
    import logging

    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = False  # as in a fresh process
    math_verify.parser.TIMEOUT_WARNING_SHOWN = False
    with caplog.at_level(logging.WARNING):
        assert verify_answer(parse_gold("0.5"), "1/2")
    assert "Timeout is disabled" not in caplog.text
