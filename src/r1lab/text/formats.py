"""The two output formats of the recipe, parsed in one place.

- `think` (R1-Zero): `<think> reasoning </think> <answer> answer </answer>`, what the R1-Zero
  template asks for and the `format` reward checks by default;
- `r1` (R1's readable cold-start format): `|special_token|<reasoning>|special_token|<summary>`,
  the delimiter configurable (`sft.data` renders it, `SPECIAL_TOKEN` is its default).

Each function takes `style` ("think" or "r1") and, for `r1`, the `special_token`, so rewards,
filters and metrics judge a response by the format the run actually trains. The answer inside
an `r1` summary is found by the tasks' usual extraction (`\\boxed{}`), so "The answer is
\\boxed{7}." grades like `<answer>7</answer>`. Plain text in, plain values out: no torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from r1lab.core.errors import UserError, unknown_name

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
SPECIAL_TOKEN = "|special_token|"
STYLES = ("think", "r1")
_TAG_RE = re.compile("|".join(map(re.escape, TAGS)))


def check_style(style: str, special_token: str = SPECIAL_TOKEN) -> None:
    """A known style and a usable delimiter, else a UserError saying what is valid."""
    if style not in STYLES:
        raise unknown_name("format style", style, STYLES)
    if not isinstance(special_token, str) or not special_token.strip():
        raise UserError(f"special_token must be a non-empty string, got {special_token!r}")
    if special_token != special_token.strip():
        raise UserError(f"special_token must not start or end with spaces: {special_token!r}")


@dataclass(frozen=True)
class OutputFormat:
    """The format a run's responses are trained in and judged by: evaluation, the GRPO
    metrics and SFT's cleaned samples all check the run's own format, never a fixed one."""

    style: str = "think"
    special_token: str = SPECIAL_TOKEN

    def ok(self, text: str) -> bool:
        return format_ok(text, style=self.style, special_token=self.special_token)


THINK = OutputFormat()
"""The R1-Zero format, the default wherever a run names no other."""


# --------------------------------------------------------------------------- think style


def _think_format_ok(text: str, allow_trailing: bool) -> bool:
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    body = text.lstrip()
    if not body.startswith(THINK_OPEN):
        return False
    think_end, answer_start, answer_end = (body.index(t) for t in TAGS[1:])
    if not think_end < answer_start < answer_end:
        return False
    if body[think_end + len(THINK_CLOSE) : answer_start].strip():
        return False
    if not body[answer_start + len(ANSWER_OPEN) : answer_end].strip():
        return False
    return allow_trailing or not body[answer_end + len(ANSWER_CLOSE) :].strip()


def _think_tag_score(text: str, trailing_penalty: float) -> float:
    position = {tag: text.index(tag) for tag in TAGS if text.count(tag) == 1}
    credit = 0.0
    for k, tag in enumerate(TAGS):
        if tag not in position:
            continue
        in_order = all(
            (position[other] < position[tag]) == (j < k)
            for j, other in enumerate(TAGS)
            if other in position and other != tag
        )
        if not in_order or (tag == THINK_OPEN and not text.lstrip().startswith(THINK_OPEN)):
            continue
        value = 0.25
        if tag == ANSWER_CLOSE:
            trailing = text[position[tag] + len(tag) :].strip()
            value = max(0.0, value - trailing_penalty * len(trailing))
        credit += value
    return round(credit, 12)


def _think_reasoning(text: str) -> str:
    start = text.find(THINK_OPEN)
    begin = 0 if start < 0 else start + len(THINK_OPEN)
    end = text.find(THINK_CLOSE, begin)
    inner = text[begin:] if end < 0 else text[begin:end]
    return _TAG_RE.sub(" ", inner)


# --------------------------------------------------------------------------- r1 style


def r1_parts(text: str, special_token: str = SPECIAL_TOKEN) -> tuple[str, str] | None:
    """(reasoning, summary) of a response in exactly the `r1` format, else None.

    The response must open with the delimiter (leading whitespace is fine) and contain it
    exactly twice; the parts are returned stripped.

    >>> r1_parts("|special_token|\\n2 + 2 = 4\\n|special_token|\\nThe answer is 4.")
    ('2 + 2 = 4', 'The answer is 4.')
    >>> r1_parts("2 + 2 = 4 |special_token| 4") is None
    True
    """
    body = text.lstrip()
    if not body.startswith(special_token) or body.count(special_token) != 2:
        return None
    _, reasoning, summary = body.split(special_token)
    return reasoning.strip(), summary.strip()


def _r1_tag_score(text: str, special_token: str) -> float:
    count = text.count(special_token)
    if count == 0 or count > 2:
        return 0.0
    credit = 0.5 if text.lstrip().startswith(special_token) else 0.0
    if count == 2 and text.rsplit(special_token, 1)[1].strip():
        credit += 0.5
    return credit


def _r1_reasoning(text: str, special_token: str) -> str:
    first = text.find(special_token)
    if first < 0:
        return text
    if text[:first].strip():  # text before a lone delimiter: the prefill opened the reasoning
        return text[:first]
    begin = first + len(special_token)
    end = text.find(special_token, begin)
    return text[begin:] if end < 0 else text[begin:end]


# --------------------------------------------------------------------------- either style


def format_ok(
    text: str,
    allow_trailing: bool = False,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> bool:
    """Whether `text` is exactly in the strict format of `style`.

    `think`: `<think>...</think> <answer>...</answer>` and nothing else. Leading whitespace and
    whitespace between the blocks are fine; each tag must appear exactly once (so nested or
    repeated blocks fail); the answer must not be empty (an empty think block is allowed: the
    format says where reasoning goes, not how much); anything but whitespace after `</answer>`
    fails unless `allow_trailing`.
    `r1`: `special_token reasoning special_token summary` (see `r1_parts`) with a non-empty
    summary; the summary is free text, so `allow_trailing` does not apply.

    >>> format_ok("<think>1+1 is 2</think>\\n<answer>2</answer>\\n")
    True
    >>> format_ok("<think>hm</think><answer>2</answer> and more")
    False
    >>> format_ok("<think>x</think><answer> </answer>")
    False
    >>> format_ok("|special_token|1+1 is 2|special_token|The answer is \\\\boxed{2}.", style="r1")
    True
    """
    if style == "r1":
        parts = r1_parts(text, special_token)
        return parts is not None and bool(parts[1])
    return _think_format_ok(text, allow_trailing)


def tag_score(
    text: str,
    trailing_penalty: float = 0.001,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> float:
    """Partial format credit in [0, 1], a gradient toward the format before it is met.

    `think`: 0.25 per well-placed tag. A tag is well placed when it appears exactly once and
    sits in the order `<think>` < `</think>` < `<answer>` < `</answer>` relative to every
    other tag that also appears exactly once (tags that are missing or repeated earn nothing
    and constrain nothing). In addition `<think>` must open the response (only whitespace
    before it), and `</answer>` loses `trailing_penalty` per non-whitespace character after it
    (at most its whole 0.25), so the model learns to stop after answering.
    `r1`: 0.5 for a delimiter opening the response and 0.5 for a second one followed by a
    summary; a delimiter repeated more than twice earns nothing.

    >>> tag_score("<think>a</think><answer>2</answer>"), tag_score("<think>a</think> 2")
    (1.0, 0.5)
    >>> tag_score("<answer>2</answer>"), tag_score("<think>a</think><answer>2</answer>" + "x" * 100)
    (0.5, 0.9)
    >>> tag_score("|special_token| a", style="r1"), tag_score("a |special_token| 2", style="r1")
    (0.5, 0.0)
    """
    if style == "r1":
        return _r1_tag_score(text, special_token)
    return _think_tag_score(text, trailing_penalty)


def think_text(text: str, style: str = "think", special_token: str = SPECIAL_TOKEN) -> str:
    """The chain of thought of a response: what `language_consistency` judges.

    `think`: what lies inside `<think>...</think>`. An unclosed `<think>` runs to the end (a
    truncated thought is still thought); a lone `</think>` closes text that began at the start
    (the prefill opened it); with neither tag the whole response is the thought. Any of the
    four tags left inside are removed. `r1`: the text between the two delimiters, by the same
    rules (an unclosed one runs to the end; text before a lone one is the thought).

    >>> think_text("<think>a b</think><answer>c</answer>"), think_text("a b</think>c")
    ('a b', 'a b')
    >>> think_text("|special_token|a b|special_token|c", style="r1")
    'a b'
    """
    if style == "r1":
        return _r1_reasoning(text, special_token)
    return _think_reasoning(text)


def strip_thinking(text: str, special_token: str = SPECIAL_TOKEN) -> str:
    """A response without its reasoning, as an earlier turn of a conversation is shown: what
    follows the last `</think>`, or the second delimiter of R1's readable format; a response
    without reasoning as it is. DeepSeek-R1's chat template drops earlier turns' reasoning the
    same way, so a multi-turn context stays short.

    >>> strip_thinking("<think>2 + 2 = 4</think> <answer>4</answer>")
    '<answer>4</answer>'
    >>> strip_thinking("|special_token| 2 + 2 |special_token| It is 4."), strip_thinking("Hi!")
    ('It is 4.', 'Hi!')
    """
    if THINK_CLOSE in text:
        return text.rpartition(THINK_CLOSE)[2].strip()
    parts = text.split(special_token, 2)
    return parts[2].strip() if len(parts) == 3 and not parts[0].strip() else text


def summary_text(text: str, style: str = "think", special_token: str = SPECIAL_TOKEN) -> str:
    """The final summary a reader sees after the reasoning: what helpfulness is judged on.

    `think`: everything after the last `</think>`, answer tags removed (the R1-Zero format's
    answer block, or the free-text summary of R1's chat style); `r1`: everything after the
    second delimiter. A response whose reasoning never closed has no summary: "".

    >>> summary_text("<think>a</think> <answer>It is 2.</answer>")
    'It is 2.'
    >>> summary_text("|special_token|a|special_token| It is 2.", style="r1")
    'It is 2.'
    >>> summary_text("<think>still thinking")
    ''
    """
    if style == "r1":
        parts = text.split(special_token, 2)
        return parts[2].strip() if len(parts) == 3 else ""
    head, close, tail = text.rpartition(THINK_CLOSE)
    if not close:
        return ""
    return _TAG_RE.sub(" ", tail).strip()


def join_reasoning(reasoning: str, content: str, fmt: OutputFormat = THINK) -> str:
    """One response in `fmt` from an API's two fields (`reasoning_content`, `content`): what an
    endpoint model's answer is graded as, so its format is judged like a local model's.

    >>> join_reasoning("2 + 2 = 4", "<answer>4</answer>")
    '<think>\\n2 + 2 = 4\\n</think>\\n<answer>4</answer>'
    >>> join_reasoning("2 + 2 = 4", "It is 4.", OutputFormat("r1"))
    '|special_token|\\n2 + 2 = 4\\n|special_token|\\nIt is 4.'
    >>> join_reasoning("", "Hello!")
    'Hello!'
    """
    if not reasoning:
        return content
    if fmt.style == "r1":
        token = fmt.special_token
        return f"{token}\n{reasoning}\n{token}\n{content}"
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{content}"
