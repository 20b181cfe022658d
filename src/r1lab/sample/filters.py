"""The readability filters of R1's rejection sampling, as pure functions over text.

DeepSeek-R1 kept only correct samples and "filtered out chain-of-thought with mixed
languages, long paragraphs, and code blocks"; near-copies of one answer add nothing but
weight to it. Each filter here takes the full response (template prefill + completion) and
returns a plain value; `text_checks` runs the enabled ones of a `FiltersConfig` in order.
No torch, no tokenizer: the filters can be tested, and rerun over saved samples, in
milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from r1lab.sample.config import FiltersConfig
from r1lab.text.formats import SPECIAL_TOKEN, TAGS, format_ok, summary_text, think_text
from r1lab.text.language import language_share

CODE_FENCE = "```"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"\w+|[^\w\s]")


def longest_paragraph(text: str) -> int:
    """Characters in the longest paragraph; paragraphs are separated by blank lines.

    >>> longest_paragraph("one line\\nsame paragraph\\n\\nshort")
    23
    """
    return max((len(p.strip()) for p in _PARAGRAPH_BREAK.split(text)), default=0)


def has_code_block(text: str) -> bool:
    """Whether the response opens a fenced code block (```), which R1 dropped from reasoning.

    >>> has_code_block("use ```python\\nprint(1)\\n```"), has_code_block("x = `1`")
    (True, False)
    """
    return CODE_FENCE in text


def single_language(
    text: str, language: str, min_share: float, special_token: str = SPECIAL_TOKEN
) -> bool:
    """At least `min_share` of the letters are in `language`'s script; no letters passes.

    The format's own markup (`<think>`, `<answer>`, the special token) is not language: a
    Chinese response inside English tags is not mixed.

    >>> single_language("we add 2 and 3", "en", 0.95), single_language("we add 所以", "en", 0.95)
    (True, False)
    >>> single_language("<think>三加四等于七</think><answer>7</answer>", "zh", 1.0)
    True
    """
    for markup in (*TAGS, special_token):
        text = text.replace(markup, " ")
    share = language_share(text, language)
    return share is None or share >= min_share


def has_summary(text: str, style: str = "think", special_token: str = SPECIAL_TOKEN) -> bool:
    """Whether a summary follows the reasoning (after `</think>`, or the second delimiter)."""
    return bool(summary_text(text, style, special_token))


def enabled_checks(filters: FiltersConfig) -> dict[str, Callable[[str], bool]]:
    """The enabled text filters by name, in the order they are applied (True = passes).

    Each takes the whole response; the readability filters read the part `filters.scope`
    names: the chain of thought (R1 "filtered out chain-of-thought with mixed languages, long
    paragraphs, and code blocks"; a code answer's final block is not reasoning), or all of it.
    """
    style, token = filters.style, filters.special_token
    checks: dict[str, Callable[[str], bool]] = {}
    if filters.format:
        checks["format"] = lambda text: format_ok(text, style=style, special_token=token)
    if filters.require_summary:
        checks["summary"] = lambda text: has_summary(text, style, token)

    def scoped(text: str) -> str:
        return think_text(text, style, token) if filters.scope == "cot" else text

    if filters.language is not None:
        language, share = filters.language, filters.min_language_share
        checks["language"] = lambda text: single_language(scoped(text), language, share, token)
    if filters.max_paragraph_chars is not None:
        limit = filters.max_paragraph_chars
        checks["paragraph"] = lambda text: longest_paragraph(scoped(text)) <= limit
    if filters.drop_code_blocks:
        checks["code_block"] = lambda text: not has_code_block(scoped(text))
    return checks


def text_checks(text: str, filters: FiltersConfig) -> dict[str, bool]:
    """Each enabled text filter's verdict on `text` (True = passes), in order."""
    return {name: check(text) for name, check in enabled_checks(filters).items()}


# --------------------------------------------------------------------------- duplicates
def dedup_key(text: str) -> str:
    """The text as exact-duplicate detection compares it: case and whitespace aside."""
    return " ".join(text.lower().split())


def shingles(text: str, size: int) -> frozenset[tuple[str, ...]]:
    """The set of `size`-word windows of the lower-cased text (punctuation marks are words).

    A text shorter than `size` words is one shingle, so two short texts still compare.

    >>> sorted(shingles("A b, c", 2))
    [(',', 'c'), ('a', 'b'), ('b', ',')]
    """
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets: nothing tells them apart)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def duplicates(
    texts: Sequence[str], near: float | None = None, shingle_words: int = 3
) -> list[int | None]:
    """For each text, the index of an earlier *kept* text it duplicates, else None.

    Exact duplicates compare `dedup_key`; with `near`, a Jaccard similarity of word shingles
    at or above it counts too. Earlier texts win, so the result is deterministic for an
    ordering (samples by index) and a duplicate never knocks out its original.

    >>> duplicates(["So 2+2 = 4.", "so  2+2 = 4.", "Hence 5."])
    [None, 0, None]
    """
    kept: list[tuple[int, str, frozenset]] = []
    found: list[int | None] = []
    for i, text in enumerate(texts):
        key = dedup_key(text)
        grams = shingles(text, shingle_words) if near is not None else frozenset()
        match = next(
            (
                j
                for j, other_key, other_grams in kept
                if other_key == key or (near is not None and jaccard(grams, other_grams) >= near)
            ),
            None,
        )
        found.append(match)
        if match is None:
            kept.append((i, key, grams))
    return found
