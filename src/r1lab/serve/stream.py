"""Text as it is generated: token ids to text deltas, stop strings, reasoning apart from answer.

A served response is built while the engine samples, one token at a time, and must read the
same as the whole text parsed at the end. Three small state machines do it, each fed in
order and flushed once, so a whole text is just one push and a flush (`split_reasoning`):

- `TokenText`: token ids to new text. A multi-byte character can span tokens, so text ending
  in an incomplete character (decoded as U+FFFD) waits for the next token.
- `StopCut`: OpenAI's `stop`: the text up to the first stop string, without it; text that could
  still turn into a stop string is held back until it can no longer.
- `ReasoningSplit`: the chain of thought (`reasoning_content`) apart from the answer
  (`content`), for both output formats of `text.formats`: `<think>...</think> answer`, and R1's
  `|special_token|reasoning|special_token|summary`. A prefill the prompt already ends with
  (`<think>\\n`, or the delimiter) starts the response inside the reasoning. A response that
  does not open with the tag has no reasoning: all of it is content. Each part is stripped
  of the whitespace at its ends, as DeepSeek's API returns them.
"""

from __future__ import annotations

from typing import Any

from r1lab.text.formats import THINK_CLOSE, THINK_OPEN, OutputFormat

REASONING, CONTENT = "reasoning_content", "content"


class TokenText:
    """Token ids in, the new text they complete out (special tokens skipped, as the engines'
    `Generation.text`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""  # an incomplete character: wait for the rest of it
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text
        return delta


def _held(text: str, marks: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of one of `marks`.

    >>> _held("abc </th", ("</think>",)), _held("abc", ("</think>",))
    (4, 0)
    """
    best = 0
    for mark in marks:
        for size in range(min(len(mark) - 1, len(text)), best, -1):
            if text.endswith(mark[:size]):
                best = size
                break
    return best


class StopCut:
    """The text before the first stop string; `stopped` once one was seen.

    >>> cut = StopCut(("</answer>",))
    >>> cut.push("<answer>4</ans"), cut.push("wer> more"), cut.stopped
    ('<answer>4', '', True)
    """

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits)
            out, self.pending = self.pending[:at], ""
            return out
        cut = len(self.pending) - _held(self.pending, self.stops)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class ReasoningSplit:
    """Generated text in, `(part, text)` pieces out: part is `reasoning_content` or `content`.

    >>> split = ReasoningSplit(OutputFormat("think"), prefill="<think>\\n")
    >>> split.push("2 + 2 = 4.\\n</th") + split.push("ink>\\n\\nIt is 4.") + split.flush()
    [('reasoning_content', '2 + 2 = 4.'), ('content', 'It is 4.')]
    """

    def __init__(self, fmt: OutputFormat, prefill: str = "") -> None:
        think = fmt.style == "think"
        self.open = THINK_OPEN if think else fmt.special_token
        self.close = THINK_CLOSE if think else fmt.special_token
        self.state = REASONING if prefill.rstrip().endswith(self.open) else "start"
        self.buffer = ""
        self.lead = True  # the current part has not started yet: drop leading whitespace

    def push(self, text: str) -> list[tuple[str, str]]:
        self.buffer += text
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                body = self.buffer.lstrip()
                if not body or (self.open.startswith(body) and body != self.open):
                    return out  # nothing yet, or it may still become the opening tag
                if body.startswith(self.open):
                    self.buffer, self.state = body[len(self.open) :], REASONING
                else:
                    self.state = CONTENT
            elif self.state == REASONING:
                end = self.buffer.find(self.close)
                if end < 0:
                    # hold back a partial closing tag and the whitespace before it
                    held = len(self.buffer) - _held(self.buffer, (self.close,))
                    body = self.buffer[:held].rstrip()
                    self._emit(out, body)
                    self.buffer = self.buffer[len(body) :]
                    return out
                self._emit(out, self.buffer[:end].rstrip())
                self.buffer = self.buffer[end + len(self.close) :]
                self.state, self.lead = CONTENT, True
            else:
                self._emit(out, self.buffer)
                self.buffer = ""
                return out

    def flush(self) -> list[tuple[str, str]]:
        """What is left at the end: an unclosed reasoning stays reasoning, stripped."""
        out: list[tuple[str, str]] = []
        part = REASONING if self.state == REASONING else CONTENT
        self._emit(out, self.buffer.rstrip() if part == REASONING else self.buffer, part)
        self.buffer = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str, part: str | None = None) -> None:
        if self.lead:
            text = text.lstrip()
        if text:
            self.lead = False
            out.append((part or self.state, text))


def split_reasoning(text: str, fmt: OutputFormat, prefill: str = "") -> tuple[str, str]:
    """(reasoning_content, content) of a whole response: what the stream would have sent.

    >>> split_reasoning("<think> 2 + 2 </think> <answer>4</answer>", OutputFormat())
    ('2 + 2', '<answer>4</answer>')
    >>> split_reasoning("|special_token| 2 + 2 |special_token| It is 4.", OutputFormat("r1"))
    ('2 + 2', 'It is 4.')
    >>> split_reasoning("Hello!", OutputFormat())
    ('', 'Hello!')
    """
    split = ReasoningSplit(fmt, prefill)
    parts = {REASONING: "", CONTENT: ""}
    for part, piece in split.push(text) + split.flush():
        parts[part] += piece
    return parts[REASONING], parts[CONTENT]
