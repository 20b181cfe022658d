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
    weight on every call (fp32, 32 rows: 95 ms -> 53 ms per step of SmolLM2-135M; bf16 45 -> 29),
    and attention through the flash kernel, prompt part and generated part each returning its
    log-normaliser, merged exactly (one kernel each instead of ~15 small ops);
  - the prompts' keys/values kept once per prompt and read once per group of samples, and a
    preallocated buffer for the generated tokens written in place, so a step never copies
    the cache, not even when finished rows leave (see `KVBuffer`).

The prompt prefill still goes through the model's own forward (one call, compute-bound) and
its cache becomes the buffer's prompt part. A projection with a LoRA adapter (a LoRA run's
policy) is read as its merged weight W + (alpha / r) B A (`core.lora.effective_weight`),
computed into the fused copies it needs anyway. `tests/test_lean.py` checks the logits against
the `transformers` forward; `tests/test_rollout.py` checks greedy decoding against `generate`,
token for token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from r1lab.core.lora import effective_weight

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


def cpu_kernels_available(model: Any) -> bool:
    """The model is on the CPU and this torch build has the two kernels the lean step uses
    there: oneDNN's prepacked linear (what `torch.compile` emits for CPU inference) and the
    flash attention kernel that also returns its log-normaliser."""
    return (
        next(model.parameters()).device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


class KVBuffer:
    """The cache of one generate call, split the way GRPO shares it.

    `prompt_keys/values[layer]` `[P, Hkv, Tp, D]`: each distinct prompt once (never copied per
    sample); `new_keys/values[layer]` `[R, Hkv, T_new, D]`: the generated tokens of all
    R = P * n rows, preallocated and zero-filled, written in place. `alive` `[A]` lists the rows
    still decoding: only they go through the projections and the MLP; attention runs over all
    R rows (cheap), so a finished row leaves without any cache being copied. `prompt_bias`
    `[P, 1, 1, Tp]` masks prompt padding; `length` generated positions are written so far,
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
        self.prompt_bias = torch.zeros(p, 1, 1, tp, dtype=dtype, device=mask.device)
        self.prompt_bias.masked_fill_(~mask.bool()[:, None, None], float("-inf"))
        self.alive = torch.arange(self.rows, device=mask.device)

    def select(self, index: torch.Tensor) -> None:
        """Keep decoding only `alive[index]` (finished samples leave the batch)."""
        self.alive = self.alive.index_select(0, index)


class LeanDecoder:
    """One-token decode steps for a Llama-family model, reading its weights (see module doc)."""

    def __init__(
        self, model: Any, dtype: torch.dtype | None = None, cpu_kernels: bool | None = None
    ) -> None:
        config = model.config
        self.model = model
        self.compute_dtype = dtype or next(model.parameters()).dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.layers: list[dict[str, Any]] | None = None
        self.cpu_kernels = cpu_kernels_available(model) if cpu_kernels is None else cpu_kernels

    def release(self) -> None:
        """Drop the fused weight copies (they are rebuilt by the next `sync`)."""
        self.layers = None
        self.head = None

    def sync(self, rows: int = 32) -> None:
        """Re-read the weights (after an optimizer step); fused copies in the compute dtype,
        prepacked for about `rows` rows per matmul with `cpu_kernels`."""
        model, dtype = self.model, self.compute_dtype

        def weight(w: torch.Tensor) -> torch.Tensor:
            w = w.to(dtype)
            return torch.ops.mkldnn._reorder_linear_weight(w, rows) if self.cpu_kernels else w
        layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                attn, mlp = layer.self_attn, layer.mlp
                projections = (attn.q_proj, attn.k_proj, attn.v_proj)
                gate_up = (mlp.gate_proj, mlp.up_proj)
                qkv = weight(torch.cat([effective_weight(p) for p in projections]))
                bias = None
                if attn.q_proj.bias is not None:
                    bias = torch.cat([p.bias for p in projections]).to(dtype)
                layers.append(
                    {
                        "ln1": layer.input_layernorm,
                        "ln2": layer.post_attention_layernorm,
                        "qkv": qkv,
                        "qkv_bias": bias,
                        "o": weight(effective_weight(attn.o_proj)),
                        "gate_up": weight(torch.cat([effective_weight(p) for p in gate_up])),
                        "down": weight(effective_weight(mlp.down_proj)),
                    }
                )
            self.layers = layers
            self.embed = effective_weight(model.get_input_embeddings())
            self.norm = model.model.norm
            self.head = weight(effective_weight(model.get_output_embeddings()))

    def _linear(
        self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.cpu_kernels:
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

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q k^T * scale + bias) v `[B, Hkv, M, D]` and its log-normaliser `[B, Hkv, M]`
        (fp32), so attention over two key sets can be merged exactly afterwards."""
        if self.cpu_kernels:  # returns (output, log-normaliser)
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, 0.0, False, attn_mask=bias, scale=self.scale
            )
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale
        if bias is not None:
            scores = scores + bias
        lse = torch.logsumexp(scores, dim=-1)
        return torch.matmul(scores.sub_(lse[..., None]).exp_().to(q.dtype), v), lse

    def _attention(self, q: torch.Tensor, kv: KVBuffer, i: int) -> torch.Tensor:
        """Attention of the alive rows' queries `[A, H, D]` over prompt + generated keys.

        The prompt part is one product per (prompt, kv head) with all n samples' queries
        stacked, `[P, Hkv, n*g, D] x [P, Hkv, Tp, D]`, so a prompt's keys are read once per step
        rather than n times; the generated part is per row. The two softmaxes are merged by
        their log-normalisers, which is exactly one softmax over both key sets.
        """
        r, n, hk, d = kv.rows, kv.n, self.kv_heads, self.head_dim
        p, g = r // n, self.heads // hk
        full = q
        if len(kv.alive) < r:  # finished rows keep a zero query (their output is dropped)
            full = q.new_zeros(r, self.heads, d).index_copy_(0, kv.alive, q)
        grouped = full.view(p, n, hk, g, d).transpose(1, 2).reshape(p, hk, n * g, d)
        old, old_lse = self._attend(
            grouped, kv.prompt_keys[i], kv.prompt_values[i], kv.prompt_bias
        )  # [P, Hkv, n*g, D], [P, Hkv, n*g]
        old = old.reshape(p, hk, n, g, d).transpose(1, 2).reshape(r, hk, g, d)
        old_lse = old_lse.reshape(p, hk, n, g).transpose(1, 2).reshape(r, hk, g)
        new, new_lse = self._attend(
            full.view(r, hk, g, d),
            kv.new_keys[i][:, :, : kv.length],  # only the positions written so far
            kv.new_values[i][:, :, : kv.length],
            None,
        )  # [R, Hkv, g, D], [R, Hkv, g]
        top = torch.maximum(old_lse, new_lse)
        w_old, w_new = (old_lse - top).exp_(), (new_lse - top).exp_()
        total = w_old + w_new
        out = old.float() * (w_old / total)[..., None] + new.float() * (w_new / total)[..., None]
        if len(kv.alive) < r:
            out = out.index_select(0, kv.alive)
        return out.to(q.dtype).reshape(len(kv.alive), self.heads * d)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, kv: KVBuffer) -> torch.Tensor:
        """Logits `[A, V]` (fp32) for one new token per alive row; stores its keys/values."""
        if self.layers is None:
            self.sync(rows=len(tokens))
        a, t = tokens.shape[0], kv.length
        h, hk, d = self.heads, self.kv_heads, self.head_dim
        kv.length = t + 1  # the new token is visible to itself and every later step
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
