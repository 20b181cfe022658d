"""The GRPO policy update: tensors of one step, old/ref log-probs, and mu passes of minibatch
optimizer steps by gradient accumulation.

    batch = build_batch(model, ref, rollout.groups, rollout.rewards, grpo, ...)   # once
    stats = optimize(model, optimizer, batch, grpo, ...)   # mu x minibatches optimizer steps

Every micro-batch divides by its *minibatch's* loss normaliser (`algos.loss_normalizer`), so
the accumulated gradient never depends on `micro_batch_size`, nor on how many ranks share the
minibatch: under torchrun every rank holds the whole batch, runs its contiguous share of each
minibatch through the `train.replica.Replica` (whose passes sync gradients) and divides by the
whole minibatch's normaliser, so the gradient is the single process's. The policy loss, the KL
estimator, the advantage scale and the aggregation are looked up by name in the registries of
`grpo.algos`: the update never branches on a variant. When the engine reports its own
sampling log-probs (vLLM), the batch carries them and each policy loss is weighted by the
truncated importance weight of `grpo.mismatch` (`grpo.is_correction`), against the trainer's
pi_old; the gap between the two is logged every step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from r1lab.core.memory import between_phases
from r1lab.core.models import cast_parameters
from r1lab.core.types import RolloutBatch
from r1lab.grpo.algos import (
    POLICY_LOSSES,
    aggregate,
    group_advantages,
    kl_penalty,
    loss_normalizer,
    masked_mean,
)
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.mismatch import IS_CORRECTIONS, engine_mismatch, resolve_correction
from r1lab.rollout.base import Generation
from r1lab.rollout.hf import left_pad
from r1lab.train.logprobs import prefix_logprobs
from r1lab.train.replica import Replica


@dataclass
class UpdateStats:
    """What the update did this step: optimizer steps taken and skipped (non-finite loss),
    the means of their loss statistics, and where the time went (seconds per phase)."""

    updates: float = 0.0
    skipped_updates: float = 0.0
    loss: float | None = None
    kl: float = 0.0
    clip_frac: float = 0.0
    entropy: float | None = None
    grad_norm: float | None = None
    # the engine's sampling distribution against the trainer's (None: the engine reports none)
    engine_kl: float | None = None
    engine_max_ratio: float | None = None
    engine_min_ratio: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # logprobs, policy, optimizer, sync

    @property
    def ok(self) -> bool:
        """False when every optimizer step of the step was skipped (a bad step)."""
        return not (self.skipped_updates and not self.updates)


def collate(
    groups: Sequence[Sequence[Generation]], pad_id: int, mask_truncated: bool
) -> dict[str, torch.Tensor]:
    """Tensors of one step: each group's prompt once, its completions right-padded.

    Returns prompt_ids/prompt_mask [U, Tp], rows [B], completion_ids/completion_attn [B, Tc],
    the loss mask completion_mask [B, Tc] (zeroed for truncated completions when
    `mask_truncated`: DAPO's overlong filtering), and engine_logp [B, Tc] (the engine's
    sampling log-probs, 0 on padding) when every generation carries them, else None.
    """
    prompt_ids, prompt_mask = left_pad([grp[0].prompt_ids for grp in groups], pad_id)
    flat = [g for grp in groups for g in grp]
    rows = torch.tensor([u for u, grp in enumerate(groups) for _ in grp], dtype=torch.long)
    width = max(1, max(len(g.completion_ids) for g in flat))
    ids = torch.full((len(flat), width), pad_id, dtype=torch.long)  # [B, Tc]
    attn = torch.zeros((len(flat), width), dtype=torch.long)  # [B, Tc]
    loss_mask = torch.zeros((len(flat), width), dtype=torch.float32)  # [B, Tc]
    reported = all(g.logprobs is not None for g in flat)
    engine_logp = torch.zeros((len(flat), width), dtype=torch.float32) if reported else None
    for i, g in enumerate(flat):
        n = len(g.completion_ids)
        ids[i, :n] = torch.tensor(g.completion_ids, dtype=torch.long)
        attn[i, :n] = 1
        loss_mask[i, :n] = float(g.finished or not mask_truncated)
        if engine_logp is not None:
            engine_logp[i, :n] = torch.tensor(g.logprobs, dtype=torch.float32)
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        rows=rows,
        completion_ids=ids,
        completion_attn=attn,
        completion_mask=loss_mask,
        engine_logp=engine_logp,
    )


def rows_logprobs(
    model: Any,
    batch: RolloutBatch,
    index: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    checkpoint_layers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [m, Tc] of the completions `index`, running each of their prompts once.

    The pass runs only the columns some row of `index` uses (the prompts' left padding and
    the completions' right padding that every row has are cut, then the result is padded
    back with zeros): a micro-batch of short completions does not pay for the step's longest.
    """
    prompts, rows = torch.unique(batch.rows[index], return_inverse=True)
    prompt_mask = batch.prompt_mask[prompts]  # [u, Tp]
    skip = int((prompt_mask.sum(0) == 0).long().cumprod(0).sum())  # left padding of them all
    attn = batch.completion_attn[index]  # [m, Tc]
    width = max(1, int(attn.sum(-1).max()))
    logp, entropy = prefix_logprobs(
        model,
        batch.prompt_ids[prompts, skip:],
        prompt_mask[:, skip:],
        rows,
        batch.completion_ids[index, :width],
        attn[:, :width],
        with_entropy=with_entropy,
        temperature=temperature,
        checkpoint_layers=checkpoint_layers,
    )  # [m, width]
    pad = attn.shape[1] - width
    if not pad:
        return logp, entropy
    return F.pad(logp, (0, pad)), None if entropy is None else F.pad(entropy, (0, pad))


def micro_batches(batch: RolloutBatch, rows: torch.Tensor, micro: int) -> list[torch.Tensor]:
    """`rows` in passes of at most `micro`: in their order (each group's completions
    together, so a pass runs few prompts), or longest completions first when that runs fewer
    tokens (a pass runs its prompts once and its completions to its longest one: with short
    prompts and uneven lengths, most of an unsorted pass can be padding). Either way the
    gradient is the same sum; only its summation order differs."""
    if not len(rows):
        return []
    lengths = batch.completion_attn[rows].sum(-1)  # [n]
    by_length = rows[torch.argsort(lengths, descending=True, stable=True)]

    def tokens(order: torch.Tensor) -> int:
        width = batch.prompt_mask.shape[1]
        return sum(
            len(torch.unique(batch.rows[part])) * width
            + len(part) * int(batch.completion_attn[part].sum(-1).max())
            for part in order.split(micro)
        )

    return list((by_length if tokens(by_length) < tokens(rows) else rows).split(micro))


@torch.no_grad()
def batch_logprobs(
    model: Any, batch: RolloutBatch, micro: int, temperature: float, replica: Any = None
) -> torch.Tensor:
    """Log-probs of every completion token under `model`, in micro-batches: [B, Tc]; with a
    distributed `replica`, each rank computes its share of the rows and all get them all."""
    replica = replica if replica is not None else Replica(model)
    share = replica.share(batch.size)
    local = torch.empty_like(batch.completion_mask[share.start : share.stop])  # [n, Tc]
    for index in micro_batches(batch, torch.arange(share.start, share.stop), micro):
        local[index - share.start] = rows_logprobs(model, batch, index, temperature)[0]
    return replica.gather_rows(local, batch.size)


def minibatch_loss(
    model: Any,
    batch: RolloutBatch,
    index: torch.Tensor,
    g: GRPOConfig,
    temperature: float,
    max_len: int,
) -> dict[str, float]:
    """Forward/backward one minibatch by micro-batches; gradients accumulate in the model.

    Every micro-batch divides by the *minibatch's* normaliser, so the summed gradient is the
    same however the minibatch is split (the loss scale never depends on micro_batch_size,
    nor on the ranks). `model` is a plain model or a `Replica` (this rank's share of `index`).
    `temperature` is the sampling temperature (log-probs of the distribution sampled from);
    `max_len` the generation limit (Dr. GRPO's constant normaliser).
    """
    replica = model if isinstance(model, Replica) else Replica(model)
    mask_all = batch.completion_mask[index]  # [M, Tc]
    normalizer = loss_normalizer(mask_all, g.loss_agg)
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}
    gaps: list[dict[str, torch.Tensor]] = []
    tokens = float(mask_all.sum().clamp(min=1))
    mine = replica.part(index)  # this rank's rows; every rank runs as many passes
    passes = replica.lockstep(micro_batches(batch, mine, g.micro_batch_size), index[:1])
    for number, (idx, live) in enumerate(passes):
        between_phases()  # the last micro-batch's activations
        with replica.training_pass(last=number == len(passes) - 1):
            if not live:  # a zero-weight pass: this rank's share is done, the others' is not
                (replica(rows_logprobs, batch, idx, temperature)[0].sum() * 0.0).backward()
                continue
            mask = batch.completion_mask[idx]  # [m, Tc]
            logp, entropy = replica(
                rows_logprobs,
                batch,
                idx,
                temperature,
                with_entropy=True,
                checkpoint_layers=g.activation_checkpointing,
            )  # [m, Tc]
            per_token, stats = policy_term(logp, batch, idx, g, gaps)  # [m, Tc]
            weight = float(mask.sum()) / tokens
            if batch.ref_logp is not None:
                kl = kl_penalty(logp, batch.ref_logp[idx], g.kl)  # [m, Tc]
                per_token = per_token + g.beta * kl
                totals["kl"] += float(masked_mean(kl.detach(), mask)) * weight
            loss = aggregate(per_token, mask, g.loss_agg, max_len, normalizer)
            between_phases()  # the forward's temporaries, before the backward's peak
            (loss * replica.loss_scale).backward()
        totals["loss"] += float(loss.detach())
        totals["clip_frac"] += float(stats["clip_frac"]) * weight
        totals["entropy"] += float(masked_mean(entropy.detach(), mask)) * weight
    totals = replica.total(totals)
    if gaps:
        totals.update(combine_gaps(gaps, tokens))
    return totals


def policy_term(
    logp: torch.Tensor,
    batch: RolloutBatch,
    idx: torch.Tensor,
    g: GRPOConfig,
    gaps: list[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token policy loss of rows `idx` [m, Tc] and its statistics. Where the samples
    are an engine's own (its log-probs in the batch), each token's loss is weighted by the
    truncated importance weight pi_old / pi_engine, and the gap is appended to `gaps`."""
    mask = batch.completion_mask[idx]  # [m, Tc]
    old = batch.old_logp[idx] if batch.old_logp is not None else logp.detach()
    per_token, stats = POLICY_LOSSES.pick(g.policy_loss)(
        logp, old, batch.advantages[idx], mask, g.clip_low, g.clip_high
    )  # [m, Tc]
    if batch.engine_logp is not None:
        engine = batch.engine_logp[idx]  # [m, Tc]
        correction = IS_CORRECTIONS.pick(resolve_correction(g.is_correction, True))
        per_token = per_token * correction(old, engine, mask, g.is_cap)
        gaps.append({**engine_mismatch(old, engine, mask), "tokens": mask.sum()})
    return per_token, stats


def combine_gaps(gaps: list[dict[str, torch.Tensor]], tokens: float) -> dict[str, float]:
    """One minibatch's engine-vs-trainer numbers from its micro-batches' (token-weighted KL,
    largest and smallest ratio)."""
    return {
        "engine_kl": sum(float(x["engine_kl"] * x["tokens"]) for x in gaps) / tokens,
        "engine_max_ratio": max(float(x["engine_max_ratio"]) for x in gaps),
        "engine_min_ratio": min(float(x["engine_min_ratio"]) for x in gaps),
    }


def optimize(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    g: GRPOConfig,
    generator: torch.Generator,
    temperature: float,
    max_len: int,
    grad_clip: float,
) -> UpdateStats:
    """mu passes of `minibatches` optimizer steps each; a non-finite loss skips its update.

    A minibatch holds batch_size / minibatches sequences, as configured; a smaller batch
    (dynamic sampling that ran out of resamples) makes fewer, not smaller, optimizer steps,
    and every sequence is used.
    """
    replica = model if isinstance(model, Replica) else Replica(model)
    size = max(1, g.batch_size // g.minibatches)  # sequences per optimizer step
    logs: list[dict[str, float]] = []
    skipped, policy_seconds, optimizer_seconds = 0, 0.0, 0.0
    for _ in range(g.mu):
        if g.minibatches > 1:
            order = torch.randperm(batch.size, generator=generator)
        else:
            order = torch.arange(batch.size)
        for index in order.split(size):
            optimizer.zero_grad(set_to_none=True)
            began = time.perf_counter()
            stats = minibatch_loss(replica, batch, index, g, temperature, max_len)
            policy_seconds += time.perf_counter() - began
            began = time.perf_counter()
            norm = replica.clip(grad_clip)  # the same global norm and loss on every rank
            if not (math.isfinite(norm) and math.isfinite(stats["loss"])):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            replica.sync()
            between_phases()
            optimizer_seconds += time.perf_counter() - began
            stats["grad_norm"] = norm
            logs.append(stats)
    optimizer.zero_grad(set_to_none=True)
    means = {k: sum(s[k] for s in logs) / len(logs) for k in logs[0]} if logs else {}
    for key, pick in (("engine_max_ratio", max), ("engine_min_ratio", min)):
        if key in means:  # the extremes over the step, not a mean
            means[key] = pick(s[key] for s in logs)
    seconds = {"policy": policy_seconds, "optimizer": optimizer_seconds}
    return UpdateStats(float(len(logs)), float(skipped), seconds=seconds, **means)


def build_batch(
    model: Any,
    ref_model: Any | None,
    groups: Sequence[Sequence[Generation]],
    rewards: Sequence[float],
    g: GRPOConfig,
    pad_id: int,
    temperature: float,
) -> RolloutBatch:
    """Tensors, advantages and the once-per-step old/ref log-probs for the optimisation.

    `model` is a plain model or a `Replica`; the whole batch is built on every rank, and each
    rank computes the old/ref log-probs of its share of the rows (gathered for all).
    """
    replica = model if isinstance(model, Replica) else Replica(model)
    policy = replica.weights
    reward_t = torch.tensor(rewards, dtype=torch.float32)  # [B]
    batch = RolloutBatch(
        **collate(groups, pad_id, g.mask_truncated),
        advantages=group_advantages(reward_t, g.group_size, g.advantage_scale),
        rewards=reward_t,
    ).to(policy.device)
    micro = g.micro_batch_size
    if g.mu * g.minibatches > 1:
        batch.old_logp = batch_logprobs(policy, batch, micro, temperature, replica)
    if ref_model is not None and g.beta > 0:
        batch.ref_logp = batch_logprobs(ref_model, batch, micro, temperature, replica)
    return batch


def make_reference(model: Any, compute_dtype: str = "float32") -> Any:
    """A frozen copy of the policy: pi_ref for the KL term.

    It only ever runs forward passes under `compute_dtype` autocast, where its matmuls are
    done in that dtype anyway; so with bf16 compute it is stored in bf16: half the memory, and
    no autocast cache of cast weights next to it.
    """
    ref = copy.deepcopy(model)
    if compute_dtype != "float32":
        cast_parameters(ref, getattr(torch, compute_dtype))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
