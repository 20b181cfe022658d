"""GRPO, as DeepSeek wrote it, one step at a time.

Each step:
  1. draw P questions and sample G completions of each from pi_old (the rollout engine);
  2. score every completion with the rule rewards (each term kept for logging);
  3. group-normalise the rewards into advantages (no critic: the group is the baseline);
  4. once, compute pi_old log-probs (only when the policy moves within the step) and
     pi_ref log-probs (only when beta > 0);
  5. for mu passes over the batch, split into minibatches, each an optimizer step built by
     gradient accumulation over micro-batches: clipped surrogate + beta * KL(pi || pi_ref),
     aggregated by the named mode (GRPO / DAPO / Dr. GRPO).

Where this departs from the paper, on purpose and by option: clip-higher, dynamic sampling,
truncation masking, overlong shaping and the Dr. GRPO/DAPO aggregations (all off in the `grpo`
preset); the reference can be reset to the policy every N steps, as R1's training did.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch

from r1lab.algos import (
    aggregate,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    loss_normalizer,
    masked_mean,
)
from r1lab.config import Config
from r1lab.logprobs import prefix_logprobs
from r1lab.memory import between_phases
from r1lab.models import cast_parameters
from r1lab.rewards import RewardInputs, RewardTerm, compute_rewards
from r1lab.rollout.base import Generation, RolloutEngine, SamplingParams
from r1lab.rollout.hf import left_pad
from r1lab.tasks.base import Task
from r1lab.templates import Prompt, render
from r1lab.types import Example, RolloutBatch


def reward_terms(config: Config) -> list[RewardTerm]:
    """The configured reward terms, plus DAPO's overlong shaping when the preset asks for it."""
    terms = [r.term() for r in config.rewards]
    if config.grpo.overlong_buffer and not any(t.reward_name == "overlong" for t in terms):
        terms.append(RewardTerm("overlong", 1.0, {"buffer": config.grpo.overlong_buffer}))
    return terms


def sampling_params(config: Config) -> SamplingParams:
    gen = config.generation
    return SamplingParams(
        n=config.grpo.group_size,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        stop=tuple(gen.stop),
    )


def render_all(
    config: Config, examples: Sequence[Example], tokenizer: Any, shots: Sequence[Example]
) -> list[Prompt]:
    return [render(config.template.name, ex.prompt, tokenizer, shots) for ex in examples]


def score_groups(
    config: Config,
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[Generation]],
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Rewards for every completion (flattened group-contiguous) and the per-term values."""
    flat = [
        (ex, p, g) for ex, p, group in zip(examples, prompts, groups, strict=True) for g in group
    ]
    inputs = RewardInputs(
        completions=[g.text for _, _, g in flat],
        examples=[ex for ex, _, _ in flat],
        task=task,
        prefill=prompts[0].prefill if prompts else "",
        lengths=[len(g.completion_ids) for _, _, g in flat],
        max_length=config.generation.max_new_tokens,
        truncated=[not g.finished for _, _, g in flat],
        language=config.train.language,
    )
    return compute_rewards(reward_terms(config), inputs)


def collate(
    groups: Sequence[Sequence[Generation]], pad_id: int, mask_truncated: bool
) -> dict[str, torch.Tensor]:
    """Tensors of one step: each group's prompt once, its completions right-padded.

    Returns prompt_ids/prompt_mask [U, Tp], rows [B], completion_ids/completion_attn [B, Tc]
    and the loss mask completion_mask [B, Tc] (zeroed for truncated completions when
    `mask_truncated`: DAPO's overlong filtering).
    """
    prompt_ids, prompt_mask = left_pad([grp[0].prompt_ids for grp in groups], pad_id)
    flat = [g for grp in groups for g in grp]
    rows = torch.tensor([u for u, grp in enumerate(groups) for _ in grp], dtype=torch.long)
    width = max(1, max(len(g.completion_ids) for g in flat))
    ids = torch.full((len(flat), width), pad_id, dtype=torch.long)  # [B, Tc]
    attn = torch.zeros((len(flat), width), dtype=torch.long)  # [B, Tc]
    loss_mask = torch.zeros((len(flat), width), dtype=torch.float32)  # [B, Tc]
    for i, g in enumerate(flat):
        n = len(g.completion_ids)
        ids[i, :n] = torch.tensor(g.completion_ids, dtype=torch.long)
        attn[i, :n] = 1
        loss_mask[i, :n] = float(g.finished or not mask_truncated)
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        rows=rows,
        completion_ids=ids,
        completion_attn=attn,
        completion_mask=loss_mask,
    )


def rows_logprobs(
    model: Any,
    batch: RolloutBatch,
    index: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    checkpoint_layers: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [m, Tc] of the completions `index`, running each of their prompts once."""
    prompts, rows = torch.unique(batch.rows[index], return_inverse=True)
    return prefix_logprobs(
        model,
        batch.prompt_ids[prompts],
        batch.prompt_mask[prompts],
        rows,
        batch.completion_ids[index],
        batch.completion_attn[index],
        with_entropy=with_entropy,
        temperature=temperature,
        checkpoint_layers=checkpoint_layers,
    )


@torch.no_grad()
def batch_logprobs(model: Any, batch: RolloutBatch, micro: int, temperature: float) -> torch.Tensor:
    """Log-probs of every completion token under `model`, in micro-batches: [B, Tc]."""
    parts = [
        rows_logprobs(model, batch, torch.arange(s, min(s + micro, batch.size)), temperature)[0]
        for s in range(0, batch.size, micro)
    ]
    return torch.cat(parts)


def minibatch_loss(
    model: Any, batch: RolloutBatch, index: torch.Tensor, config: Config
) -> dict[str, float]:
    """Forward/backward one minibatch by micro-batches; gradients accumulate in `model`.

    Every micro-batch divides by the *minibatch's* normaliser, so the summed gradient is the
    same however the minibatch is split (the loss scale never depends on micro_batch_size).
    """
    g = config.grpo
    mask_all = batch.completion_mask[index]  # [M, Tc]
    normalizer = loss_normalizer(mask_all, g.loss_agg)
    totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0}
    tokens = float(mask_all.sum().clamp(min=1))
    for start in range(0, len(index), g.micro_batch_size):
        between_phases()  # the last micro-batch's activations
        idx = index[start : start + g.micro_batch_size]
        mask = batch.completion_mask[idx]  # [m, Tc]
        logp, entropy = rows_logprobs(
            model,
            batch,
            idx,
            max(config.generation.temperature, 1e-6),
            with_entropy=True,
            checkpoint_layers=g.activation_checkpointing,
        )  # [m, Tc]
        old = batch.old_logp[idx] if batch.old_logp is not None else logp.detach()
        per_token, stats = clipped_policy_loss(
            logp, old, batch.advantages[idx], mask, g.clip_low, g.clip_high
        )  # [m, Tc]
        weight = float(mask.sum()) / tokens
        if batch.ref_logp is not None:
            kl = kl_penalty(logp, batch.ref_logp[idx], g.kl)  # [m, Tc]
            per_token = per_token + g.beta * kl
            totals["kl"] += float(masked_mean(kl.detach(), mask)) * weight
        loss = aggregate(per_token, mask, g.loss_agg, config.generation.max_new_tokens, normalizer)
        between_phases()  # the forward's temporaries, before the backward's peak
        loss.backward()
        totals["loss"] += float(loss.detach())
        totals["clip_frac"] += float(stats["clip_frac"]) * weight
        totals["entropy"] += float(masked_mean(entropy.detach(), mask)) * weight
    return totals


def optimize(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    config: Config,
    generator: torch.Generator,
) -> dict[str, float]:
    """mu passes of `minibatches` optimizer steps each; a non-finite loss skips its update.

    A minibatch holds batch_size / minibatches sequences, as configured; a smaller batch
    (dynamic sampling that ran out of resamples) makes fewer, not smaller, optimizer steps,
    and every sequence is used.
    """
    g = config.grpo
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
            stats = minibatch_loss(model, batch, index, config)
            policy_seconds += time.perf_counter() - began
            began = time.perf_counter()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            if not (torch.isfinite(norm) and torch.isfinite(torch.tensor(stats["loss"]))):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            between_phases()
            optimizer_seconds += time.perf_counter() - began
            stats["grad_norm"] = float(norm)
            logs.append(stats)
    optimizer.zero_grad(set_to_none=True)
    out = {k: sum(s[k] for s in logs) / len(logs) for k in logs[0]} if logs else {}
    out["updates"] = float(len(logs))
    out["skipped_updates"] = float(skipped)
    out["time/policy"] = policy_seconds
    out["time/optimizer"] = optimizer_seconds
    return out


def build_batch(
    model: Any,
    ref_model: Any | None,
    groups: Sequence[Sequence[Generation]],
    rewards: Sequence[float],
    config: Config,
    pad_id: int,
) -> RolloutBatch:
    """Tensors, advantages and the once-per-step old/ref log-probs for the optimisation."""
    g = config.grpo
    reward_t = torch.tensor(rewards, dtype=torch.float32)  # [B]
    batch = RolloutBatch(
        **collate(groups, pad_id, g.mask_truncated),
        advantages=group_advantages(reward_t, g.group_size, g.advantage_scale),
        rewards=reward_t,
    ).to(model.device)
    temperature = max(config.generation.temperature, 1e-6)
    if g.mu * g.minibatches > 1:
        batch.old_logp = batch_logprobs(model, batch, g.micro_batch_size, temperature)
    if ref_model is not None and g.beta > 0:
        batch.ref_logp = batch_logprobs(ref_model, batch, g.micro_batch_size, temperature)
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


def rollout_step(
    config: Config,
    engine: RolloutEngine,
    task: Task,
    draw: Any,
    tokenizer: Any,
    shots: Sequence[Example],
) -> dict[str, Any]:
    """Sample, score and (with dynamic sampling) refill until P groups carry a signal.

    Returns the kept examples/prompts/groups/rewards/terms and the generation statistics of
    everything sampled this step (the first draw defines zero_std_frac).
    """
    g = config.grpo
    params = sampling_params(config)
    kept: dict[str, list[Any]] = {"examples": [], "prompts": [], "groups": [], "rewards": []}
    terms_kept: dict[str, list[float | None]] = {}
    sampled_tokens, gen_seconds, zero_std_frac = 0, 0.0, None
    for attempt in range(1 + (g.max_resample if g.dynamic_sampling else 0)):
        need = g.prompts_per_step - len(kept["groups"])
        if need <= 0:
            break
        examples = draw(g.prompts_per_step if attempt == 0 else need)
        prompts = render_all(config, examples, tokenizer, shots)
        start = time.perf_counter()
        groups = engine.generate(prompts, params)
        gen_seconds += time.perf_counter() - start
        sampled_tokens += sum(len(x.completion_ids) for grp in groups for x in grp)
        rewards, terms = score_groups(config, task, examples, prompts, groups)
        G = g.group_size
        flat_std = [
            max(rewards[i * G : (i + 1) * G]) > min(rewards[i * G : (i + 1) * G])
            for i in range(len(groups))
        ]
        if zero_std_frac is None:
            zero_std_frac = 1.0 - sum(flat_std) / len(flat_std)
        for i in range(len(groups)):
            if g.dynamic_sampling and not flat_std[i]:
                continue
            if len(kept["groups"]) >= g.prompts_per_step:
                break
            kept["examples"].append(examples[i])
            kept["prompts"].append(prompts[i])
            kept["groups"].append(groups[i])
            kept["rewards"].extend(rewards[i * G : (i + 1) * G])
            for name, values in terms.items():
                terms_kept.setdefault(name, []).extend(values[i * G : (i + 1) * G])
    kept["terms"] = terms_kept
    kept["sampled_tokens"] = sampled_tokens
    kept["gen_seconds"] = gen_seconds
    kept["zero_std_frac"] = zero_std_frac or 0.0
    return kept
