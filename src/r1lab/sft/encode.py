"""SFT rows as token ids: `[rendered prompt | completion | EOS]`, the completion the target.

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


def encode_row(row: SFTRow, tokenizer: Any, template: str) -> Encoded:
    """`[prompt | completion | EOS]` token ids, the prompt rendered as at generation time.

    Prompt and completion are tokenized separately, as the rollout engine sees them. A
    completion following a prompt that ends without whitespace (the R1-Zero template's
    `Assistant:`) starts with one space, as the worked shots in prompts do.
    """
    prompt = render(template, row.prompt, tokenizer)
    completion = strip_prefill(row.completion, prompt.prefill, row.id)
    if prompt.text and not prompt.text[-1].isspace() and not completion[:1].isspace():
        completion = " " + completion
    prompt_ids = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    if not prompt_ids:
        raise UserError(f"row {row.id!r}: the rendered prompt has no tokens")
    return Encoded(tuple(prompt_ids + completion_ids + [tokenizer.eos_token_id]), len(prompt_ids))


def encode_rows(
    rows: Sequence[SFTRow], tokenizer: Any, template: str, max_tokens: int
) -> tuple[list[Encoded], int]:
    """Encoded rows within `max_tokens`, and how many longer ones were dropped."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: SFT teaches the model where to stop")
    encoded = [encode_row(row, tokenizer, template) for row in rows]
    kept = [s for s in encoded if len(s.ids) <= max_tokens]
    return kept, len(encoded) - len(kept)


def data_hash(seqs: Sequence[Encoded]) -> str:
    """Fingerprint of the training sequences: a resume must see the same data."""
    digest = hashlib.sha256()
    for s in seqs:
        digest.update(repr((s.start, s.ids)).encode())
    return digest.hexdigest()[:16]
