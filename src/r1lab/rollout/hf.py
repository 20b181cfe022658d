"""Rollouts with `transformers.generate`: works for any causal LM, on CPU or GPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from r1lab.core.models import compute_context
from r1lab.rollout.base import (
    Generation,
    SamplingParams,
    TokenCallback,
    eos_token_ids,
)
from r1lab.text.templates import Prompt


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int]]:
    """Token ids of each rendered prompt, keeping the last `max_tokens` (the question end)."""
    ids = []
    for prompt in prompts:
        tokens = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids
        ids.append(tokens[-max_tokens:])
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad rows into (input_ids, attention_mask), both [B, T]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def cut_completion(
    tokens: list[int], eos_ids: set[int], text_of: Any, stop: Sequence[str]
) -> tuple[list[int], bool]:
    """Trim generated tokens after the first EOS (kept) or the first stop string."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1], True
    if stop:
        for i in range(len(tokens)):
            if any(s in text_of(tokens[max(0, i - 16) : i + 1]) for s in stop):
                return tokens[: i + 1], True
    return tokens, False


class _RowStreamer:
    """`generate`'s streamer interface for a whole batch: each row's new token goes to
    `on_token(first_row + row, token)` until the row has sampled an EOS token (later ones are
    padding). `generate` cannot end a single row, so `on_token`'s answer is not used."""

    def __init__(self, on_token: TokenCallback, first_row: int, eos_ids: set[int]) -> None:
        self.on_token, self.first_row, self.eos_ids = on_token, first_row, eos_ids
        self.prompt_seen, self.done = False, set()

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call hands over the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if row not in self.done:
                self.on_token(self.first_row + row, token)
                if token in self.eos_ids:
                    self.done.add(row)

    def end(self) -> None:
        pass


class HFEngine:
    """`model.generate` with left-padded batches; `n` samples per prompt share one batch.

    `compute_dtype` (e.g. "bfloat16") runs generation under autocast, as training does.
    `keep_weights` is accepted for the common engine options; this engine holds no copies.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_prompt_tokens: int = 512,
        compute_dtype: str | None = None,
        keep_weights: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.compute_dtype = compute_dtype or "float32"
        self.eos_ids = set(eos_token_ids(model, tokenizer))

    def sync_weights(self, model: Any) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        on_token: TokenCallback | None = None,
    ) -> list[list[Generation]]:
        """[P][n] generations; `on_token` sees each row's tokens as they are sampled."""
        if params.seeds is not None:  # `generate` has one RNG: one call per seeded prompt
            device = next(self.model.parameters()).device
            devices = [device.index or 0] if device.type == "cuda" else []
            unseeded = replace(params, seeds=None)
            groups = []
            for index, (prompt, seed) in enumerate(zip(prompts, params.seeds, strict=True)):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    groups += self._generate([prompt], unseeded, on_token, index * params.n)
            return groups
        return self._generate(prompts, params, on_token)

    def _generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        on_token: TokenCallback | None = None,
        first_row: int = 0,
    ) -> list[list[Generation]]:
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        rows = [ids for ids in prompt_ids for _ in range(params.n)]
        input_ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        device = next(self.model.parameters()).device
        sample = params.temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if on_token is not None:
            kwargs.update(streamer=_RowStreamer(on_token, first_row, self.eos_ids))
        was_training = self.model.training
        self.model.eval()
        with compute_context(self.compute_dtype, device):
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs
            )
        self.model.train(was_training)
        new = out[:, input_ids.shape[1] :].tolist()

        def text_of(toks: list[int]) -> str:
            return self.tokenizer.decode(toks, skip_special_tokens=True)

        result: list[list[Generation]] = [[] for _ in prompts]
        for row, tokens in enumerate(new):
            completion, finished = cut_completion(tokens, self.eos_ids, text_of, params.stop)
            result[row // params.n].append(
                Generation(rows[row], completion, text_of(completion), finished)
            )
        return result
