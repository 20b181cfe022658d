"""When the sampler is not the trainer: truncated importance sampling and the gap it corrects.

An engine like vLLM samples with its own kernels (other matmul orders, other precision), so
the probability it gave a sampled token, pi_engine, is not the trainer's pi_old of the same
weights. GRPO's ratio rho = pi_theta / pi_old uses the trainer's pi_old (recomputed), so the
clipping measures how far the *update* moved; the samples themselves came from pi_engine,
and an importance weight pi_old / pi_engine turns them into samples of pi_old. Left
uncorrected the gap biases the gradient and, where the two disagree a lot on rare tokens,
destabilises training; so the weight is applied, truncated at a cap C so a token the engine
found unlikely cannot dominate (truncated importance sampling, TIS):

    token:     w_{i,t} = min(pi_old(o_{i,t}) / pi_engine(o_{i,t}), C)
    sequence:  w_i     = min(prod_t pi_old(o_{i,t}) / pi_engine(o_{i,t}), C)   (every token of o_i)

The weight is a constant (no gradient) that multiplies the per-token policy loss. Each
correction is an entry of `IS_CORRECTIONS`; `grpo.is_correction: auto` picks `token` exactly
when the engine reports log-probs of its own computation (see `resolve_correction`).
`engine_mismatch` gives the per-step numbers to watch: the engine-vs-trainer KL and the
largest and smallest token ratios (in float64: two fp32 computations differ by ~1e-5 nats per
token, whose k3 is ~1e-10, below fp32's rounding).

Shapes: [B, T] log-probs and mask, B completions of T tokens, as in `grpo.algos`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from r1lab.grpo.algos import LOG_RATIO_CLAMP, Registry, kl_penalty, masked_mean

ISCorrection = Callable[[Tensor, Tensor, Tensor, float], Tensor]
"""(old_logp, engine_logp, mask, cap) -> weight [B, T] (or [B, 1]), no gradient."""
IS_CORRECTIONS: Registry[ISCorrection] = Registry("importance-sampling correction")
AUTO = "auto"  # grpo.is_correction's default: `token` for engines that report log-probs


@IS_CORRECTIONS.register("none")
def _no_correction(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Treat the engine's samples as the trainer's own (what the in-process engines are)."""
    return torch.ones_like(old_logp)


@IS_CORRECTIONS.register("token")
def token_is_weight(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(pi_old / pi_engine, cap) per token.

    Example: old log-probs log([0.5, 0.2]), engine log([0.25, 0.2]), cap 2 -> [2.0, 1.0];
    with old log(0.9) against engine log(0.3): ratio 3, truncated to 2.
    """
    log_ratio = (old_logp - engine_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(log_ratio).clamp(max=cap).detach()  # [B, T]


@IS_CORRECTIONS.register("sequence")
def sequence_is_weight(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(prod_t pi_old / pi_engine, cap) over each completion's valid tokens, for all of them.

    Unbiased for whole-sequence objectives, but a product of many ratios strays far from 1:
    the cap bounds it from above only, so long mismatched outputs get small weights.
    Example: token ratios [2, 0.75] -> 1.5 for both tokens; [2, 2] with cap 2 -> 2.
    """
    log_ratio = torch.where(mask.bool(), old_logp - engine_logp, torch.zeros_like(old_logp))
    total = log_ratio.sum(dim=1, keepdim=True).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, 1]
    return torch.exp(total).clamp(max=cap).detach()  # [B, 1]


def resolve_correction(name: str, engine_logprobs: bool) -> str:
    """The correction to apply: `auto` is `token` when the batch carries the engine's own
    log-probs and `none` otherwise; an explicit one needs them (unless it is `none`)."""
    if name == AUTO:
        return "token" if engine_logprobs else "none"
    if name != "none" and not engine_logprobs:
        raise ValueError(
            f"importance-sampling correction {name!r} needs the engine's sampling log-probs; "
            "this engine samples from the trainer's own (use 'auto' or 'none')"
        )
    return name


@torch.no_grad()
def engine_mismatch(old_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the engine's sampling distribution is from the trainer's, over valid tokens.

    `engine_kl`: KL[pi_engine || pi_old] by the k3 estimator (the tokens were sampled from
    the engine); `engine_max_ratio` / `engine_min_ratio`: the largest and smallest
    pi_old / pi_engine of any token (1 and 1 when they agree; a token-level weight caps the
    first). Example: old log([0.5, 0.2]), engine log([0.25, 0.2]) -> KL (0.307 + 0) / 2 =
    0.153, max ratio 2, min ratio 1.
    """
    valid = mask.bool()
    old_logp, engine_logp = old_logp.double(), engine_logp.double()  # k3 of tiny gaps, exactly
    if not valid.any():
        one = torch.ones((), dtype=old_logp.dtype, device=old_logp.device)
        return {"engine_kl": one * 0, "engine_max_ratio": one, "engine_min_ratio": one}
    log_ratio = (old_logp - engine_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)[valid]  # [N]
    return {
        "engine_kl": masked_mean(kl_penalty(engine_logp, old_logp, "k3"), valid),
        "engine_max_ratio": log_ratio.max().exp(),
        "engine_min_ratio": log_ratio.min().exp(),
    }
