"""The LM head's log-probs and entropy as one autograd function: no [N, V] tensor is kept.

`train.logprobs` sends the hidden rows of real target tokens through it when the model's
logits are just `hidden @ head.weight.T` (Llama, Qwen, SmolLM, ...); other heads take the
checkpointed chunk path there.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FusedHeadLogprobs(torch.autograd.Function):
    """log p(target) and entropy from hidden rows through the LM head, chunk by chunk.

    Forward keeps only per-row scalars (log-normaliser, entropy), never a [N, V] tensor;
    backward recomputes the logits once and forms their gradient directly:
    d logp / dz = onehot - p and d H / dz = -p (log p + H), each divided by the temperature.
    That sweeps the vocabulary ~4 times instead of the ~10 of autograd's log_softmax + gather
    + entropy under checkpointing. Forward chunks by rows (a row's normaliser needs its whole
    vocabulary); backward chunks by vocabulary columns, so each slice of the head's gradient
    is one finished matmul written straight into the gradient, not a sum of per-chunk [V, H]
    partials (an fp32 accumulator plus a cast copy: 3x the head's size at the peak). Matmuls
    run in the dtype the forward ran them in (bf16 under autocast); the softmax math is fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, with_entropy):  # noqa: ANN001, D102
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        logp, entropy, lse = [], [], []
        for start in range(0, len(hidden), chunk_size):
            logits = _chunk_logits(h[start : start + chunk_size], w, temperature)  # [n, V]
            norm = torch.logsumexp(logits, dim=-1)  # [n]
            picked = logits.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1)
            if with_entropy:  # H = -sum p log p, from the log-probs computed in place
                logits.sub_(norm[:, None])
                entropy.append(-logits.exp().mul_(logits).sum(-1))
            logp.append(picked - norm)
            lse.append(norm)
        empty = hidden.new_zeros(0, dtype=torch.float32)  # no rows: nothing to score
        norms = torch.cat(lse) if lse else empty
        entropies = torch.cat(entropy) if entropy else torch.zeros_like(norms)
        ctx.save_for_backward(hidden, weight, targets, norms, entropies)
        ctx.dtype, ctx.temperature, ctx.chunk_size = dtype, temperature, chunk_size
        return (torch.cat(logp) if logp else empty), entropies

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):  # noqa: ANN001, D102
        hidden, weight, targets, norms, entropies = ctx.saved_tensors
        h, w = hidden.to(ctx.dtype), weight.to(ctx.dtype)
        rows, vocab = len(hidden), weight.shape[0]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.empty_like(weight)
        g = grad_logp[:, None] / ctx.temperature  # [N, 1]
        ge = None if grad_entropy is None else grad_entropy[:, None] / ctx.temperature  # [N, 1]
        width = max(1, ctx.chunk_size * vocab // max(rows, 1))  # vocabulary columns per chunk
        for start in range(0, vocab, width):
            end = min(start + width, vocab)
            logprobs = _chunk_logits(h, w[start:end], ctx.temperature)  # [N, v]
            logprobs.sub_(norms[:, None])
            probs = logprobs.exp()  # [N, v]
            if ge is not None:  # -g p - ge p (log p + H)  =  -p (g + ge (log p + H))
                scale = logprobs.add_(entropies[:, None]).mul_(ge).add_(g)
                grad_logits = probs.mul_(scale).neg_()
            else:
                grad_logits = probs.mul_(-g)
            hit = ((targets >= start) & (targets < end)).nonzero().squeeze(-1)  # + g on targets
            grad_logits.index_put_((hit, targets[hit] - start), g[hit, 0], accumulate=True)
            grad_logits = grad_logits.to(ctx.dtype)
            grad_h += grad_logits @ w[start:end]
            grad_w[start:end] = grad_logits.T @ h
        return grad_h.to(hidden.dtype), grad_w, None, None, None, None


def _chunk_logits(h: Tensor, w: Tensor, temperature: float) -> Tensor:
    """fp32 logits of one chunk, scaled in place: one [n, V] fp32 tensor, not two."""
    logits = (h @ w.T).float()
    return logits if temperature == 1.0 else logits.div_(temperature)
