"""Text as it streams (serve/stream.py): pieces add up to what the whole text gives, however
the text is cut; stop strings never leak; reasoning apart from the answer in both formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lab.serve.stream import (
    CONTENT,
    REASONING,
    ReasoningSplit,
    StopCut,
    TokenText,
    split_reasoning,
)
from r1lab.text.formats import OutputFormat

THINK, R1 = OutputFormat("think"), OutputFormat("r1")


def streamed(text: str, cuts: list[int], fmt: OutputFormat, prefill: str = "") -> tuple[str, str]:
    """Feed `text` cut at `cuts` and join the pieces per part."""
    split = ReasoningSplit(fmt, prefill)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [p for a, b in zip(bounds, bounds[1:], strict=False) for p in split.push(text[a:b])]
    joined = {REASONING: "", CONTENT: ""}
    for part, piece in pieces + split.flush():
        joined[part] += piece
    return joined[REASONING], joined[CONTENT]


@pytest.mark.parametrize(
    "text, fmt, prefill, expected",
    [
        (
            "<think>\n2 + 2 = 4\n</think>\n\n<answer>4</answer>",
            THINK,
            "",
            ("2 + 2 = 4", "<answer>4</answer>"),
        ),
        ("2 + 2 = 4\n</think>\nIt is 4.", THINK, "<think>\n", ("2 + 2 = 4", "It is 4.")),
        ("|special_token| 2 + 2 = 4 |special_token| It is 4.", R1, "", ("2 + 2 = 4", "It is 4.")),
        ("2 + 2 = 4 |special_token| It is 4.", R1, "|special_token|", ("2 + 2 = 4", "It is 4.")),
        ("Hello there.", THINK, "", ("", "Hello there.")),
        ("<think> still going", THINK, "", ("still going", "")),
        ("<thin", THINK, "", ("", "<thin")),
        ("a < b </think> yes", THINK, "<think>", ("a < b", "yes")),
    ],
)
def test_whole_responses_split_into_reasoning_and_answer(text, fmt, prefill, expected):
    assert split_reasoning(text, fmt, prefill) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            ("<think>\n2 + 2 = 4\n</think>\n\n<answer>4</answer>", THINK, ""),
            ("first\nthen </think> answer </think> more", THINK, "<think>\n"),
            ("|special_token| a b \n|special_token| summary |special_token|", R1, ""),
            ("  <thinking is not a tag", THINK, ""),
            ("plain text with </think> inside", THINK, ""),
        ]
    ),
    st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_cutting_of_the_stream_gives_the_whole_texts_split(case, cuts):
    text, fmt, prefill = case
    assert streamed(text, cuts, fmt, prefill) == split_reasoning(text, fmt, prefill)


def test_reasoning_streams_before_the_closing_tag_arrives():
    split = ReasoningSplit(THINK, prefill="<think>\n")
    assert split.push("Let me add. ") == [(REASONING, "Let me add.")]
    assert split.push("2 + 2 = 4 </th") == [(REASONING, " 2 + 2 = 4")]  # the tag is held back
    assert split.push("ink> 4") == [(CONTENT, "4")]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_a_stop_string_is_cut_wherever_the_text_was_split(cuts):
    text = "<answer>4</answer> and more"
    cut = StopCut(("</answer>", "zzz"))
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    out = "".join(cut.push(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    assert out + cut.flush() == "<answer>4" and cut.matched == "</answer>"


def test_text_that_only_starts_like_a_stop_string_is_sent_once_it_cannot_be_one():
    cut = StopCut(("</answer>",))
    assert cut.push("a </an") == "a "
    assert cut.push("d") == "</and"
    assert cut.flush() == "" and not cut.stopped


def test_token_text_adds_up_to_the_decoded_completion(tokenizer):
    ids = tokenizer("Héllo wörld — 2 + 2 = 4 ✓", add_special_tokens=False).input_ids
    text = TokenText(tokenizer)
    pieces = [text.push(i) for i in ids]
    assert "".join(pieces) + text.flush() == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)
