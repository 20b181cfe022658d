"""A rollout engine built for GRPO's shape: few prompts, many samples of each.

`transformers.generate` prefills every one of the P x G rows, keeps finished rows in the
batch until the longest one ends, and pads them. This engine:
  - prefills each distinct prompt once and shares its KV cache with its G samples;
  - drops finished rows from the decode batch (their cache rows are released);
  - computes logits only for the last position (never [B, T, V]).
The sampling distribution is the same (temperature, top-k, top-p), so it is a drop-in
replacement; `bench/rollout.py` measures it against `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from r1lab.rollout.base import Generation, SamplingParams, eos_token_ids, register_engine
from r1lab.rollout.hf import encode_prompts, left_pad
from r1lab.templates import Prompt


def sample_next(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Draw one token per row from fp32 `logits` [A, V] with temperature/top-k/top-p."""
    if params.temperature <= 0:
        return logits.argmax(-1)  # [A]
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [A, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # [A, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= params.top_p  # [A, V]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)  # [A]


class PrefixEngine:
    """Shared-prefix KV cache decoding with early exit of finished rows."""

    def __init__(self, model: Any, tokenizer: Any, max_prompt_tokens: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_ids = eos_token_ids(model, tokenizer)

    def sync_weights(self, model: Any) -> None:
        self.model = model

    def _stopped(self, tokens: list[int], stop: Sequence[str]) -> bool:
        if not stop:
            return False
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Generation]]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return self._generate(prompts, params)
        finally:
            model.train(was_training)

    def _generate(
        self, prompts: Sequence[Prompt], params: SamplingParams
    ) -> list[list[Generation]]:
        model, n = self.model, params.n
        device = next(model.parameters()).device
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        ids, mask = left_pad(prompt_ids, self.tokenizer.pad_token_id)  # [P, Tp]
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        rows = torch.arange(len(prompts), device=device).repeat_interleave(n)  # [P*n]
        cache.reorder_cache(rows)
        logits = out.logits[:, -1].float().index_select(0, rows)  # [A, V]
        mask = mask.index_select(0, rows)  # [A, Tp + t]
        position = mask.sum(-1)  # [A] position of the next token
        alive = list(range(len(rows)))  # sample index of each row still decoding
        tokens: list[list[int]] = [[] for _ in rows]
        finished = [False] * len(rows)
        eos = torch.tensor(self.eos_ids, device=device)
        for step in range(params.max_new_tokens):
            nxt = sample_next(logits, params)  # [A]
            done = torch.isin(nxt, eos).tolist()
            for row, (sample, token) in enumerate(zip(alive, nxt.tolist(), strict=True)):
                tokens[sample].append(token)
                if done[row] or self._stopped(tokens[sample], params.stop):
                    finished[sample] = done[row] = True
            keep = [row for row, d in enumerate(done) if not d]
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=device)
                cache.reorder_cache(index)
                nxt, mask, position = nxt[index], mask[index], position[index]
                alive = [alive[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            out = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                cache=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1].float()
            position = position + 1
        text_of = self.tokenizer.decode
        result: list[list[Generation]] = [[] for _ in prompts]
        for sample, toks in enumerate(tokens):
            result[sample // n].append(
                Generation(
                    prompt_ids[sample // n],
                    toks,
                    text_of(toks, skip_special_tokens=True),
                    finished[sample],
                )
            )
        return result


register_engine("prefix")(PrefixEngine)
