"""Attention for training passes on a CPU: whole-block matmuls, recomputed in the backward.

Why: PyTorch's CPU flash-attention backward is slow at the sequence lengths GRPO trains on (a
few hundred tokens). On one micro-batch of the zero-shot benchmark (16 completions of up to
128 tokens after 100-token prompts, bf16) its 60 backward calls took 1.1 s of a 4.3 s
forward/backward, for attention that is ~2% of the FLOPs. `eager` attention is faster but
keeps every layer's [B, H, T, S] probabilities for the backward (+0.75 GB there). Here a call
is a few batched matmuls and an fp32 softmax; only the inputs are kept, and the backward
recomputes the probabilities from them, as flash attention does, in one block because the
rows are short. Grouped-query heads read their shared K/V without copies: queries
[B, Hkv, g*T, D] against keys [B, Hkv, S, D].

`cpu_training_attention(model, kv_length)` switches a model to it for the log-prob passes
inside, on a CPU, up to `MAX_KV` keys (one call's [B, H, T, S] temporaries grow with T*S),
and only where the model uses `sdpa` (an explicit choice is kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "r1lab_cpu_block"
MAX_KV = 2048


class BlockAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v over grouped heads: queries [B, Hkv, g*T, D], `bias`
    [B, 1, 1, T, S] (0 where a query attends, the most negative float where not).

    The scores come from fp32 copies of q and k (a bf16 score is rounded to 8 bits before
    the exp); the other matmuls take bf16 probabilities and gradients, as flash-attention
    kernels do. A query with no key (left padding) gets the mean of the values, as in
    `eager` attention: nothing reads it.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # noqa: ANN001, D102
        with torch.autocast(q.device.type, enabled=False):  # it would make the scores bf16
            probs = _probs(q, k, bias, scale)  # [B, Hkv, gT, S] fp32
            ctx.save_for_backward(q, k, v, bias)
            ctx.scale = scale
            return probs.to(v.dtype) @ v  # [B, Hkv, gT, D]

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, D102
        q, k, v, bias = ctx.saved_tensors
        probs = _probs(q, k, bias, ctx.scale)
        grad_out = grad_out.to(v.dtype)
        grad_v = probs.to(v.dtype).transpose(-1, -2) @ grad_out  # [B, Hkv, S, D]
        grad_p = (grad_out @ v.transpose(-1, -2)).to(probs.dtype)  # [B, Hkv, gT, S]
        grad_s = torch._softmax_backward_data(grad_p, probs, -1, probs.dtype)
        grad_s = grad_s.mul_(ctx.scale).to(q.dtype)  # [B, Hkv, gT, S]
        return grad_s @ k, grad_s.transpose(-1, -2) @ q, grad_v, None, None


def _probs(q: Tensor, k: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Probabilities [B, Hkv, gT, S] in fp32 (fp64 for fp64 inputs). The mask is an added
    bias, not a masked fill: a broadcast `masked_fill_` took 6 ms where this `add_` took 0.4."""
    wide = torch.promote_types(q.dtype, torch.float32)  # fp64 stays fp64
    scores = (q.to(wide) * scale) @ k.to(wide).transpose(-1, -2)  # [B, Hkv, gT, S]
    batch, kv_heads, rows, span = scores.shape
    scores.view(batch, kv_heads, -1, bias.shape[-2], span).add_(bias)  # [B, Hkv, g, T, S]
    return torch.softmax(scores, dim=-1)


_last_bias: tuple[Tensor, Tensor] | None = None  # a pass's layers share one mask object


def _bias(keep: Tensor) -> Tensor:
    """The additive fp32 bias [B, 1, 1, T, S] of a boolean mask [B, 1, T, S], built once for
    all the layers of a pass."""
    global _last_bias
    if _last_bias is None or _last_bias[0] is not keep:
        bias = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
        _last_bias = keep, bias.masked_fill_(~keep, torch.finfo(torch.float32).min)[:, :, None]
    return _last_bias[1]


def block_attention_forward(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """An `AttentionInterface` function: queries [B, H, T, D], keys/values [B, Hkv, S, D],
    a boolean mask [B, 1, T, S] (True: attend) or None (causal); returns [B, T, H, D].
    Anything it does not model (dropout, soft-capping, sinks, position bias) goes to sdpa."""
    unsupported = dropout > 0 or any(
        kwargs.get(name) is not None for name in ("softcap", "s_aux", "sinks", "position_bias")
    )
    if unsupported or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    span = key.shape[2]
    scale = dim**-0.5 if scaling is None else scaling
    if attention_mask is None:  # causal, the queries being the last `length` positions
        steps = torch.arange(span, device=query.device)
        attention_mask = (steps[None, :] <= steps[span - length :, None])[None, None]
    # under autocast the rotated q and k arrive in fp32 (RoPE's tables are): cast them as
    # autocast casts sdpa's inputs, so the Function keeps and multiplies bf16
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    grouped = query.to(dtype).reshape(batch, key.shape[1], groups * length, dim)  # [B, Hkv, gT, D]
    bias = _bias(attention_mask)  # [B|1, 1, 1, T, S]
    out = BlockAttention.apply(grouped, key.to(dtype), value.to(dtype), bias, scale)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, block_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


@contextmanager
def cpu_training_attention(model: Any, kv_length: int, recomputed: bool = False) -> Iterator[None]:
    """The model's passes inside use `BlockAttention` on a CPU with `sdpa` attention and at
    most `MAX_KV` keys; otherwise nothing changes. Passes without gradients use it too, so
    that the policy's log-probs equal the old policy's and the reference's to the bit where
    the weights do (sdpa's flash forward alone is faster: 4.8 ms a call against 7.7 at the
    micro-batch's shapes above). Not under activation checkpointing (`recomputed`, or the
    model's own): the backward's recomputation runs after this context, and must attend as
    the forward did."""
    config = model.config
    device = next(model.parameters()).device
    recomputed = recomputed or getattr(model, "is_gradient_checkpointing", False)
    wanted = device.type == "cpu" and kv_length <= MAX_KV
    if not wanted or recomputed or config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
