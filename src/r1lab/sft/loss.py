"""The SFT loss: packed, padding-free micro-batches, completion tokens only.

Sequences are packed back to back into one row per micro-batch, position ids restarting at
each sequence, so attention stays inside its own sequence (transformers builds the
block-diagonal mask from the position ids; `check_packing` refuses a model whose attention
does not). The loss is the NLL of the completion tokens (+ EOS), summed and divided by the
completion tokens of the *whole step*, so the gradient is the same however the step is split.
Log-probs come from `train.logprobs.hidden_logprobs`: only completion positions go through the
LM head, a chunk at a time, so no [B, T, V] logits are ever materialised. Under torchrun each
rank packs and runs its share of the step's sequences through the `train.replica.Replica`,
still divided by the whole step's target count: the gradient is the single process's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from r1lab.core.errors import UserError
from r1lab.sft.encode import Encoded
from r1lab.train.logprobs import hidden_logprobs
from r1lab.train.replica import Replica


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into micro-batches of at most `capacity` tokens (first-fit decreasing).

    Every index appears exactly once; a sequence longer than `capacity` gets its own batch.

    >>> pack([5, 3, 4, 2], 7)
    [[0, 3], [2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def packed_logprobs(model: Any, seqs: Sequence[Encoded]) -> torch.Tensor:
    """Log-probs of every loss target of `seqs`, run as one packed row: [n_targets].

    input_ids/position_ids [1, N]: sequences back to back, positions restarting at 0, no
    attention mask, so the model attends within each sequence only. Hidden state t predicts
    token t+1; a target is never a sequence's first token (the prompt comes first), so no
    prediction crosses a boundary.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([t for s in seqs for t in s.ids], device=device)[None]  # [1, N]
    positions = torch.cat([torch.arange(len(s.ids), device=device) for s in seqs])[None]
    starts = torch.tensor([s.start for s in seqs for _ in s.ids], device=device)  # [N]
    target = positions >= starts  # [1, N] bool: the completion (+ EOS) tokens
    hidden = model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False)[0]
    logp, _ = hidden_logprobs(model, hidden[:, :-1], ids[:, 1:], target[:, 1:])  # [1, N-1]
    return logp[target[:, 1:]]  # [n_targets]


def accumulate_gradients(
    model: Any, seqs: Sequence[Encoded], micro_batch_tokens: int
) -> dict[str, float]:
    """Backward the step's mean token NLL over packed micro-batches; grads accumulate.

    Each micro-batch's summed NLL is divided by the *step's* target count, so the gradients
    add up to those of one big batch, whatever `micro_batch_tokens` is and however many ranks
    share the step (`model`: a plain model, or a `Replica` running this rank's share).
    """
    replica = model if isinstance(model, Replica) else Replica(model)
    tokens = sum(s.targets for s in seqs)
    mine = replica.part(seqs)
    bins = pack([len(s.ids) for s in mine], micro_batch_tokens)
    packed = [[mine[i] for i in index] for index in bins]
    passes = replica.lockstep(packed, list(seqs[:1]))
    loss_sum = 0.0
    for number, (part, live) in enumerate(passes):
        with replica.training_pass(last=number == len(passes) - 1):
            loss = -replica(packed_logprobs, part).sum() / tokens * float(live)
            (loss * replica.loss_scale).backward()
        loss_sum += float(loss.detach())
    return {"loss": replica.total({"loss": loss_sum})["loss"], "tokens": float(tokens)}


@torch.no_grad()
def mean_nll(model: Any, seqs: Sequence[Encoded], micro_batch_tokens: int) -> float:
    """Mean NLL per target token of `seqs` (the held-out loss), in eval mode; a `Replica`
    splits the sequences over the ranks."""
    replica = model if isinstance(model, Replica) else Replica(model)
    plain = replica.weights
    mine = replica.part(seqs)
    was_training = plain.training
    plain.eval()
    try:
        total = sum(
            float(-packed_logprobs(plain, [mine[i] for i in index]).sum())
            for index in pack([len(s.ids) for s in mine], micro_batch_tokens)
        )
    finally:
        plain.train(was_training)
    total = replica.total({"nll": total})["nll"]
    return total / max(1, sum(s.targets for s in seqs))


@torch.no_grad()
def check_packing(model: Any) -> None:
    """Fail early when a model's attention ignores packed position ids (cross-talk)."""
    a, b = Encoded(tuple(range(1, 8)), 1), Encoded(tuple(range(3, 9)), 1)
    was_training = model.training
    model.eval()
    try:
        together = packed_logprobs(model, [a, b])
        apart = torch.cat([packed_logprobs(model, [a]), packed_logprobs(model, [b])])
    finally:
        model.train(was_training)
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if not torch.allclose(together, apart, atol=tolerance):
        attention = getattr(model.config, "_attn_implementation", None)
        raise UserError(
            f"{type(model).__name__} ({attention} attention) lets "
            "packed sequences attend to each other; SFT packs sequences and needs an attention "
            "that reads position ids (sdpa, eager, flash_attention_2)"
        )
