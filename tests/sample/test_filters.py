"""The readability filters of rejection sampling (filters.py) and the judge's verdict parser
(judge.py): each filter on hand-written texts that pass and texts that fail, exact and near
duplicates, and the enabled filters of a config in their order."""

from __future__ import annotations

import pytest

from r1lab.core.types import Example
from r1lab.sample.config import FiltersConfig
from r1lab.sample.filters import (
    duplicates,
    enabled_checks,
    has_code_block,
    has_summary,
    jaccard,
    longest_paragraph,
    shingles,
    single_language,
    text_checks,
)
from r1lab.sample.judge import judge_inputs, judge_prompt, parse_verdict

GOOD = "<think>\n3 + 4 = 7, and 7 - 4 = 3 checks out.\n</think> <answer> 7 </answer>"
TOKEN = "|special_token|"


@pytest.mark.parametrize(
    "text, language, ok",
    [
        ("We add 3 and 4 to get 7.", "en", True),
        ("Let x = 3, so \\frac{x}{2} = 1.5", "en", True),  # math and LaTeX count for no language
        ("42 + 7 = 49", "en", True),  # no words at all: nothing is mixed
        ("We add them, 所以答案是 7.", "en", False),
        ("Wir addieren 3 und 4.", "de", True),  # German is written in Latin script
        ("我们把三和四相加得到七", "zh", True),
        ("我们相加 then we check", "zh", False),
    ],
)
def test_single_language(text, language, ok):
    assert single_language(text, language, 0.95) is ok


def test_single_language_threshold_is_a_share_of_letters():
    text = "abc def ghi 十"  # 9 of 10 letters Latin
    assert single_language(text, "en", 0.9) and not single_language(text, "en", 0.91)


@pytest.mark.parametrize(
    ("check", "text"),
    [
        ("code_block", "<think>I write f.</think><answer>```python\nf = 1\n```</answer>"),
        ("language", "<think>we add them</think><answer>答案是 7</answer>"),
        ("paragraph", "<think>short</think><answer>" + "x" * 300 + "</answer>"),
    ],
)
def test_readability_filters_read_the_thought_by_default(check, text):
    """R1 filtered the chain of thought: code, another language or a long paragraph in the
    final answer is kept, unless the filters are scoped to the whole response."""
    thought = FiltersConfig(format=False, require_summary=False, max_paragraph_chars=200)
    whole = FiltersConfig(
        format=False, require_summary=False, max_paragraph_chars=200, scope="response"
    )
    assert text_checks(text, thought)[check] is True
    assert text_checks(text, whole)[check] is False


def test_code_in_the_thought_is_dropped_in_either_scope():
    text = "<think>```python\nprint(1)\n```</think><answer>1</answer>"
    for scope in ("cot", "response"):
        filters = FiltersConfig(format=False, require_summary=False, scope=scope)
        assert text_checks(text, filters)["code_block"] is False


def test_paragraphs_are_separated_by_blank_lines():
    assert longest_paragraph("short\n\n" + "x" * 50 + "\n  \nmid") == 50
    assert longest_paragraph("a line\nanother line") == len("a line\nanother line")
    assert longest_paragraph("") == 0


@pytest.mark.parametrize(
    "text, fenced",
    [
        ("```python\nprint(7)\n```", True),
        ("the sum is 7 ``` oops", True),
        ("inline `code` only", False),
        ("no code at all", False),
    ],
)
def test_code_blocks_are_fences(text, fenced):
    assert has_code_block(text) is fenced


@pytest.mark.parametrize(
    "text, style, ok",
    [
        (GOOD, "think", True),
        ("<think>reasoning</think> It is 7.", "think", True),  # a free-text summary counts
        ("<think>reasoning</think>   ", "think", False),
        ("<think>still thinking, never closed", "think", False),
        (f"{TOKEN}\nreasoning\n{TOKEN}\nThe answer is 7.", "r1", True),
        (f"{TOKEN}\nreasoning\n{TOKEN}\n", "r1", False),
        (f"{TOKEN}\nreasoning only", "r1", False),
    ],
)
def test_summary_after_the_reasoning(text, style, ok):
    assert has_summary(text, style, TOKEN) is ok


def test_enabled_checks_follow_the_config_in_order():
    assert list(enabled_checks(FiltersConfig())) == [
        "format",
        "summary",
        "language",
        "paragraph",
        "code_block",
    ]
    off = FiltersConfig(
        format=False,
        require_summary=False,
        language=None,
        max_paragraph_chars=None,
        drop_code_blocks=False,
    )
    assert enabled_checks(off) == {} and text_checks("anything ```", off) == {}


def test_text_checks_pass_a_clean_response_and_name_each_failure():
    filters = FiltersConfig(max_paragraph_chars=100)
    assert all(text_checks(GOOD, filters).values())
    failures = {
        "format": "3 + 4 = 7 </think> <answer> 7 </answer>",
        "language": "<think> 三加四 等于 七 所以 </think> <answer> 7 </answer>",
        "paragraph": "<think> " + "so " * 50 + "</think> <answer> 7 </answer>",
        "code_block": "<think> ```7``` </think> <answer> 7 </answer>",
    }
    for name, text in failures.items():
        checks = text_checks(text, filters)
        assert [k for k, ok in checks.items() if not ok] == [name], (name, checks)


def test_r1_style_checks_the_special_token_format():
    filters = FiltersConfig(style="r1")
    good = f"{TOKEN}\n3 + 4 = 7\n{TOKEN}\nThe answer is \\boxed{{7}}."
    assert all(text_checks(good, filters).values())
    assert not text_checks(GOOD, filters)["format"]


# --------------------------------------------------------------------------- duplicates
def test_exact_duplicates_ignore_case_and_whitespace():
    texts = ["So 3+4 = 7.", "so   3+4 = 7.\n", "So 3+4 = 8.", "So 3+4 = 7."]
    assert duplicates(texts) == [None, 0, None, 0]


def test_near_duplicates_by_shingle_jaccard():
    base = "first we add three and four which gives seven and then we check it by subtracting"
    near = base + " again"  # one word more: most shingles shared
    other = "the product of three and four is twelve because four threes make twelve in all"
    a, b = shingles(base, 3), shingles(near, 3)
    assert jaccard(a, b) == pytest.approx(len(a) / len(b))
    assert duplicates([base, near, other], near=0.8) == [None, 0, None]
    assert duplicates([base, near, other], near=None) == [None, None, None]
    assert duplicates([base, near], near=jaccard(a, b) + 1e-9) == [None, None]


def test_duplicates_compare_with_kept_texts_only():
    a, b, c = (" ".join(f"w{i}" for i in range(n)) for n in (8, 9, 10))
    # Jaccard of 3-word shingles: a~b 6/7, b~c 7/8, a~c 6/8; b is dropped, so c meets a only
    assert duplicates([a, b, c], near=0.8) == [None, 0, None]
    assert duplicates([c, b, a], near=0.8) == [None, 0, None]


def test_short_texts_are_one_shingle():
    assert shingles("Yes", 3) == frozenset({("yes",)})
    assert duplicates(["Yes", "No"], near=0.5) == [None, None]


# --------------------------------------------------------------------------- the judge
@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Correct", True),
        ("**Correct**.", True),
        ("correct - the answer matches", True),
        ("Yes", True),
        ("Incorrect", False),
        ("The answer is incorrect.", False),
        ("not correct", False),
        ("Wrong.", False),
        ("No, it differs", False),
        ("", None),
        ("I cannot tell", None),
        ("Note: hmm", None),
        # read from the end: the verdict line, else the last verdict word
        ("No errors; the prediction is correct", True),
        ("Verdict: incorrect", False),
        (" correct", True),  # what follows the prefilled `Verdict:`
        ("It looks correct at first, but no. Verdict: incorrect", False),
        ("Verdict: correct\nVerdict: incorrect", False),
        ("Wrong units? No, fine. Verdict: **correct**", True),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_judge_inputs_use_the_gold_or_a_reference_field_and_the_summary():
    gold = Example("a1", "What is 3 + 4?", "7")
    response = "<think>3 + 4 = 7</think> <answer> 7 </answer>"
    assert judge_inputs(gold, response, "7") == ("What is 3 + 4?", "7", "7")
    general = Example("g1", "Capital of France?", "", meta={"reference": "Paris"})
    assert judge_inputs(general, "<think>hm</think> It is Paris.", None)[1:] == (
        "Paris",
        "It is Paris.",
    )
    bare = Example("g2", "Write a haiku.", "")
    assert judge_inputs(bare, "no summary here", None) == ("Write a haiku.", "", "")
    assert "Reference answer" not in judge_prompt("Write a haiku.", "", "Leaves fall.")
    assert "Reference answer: Paris" in judge_prompt("Capital?", "Paris", "Paris")
