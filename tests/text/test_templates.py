"""Templates: the paper's R1-Zero text verbatim, worked-example shots, chat rendering with
the `<think>` instruction, and detection of chat templates that already prefill `<think>`."""

from __future__ import annotations

import copy

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.text.templates import (
    MATH_INSTRUCTION,
    R1_ZERO,
    TEMPLATES,
    THINK_PREFILL,
    THINK_SYSTEM,
    check_template,
    render,
    template_prefills_think,
    worked_completion,
)

# DeepSeek-R1 paper, Table 1, character for character.
PAPER = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: "
)
SHOT = Example(id="s1", prompt="What is 1 + 2?", answer="3", solution="1 + 2 = 3.")

# A reasoning model's chat template (as in the R1 distills) that opens the think block itself.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def thinking_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = THINKING_TEMPLATE
    return tok


def test_r1_zero_is_the_paper_text(tokenizer):
    prompt = render("r1_zero", "What is 2 + 2?", tokenizer)
    assert prompt.text == PAPER + "What is 2 + 2?. Assistant:"
    assert prompt.text.endswith("User: What is 2 + 2?. Assistant:")
    assert R1_ZERO.format(prompt="q") == PAPER + "q. Assistant:"
    assert prompt.prefill == ""
    assert prompt.add_special_tokens is True


def test_r1_zero_shots_show_a_worked_example_first(tokenizer):
    prompt = render("r1_zero", "What is 2 + 2?", tokenizer, shots=[SHOT])
    worked = "User: What is 1 + 2?. Assistant: <think> 1 + 2 = 3. </think> <answer> 3 </answer>"
    assert worked in prompt.text
    assert prompt.text.index(worked) < prompt.text.index("What is 2 + 2?")
    assert prompt.text.endswith("User: What is 2 + 2?. Assistant:")
    assert prompt.text.count(PAPER) == 2


def test_worked_completion_without_a_solution_still_has_both_blocks():
    text = worked_completion(Example(id="x", prompt="p", answer="7"))
    assert text.startswith("<think> ") and "</think> <answer> 7 </answer>" in text


def test_chat_uses_the_tokenizers_chat_template_with_the_system_instruction(tokenizer):
    prompt = render("chat", "What is 2 + 3?", tokenizer)
    expected = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": THINK_SYSTEM},
            {"role": "user", "content": "What is 2 + 3?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.text == expected
    assert "<|im_start|>system\n" + THINK_SYSTEM in prompt.text
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert prompt.prefill == ""
    assert prompt.add_special_tokens is False  # the chat text carries its own special tokens


def test_chat_shots_become_earlier_turns(tokenizer):
    prompt = render("chat", "What is 2 + 3?", tokenizer, shots=[SHOT])
    assert "<|im_start|>user\nWhat is 1 + 2?<|im_end|>" in prompt.text
    assert "<|im_start|>assistant\n" + worked_completion(SHOT) in prompt.text
    assert prompt.text.index("What is 1 + 2?") < prompt.text.index("What is 2 + 3?")


def test_chat_think_prefills_think(tokenizer):
    plain = render("chat", "What is 2 + 3?", tokenizer)
    prompt = render("chat_think", "What is 2 + 3?", tokenizer)
    assert prompt.prefill == THINK_PREFILL == "<think>\n"
    assert prompt.text.endswith(prompt.prefill)
    assert prompt.text == plain.text + THINK_PREFILL


def test_r1_math_follows_the_readme(tokenizer):
    prompt = render("r1_math", "What is 2 + 3?", tokenizer)
    assert THINK_SYSTEM not in prompt.text  # no system prompt of ours
    assert "What is 2 + 3?\n" + MATH_INSTRUCTION in prompt.text
    assert prompt.text.endswith("<think>\n") and prompt.prefill == "<think>\n"


def test_builtin_chat_template_does_not_prefill_think(tokenizer):
    assert template_prefills_think(tokenizer) is False


def test_a_template_that_prefills_think_is_detected(thinking_tokenizer):
    assert template_prefills_think(thinking_tokenizer) is True


@pytest.mark.parametrize("name", ["chat", "chat_think"])
def test_chat_reports_the_templates_own_prefill(thinking_tokenizer, name):
    prompt = render(name, "What is 2 + 3?", thinking_tokenizer)
    assert prompt.prefill == "<think>\n"
    assert prompt.text.endswith("<|im_start|>assistant\n<think>\n")
    assert prompt.text.count("<think>\n") == 1  # not opened twice


def test_tokenizer_without_a_chat_template_does_not_prefill(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    assert template_prefills_think(tok) is False


def test_unknown_template_lists_valid_ones(tokenizer):
    with pytest.raises(UserError) as err:
        render("r1-zero", "q", tokenizer)
    assert "'r1-zero'" in str(err.value)
    assert all(name in str(err.value) for name in TEMPLATES)
    with pytest.raises(UserError, match="chat_think"):
        check_template("nope")
    for name in TEMPLATES:
        check_template(name)
