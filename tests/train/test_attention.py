"""The CPU training attention (`train.attention`): the same numbers as sdpa, values and
gradients, under grouped-query heads, padding, causal masks and a query with no key; and
switched on only for passes on a CPU where the model uses sdpa."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.core.models import tiny_model
from r1lab.train.attention import NAME, block_attention_forward, cpu_training_attention


class _Module:  # what an attention function reads from its layer: nothing here
    pass


def _case(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, span, dim = 3, 4, 2, 5, 8, 16
    q = torch.randn(batch, heads, length, dim, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, span, dim, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, span, dim, generator=g, dtype=dtype, requires_grad=True)
    steps = torch.arange(span)
    causal = steps[None, :] <= steps[span - length :, None]  # [T, S]
    real = torch.ones(batch, span, dtype=torch.bool)
    real[1, :2] = False  # left padding of the second row
    real[2, 5:] = False  # right padding of the third
    keep = (causal[None] & real[:, None, :])[:, None]  # [B, 1, T, S]
    keep[0, 0, 2] = False  # a query with no key at all
    return q, k, v, keep


def _sdpa(q, k, v, keep):
    groups = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), attn_mask=keep
    )  # [B, H, T, D]
    return out.transpose(1, 2)


def test_block_attention_gives_sdpa_values_and_gradients():
    q, k, v, keep = _case()
    answered = keep.any(-1)[:, 0]  # [B, T] queries with some key: the only ones anyone reads
    grad = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype)
    grad = grad * answered[..., None, None]
    outputs, grads = [], []
    for attend in (lambda: _sdpa(q, k, v, keep), lambda: block_attention_forward(
            _Module(), q, k, v, keep)[0]):
        out = attend()  # [B, T, H, D]
        out.backward(grad)
        outputs.append(out.detach()[answered])
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


def test_no_mask_means_causal_over_the_last_positions():
    q, k, v, _ = _case()
    span, length = k.shape[2], q.shape[2]
    steps = torch.arange(span)
    causal = (steps[None, :] <= steps[span - length :, None])[None, None]  # [1, 1, T, S]
    ours = block_attention_forward(_Module(), q, k, v, None)[0]
    torch.testing.assert_close(ours, _sdpa(q, k, v, causal), rtol=1e-10, atol=1e-12)


def test_bf16_inputs_keep_fp32_scores():
    q, k, v, keep = _case(torch.float32)
    exact = _sdpa(q, k, v, keep)
    low = block_attention_forward(_Module(), *(t.bfloat16() for t in (q, k, v)), keep)[0]
    answered = keep.any(-1)[:, 0]
    error = (low.float() - exact)[answered].abs().max()
    assert error < 0.03  # bf16 inputs and probabilities; 8-bit scores would cost far more


def test_only_passes_on_a_cpu_with_sdpa_switch_to_it():
    model = tiny_model("llama", 64, seed=0)
    model.set_attn_implementation("sdpa")
    with cpu_training_attention(model, 16):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad(), cpu_training_attention(model, 16):  # old and reference passes too
        assert model.config._attn_implementation == NAME
    with cpu_training_attention(model, 1 << 20):  # too long for whole blocks
        assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")  # an explicit choice is kept
    with cpu_training_attention(model, 16):
        assert model.config._attn_implementation == "eager"


def test_autocast_neither_rounds_the_scores_nor_breaks_rows_without_keys():
    q, k, v, keep = _case(torch.float32)
    exact = _sdpa(q, k, v, keep)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block_attention_forward(_Module(), *(t.bfloat16() for t in (q, k, v)), keep)[0]
    assert torch.isfinite(out).all()  # a row with no key: bf16 has no room for fp32's min
    answered = keep.any(-1)[:, 0]
    assert (out.float() - exact)[answered].abs().max() < 0.03


def test_checkpointed_layers_keep_sdpa_for_their_recomputation():
    model = tiny_model("llama", 64, seed=0)
    model.set_attn_implementation("sdpa")
    with cpu_training_attention(model, 16, recomputed=True):
        assert model.config._attn_implementation == "sdpa"
    model.gradient_checkpointing_enable()
    with cpu_training_attention(model, 16):
        assert model.config._attn_implementation == "sdpa"
