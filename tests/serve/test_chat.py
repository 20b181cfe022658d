"""`r1lab chat` (serve/chat.py): the thinking shown apart from the answer (or hidden), many
turns with earlier answers carried without their reasoning, /reset, and a clean exit."""

from __future__ import annotations

import pytest
from rich.console import Console
from servers import ScriptedEngine, scripted

from r1lab.serve import chat as chat_module
from r1lab.serve import server
from r1lab.serve.protocol import Sampling
from r1lab.serve.server import ServeConfig

REPLY = "Let me add: 2 + 2 = 4.\n</think>\n\nThe answer is 4."


@pytest.fixture
def talk(tokenizer, monkeypatch):
    """Run a chat with scripted replies over `lines`; (screen text, messages each turn saw)."""

    def run(lines: list[str], hide: bool = False) -> tuple[str, list]:
        served = scripted(tokenizer, ScriptedEngine(tokenizer, REPLY), prefill="<think>\n")
        seen = []
        render = served.prompts.render
        served.prompts.render = lambda messages: seen.append(list(messages)) or render(messages)
        monkeypatch.setattr(server, "build_served", lambda config: served)
        console = Console(record=True, width=200, force_terminal=False)
        answers = iter(lines)

        def ask(prompt: str) -> str:
            try:
                return next(answers)
            except StopIteration:
                raise EOFError from None

        chat_module.chat(
            ServeConfig("tiny:llama"), Sampling(max_tokens=64), hide, None, ask, console
        )
        return console.export_text(), seen

    return run


def test_the_thinking_is_shown_apart_and_later_turns_carry_only_the_answers(talk):
    screen, seen = talk(["What is 2 + 2?", "And doubled?", "/exit"])
    assert "thinking: Let me add: 2 + 2 = 4." in screen
    assert "scripted: The answer is 4." in screen
    assert seen[1] == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4."},
        {"role": "user", "content": "And doubled?"},
    ]


def test_hidden_thinking_shows_only_how_long_and_reset_starts_over(talk):
    screen, seen = talk(["What is 2 + 2?", "/reset", "Hi"], hide=True)
    assert "Let me add" not in screen and "(thought for 22 characters)" in screen
    assert "(conversation cleared)" in screen
    assert seen[1] == [{"role": "user", "content": "Hi"}]  # the reset forgot the first turn
