"""The rule rewards of the recipe: text in, floats out, each one idea of the paper.

`accuracy` (the task's own grader), `format` and its partial-credit shaping `tag_count`,
`language_consistency` (R1 stage 2) and DAPO's `overlong` ramp. Each returns one value per
completion or None where it does not apply; none imports torch or transformers.
"""

from __future__ import annotations

from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.types import Example  # noqa: F401  (the docstring examples use it)
from r1lab.rewards.registry import RewardInputs, register_reward
from r1lab.text.formats import SPECIAL_TOKEN, check_style, format_ok, tag_score, think_text
from r1lab.text.language import check_language, language_consistency


@register_reward("accuracy")
def accuracy_reward(inputs: RewardInputs) -> list[float | None]:
    """1.0 where the task's grader accepts the response, else 0.0; None for general prompts.

    The task's `score` is the same definition of "correct" that evaluation uses, so reward
    and pass@1 cannot disagree. The prefill is included because the answer could begin in it.
    A general prompt (no rule-checkable answer, see `Example.checkable`) is not applicable:
    a reward model scores it instead. The batch is graded in one `Task.score_many` call, so a
    code task runs all its programs across the sandbox's workers at once. Example: with a
    task whose gold for `ex` is "2", completions ["<answer>2</answer>", "<answer>3</answer>"]
    -> [1.0, 0.0].
    """
    task = inputs.task
    if task is None:
        raise UserError("reward 'accuracy' needs a task to grade answers, and none was given")
    checkable = [i for i, example in enumerate(inputs.examples) if example.checkable]
    texts = inputs.texts()
    examples = [inputs.examples[i] for i in checkable]
    correct = task.score_many([texts[i] for i in checkable], examples)
    values: list[float | None] = [None] * len(texts)
    for i, ok in zip(checkable, correct, strict=True):
        values[i] = 1.0 if ok else 0.0
    return values


def _check_style_params(style: str = "think", special_token: str = SPECIAL_TOKEN, **_: Any) -> None:
    """The config-time check of the format-aware rewards' `style` and `special_token`."""
    check_style(style, special_token)


@register_reward("format", check=_check_style_params)
def format_reward(
    inputs: RewardInputs,
    allow_trailing: bool = False,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> list[float | None]:
    """1.0 where `prefill + completion` passes `format_ok` for `style`, else 0.0.

    `style: r1` checks R1's readable format `special_token reasoning special_token summary`
    (what an `r1` cold start teaches) instead of the `<think>`/`<answer>` tags.
    Judging the prefilled text matters: a chat template that already opened `<think>` makes
    the completion start mid-thought, and a check on the completion alone would always be 0.

    >>> ex = Example(id="q", prompt="1+1", answer="2")
    >>> format_reward(RewardInputs(["so 2</think><answer>2</answer>"], [ex], prefill="<think>\\n"))
    [1.0]
    >>> format_reward(RewardInputs(["so 2</think><answer>2</answer>"], [ex]))
    [0.0]
    """
    check_style(style, special_token)
    return [
        1.0 if format_ok(t, allow_trailing, style, special_token) else 0.0 for t in inputs.texts()
    ]


@register_reward("tag_count", check=_check_style_params)
def tag_count_reward(
    inputs: RewardInputs,
    trailing_penalty: float = 0.001,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> list[float | None]:
    """`tag_score` of `prefill + completion`: a gradient toward the format before it is met.

    A small model that never emits the full format scores 0 on `format` for every sample, so
    the group advantages are all zero and nothing is learned; partial credit fixes that.

    >>> ex = Example(id="q", prompt="1+1", answer="2")
    >>> inputs = RewardInputs(["2</think>", "2</think><answer>2"], [ex, ex], prefill="<think>")
    >>> tag_count_reward(inputs)
    [0.5, 0.75]
    """
    check_style(style, special_token)
    return [tag_score(t, trailing_penalty, style, special_token) for t in inputs.texts()]


@register_reward("language_consistency", check=_check_style_params)
def language_consistency_reward(
    inputs: RewardInputs,
    language: str | None = None,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> list[float | None]:
    """R1's language-consistency reward: the share of the chain of thought in the target language.

    The chain of thought is found by `think_text` for `style`; the target is `language` if
    given, else `inputs.language`; the share is counted in letters (`text.language`). A
    thought with no letters at all (pure arithmetic, or empty) is consistent and scores 1.0,
    like an all-English one: it is not inconsistent, and scoring it lower would reward
    writing words of any language over writing none.

    >>> ex = Example(id="q", prompt="1+1", answer="2")
    >>> texts = ["<think>we add them 所以</think><answer>2</answer>", "<think>1+1=2</think>"]
    >>> inputs = RewardInputs(texts, [ex, ex])
    >>> language_consistency_reward(inputs), language_consistency_reward(inputs, language="zh")
    ([0.8181818181818182, 1.0], [0.18181818181818182, 1.0])
    """
    target = language or inputs.language
    check_language(target)
    check_style(style, special_token)
    return [
        language_consistency(think_text(t, style, special_token), target) for t in inputs.texts()
    ]


@register_reward("overlong")
def overlong_reward(inputs: RewardInputs, buffer: int | None = None) -> list[float | None]:
    """DAPO's soft overlong punishment, a ramp from 0 to -1 over the last `buffer` tokens.

    With L = `inputs.max_length`, B = `buffer` (default L // 4) and l the completion length:
    0 if l <= L - B; (L - B - l) / B if L - B < l <= L; -1 if l > L. The ramp tells the model
    that running long is bad before truncation cuts its answer off.

    >>> ex = Example(id="q", prompt="1+1", answer="2")
    >>> inputs = RewardInputs(["a"] * 4, [ex] * 4, lengths=[80, 90, 100, 101], max_length=100)
    >>> overlong_reward(inputs, buffer=20)
    [0.0, -0.5, -1.0, -1.0]
    """
    limit, lengths = inputs.max_length, inputs.lengths
    if limit is None or lengths is None:
        raise UserError("reward 'overlong' needs completion lengths and the max generation length")
    size = limit // 4 if buffer is None else buffer
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= limit:
        raise UserError(f"reward 'overlong': buffer must be an integer in 1..{limit}, got {size!r}")
    start = limit - size
    return [0.0 if n <= start else -1.0 if n > limit else (start - n) / size for n in lengths]
