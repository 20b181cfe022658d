"""The GRPO formula as pure tensor functions: advantages, KL estimators, the clipped policy
loss, and the loss aggregation that distinguishes GRPO, DAPO and Dr. GRPO.

Policy losses: `clip` (GRPO's per-token clipped surrogate), `gspo` (one clipped ratio per
output) and `cispo` (REINFORCE with clipped stop-gradient importance weights). Everything here
is plain torch (no transformers), works on any device/dtype and is tested against slow loop
versions. Each kind of variant lives in an open registry
(`ADVANTAGE_SCALES`, `KL_ESTIMATORS`, `POLICY_LOSSES`, `AGGREGATIONS`): an entry is added with
the registry's decorator, the config takes its valid names from the registry, and the trainer
looks a variant up by name instead of branching on it.

Shapes: B sequences (B = n_groups * G, group-contiguous), T completion tokens per sequence.
`mask` is [B, T], true (or 1) where a completion token is real, false on padding.

How one GRPO step maps onto these functions::

    adv = group_advantages(rewards, G, scale="group")                     # [B]
    per_tok, stats = POLICY_LOSSES["clip"](logp, old_logp, adv, mask, 0.2, 0.28)  # [B, T]
    per_tok = per_tok + beta * kl_penalty(logp, ref_logp, "k3")           # [B, T]
    loss = aggregate(per_tok, mask, "seq-mean-token-mean", normalizer=n)  # scalar
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

V = TypeVar("V")

# exp() of a log-ratio beyond this overflows fp32 gradients into inf * 0 = NaN; no real policy
# step ever moves a token's log-probability by 20 nats, so clamping changes nothing in practice.
LOG_RATIO_CLAMP = 20.0


class Registry(dict[str, V], Generic[V]):
    """Named variants of one kind; `@registry.register(name)` adds one.

    Open: a user module can register its own advantage scale or loss before the config is
    loaded, and the config's validation accepts it by name like a built-in one.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[V], V]:
        def wrap(entry: V) -> V:
            if name in self and self[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = entry
            return entry

        return wrap

    def pick(self, name: str) -> V:
        """The variant `name`; an unknown name lists the valid ones."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")
        return self[name]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is true; 0 (not NaN) where nothing is valid.

    `torch.where` rather than `x * mask` so that inf/NaN garbage in padded positions cannot
    leak into the result.  Example: x=[[1, 9], [3, 5]], mask=[[1, 0], [1, 1]] -> 3.0;
    with dim=1 -> [1.0, 4.0].
    """
    mask = mask.bool()
    kept = torch.where(mask, x, torch.zeros_like(x))
    total, count = (kept.sum(), mask.sum()) if dim is None else (kept.sum(dim), mask.sum(dim))
    return total / count.clamp(min=1).to(total.dtype)


# ----------------------------------------------------------------------------- advantages
# Each scale maps grouped rewards [n_groups, G] to the denominator [n_groups, 1] (or scalar).
# Standard deviations are *population* std (unbiased=False): the paper writes std(r_1..r_G)
# of the group itself, and the population std gives every non-constant group advantages of
# exactly unit variance (G=2, rewards [1, 0] -> advantages [+1, -1]).  TRL's torch.std is
# the unbiased one, which differs by the constant factor sqrt((G-1)/G), i.e. only rescales
# the learning rate (0.71 for G=2, 0.97 for G=16).
ADVANTAGE_SCALES: Registry[Callable[[Tensor, float], Tensor]] = Registry("advantage scale")


@ADVANTAGE_SCALES.register("group")
def _group_std(grouped: Tensor, eps: float) -> Tensor:
    """GRPO (paper): divide by the group's own std."""
    return grouped.std(dim=1, unbiased=False, keepdim=True) + eps


@ADVANTAGE_SCALES.register("batch")
def _batch_std(grouped: Tensor, eps: float) -> Tensor:
    """One std for the whole batch: keeps easy/hard groups from being up-weighted (TRL "batch")."""
    return grouped.std(unbiased=False) + eps


@ADVANTAGE_SCALES.register("none")
def _no_scale(grouped: Tensor, eps: float) -> Tensor:
    """Dr. GRPO: no std division, which removes the bias towards low-variance (too easy or too
    hard) questions."""
    return torch.ones((), dtype=grouped.dtype, device=grouped.device)


def group_advantages(
    rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6
) -> Tensor:
    """Group-relative advantage A_i = (r_i - mean(group)) / scale: the group is the baseline,
    so no critic is trained.

    `rewards` is [B] laid out group-contiguous (the G samples of question 0, then of
    question 1, ...). A group whose rewards are all equal carries no learning signal and gets
    exactly 0 (never NaN, never float noise divided by eps), whatever `scale` is.

    Example: rewards=[1, 0, 0, 0], G=2, scale="group" -> [1, -1, 0, 0];
    scale="none" -> [0.5, -0.5, 0, 0]; scale="batch" (batch std 0.433) -> [1.155, -1.155, 0, 0].
    """
    if group_size < 1 or rewards.ndim != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} cannot be split into groups of "
            f"{group_size}: the batch must be a 1-D multiple of the group size"
        )
    denominator_of = ADVANTAGE_SCALES.pick(scale)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.view(-1, group_size)  # [n, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [n, G]
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [n, 1]
    advantages = centered / denominator_of(grouped, eps)  # [n, G]
    return torch.where(constant, torch.zeros_like(advantages), advantages).view(-1)  # [B]


# ----------------------------------------------------------------------------- KL estimators
KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log(pi/pi_ref): unbiased, high variance, can be < 0."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def _kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """(log(pi/pi_ref))^2 / 2: biased, low variance, >= 0."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 = pi_ref/pi - log(pi_ref/pi) - 1: the paper's estimator, unbiased and
    >= 0 for every token. The log-ratio is clamped to +-20 so exp() cannot overflow."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(log_ratio) - log_ratio - 1.0  # [B, T]


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL[pi_theta || pi_ref] from the sampled tokens' log-probs.

    Example: logp=log(0.5), ref_logp=log(0.25): k1 = 0.693, k2 = 0.240,
    k3 = 0.5 - log(0.5) - 1 = 0.193.  Equal log-probs give 0 for every kind.
    """
    return KL_ESTIMATORS.pick(kind)(logp, ref_logp)


# ----------------------------------------------------------------------------- policy loss
PolicyLoss = Callable[..., tuple[Tensor, dict[str, Tensor]]]
"""(logp, old_logp, advantages, mask, clip_low, clip_high) -> (per-token loss [B, T], stats)."""
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _clip_stats(ratio: Tensor, adv: Tensor, mask: Tensor, low: float, high: float) -> dict:
    """Detached shares of valid tokens whose ratio sits beyond a clip bound on the side where
    clipping matters (above 1 + high with A > 0, below 1 - low with A < 0), and the mean ratio."""
    with torch.no_grad():
        above = (ratio > 1.0 + high) & (adv > 0)  # [B, T]
        below = (ratio < 1.0 - low) & (adv < 0)  # [B, T]
        return {
            "clip_frac": masked_mean((above | below).float(), mask),
            "clip_frac_high": masked_mean(above.float(), mask),
            "clip_frac_low": masked_mean(below.float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


@POLICY_LOSSES.register("clip")
def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate, per token: -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A).

    `logp`, `old_logp`, `mask`: [B, T]; `advantages`: [B] (one value per sequence, broadcast
    over its tokens). `clip_high > clip_low` is DAPO's "clip-higher": it lets unlikely tokens
    with A > 0 grow further, which keeps entropy from collapsing.

    Returns the per-token loss [B, T] (not yet masked or aggregated: see `aggregate`) and
    detached stats over valid tokens: `clip_frac` (share of tokens where the clipped branch
    was active, i.e. got zero gradient), its `clip_frac_low`/`clip_frac_high` parts, and
    `ratio_mean`.

    Example: ratio 1.25, A=+1: clip_high=0.2 -> loss -1.2 (clipped, no gradient);
    clip_high=0.28 -> loss -1.25 (unclipped).
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages.unsqueeze(-1).to(ratio.dtype)  # [B, 1]
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [B, T]
    per_token_loss = -torch.minimum(unclipped, clipped)  # [B, T]
    return per_token_loss, _clip_stats(ratio, adv, mask, clip_low, clip_high)


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: one ratio per *output*, clipped as a whole: the R1 paper's sequence-level ratio,
    length-normalised.

    s_i = (pi_theta(o_i|q) / pi_old(o_i|q)) ** (1/|o_i|), the geometric mean of the token
    ratios: R1's ratio of whole-output probabilities, length-normalised so that a long output
    does not multiply its way out of any clip range (hence GSPO's small epsilons, 3e-4/4e-4).
    Loss of output i: -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i).

    Written per token so that it aggregates like the others: every token of output i carries
    s_{i,t} = sg[s_i] * pi_theta(o_{i,t}) / sg[pi_theta(o_{i,t})], whose value is s_i and whose
    gradient is s_i * grad log pi_theta(o_{i,t}); under "seq-mean-token-mean" the mean over the
    output's tokens is then exactly the gradient of the sequence-level loss.

    Example: token log-ratios [0.3, -0.3] -> s = 1 on both tokens (one output, one ratio);
    [0.2, 0.0] with A = +1, eps_high 4e-4 -> s = e^0.1 = 1.105, clipped: -1.0004 on each
    token, no gradient.
    """
    log_ratio = masked_mean(logp - old_logp, mask, dim=1)  # [B], mean over the output's tokens
    log_ratio = log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).unsqueeze(-1)
    ratio = torch.exp(log_ratio + logp - logp.detach())  # [B, T], value s_i on every token
    adv = advantages.unsqueeze(-1).to(ratio.dtype)  # [B, 1]
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [B, T]
    per_token_loss = -torch.minimum(ratio * adv, clipped)  # [B, T]
    return per_token_loss, _clip_stats(ratio, adv, mask, clip_low, clip_high)


@POLICY_LOSSES.register("cispo")
def cispo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1): REINFORCE on every token, weighted by its clipped, stop-gradient
    importance ratio: -sg(clip(rho, 1-eps_low, 1+eps_high)) * A * log pi_theta.

    Unlike the clipped surrogate, no token ever loses its gradient: a clipped ratio only caps
    the token's weight. MiniMax set no lower bound (eps_low = 1: the weight stays >= 0) and
    tuned eps_high. `clip_frac` counts tokens whose weight was capped.

    Example: rho = 1.5, A = +1, eps_high 0.28, log pi = -0.5 -> weight 1.28, loss 0.64,
    gradient -1.28 with respect to log pi (the clipped surrogate's would be 0).
    """
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    adv = advantages.unsqueeze(-1).to(ratio.dtype)  # [B, 1]
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high).detach()  # [B, T]
    per_token_loss = -weight * adv * logp  # [B, T]
    with torch.no_grad():
        capped = (ratio > 1.0 + clip_high) | (ratio < 1.0 - clip_low)  # [B, T]
        stats = {
            "clip_frac": masked_mean(capped.float(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return per_token_loss, stats


# ----------------------------------------------------------------------------- aggregation
# The GRPO variants differ exactly here. Each mode is split into a *numerator* (a sum over
# sequences, so micro-batch numerators add up) and a *normaliser* (a count over the whole
# minibatch). Dividing every micro-batch's numerator by the *global* normaliser makes the
# summed micro-batch losses, and so the accumulated gradient, independent of the split.
@dataclass(frozen=True)
class Aggregation:
    """One loss-aggregation mode: a per-micro-batch numerator, and what its normaliser counts
    over the whole minibatch ("sequences" or "tokens")."""

    numerator: Callable[[Tensor, Tensor, int | None], Tensor]
    unit: str


AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


def register_aggregation(name: str, unit: str) -> Callable[[Callable], Callable]:
    """Register a numerator under `name`, normalised by the minibatch's count of `unit`."""

    def wrap(numerator: Callable[[Tensor, Tensor, int | None], Tensor]) -> Callable:
        AGGREGATIONS.register(name)(Aggregation(numerator, unit))
        return numerator

    return wrap


@register_aggregation("seq-mean-token-mean", unit="sequences")
def _seq_mean_token_mean(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """Paper GRPO: 1/|o_i| sum_t, summed over sequences (divided by #sequences later)."""
    return masked_mean(loss, mask, dim=1).sum()


@register_aggregation("token-mean", unit="tokens")
def _token_sum(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """DAPO: every valid token weighs the same, long answers are not down-weighted."""
    return torch.where(mask, loss, torch.zeros_like(loss)).sum()


@register_aggregation("seq-mean-token-sum-norm", unit="sequences")
def _seq_token_sum_norm(loss: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """Dr. GRPO: a constant max_len instead of |o_i| removes the length bias."""
    if max_len is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_len (a constant)")
    return torch.where(mask, loss, torch.zeros_like(loss)).sum() / max_len


def loss_normalizer(mask: Tensor, mode: str) -> float:
    """The denominator of `aggregate` for this mask: #valid tokens for "token-mean",
    #sequences (rows, including empty ones, as the paper's 1/G) for the seq-mean modes.

    Call it once on the whole minibatch's mask and pass the result to `aggregate` for every
    micro-batch. (Under DDP, which averages gradients over ranks, pass the global count
    divided by the world size.) Never returns less than 1, so no division by zero.
    """
    unit = AGGREGATIONS.pick(mode).unit
    count = mask.bool().sum().item() if unit == "tokens" else mask.shape[0]
    return float(max(count, 1))


def aggregate(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: str,
    max_len: int | None = None,
    normalizer: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar; `mode` picks GRPO / DAPO / Dr. GRPO.

    `normalizer` defaults to `loss_normalizer(mask, mode)`, which is right for a whole
    minibatch. For gradient accumulation pass the minibatch's normaliser to each micro-batch.

    Worked example, loss=[[1, 0, 0], [2, 2, 2]], mask=[[1, 0, 0], [1, 1, 1]]:
      "seq-mean-token-mean":                 (1/1 + 6/3) / 2        = 1.5
      "token-mean":                          (1 + 6) / 4            = 1.75
      "seq-mean-token-sum-norm", max_len=4:  (1/4 + 6/4) / 2        = 0.875
    Split into micro-batches [row 0] and [row 1] for "token-mean": with normalizer=4 the
    parts are 1/4 + 6/4 = 1.75 (same as unsplit); with their own normalisers they would be
    1/1 + 6/3 = 3.0, so the gradient would depend on the split.
    Sequences without valid tokens contribute 0, never NaN.
    """
    numerator_of = AGGREGATIONS.pick(mode).numerator
    if normalizer is None:
        normalizer = loss_normalizer(mask, mode)
    return numerator_of(per_token_loss, mask.bool(), max_len) / normalizer
