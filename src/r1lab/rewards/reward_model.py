"""R1's reward models for general prompts (stage 4): a sequence classifier scores a response.

DeepSeek-R1's last RL stage keeps rule rewards for reasoning prompts and scores general
prompts (writing, factual QA, self-cognition), which no rule can check, with reward models:
helpfulness judged on the final summary only, harmlessness on the whole response including the
reasoning. Here both are the `reward_model` reward, configured twice under two term names:

    rewards:
      - {name: helpfulness, reward: reward_model, params: {model: SPEC, scope: summary}}
      - {name: harmlessness, reward: reward_model, params: {model: SPEC2, scope: response}}

The reward returns None for examples with a rule-checkable answer (rules score those), so
the two kinds of reward never mix within one sample. Each model is loaded once per
(spec, dtype) and shared by every term that names it. It is a neural reward, so it can be
hacked; the paper used preference rewards only in the last 400 of 1,700 steps for that reason.
Registered lazily by `r1lab.rewards.LAZY_REWARDS`; torch is imported only to score.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from r1lab.core.errors import UserError, unknown_name
from r1lab.core.models import DTYPES, load_reward_model
from r1lab.rewards.registry import RewardInputs, register_reward
from r1lab.text.formats import SPECIAL_TOKEN, check_style, summary_text

SCOPES = ("summary", "response")
NORMALIZERS = ("sigmoid", "softmax", "raw")


@functools.cache
def cached_reward_model(spec: str, dtype: str) -> tuple[Any, Any]:
    """(classifier, tokenizer) for a spec, loaded once: terms sharing a model share its memory."""
    return load_reward_model(spec, dtype)


def scored_text(
    text: str, scope: str, style: str = "think", special_token: str = SPECIAL_TOKEN
) -> str:
    """The part of a response a reward model judges: the final summary, or all of it.

    >>> scored_text("<think>rude thought</think><answer>Hello!</answer>", "summary")
    'Hello!'
    >>> scored_text("<think>rude thought</think><answer>Hello!</answer>", "response")
    '<think>rude thought</think><answer>Hello!</answer>'
    """
    if scope not in SCOPES:
        raise unknown_name("reward model scope", scope, SCOPES)
    return text if scope == "response" else summary_text(text, style, special_token)


def rm_input(tokenizer: Any, prompt: str, response: str) -> tuple[str, bool]:
    """(text, add_special_tokens) the reward model reads for one prompt and response.

    A chat reward model is trained on conversations, so it gets the user turn and the
    assistant turn through its own chat template (which adds its special tokens); a model
    without a template reads the prompt and response one after the other.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False), False
    return f"{prompt}\n\n{response}", True


def max_input_tokens(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position limit, or the tokenizer's if smaller.

    Tokenizers without a limit report a huge `model_max_length`; it is ignored then.
    """
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(known) if known else 512


def score_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    label: int = 0,
    normalize: str = "sigmoid",
    batch_size: int = 8,
) -> list[float]:
    """One score per (prompt, response), read from logit `label` and normalised.

    `normalize`: `sigmoid` (a one-logit Bradley-Terry RM's preference probability, in (0, 1)),
    `softmax` (a multi-class classifier's probability of `label`), or `raw` (the logit). Inputs
    longer than the model takes are cut at the end (the question is kept: without it neither
    helpfulness nor harm can be judged). Scored in batches of `batch_size`, without gradients.
    """
    import torch

    num_labels = int(model.config.num_labels)
    if not 0 <= label < num_labels:
        raise UserError(f"label {label} is not a class of this reward model (0..{num_labels - 1})")
    pairs = [rm_input(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    limit = max_input_tokens(model, tokenizer)
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        encoded = tokenizer(
            [text for text, _ in chunk],
            add_special_tokens=chunk[0][1],
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
        ).to(model.device)
        with torch.no_grad():
            logits = model(**encoded).logits.float()  # [b, num_labels]
        if normalize == "softmax":
            values = logits.softmax(-1)[:, label]
        elif normalize == "sigmoid":
            values = logits[:, label].sigmoid()
        else:
            values = logits[:, label]
        scores.extend(values.tolist())
    return scores


def check_params(
    model: str = "",
    scope: str = "summary",
    normalize: str = "sigmoid",
    label: int = 0,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
    batch_size: int = 8,
    dtype: str = "float32",
) -> None:
    """Config-time check of the reward's params, before any model loads."""
    if not isinstance(model, str) or not model.strip():
        raise UserError("params.model must name a reward model (a hub id or a local directory)")
    if scope not in SCOPES:
        raise unknown_name("reward model scope", scope, SCOPES)
    if normalize not in NORMALIZERS:
        raise unknown_name("reward model normalizer", normalize, NORMALIZERS)
    for key, value, low in (("label", label, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"params.{key} must be an integer >= {low}, got {value!r}")
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    check_style(style, special_token)


@register_reward("reward_model", check=check_params)
def reward_model_reward(
    inputs: RewardInputs,
    model: str,
    scope: str = "summary",
    normalize: str = "sigmoid",
    label: int = 0,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
    batch_size: int = 8,
    dtype: str = "float32",
) -> list[float | None]:
    """A reward model's score of each response to a general prompt; None where rules apply.

    `model` is any model spec of a sequence classifier (`tiny:llama` for tests); `scope`
    picks what it reads (`scored_text`): `summary` for helpfulness, `response` for
    harmlessness; `style`/`special_token` say where the summary starts. The model is loaded
    on the first batch that has a general prompt, never for a batch of reasoning prompts.
    """
    check_params(model, scope, normalize, label, style, special_token, batch_size, dtype)
    values: list[float | None] = [None] * len(inputs.completions)
    general = [i for i, example in enumerate(inputs.examples) if not example.checkable]
    if not general:
        return values
    classifier, tokenizer = cached_reward_model(model, dtype)
    texts = inputs.texts()
    scores = score_texts(
        classifier,
        tokenizer,
        [inputs.examples[i].prompt for i in general],
        [scored_text(texts[i], scope, style, special_token) for i in general],
        label,
        normalize,
        batch_size,
    )
    for i, score in zip(general, scores, strict=True):
        values[i] = score
    return values
