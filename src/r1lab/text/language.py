"""Which script a text is written in: the measure behind R1's language-consistency reward.

One counting rule for every script: each letter counts once, attributed to its Unicode script
(Latin, Han, Cyrillic, Arabic, ...). Counting words instead would need a rule per script
(spaces separate Latin words, nothing separates Han ones) and would weigh a Han character like
a whole English word; counting letters weighs every script by the same unit. Math is not
language: digits, symbols, LaTeX commands and single Latin or Greek letters (variables such as
`x` or `α`) count for no script. A language is the set of scripts it is written in, so languages
that share a script cannot be told apart here: English, French, German, Spanish, Italian,
Portuguese and Dutch (Latin); Russian and Ukrainian (Cyrillic); Arabic, Persian and Urdu
(Arabic). Chinese and Japanese differ only by kana (Japanese also writes Han).
"""

from __future__ import annotations

import re
from collections import Counter

from r1lab.core.errors import unknown_name

_SCRIPTS = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "cyrillic": "\u0400-\u052f",
    "arabic": "\u0620-\u065f\u066e-\u06ef\u06fa-\u06ff\u0750-\u077f\u08a0-\u08ff"
    "\ufb50-\ufdff\ufe70-\ufeff",
    "hebrew": "\u0591-\u05f4",
    "devanagari": "\u0900-\u0963\u0970-\u097f",
    "thai": "\u0e01-\u0e4f",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff",
    "hiragana": "\u3040-\u309f",
    "katakana": "\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f",
}
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_SCRIPT_RES = {script: re.compile(f"[{chars}]") for script, chars in _SCRIPTS.items()}
# a lone Latin or Greek letter between non-letters is a variable ("let x = 3", "angle α")
_VARIABLE_RE = re.compile(
    f"(?<![{_SCRIPTS['latin']}{_SCRIPTS['greek']}])"
    f"[{_SCRIPTS['latin']}{_SCRIPTS['greek']}]"
    f"(?![{_SCRIPTS['latin']}{_SCRIPTS['greek']}])"
)

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{lang: frozenset({"latin"}) for lang in ("en", "fr", "de", "es", "it", "pt", "nl")},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "hiragana", "katakana"}),
    "ko": frozenset({"hangul"}),
    "ru": frozenset({"cyrillic"}),
    "uk": frozenset({"cyrillic"}),
    "ar": frozenset({"arabic"}),
    "fa": frozenset({"arabic"}),
    "ur": frozenset({"arabic"}),
    "el": frozenset({"greek"}),
    "he": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
}


def script_letter_counts(text: str) -> Counter[str]:
    """How many letters of `text` are written in each script (see the module docstring).

    >>> sorted(script_letter_counts("Let x = 3, 所以 \\\\frac{1}{2} ответ").items())
    [('cyrillic', 5), ('han', 2), ('latin', 3)]
    """
    text = _VARIABLE_RE.sub(" ", _LATEX_COMMAND_RE.sub(" ", text))
    counts: Counter[str] = Counter()
    for script, pattern in _SCRIPT_RES.items():
        n = len(pattern.findall(text))
        if n:
            counts[script] = n
    return counts


def check_language(language: str) -> None:
    if language not in LANGUAGE_SCRIPTS:
        raise unknown_name("language", language, LANGUAGE_SCRIPTS)


def language_share(text: str, language: str) -> float | None:
    """The share of the letters of `text` written in `language`'s script; None without any.

    >>> language_share("Let me think 我们计算", "en"), language_share("42 + 7 = 49", "en")
    (0.7142857142857143, None)
    """
    check_language(language)
    counts = script_letter_counts(text)
    total = sum(counts.values())
    if total == 0:
        return None
    return sum(counts[s] for s in LANGUAGE_SCRIPTS[language]) / total


def language_consistency(text: str, language: str) -> float:
    """R1's language consistency of a chain of thought: its share of target-language letters.

    A thought without letters (pure arithmetic, or empty) is consistent, 1.0: nothing in it is
    in another language. Scoring it lower than a thought with words would turn the reward into
    a bonus for writing words, even half-foreign ones.

    >>> language_consistency("59 + 67 = 126", "en"), language_consistency("so 所以", "en")
    (1.0, 0.5)
    """
    share = language_share(text, language)
    return 1.0 if share is None else share
