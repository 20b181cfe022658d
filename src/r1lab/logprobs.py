"""Per-token log-probabilities (and entropy) of a causal LM without [B, T, V] fp32 logits.

Why: with a 150k vocabulary, B*T = 64k rows of fp32 logits are 39 GB, and autograd keeps a
log-softmax of the same size for the backward pass. Instead we run only the backbone to get
hidden states [B, T, H], keep the rows whose next token is real (padding costs nothing), and
push them through the LM head `chunk_size` rows at a time. Each chunk is wrapped in
activation checkpointing when gradients are on, so the backward pass recomputes one
[chunk, V] block at a time instead of keeping every chunk's alive.

Left padding: GRPO batches are `[left-padded prompt | right-padded completion]`, so
`position_ids = cumsum(attention_mask) - 1` are passed to the model; without them RoPE
positions are shifted by the pad length and log-probs differ from the unpadded sequence's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int | None = None,
    with_entropy: bool = False,
    chunk_size: int = 1024,
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
    chunk_size: int = 1024,
    temperature: float = 1.0,
    *,
    checkpoint_chunks: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Completion log-probs when many completions share a prompt: [B, Tc] (and entropy).

    GRPO scores G completions of each prompt. Running `[prompt | completion]` rows costs
    G * (Tp + Tc) tokens per group; here each distinct prompt runs once (`prompt_ids` [U, Tp],
    left-padded) and its KV cache is gathered for the rows that continue it (`rows` [B]: the
    prompt index of each completion), so a group costs Tp + G * Tc tokens, forward and
    backward: gradients flow through the shared cache into the prompt's single computation.
    `completion_ids`/`completion_mask` [B, Tc] are right-padded; padded targets get 0.
    """
    decoder = _backbone(model)
    width = prompt_ids.shape[1]
    positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [U, Tp]
    cache = DynamicCache(config=model.config)
    out = decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
    )
    cache.reorder_cache(rows)  # every layer's K/V: [U, ...] -> [B, ...]
    last = out[0][:, -1].index_select(0, rows)  # [B, H], predicts completion token 0
    start = prompt_mask.long().sum(-1).index_select(0, rows)  # [B] true prompt lengths
    steps = torch.arange(completion_ids.shape[1], device=completion_ids.device)  # [Tc]
    mask = torch.cat([prompt_mask.index_select(0, rows), completion_mask.long()], dim=1)
    out = decoder(
        input_ids=completion_ids,
        attention_mask=mask,  # [B, Tp + Tc]
        position_ids=start[:, None] + steps,  # [B, Tc]
        cache=cache,
        cache_position=width + steps,
        use_cache=True,
    )
    hidden = torch.cat([last[:, None], out[0][:, :-1]], dim=1)  # [B, Tc, H]
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
    chunk_size: int = 1024,
    temperature: float = 1.0,
    checkpoint_chunks: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of `targets` [B, K] from the hidden states that predict them [B, K, H].

    Only `valid` rows go through the LM head, `chunk_size` at a time, so neither padding nor
    a [B, K, V] logits tensor ever costs memory.
    """
    batch, keep, width = hidden.shape
    rows = valid.reshape(-1).nonzero().squeeze(-1)  # [N] indices of real target tokens
    hidden_rows = hidden.reshape(-1, width).index_select(0, rows)  # [N, H]
    target_rows = targets.reshape(-1).index_select(0, rows)  # [N]
    head = model.get_output_embeddings()
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
