"""Reflection words: what a practitioner counts to watch for R1-Zero's "aha moment".

During R1-Zero training the model learns to stop, re-check and revise. These words are
counted per completion (`reflection_words` in metrics.jsonl), never rewarded.
"""

from __future__ import annotations

import re

# Matching is case-insensitive and whole-word; a space matches any whitespace and a hyphen is
# optional ("re-check", "recheck", "re check"); longer phrases win ("let me verify" counts once).
REFLECTION_WORDS: tuple[str, ...] = (
    "wait",
    "hmm",
    "actually",
    "mistake",
    "re-check",
    "re-examine",
    "re-evaluate",
    "double-check",
    "verify",
    "let me check",
    "let me verify",
    "let me re-check",
)


def _phrase_pattern(phrase: str) -> str:
    """Regex for one phrase: a space matches any whitespace, a hyphen is optional."""
    words = (re.escape(w).replace("\\-", "[-\\s]?") for w in phrase.split())
    return r"\s+".join(words)


_REFLECTION_RE = re.compile(
    r"(?<!\w)(?:"
    + "|".join(map(_phrase_pattern, sorted(REFLECTION_WORDS, key=len, reverse=True)))
    + r")(?!\w)",
    re.IGNORECASE,
)


def count_reflections(text: str) -> int:
    """How many reflection words/phrases (`REFLECTION_WORDS`) `text` contains.

    >>> count_reflections("Wait, let me re-check: 2+2=4. Hmm, actually I made a mistake. Verified.")
    5
    """
    return len(_REFLECTION_RE.findall(text))
