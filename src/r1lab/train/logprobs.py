"""Per-token log-probabilities (and entropy) of a causal LM without [B, T, V] fp32 logits.

Why: with a 150k vocabulary, B*T = 64k rows of fp32 logits are 39 GB, and autograd keeps a
log-softmax of the same size for the backward pass. Instead we run only the backbone to get
hidden states [B, T, H], keep the rows whose next token is real (padding costs nothing), and
push them through the LM head a chunk of rows at a time. Each chunk is wrapped in
activation checkpointing when gradients are on, so the backward pass recomputes one
[chunk, V] block at a time instead of keeping every chunk's alive.

Left padding: GRPO batches are `[left-padded prompt | right-padded completion]`, so
`position_ids = cumsum(attention_mask) - 1` are passed to the model; without them RoPE
positions are shifted by the pad length and log-probs differ from the unpadded sequence's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from r1lab.train.attention import cpu_training_attention
from r1lab.train.lmhead import FusedHeadLogprobs

CHUNK_LOGITS = 1 << 22  # logits per LM-head chunk (rows = this / vocabulary size)


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int | None = None,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    *,
    checkpoint_chunks: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """log p(input_ids[:, t] | input_ids[:, <t]) for t >= 1, in fp32, differentiable.

    `model` is a Hugging Face causal LM (anything with `get_decoder()` returning the backbone
    and `get_output_embeddings()` returning the LM head). `input_ids`, `attention_mask`:
    [B, T]. With `logits_to_keep=K` only the last K targets are scored (the completion
    tokens of a `[prompt | completion]` batch): output [B, K]; otherwise [B, T-1].
    Positions whose target token is padding (attention_mask 0), or whose previous token is
    (the first token after left padding: it has no context), get log-prob 0 and entropy 0,
    so each row equals the result for the unpadded sequence, shifted.

    `temperature` divides the logits (after any model-specific scaling/softcapping), so the
    log-probs are those of the distribution the rollout sampled from at that temperature;
    PPO ratios against rollout log-probs are only meaningful if both use the same one.
    `with_entropy` also returns the per-token entropy of that distribution (nats).

    Example: `logp, _ = token_logprobs(model, ids, mask, logits_to_keep=completion_len)`
    gives `logp[i, j]` = log-prob of completion token j of sequence i.
    """
    hidden, targets, valid = _completion_hidden_states(
        model, input_ids, attention_mask, logits_to_keep
    )  # [B, K, H], [B, K], [B, K]
    return hidden_logprobs(
        model, hidden, targets, valid, with_entropy, chunk_size, temperature, checkpoint_chunks
    )


def prefix_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    rows: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    *,
    checkpoint_chunks: bool = True,
    checkpoint_layers: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Completion log-probs when many completions share a prompt: [B, Tc] (and entropy).

    GRPO scores G completions of each prompt. Running `[prompt | completion]` rows costs
    G * (Tp + Tc) tokens per group; here each distinct prompt runs once (`prompt_ids` [U, Tp],
    left-padded) and its KV cache is gathered for the rows that continue it (`rows` [B]: the
    prompt index of each completion), so a group costs Tp + G * Tc tokens, forward and
    backward: gradients flow through the shared cache into the prompt's single computation.
    `completion_ids`/`completion_mask` [B, Tc] are right-padded; padded targets get 0.

    `checkpoint_layers` keeps only each decoder layer's input (for the prompts and for the
    completions) and recomputes the layer in the backward pass: activation memory per token
    drops ~30x for one more forward.
    """
    hidden = _shared_prefix_hidden(
        model, prompt_ids, prompt_mask, rows, completion_ids, completion_mask, checkpoint_layers
    )  # [B, Tc, H]
    return hidden_logprobs(
        model,
        hidden,
        completion_ids,
        completion_mask.bool(),
        with_entropy,
        chunk_size,
        temperature,
        checkpoint_chunks,
    )


def _shared_prefix_hidden(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    rows: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    checkpoint_layers: bool,
) -> Tensor:
    """The hidden states [B, Tc, H] that predict each completion token: the prompts' pass
    once, then the completions' pass reading the prompts' K/V through `rows`."""
    decoder = _backbone(model)
    width = prompt_ids.shape[1]
    positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [U, Tp]
    cache = _PromptCache(config=model.config)
    checkpointing = _layer_checkpointing(decoder, checkpoint_layers and torch.is_grad_enabled())
    attention = cpu_training_attention(model, width + completion_ids.shape[1], checkpoint_layers)
    with checkpointing, attention:
        out = decoder(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        prefix = copy.copy(cache)  # the same layers; the prompt replay keeps `cache`'s update
        prefix.__class__ = _ReadOnlyPrefix  # completions read the prompts' K/V, never extend it
        prefix.rows = rows
        last = out[0][:, -1].index_select(0, rows)  # [B, H], predicts completion token 0
        start = prompt_mask.long().sum(-1).index_select(0, rows)  # [B] true prompt lengths
        steps = torch.arange(completion_ids.shape[1], device=completion_ids.device)  # [Tc]
        mask = torch.cat([prompt_mask.index_select(0, rows), completion_mask.long()], dim=1)
        out = decoder(
            input_ids=completion_ids,
            attention_mask=mask,  # [B, Tp + Tc]
            position_ids=start[:, None] + steps,  # [B, Tc]
            past_key_values=prefix,
            cache_position=width + steps,
            use_cache=True,
        )
    return torch.cat([last[:, None], out[0][:, :-1]], dim=1)  # [B, Tc, H]


class _PromptCache(DynamicCache):
    """Stores each layer's prompt K/V on first sight; a replay by activation checkpointing
    (in the backward pass, when the completions are done with the cache) stores nothing."""

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D102
        if layer_idx < len(self.layers) and self.layers[layer_idx].is_initialized:
            return key_states, value_states
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class _ReadOnlyPrefix(DynamicCache):
    """The prompts' K/V [U, ...], read by completion rows (`rows` [B]: each row's prompt).

    `update` returns the row's prompt states + the new ones and stores nothing: a layer's
    forward has no side effects, so activation checkpointing can replay it, and the
    completions' K/V are not kept twice. The gather happens inside each layer, so the
    backward pass folds a layer's [B, ...] prompt-K/V gradient back to [U, ...] at once
    rather than holding all layers' until the prompt pass is reached.
    """

    rows: Tensor

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D102
        layer = self.layers[layer_idx]
        keys = torch.cat([layer.keys.index_select(0, self.rows), key_states], dim=-2)
        return keys, torch.cat([layer.values.index_select(0, self.rows), value_states], dim=-2)


@contextmanager
def _layer_checkpointing(decoder: nn.Module, enabled: bool) -> Iterator[None]:
    """Checkpoint every decoder layer (keeping the prefix cache) for the duration."""
    layers = [m for m in decoder.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not enabled or not layers:
        yield
        return
    names = ("gradient_checkpointing", "_gradient_checkpointing_func", "_can_checkpoint_with_cache")
    saved = [{n: layer.__dict__[n] for n in names if n in layer.__dict__} for layer in layers]
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        layer._can_checkpoint_with_cache = True  # our caches are replay-safe (see above)
    try:
        yield
    finally:
        for layer, before in zip(layers, saved, strict=True):
            for name in names:
                layer.__dict__.pop(name, None)
            layer.__dict__.update(before)


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head; we apply the head ourselves, in chunks."""
    decoder = model.get_decoder()
    if decoder is model:
        raise TypeError(f"{type(model).__name__} has no separate backbone (get_decoder())")
    return decoder


def hidden_logprobs(
    model: nn.Module,
    hidden: Tensor,
    targets: Tensor,
    valid: Tensor,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    checkpoint_chunks: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `targets` [B, K] from the hidden states that predict them [B, K, H].

    Only `valid` rows go through the LM head, `chunk_size` at a time, so neither padding nor
    a [B, K, V] logits tensor ever costs memory. By default a chunk holds CHUNK_LOGITS logits
    (16 MB in fp32): few enough that the several [chunk, V] temporaries of a chunk stay small
    next to the weights, many enough that the head's matmul runs at full speed.
    """
    batch, keep, width = hidden.shape
    rows = valid.reshape(-1).nonzero().squeeze(-1)  # [N] indices of real target tokens
    hidden_rows = hidden.reshape(-1, width).index_select(0, rows)  # [N, H]
    target_rows = targets.reshape(-1).index_select(0, rows)  # [N]
    head = model.get_output_embeddings()
    if chunk_size is None:
        chunk_size = max(16, CHUNK_LOGITS // head.weight.shape[0])
    if _plain_head(model, head):
        logp, entropy = FusedHeadLogprobs.apply(
            hidden_rows, head.weight, target_rows, temperature, chunk_size, with_entropy
        )  # [N], [N]
        logp = _scatter_rows([logp], rows, batch, keep, hidden.device)  # [B, K]
        if not with_entropy:
            return logp, None
        return logp, _scatter_rows([entropy], rows, batch, keep, hidden.device)
    transform = _logit_transform(model, temperature)
    use_checkpoint = checkpoint_chunks and torch.is_grad_enabled()
    logp_parts, entropy_parts = [], []
    for start in range(0, rows.numel(), chunk_size):
        args = (
            head,
            transform,
            with_entropy,
            hidden_rows[start : start + chunk_size],
            target_rows[start : start + chunk_size],
        )
        if use_checkpoint:
            logp, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*args)
        logp_parts.append(logp)
        entropy_parts.append(entropy)
    logp = _scatter_rows(logp_parts, rows, batch, keep, hidden.device)  # [B, K]
    if not with_entropy:
        return logp, None
    return logp, _scatter_rows(entropy_parts, rows, batch, keep, hidden.device)  # [B, K]


def _plain_head(model: nn.Module, head: nn.Module) -> bool:
    """True when logits are just `hidden @ head.weight.T` (no bias, scale or softcap)."""
    config = model.config.get_text_config() if hasattr(model, "config") else None
    scaled = any(
        getattr(config, name, None) is not None
        for name in ("logit_scale", "logits_scaling", "final_logit_softcapping")
    )
    return isinstance(head, nn.Linear) and head.bias is None and not scaled


def _completion_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Backbone hidden states that predict each kept target, the targets, and their mask.

    Hidden state t predicts token t+1, so the last K targets input_ids[:, -K:] come from
    hidden states [:, -K-1:-1]. Returns [B, K, H], [B, K], [B, K] (bool).
    """
    seq_len = input_ids.shape[1]
    keep = seq_len - 1 if logits_to_keep is None else logits_to_keep
    if not 1 <= keep <= seq_len - 1:
        raise ValueError(f"logits_to_keep={logits_to_keep} must be in [1, {seq_len - 1}]")
    decoder = _backbone(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    with cpu_training_attention(model, seq_len):
        outputs = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    hidden = outputs[0]  # last_hidden_state, [B, T, H]
    real = attention_mask.bool()  # [B, T]
    valid = real[:, 1:] & real[:, :-1]  # [B, T-1] a real token predicted from a real one
    return hidden[:, -keep - 1 : -1], input_ids[:, -keep:], valid[:, -keep:]


def _logit_transform(model: nn.Module, temperature: float) -> Callable[[Tensor], Tensor]:
    """What the model's forward does to `lm_head` output (Cohere's logit_scale, Granite's
    logits_scaling, Gemma-2/3's final softcapping), then the sampling temperature.

    These are read from the config because we bypass the model's forward; Llama, Qwen,
    Mistral, SmolLM and most others do none of them.
    """
    config = model.config.get_text_config() if hasattr(model, "config") else None
    multiply = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)
    softcap = getattr(config, "final_logit_softcapping", None)

    def transform(logits: Tensor) -> Tensor:  # [n, V] fp32
        if multiply is not None:
            logits = logits * multiply
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if temperature != 1.0:
            logits = logits / temperature
        return logits

    return transform


def _chunk_logprobs(
    head: nn.Module,
    transform: Callable[[Tensor], Tensor],
    with_entropy: bool,
    hidden: Tensor,
    targets: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of `targets` [n] (and entropy) from hidden rows [n, H], via fp32 logits."""
    logits = transform(head(hidden).float())  # [n, V]
    logp_all = torch.log_softmax(logits, dim=-1)  # [n, V]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [n]
    if not with_entropy:
        return logp, None
    # H = logZ - E_p[logit]; unlike -sum(p * log p) it stays finite when some p underflow to 0
    entropy = torch.logsumexp(logits, dim=-1) - (logp_all.exp() * logits).sum(-1)  # [n]
    return logp, entropy


def _scatter_rows(
    parts: list[Tensor], rows: Tensor, batch: int, keep: int, device: torch.device
) -> Tensor:
    """Put per-row values back at their [B, K] positions; padded targets get 0."""
    values = torch.cat(parts) if parts else torch.zeros(0, device=device)  # [N]
    flat = torch.zeros(batch * keep, dtype=torch.float32, device=device)  # [B*K]
    return flat.index_copy(0, rows, values.float()).view(batch, keep)  # [B, K]
