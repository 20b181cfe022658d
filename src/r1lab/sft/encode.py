"""SFT rows as token ids: `[rendered prompt | completion | EOS]`, the completion the target;
a multi-turn conversation gives one such sequence per assistant turn.

The prompt is rendered by the same template as at generation time, and prompt and completion
are tokenized separately, as the rollout engine sees them; a completion whose template already
prefilled its start (`<think>\n`) is stripped of it. `data_hash` fingerprints the encoded data,
so a resume that would train on other data is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from r1lab.core.errors import UserError
from r1lab.text.conversations import SFTRow
from r1lab.text.formats import strip_thinking
from r1lab.text.templates import render


@dataclass(frozen=True)
class Encoded:
    """One training sequence: `ids[start:]` (completion + EOS) are the loss targets."""

    ids: tuple[int, ...]
    start: int

    @property
    def targets(self) -> int:
        return len(self.ids) - self.start


def add_special_token(model: Any, tokenizer: Any, token: str) -> bool:
    """Make `token` one vocabulary entry (and the embeddings one row longer) if it is new.

    It is added as an atomic, *non-skipped* token: `decode(..., skip_special_tokens=True)`
    (what the rollout engines do) keeps it, so samples and rewards still see the delimiter of
    R1's `|special_token|reasoning|special_token|summary` format.
    """
    from tokenizers import AddedToken

    if token in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
    model.resize_token_embeddings(len(tokenizer))
    return True


def strip_prefill(completion: str, prefill: str, row_id: str) -> str:
    """The completion after the text the template already wrote (e.g. `<think>\\n`)."""
    if not prefill or completion.startswith(prefill):
        return completion[len(prefill) :]
    body, core = completion.lstrip(), prefill.strip()
    if core and body.startswith(core):
        return body[len(core) :].lstrip()
    raise UserError(
        f"row {row_id!r}: the template prefills {prefill!r} but the completion starts with "
        f"{completion[:24]!r}; choose a template without a prefill for this data"
    )


def encode_row(
    row: SFTRow, tokenizer: Any, template: str, history: str = "strip"
) -> list[Encoded]:
    """One `[prompt | completion | EOS]` sequence per assistant turn of the row.

    Each turn's context is the conversation before it, rendered as at generation time, its
    earlier assistant turns without their reasoning (`history="strip"`, as R1's chat template
    shows them) or verbatim (`"keep"`); the target is the whole assistant turn. Prompt and
    completion are tokenized separately, as the rollout engine sees them. A completion
    following a prompt that ends without whitespace (the R1-Zero template's `Assistant:`)
    starts with one space, as the worked shots in prompts do.
    """
    turns = row.turns
    shown = [(user, strip_thinking(r) if history == "strip" else r) for user, r in turns]
    return [
        _encode_turn(row.id, user, reply, shown[:i], tokenizer, template)
        for i, (user, reply) in enumerate(turns)
    ]


def _encode_turn(
    row_id: str,
    user: str,
    reply: str,
    context: Sequence[tuple[str, str]],
    tokenizer: Any,
    template: str,
) -> Encoded:
    prompt = render(template, user, tokenizer, history=context)
    completion = strip_prefill(reply, prompt.prefill, row_id)
    if prompt.text and not prompt.text[-1].isspace() and not completion[:1].isspace():
        completion = " " + completion
    prompt_ids = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    if not prompt_ids:
        raise UserError(f"row {row_id!r}: the rendered prompt has no tokens")
    return Encoded(tuple(prompt_ids + completion_ids + [tokenizer.eos_token_id]), len(prompt_ids))


def check_history(tokenizer: Any, template: str, history: str) -> None:
    """`history: keep` needs a template that shows earlier reasoning; some chat templates
    (the R1 distills', Qwen3's) drop it themselves, which would silently undo `keep`."""
    if history != "keep":
        return
    probe = "r1lab-probe-thought"
    text = render(template, "b", tokenizer, history=[("a", f"<think>{probe}</think> c")]).text
    if probe not in text:
        raise UserError(
            f"data.history_thinking is keep, but the {template!r} template of this model drops "
            "the reasoning of earlier turns itself; use strip (what it does anyway)"
        )


def encode_rows(
    rows: Sequence[SFTRow], tokenizer: Any, template: str, max_tokens: int, history: str = "strip"
) -> tuple[list[Encoded], int]:
    """Encoded sequences (one per assistant turn) within `max_tokens`, and how many longer ones
    were dropped."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: SFT teaches the model where to stop")
    check_history(tokenizer, template, history)
    encoded = [seq for row in rows for seq in encode_row(row, tokenizer, template, history)]
    kept = [s for s in encoded if len(s.ids) <= max_tokens]
    return kept, len(encoded) - len(kept)


def data_hash(seqs: Sequence[Encoded]) -> str:
    """Fingerprint of the training sequences: a resume must see the same data."""
    digest = hashlib.sha256()
    for s in seqs:
        digest.update(repr((s.start, s.ids)).encode())
    return digest.hexdigest()[:16]
