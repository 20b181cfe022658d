"""A lean decode step for Llama-family models (Llama, SmolLM, Qwen2).

On a CPU, one decode step of a 135M model through `transformers` modules costs about 50 ms
even for a single row, almost all of it Python and dispatch overhead (30 layers of module
calls, mask construction, a growing `DynamicCache` that re-concatenates every layer's keys
each step). The arithmetic is ~3 ms. This module runs the same math with as few kernels as
possible:

  - q/k/v and gate/up projections fused into one matmul each (weights concatenated once per
    `sync`, i.e. once per optimizer step);
  - on a CPU, every projection through oneDNN with its weight prepacked once per `sync`: a
    decode step's matmuls are skinny (one row per sample) and the plain GEMM re-packs the whole
    weight on every call (fp32, 32 rows: 95 ms -> 53 ms per step of SmolLM2-135M; bf16 45 -> 29);
  - the prompts' keys/values kept once per prompt and read once per group of samples, and a
    preallocated buffer for the generated tokens written in place, so a step never copies
    the cache, not even when finished rows leave (see `KVBuffer`).

The prompt prefill still goes through the model's own forward (one call, compute-bound) and
its cache becomes the buffer's prompt part. `tests/test_lean.py` checks the logits against
the `transformers` forward; `tests/test_rollout.py` checks greedy decoding against `generate`,
token for token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2")


def supports(model: Any) -> bool:
    """True when the lean step computes exactly `model`'s forward (otherwise use the HF path).

    Checked on the modules themselves: pre-norm decoder layers, SiLU-gated MLP without biases,
    no output-projection bias, full (not sliding-window) attention.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED:
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "hidden_act", "") != "silu":
        return False
    inner = getattr(model, "model", None)
    if not (hasattr(inner, "rotary_emb") and hasattr(inner, "layers")):
        return False
    attn, mlp = inner.layers[0].self_attn, inner.layers[0].mlp
    qkv_bias = {p.bias is None for p in (attn.q_proj, attn.k_proj, attn.v_proj)}
    no_bias = (attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return len(qkv_bias) == 1 and all(p.bias is None for p in no_bias)


def packed_linear_available(model: Any) -> bool:
    """oneDNN's prepacked linear (the kernel `torch.compile` uses for CPU inference) exists in
    this torch build and the model's weights are on the CPU."""
    return (
        next(model.parameters()).device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class KVBuffer:
    """The cache of one generate call, split the way GRPO shares it.

    `prompt_keys/values[layer]` `[P, Hkv, Tp, D]`: each distinct prompt once (never copied per
    sample); `new_keys/values[layer]` `[R, Hkv, T_new, D]`: the generated tokens of all
    R = P * n rows, preallocated and zero-filled, written in place. `alive` `[A]` lists the rows
    still decoding: only they go through the projections and the MLP; attention runs over all
    R rows (cheap), so a finished row leaves without any cache being copied. `bias`
    `[R, Tp + T_new]` masks prompt padding; `length` generated positions are written so far,
    and attention reads only those (not the whole preallocated buffer).
    """

    def __init__(
        self, cache: Any, mask: torch.Tensor, n: int, max_new_tokens: int, dtype: torch.dtype
    ) -> None:
        p, tp = mask.shape
        self.n, self.rows, self.length = n, p * n, 0
        self.prompt_keys = [layer.keys.to(dtype).contiguous() for layer in cache.layers]
        self.prompt_values = [layer.values.to(dtype).contiguous() for layer in cache.layers]
        _, hk, _, d = self.prompt_keys[0].shape
        shape = (self.rows, hk, max_new_tokens, d)
        self.new_keys = [mask.new_zeros(shape, dtype=dtype) for _ in cache.layers]
        self.new_values = [mask.new_zeros(shape, dtype=dtype) for _ in cache.layers]
        self.bias = torch.full(
            (self.rows, tp + max_new_tokens), float("-inf"), dtype=dtype, device=mask.device
        )
        prompt_ok = mask.bool().repeat_interleave(n, dim=0)  # [R, Tp]
        self.bias[:, :tp].masked_fill_(prompt_ok, 0.0)
        self.alive = torch.arange(self.rows, device=mask.device)

    def select(self, index: torch.Tensor) -> None:
        """Keep decoding only `alive[index]` (finished samples leave the batch)."""
        self.alive = self.alive.index_select(0, index)


class LeanDecoder:
    """One-token decode steps for a Llama-family model, reading its weights (see module doc)."""

    def __init__(
        self, model: Any, dtype: torch.dtype | None = None, packed: bool | None = None
    ) -> None:
        config = model.config
        self.model = model
        self.compute_dtype = dtype or next(model.parameters()).dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.layers: list[dict[str, Any]] | None = None
        self.packed = packed_linear_available(model) if packed is None else packed

    def release(self) -> None:
        """Drop the fused weight copies (they are rebuilt by the next `sync`)."""
        self.layers = None
        self.head = None

    def sync(self, rows: int = 32) -> None:
        """Re-read the weights (after an optimizer step); fused copies in the compute dtype,
        prepacked for about `rows` rows per matmul when `packed`."""
        model, dtype = self.model, self.compute_dtype

        def weight(w: torch.Tensor) -> torch.Tensor:
            w = w.to(dtype)
            return torch.ops.mkldnn._reorder_linear_weight(w, rows) if self.packed else w
        layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                attn, mlp = layer.self_attn, layer.mlp
                projections = (attn.q_proj, attn.k_proj, attn.v_proj)
                qkv = weight(torch.cat([p.weight for p in projections]))
                bias = None
                if attn.q_proj.bias is not None:
                    bias = torch.cat([p.bias for p in projections]).to(dtype)
                layers.append(
                    {
                        "ln1": layer.input_layernorm,
                        "ln2": layer.post_attention_layernorm,
                        "qkv": qkv,
                        "qkv_bias": bias,
                        "o": weight(attn.o_proj.weight),
                        "gate_up": weight(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
                        "down": weight(mlp.down_proj.weight),
                    }
                )
            self.layers = layers
            self.embed = model.get_input_embeddings().weight
            self.norm = model.model.norm
            self.head = weight(model.get_output_embeddings().weight)

    def _linear(
        self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
        return F.linear(x, w, bias)

    @staticmethod
    def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm in fp32 as the HF modules do, back to x's dtype."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return (norm.weight.float() * h).to(x.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attention(self, q: torch.Tensor, kv: KVBuffer, i: int) -> torch.Tensor:
        """Attention of the alive rows' queries `[A, H, D]` over prompt + generated keys.

        The prompt part is one matmul per (prompt, kv head) with all n samples' queries
        stacked, `[P, Hkv, n*g, D] @ [P, Hkv, D, Tp]`, so a prompt's keys are read once per step
        rather than n times; the generated part is per row. One softmax spans both.
        """
        r, n, hk, d = kv.rows, kv.n, self.kv_heads, self.head_dim
        p, g, tp = r // n, self.heads // hk, kv.prompt_keys[i].shape[2]
        new_keys = kv.new_keys[i][:, :, : kv.length]  # only the positions written so far
        new_values = kv.new_values[i][:, :, : kv.length]
        full = q.new_zeros(r, self.heads, d).index_copy_(0, kv.alive, q * self.scale)
        grouped = full.view(p, n, hk, g, d).transpose(1, 2).reshape(p, hk, n * g, d)
        prompt_scores = torch.matmul(grouped, kv.prompt_keys[i].transpose(-1, -2))
        prompt_scores = prompt_scores.view(p, hk, n, g, tp).transpose(1, 2).reshape(r, hk, g, tp)
        new_scores = torch.matmul(full.view(r, hk, g, d), new_keys.transpose(-1, -2))
        bias = kv.bias[:, None, None, : tp + kv.length]
        scores = torch.cat([prompt_scores, new_scores], dim=-1) + bias
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # [R, Hkv, g, Tp + T_new]
        prompt_probs = probs[..., :tp].reshape(p, n, hk, g, tp).transpose(1, 2)
        out = torch.matmul(prompt_probs.reshape(p, hk, n * g, tp), kv.prompt_values[i])
        out = out.view(p, hk, n, g, d).transpose(1, 2).reshape(r, hk, g, d)
        out = out + torch.matmul(probs[..., tp:], new_values)  # [R, Hkv, g, D]
        return out.index_select(0, kv.alive).reshape(len(kv.alive), self.heads * d)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """Logits `[A, V]` (fp32) for one new token per alive row; stores its keys/values."""
        if self.layers is None:
            self.sync(rows=len(tokens))
        a, t = tokens.shape[0], kv.length
        h, hk, d = self.heads, self.kv_heads, self.head_dim
        tp = kv.prompt_keys[0].shape[2]
        kv.bias[:, tp + t] = 0.0  # the new token is visible to itself and every later step
        kv.length = t + 1
        x = self.embed[tokens].to(self.compute_dtype)  # [A, E]
        cos, sin = self.model.model.rotary_emb(x[:, None], positions[:, None])  # [A, 1, D]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for i, w in enumerate(self.layers):
            hidden = self._rms(w["ln1"], x)
            qkv = self._linear(hidden, w["qkv"], w["qkv_bias"])  # [A, (H + 2 Hkv) D]
            q, k, v = qkv.split((h * d, hk * d, hk * d), dim=-1)
            q = self._rope(q.view(a, h, d), cos, sin)  # [A, H, D]
            kv.new_keys[i][kv.alive, :, t] = self._rope(k.view(a, hk, d), cos, sin)
            kv.new_values[i][kv.alive, :, t] = v.view(a, hk, d)
            x = x + self._linear(self._attention(q, kv, i), w["o"])
            hidden = self._rms(w["ln2"], x)
            gate, up = self._linear(hidden, w["gate_up"]).chunk(2, dim=-1)
            x = x + self._linear(F.silu(gate) * up, w["down"])
        return self._linear(self._rms(self.norm, x), self.head).float()  # [A, V]
