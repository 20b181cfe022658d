"""Which script a text is written in: the measure behind R1's language-consistency reward.

Words are counted per Unicode script (Han and kana per character, other scripts per run of
letters); a language is the set of scripts it is written in. Used by the
`language_consistency` reward and by filters that drop mixed-language samples.
"""

from __future__ import annotations

import re
from collections import Counter

from r1lab.core.errors import unknown_name

_PER_CHAR_SCRIPTS = {
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff",
    "hiragana": "\u3040-\u309f",
    "katakana": "\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f",
}
_RUN_SCRIPTS = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "cyrillic": "\u0400-\u052f",
    "arabic": "\u0620-\u065f\u066e-\u06ef\u06fa-\u06ff\u0750-\u077f\u08a0-\u08ff"
    "\ufb50-\ufdff\ufe70-\ufeff",
    "hebrew": "\u0591-\u05f4",
    "devanagari": "\u0900-\u0963\u0970-\u097f",
    "thai": "\u0e01-\u0e4f",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
}
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
# One pattern per script, each match one word. A lone Latin or Greek letter is a math
# variable ("let x = 3", "angle α"), not language, hence {2,}.
_SCRIPT_WORD_RES = {
    **{s: re.compile(f"[{chars}]") for s, chars in _PER_CHAR_SCRIPTS.items()},
    **{
        s: re.compile(f"[{chars}]{{2,}}" if s in ("latin", "greek") else f"[{chars}]+")
        for s, chars in _RUN_SCRIPTS.items()
    },
}

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{lang: frozenset({"latin"}) for lang in ("en", "fr", "de", "es", "it", "pt", "nl")},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "hiragana", "katakana"}),
    "ko": frozenset({"hangul"}),
    "ru": frozenset({"cyrillic"}),
    "uk": frozenset({"cyrillic"}),
    "ar": frozenset({"arabic"}),
    "el": frozenset({"greek"}),
    "he": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
}


def script_word_counts(text: str) -> Counter[str]:
    """How many words of `text` are written in each script (see the tables above).

    Digits, punctuation, math symbols, LaTeX commands and single Latin/Greek letters count
    for no script.

    >>> sorted(script_word_counts("Let x = 3, 所以 \\\\frac{1}{2} ответ").items())
    [('cyrillic', 1), ('han', 2), ('latin', 1)]
    """
    text = _LATEX_COMMAND_RE.sub(" ", text)
    counts: Counter[str] = Counter()
    for script, pattern in _SCRIPT_WORD_RES.items():
        n = len(pattern.findall(text))
        if n:
            counts[script] = n
    return counts


def language_share(text: str, language: str) -> float | None:
    """The share of the words of `text` written in `language`'s script; None without words.

    >>> language_share("Let me think 我们计算", "en"), language_share("42 + 7 = 49", "en")
    (0.42857142857142855, None)
    """
    if language not in LANGUAGE_SCRIPTS:
        raise unknown_name("language", language, LANGUAGE_SCRIPTS)
    counts = script_word_counts(text)
    total = sum(counts.values())
    if total == 0:
        return None
    return sum(counts[s] for s in LANGUAGE_SCRIPTS[language]) / total
