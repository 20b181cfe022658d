"""How a served model sees a conversation: the chat messages of a request as its prompt text.

Two ways, chosen when the server starts (`--template`):
- `model` (the default): the model's own chat template over the client's messages, a system
  message included;
- an r1lab template (`chat`, `chat_think`, `r1_zero`, `r1_math`): the prompt a model trained
  by r1lab saw in training, with its own system instruction, the last user message as the
  question and the earlier turns as the conversation's history. A client's system message is
  refused there (the template has its own), rather than silently dropped.

Either way earlier assistant turns are shown without their reasoning (`strip_thinking`), as
DeepSeek-R1's chat template does; `prefill` (e.g. `<think>\\n`) is appended after the
template's generation prompt, and a template that opens `<think>` itself is detected, so the
stream knows the response starts inside the reasoning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from r1lab.core.errors import UserError, unknown_name
from r1lab.serve.protocol import RequestError
from r1lab.text.formats import strip_thinking
from r1lab.text.templates import TEMPLATES, Prompt, render, template_prefills_think

MODEL_TEMPLATE = "model"


def check_serve_template(name: str) -> None:
    if name != MODEL_TEMPLATE and name not in TEMPLATES:
        raise unknown_name("template", name, [MODEL_TEMPLATE, *TEMPLATES])


class ChatPrompts:
    """Messages -> `Prompt` for one tokenizer, template and prefill."""

    def __init__(self, tokenizer: Any, template: str = MODEL_TEMPLATE, prefill: str = "") -> None:
        check_serve_template(template)
        if template == MODEL_TEMPLATE and not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "this model's tokenizer has no chat template: serve it with --template r1_zero "
                "(or another r1lab template)"
            )
        self.tokenizer, self.template, self.prefill = tokenizer, template, prefill
        self.opens_think = template == MODEL_TEMPLATE and template_prefills_think(tokenizer)

    def render(self, messages: Sequence[dict[str, str]]) -> Prompt:
        shown = [
            {**m, "content": strip_thinking(m["content"])} if m["role"] == "assistant" else m
            for m in messages
        ]
        if self.template == MODEL_TEMPLATE:
            prompt = self._model_template(shown)
        else:
            prompt = self._r1lab_template(shown)
        if self.prefill:
            prompt = Prompt(
                prompt.text + self.prefill, prompt.prefill + self.prefill, prompt.add_special_tokens
            )
        return prompt

    def _model_template(self, messages: list[dict[str, str]]) -> Prompt:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if self.opens_think:
            stripped = text.rstrip()
            return Prompt(text, text[len(stripped) - len("<think>") :], add_special_tokens=False)
        return Prompt(text, add_special_tokens=False)

    def _r1lab_template(self, messages: list[dict[str, str]]) -> Prompt:
        if any(m["role"] == "system" for m in messages):
            raise RequestError(
                f"this server renders prompts with r1lab's {self.template!r} template, which "
                "sets its own system prompt: send no system message",
                "messages",
            )
        roles = [m["role"] for m in messages]
        if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
            raise RequestError(
                "messages must alternate user and assistant turns, starting and ending with a "
                f"user turn, got roles {roles}",
                "messages",
            )
        contents = [m["content"] for m in messages]
        history = list(zip(contents[:-1:2], contents[1::2], strict=True))
        return render(self.template, contents[-1], self.tokenizer, history=history)

    def raw(self, text: str) -> Prompt:
        """A completion's prompt: the text as it is (with the tokenizer's own start token)."""
        return Prompt(text)

    def count(self, prompt: Prompt) -> int:
        """Prompt tokens, as the engine will encode them."""
        ids = self.tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids
        return len(ids)
