"""How a served model sees a conversation (serve/prompts.py): earlier answers without their
reasoning, r1lab's templates exactly as in training, refusals for what a template cannot show."""

from __future__ import annotations

import pytest

from r1lab.core.errors import UserError
from r1lab.serve.prompts import ChatPrompts
from r1lab.serve.protocol import RequestError
from r1lab.text.templates import render

TURNS = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>2 + 2 = 4, a secret</think> <answer>4</answer>"},
    {"role": "user", "content": "And 3 + 3?"},
]


def test_earlier_answers_are_shown_without_their_reasoning(tokenizer):
    text = ChatPrompts(tokenizer).render(TURNS).text
    assert "<answer>4</answer>" in text and "a secret" not in text


def test_an_r1lab_template_renders_what_training_saw_plus_the_prefill(tokenizer):
    prompt = ChatPrompts(tokenizer, "chat_think").render(TURNS)
    expected = render(
        "chat_think", "And 3 + 3?", tokenizer, history=[("What is 2 + 2?", "<answer>4</answer>")]
    )
    assert prompt == expected and prompt.prefill == "<think>\n"
    forced = ChatPrompts(tokenizer, prefill="<think>\n").render(TURNS[:1])
    assert forced.text.endswith("<think>\n") and forced.prefill == "<think>\n"


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([{"role": "system", "content": "Be brief."}, TURNS[0]], "send no system message"),
        ([TURNS[0], TURNS[0]], "must alternate user and assistant turns"),
    ],
)
def test_an_r1lab_template_refuses_what_it_cannot_show(tokenizer, messages, fragment):
    with pytest.raises(RequestError, match=fragment):
        ChatPrompts(tokenizer, "chat").render(messages)


def test_an_unknown_template_is_named_with_the_valid_ones(tokenizer):
    with pytest.raises(UserError, match="unknown template 'x'; valid templates: chat, chat_think"):
        ChatPrompts(tokenizer, "x")
