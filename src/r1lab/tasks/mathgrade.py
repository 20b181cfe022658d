r"""Math answer grading with math-verify, safe to call from any thread.

math-verify decides mathematical equivalence (``1/2`` = ``0.5`` = ``\dfrac12``) far better than
string matching, but three of its defaults bite in a training loop, and this module is where
they are handled once:

- Its timeouts use ``signal.alarm``, which raises outside the main thread (rollout and reward
  workers run in threads). We pass ``parsing_timeout=None`` / ``timeout_seconds=None`` and
  instead refuse inputs that could make sympy run for ever (over-long text, towers of powers,
  huge factorials): see `_too_big`. math-verify then warns "Timeout is disabled ..." on its
  loggers; that is the choice made here, so the warning is filtered out (its other warnings,
  about timeouts that fired, cannot happen without timeouts).
- ``verify(gold, pred)`` is asymmetric: the gold answer always goes first.
- A bare string is mined for its *last number*: ``parse("95 or 96")`` gives 96 and
  ``parse("2\sqrt{3}")`` gives 2. An answer extracted from ``<answer>`` tags or ``\boxed{}`` is
  already the whole answer, so we wrap it in ``$...$`` and let the LaTeX parser read all of it
  (``95 or 96`` then becomes the set {95, 96}, which equals neither).

A gold answer that does not parse must never score 1.0: `parse_gold` returns an empty list for
it and callers treat that as an error at load time.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

MAX_ANSWER_CHARS = 1000
"""Longer answers are rejected unparsed: no real answer is this long, and parse time grows."""

_MAX_LOG10 = 10_000.0
"""Numbers above 10**10000 are refused: sympy would spend seconds to hours building them."""

_MAX_EXPONENT_LOG10 = 6.0
"""Exponents above 10**6 are refused even on symbols: ``(x+1)**(10**9)`` expands for ever."""

_CONFIGS = (LatexExtractionConfig(), ExprExtractionConfig())


def _not_timeout_disabled(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_not_timeout_disabled)
_MATH_DELIMS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\[,!;: ](?=\d{3}(?!\d))")
_WORDS = re.compile(r"[A-Za-z][A-Za-z .'\-]*")
_NUMBER_WITH_UNIT = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z]{3,}\.?\s*)+")


def _latex_wrapped(text: str) -> str:
    r"""Put a bare answer inside ``$...$`` so the LaTeX parser reads all of it.

    Text that already has math delimiters is left alone. A single ``$`` is a currency sign
    (``$18``, ``\$18``), not a delimiter, and is dropped. ``1\,234`` (thin-space thousands
    separator) is joined first: math-verify otherwise reads it as 1 + 234. A number followed by
    a unit word of three or more letters (``72 dollars``) is read as the number; shorter words
    are kept because they may be symbols (``2 pi``).
    """
    text = _THIN_SPACE_THOUSANDS.sub("", text.strip()).replace("\\$", "")
    unit = _NUMBER_WITH_UNIT.fullmatch(text)
    if unit:
        text = unit.group(1)
    if text.count("$") == 1:
        text = text.replace("$", "")
    if any(d in text for d in _MATH_DELIMS):
        return text
    return f"${text}$"


def _parse(text: str) -> list[Any]:
    """math-verify's parse without signal-based timeouts (thread-safe); [] on any failure."""
    try:
        return list(parse(text, extraction_config=_CONFIGS, parsing_timeout=None))
    except Exception:  # math-verify may raise from deep inside sympy/lark on odd input
        return []


def _candidates(answer: str) -> list[Any]:
    r"""All readings of an answer: the ``$...$``-wrapped one, plus ``\text{...}`` for words.

    A word answer such as ``Evelyn`` would otherwise be read as the product E*v*e*l*y*n and
    never match a gold ``\text{Evelyn}``.
    """
    parsed = _parse(_latex_wrapped(answer))
    if _WORDS.fullmatch(answer.strip()):
        parsed += _parse(f"$\\text{{{answer.strip()}}}$")
    return parsed


def _log10_bound(expr: sympy.Basic) -> float:
    """A rough upper bound on log10|expr| for numeric subtrees; inf when it may be huge.

    Only used to refuse pathological input before sympy evaluates it, so it errs on the side of
    "huge". Symbols count as 1 (log 0): what matters is the size of exponents and factorials.
    """
    if isinstance(expr, sympy.Integer):
        return float(len(str(abs(int(expr)))))
    if isinstance(expr, sympy.Rational | sympy.Float):
        value = abs(float(expr))
        return math.log10(value) if value > 1 else 0.0
    args = [_log10_bound(a) for a in expr.args if isinstance(a, sympy.Basic)]
    if not args:
        return 0.0
    if isinstance(expr, sympy.Pow):
        base, exponent = args
        if exponent > _MAX_EXPONENT_LOG10:
            return math.inf
        return max(base, 0.3) * 10**exponent
    if isinstance(expr, sympy.factorial | sympy.binomial | sympy.gamma):
        return math.inf if args[0] > 5 else args[0] * 10 ** args[0]
    if isinstance(expr, sympy.Mul):
        return sum(args)
    return max(args) + math.log10(len(args))


def _too_big(parsed: list[Any]) -> bool:
    """Whether any parsed expression could make sympy run for ever (see `_log10_bound`)."""
    for item in parsed:
        if not isinstance(item, sympy.Basic):
            continue
        try:
            if _log10_bound(item) > _MAX_LOG10:
                return True
        except (OverflowError, ValueError, TypeError):
            return True
    return False


def is_parsed(parsed: list[Any]) -> bool:
    """Whether math-verify understood an answer (a sympy object, not just a raw-string fallback)."""
    return any(not isinstance(item, str) for item in parsed)


def parse_gold(text: str) -> list[Any]:
    r"""Parse a gold answer once, at load time; [] when it does not parse.

    The gold is parsed first and kept: datasets grade thousands of completions against the same
    gold, and an unparseable gold must be caught at load time, not score everything False (or
    worse, True). A raw-string-only result counts as unparseable.

    >>> parse_gold(r"\frac{1}{2}")[0]
    1/2
    """
    if not text or not text.strip() or len(text) > MAX_ANSWER_CHARS:
        return []
    parsed = _candidates(text)
    if not is_parsed(parsed) or _too_big(parsed):
        return []
    return parsed


def verify_answer(gold_parsed: list[Any], answer: str | None) -> bool:
    """Whether `answer` is mathematically equal to the parsed gold; never raises.

    None, blank, over-long or pathological answers are wrong, and so is everything when the
    gold list is empty (an unparseable gold is never a free reward).
    """
    if not gold_parsed or answer is None or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return False
    pred = _candidates(answer)
    if not pred or _too_big(pred):
        return False
    try:
        return bool(verify(gold_parsed, pred, timeout_seconds=None))
    except Exception:  # sympy can raise on exotic comparisons; a wrong answer is the safe call
        return False


def normalize_math(answer: str | None) -> str | None:
    """A canonical string for majority voting: equal values give equal strings.

    ``0.5``, ``1/2`` and ``\\frac{1}{2}`` all become ``1/2``; ``72.0`` and ``1,234`` become
    ``72`` and ``1234``; ``x = 5`` becomes ``5`` (an assignment votes with its value). What does
    not parse falls back to its whitespace-normalised text.
    """
    if answer is None:
        return None
    fallback = " ".join(answer.split())
    if not fallback or len(answer) > MAX_ANSWER_CHARS:
        return fallback
    parsed = [p for p in _candidates(answer) if isinstance(p, sympy.Basic)]
    if not parsed or _too_big(parsed):
        return fallback
    expr = parsed[0]
    try:
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs
        if isinstance(expr, sympy.Float):
            expr = sympy.Rational(str(expr))
        return str(expr)
    except Exception:  # str() of exotic sympy objects; voting on the text is good enough
        return fallback
