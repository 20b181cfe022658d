"""Prompt templates: the paper's R1-Zero template, chat templates, and the eval math style.

A template turns a bare question into the exact text the model continues, and reports the
`prefill`: text placed at the start of the assistant turn (e.g. `<think>\\n`). Rewards see
`prefill + completion`, so a strict format reward still counts a `<think>` the template wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from r1lab.core.config import at_least, choice
from r1lab.core.errors import unknown_name
from r1lab.core.types import Example

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)

THINK_SYSTEM = (
    "You are a helpful assistant. First think about the reasoning process step by step, then "
    "give the answer. Put the reasoning inside <think> </think> tags and the final answer "
    "inside <answer> </answer> tags, i.e. <think> reasoning here </think> "
    "<answer> answer here </answer>."
)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

THINK_PREFILL = "<think>\n"


@dataclass(frozen=True)
class Prompt:
    """What the model is asked to continue.

    `text` already ends with `prefill`; `add_special_tokens` is False for chat-rendered text,
    which carries its own special tokens. `messages` are the (role, content) chat messages a
    chat template rendered into `text`: what a model behind an endpoint is sent instead.
    """

    text: str
    prefill: str = ""
    add_special_tokens: bool = True
    messages: tuple[tuple[str, str], ...] = ()


def worked_completion(example: Example) -> str:
    """The R1-format answer to a solved example: reasoning in <think>, answer in <answer>."""
    reasoning = example.solution or f"The answer is {example.answer}."
    return f"<think> {reasoning} </think> <answer> {example.answer} </answer>"


SHOT_STYLES = ("brief", "solution")


@dataclass
class TemplateConfig:
    """The `template:` section of a recipe: how a question becomes the text the model sees."""

    name: str = "r1_zero"
    shots: int = 0  # worked examples from the task's train split shown before the question
    shot_style: str = "brief"  # "brief" (one-line derivation) or "solution" (full worked one)

    def validate(self) -> None:
        at_least("template.shots", self.shots, 0)
        choice("template.shot_style", self.shot_style, SHOT_STYLES)


def pick_shots(task: Any, examples: Sequence[Example], count: int, style: str) -> list[Example]:
    """The first `count` checkable training examples as worked shots, reasoning as `style` asks.

    "solution" shows the task's full worked solution (when it has one); "brief" shows a
    one-line derivation (`Task.brief`), which keeps a small model's answers short. General
    prompts (no answer, see `Example.checkable`) have nothing to show and are passed over.
    """
    if style not in SHOT_STYLES:
        raise unknown_name("shot style", style, SHOT_STYLES)
    shots = [ex for ex in examples if ex.checkable][:count]
    if style == "brief":
        return [replace(ex, solution=task.brief(ex)) for ex in shots]
    return shots


Exchange = tuple[str, str]  # an earlier (user, assistant) turn of the same conversation


def _r1_zero(
    question: str, tokenizer: Any, shots: Sequence[Example], history: Sequence[Exchange] = ()
) -> Prompt:
    """Shots each in a template of their own; a conversation's earlier turns continue its
    template as `User: ... Assistant: ...`."""
    head = ""
    for shot in shots:
        head += R1_ZERO.format(prompt=shot.prompt) + " " + worked_completion(shot) + "\n"
    if not history:
        return Prompt(head + R1_ZERO.format(prompt=question))
    (first, answer), *later = history
    text = head + R1_ZERO.format(prompt=first) + " " + answer
    for user, assistant in later:
        text += f" User: {user}. Assistant: {assistant}"
    return Prompt(f"{text} User: {question}. Assistant:")


def _chat_messages(
    question: str, shots: Sequence[Example], system: str, history: Sequence[Exchange] = ()
) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        messages.append({"role": "user", "content": shot.prompt})
        messages.append({"role": "assistant", "content": worked_completion(shot)})
    for user, assistant in history:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": question})
    return messages


def template_prefills_think(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template already opens a `<think>` block.

    Some reasoning models' templates (e.g. the R1 distills) end the generation prompt with
    `<think>\\n`; a strict format reward that ignores this would score every sample 0.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return False
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    return text.rstrip().endswith("<think>")


def _render_chat(
    question: str,
    tokenizer: Any,
    shots: Sequence[Example],
    system: str,
    force_think: bool,
    history: Sequence[Exchange] = (),
) -> Prompt:
    messages = _chat_messages(question, shots, system, history)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pairs = tuple((m["role"], m["content"]) for m in messages)
    if template_prefills_think(tokenizer):
        stripped = text.rstrip()
        prefill = text[len(stripped) - len("<think>") :]
        return Prompt(text, prefill, add_special_tokens=False, messages=pairs)
    if force_think:
        return Prompt(text + THINK_PREFILL, THINK_PREFILL, add_special_tokens=False, messages=pairs)
    return Prompt(text, add_special_tokens=False, messages=pairs)


def _chat(
    question: str, tokenizer: Any, shots: Sequence[Example], history: Sequence[Exchange] = ()
) -> Prompt:
    return _render_chat(question, tokenizer, shots, THINK_SYSTEM, False, history)


def _chat_think(
    question: str, tokenizer: Any, shots: Sequence[Example], history: Sequence[Exchange] = ()
) -> Prompt:
    return _render_chat(question, tokenizer, shots, THINK_SYSTEM, True, history)


def _r1_math(
    question: str, tokenizer: Any, shots: Sequence[Example], history: Sequence[Exchange] = ()
) -> Prompt:
    """The R1 README's evaluation style: no system prompt, the boxed instruction, `<think>\\n`."""
    question = f"{question}\n{MATH_INSTRUCTION}"
    return _render_chat(question, tokenizer, shots, "", True, history)


TemplateFn = Callable[..., Prompt]  # (question, tokenizer, shots, history) -> Prompt

TEMPLATES: dict[str, TemplateFn] = {
    "r1_zero": _r1_zero,
    "chat": _chat,
    "chat_think": _chat_think,
    "r1_math": _r1_math,
}


def render(
    name: str,
    question: str,
    tokenizer: Any,
    shots: Sequence[Example] = (),
    history: Sequence[Exchange] = (),
) -> Prompt:
    """Render `question` with template `name`; `shots` are worked examples shown first, then
    `history`, the earlier (user, assistant) turns of the same conversation, as they are."""
    if name not in TEMPLATES:
        raise unknown_name("template", name, TEMPLATES)
    return TEMPLATES[name](question, tokenizer, shots, history)


def check_template(name: str) -> None:
    """Fail at config time on an unknown template name."""
    if name not in TEMPLATES:
        raise unknown_name("template", name, TEMPLATES)
