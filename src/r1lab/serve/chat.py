"""`r1lab chat MODEL`: talk to a model in the terminal, its thinking shown apart.

The model runs in this process through the same pieces as `r1lab serve` (prompt rendering,
the batcher's worker thread, the streaming reasoning split), so what you see here is what a
client of the server would get. The chain of thought streams dimmed under `thinking`, the
answer plainly under the model's name; `--hide-thinking` shows only how long it thought.
Each turn is sent with the conversation so far, earlier answers without their reasoning
(the chat template's rule, `serve.prompts`). `/reset` starts over; `/exit`, Ctrl-D or Ctrl-C
leave.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from rich.console import Console
from rich.text import Text

from r1lab.core.console import console as make_console
from r1lab.serve.batching import Job
from r1lab.serve.protocol import RequestError, Sampling
from r1lab.serve.stream import REASONING

EXIT, RESET = ("/exit", "/quit"), "/reset"


async def reply(served: Any, messages: list[dict[str, str]], sampling: Sampling) -> AsyncIterator:
    """The model's answer to `messages`, as (part, text) pieces while it is generated, then
    ("done", finish_reason) ."""
    prompt = served.prompts.render(messages)
    events: asyncio.Queue = asyncio.Queue()
    job = Job(
        prompt,
        sampling,
        events,
        asyncio.get_running_loop(),
        served.tokenizer,
        served.eos_ids,
        served.fmt,
    )
    served.batcher.submit(job)
    try:
        while (event := await events.get())[0] != "end":
            if event[0] == "delta":
                yield event[2], event[3]
            elif event[0] == "done":
                yield "done", event[2]
            else:
                yield "error", event[1]
    finally:
        job.cancelled = True


async def _turn(
    served: Any, messages: list[dict[str, str]], sampling: Sampling, console: Console, hide: bool
) -> str:
    """Show one reply as it streams; returns its answer (what the history keeps)."""
    answer, thought, part_now = "", 0, None
    async for part, text in reply(served, messages, sampling):
        if part in ("done", "error"):
            if part == "error" or text == "length":
                note = text if part == "error" else "(cut at --max-tokens)"
                console.print(Text(f" {note}", style="yellow"), end="")
            continue
        if part != part_now:
            part_now = part
            if part == REASONING and not hide:
                console.print(Text("thinking: ", style="dim italic"), end="")
            elif part != REASONING:
                if thought and hide:
                    console.print(Text(f"(thought for {thought} characters)", style="dim"))
                elif thought:
                    console.print()
                console.print(Text(f"{served.name}: ", style="bold cyan"), end="")
        if part == REASONING:
            thought += len(text)
            if not hide:
                console.print(Text(text, style="dim"), end="", soft_wrap=True)
        else:
            answer += text
            console.print(text, end="", soft_wrap=True, markup=False, highlight=False)
    console.print()
    return answer


async def _session(
    served: Any,
    sampling: Sampling,
    ask: Callable[[str], str],
    console: Console,
    hide: bool,
    system: str | None,
) -> None:
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    loop = asyncio.get_running_loop()
    served.batcher.start()
    try:
        while True:
            try:
                line = (await loop.run_in_executor(None, ask, "you> ")).strip()
            except EOFError:
                return
            if line in EXIT:
                return
            if line == RESET:
                messages = list(start)
                console.print(Text("(conversation cleared)", style="dim"))
                continue
            if not line:
                continue
            try:
                answer = await _turn(
                    served, [*messages, {"role": "user", "content": line}], sampling, console, hide
                )
            except RequestError as err:  # e.g. a system message an r1lab template refuses
                console.print(Text(f"error: {err}", style="red"))
                continue
            messages += [
                {"role": "user", "content": line},
                {"role": "assistant", "content": answer},
            ]
    finally:
        served.batcher.stop()


def chat(
    config: Any,
    sampling: Sampling,
    hide_thinking: bool = False,
    system: str | None = None,
    ask: Callable[[str], str] = input,
    console: Console | None = None,
) -> None:
    """Load `config`'s model (a `ServeConfig`) and talk until the user leaves."""
    from r1lab.serve.server import build_served

    console = console or make_console()  # off a terminal: lines whole, never wrapped
    served = build_served(config)
    console.print(
        Text(f"chatting with {served.name} — /reset starts over, /exit leaves", style="dim"),
        soft_wrap=True,
    )
    try:
        asyncio.run(_session(served, sampling, ask, console, hide_thinking, system))
    except KeyboardInterrupt:
        console.print()
