"""algos.py: hand-computed values, edge cases (no NaN), and loop versions vs vectorised ones."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.grpo.algos import (
    ADVANTAGE_SCALES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    group_advantages,
    kl_penalty,
    loss_normalizer,
    masked_mean,
)
from r1lab.grpo.algos import clipped_policy_loss as policy_loss

MODES = sorted(AGGREGATIONS)


def close(a: torch.Tensor, b, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=0)


def random_batch(b: int = 8, t: int = 7, seed: int = 0):
    """Random log-probs, advantages and a right-padded mask with one empty row."""
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    old_logp = logp + torch.randn(b, t, generator=g) * 0.3
    adv = torch.randn(b, generator=g)
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = 0
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return logp, old_logp, adv, mask


# ----------------------------------------------------------------------------- advantages
def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    close(group_advantages(r, 2), [1.0, -1.0, -1.0, 1.0])
    close(group_advantages(r, 4), [1.0, -1.0, -1.0, 1.0])  # mean .5, population std .5
    close(group_advantages(r, 2, scale="none"), [0.5, -0.5, -0.5, 0.5])
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    close(group_advantages(r, 2, scale="batch"), [0.5 / 0.75**0.5 * 2, -0.5 / 0.75**0.5 * 2, 0, 0],
          atol=1e-5)
    close(group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3), [1.5**0.5, -(1.5**0.5), 0.0],
          atol=1e-5)


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALES))
def test_equal_groups_give_exact_zero(scale):
    # 0.1 * 3 is not exactly representable: a naive (r - mean) / (0 + eps) gives noise ~1e-2.
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.7, 0.7, 0.7])
    adv = group_advantages(r, 3, scale=scale)
    assert torch.isfinite(adv).all()
    assert (adv[:3] == 0).all() and (adv[6:] == 0).all()
    assert (adv[3:6] != 0).all()
    same = group_advantages(torch.full((6,), 0.3), 3, scale=scale)
    assert (same == 0).all()


def test_group_advantages_int_rewards_and_errors():
    close(group_advantages(torch.tensor([1, 0]), 2), [1.0, -1.0])
    with pytest.raises(ValueError, match="group"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="valid: batch, group, none"):
        group_advantages(torch.zeros(4), 2, scale="std")


def loop_advantages(r: list[float], g: int, scale: str, eps: float = 1e-6) -> list[float]:
    n = len(r)
    batch_mean = sum(r) / n
    batch_std = math.sqrt(sum((x - batch_mean) ** 2 for x in r) / n)
    out = []
    for start in range(0, n, g):
        grp = r[start:start + g]
        mean = sum(grp) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / g)
        denom = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        out += [0.0 if max(grp) == min(grp) else (x - mean) / denom for x in grp]
    return out


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALES))
def test_group_advantages_match_loop(scale):
    torch.manual_seed(0)
    r = torch.randint(0, 3, (48,)).double() / 2  # many tied and some all-equal groups
    expected = torch.tensor(loop_advantages(r.tolist(), 4, scale), dtype=torch.float64)
    torch.testing.assert_close(group_advantages(r, 4, scale=scale), expected)


# ----------------------------------------------------------------------------- KL
def test_kl_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    close(kl_penalty(logp, ref, "k1"), [math.log(2)])
    close(kl_penalty(logp, ref, "k2"), [0.5 * math.log(2) ** 2])
    close(kl_penalty(logp, ref, "k3"), [0.5 + math.log(2) - 1])
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_k3_nonnegative_zero_at_equality_and_finite():
    torch.manual_seed(0)
    logp, ref = -torch.rand(1000) * 30, -torch.rand(1000) * 30
    k3 = kl_penalty(logp, ref)
    assert (k3 >= 0).all() and torch.isfinite(k3).all()
    assert (kl_penalty(logp, logp) == 0).all()
    extreme = kl_penalty(torch.tensor([-200.0, 0.0]), torch.tensor([0.0, -200.0]))
    assert torch.isfinite(extreme).all()


# ----------------------------------------------------------------------------- policy loss
def test_policy_loss_hand_values():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.0, 1.25, 0.5, 1.1]]))
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = policy_loss(logp, old, torch.tensor([2.0]), mask)
    close(loss, [[-2.0, -2.4, -1.0, -2.2]], atol=1e-5)
    close(stats["clip_frac"], 0.25)
    close(stats["ratio_mean"], (1 + 1.25 + 0.5 + 1.1) / 4, atol=1e-6)
    loss, stats = policy_loss(logp, old, torch.tensor([-1.0]), mask)
    close(loss, [[1.0, 1.25, 0.8, 1.1]], atol=1e-5)  # A<0: ratio 0.5 clipped up to 0.8
    close(stats["clip_frac_low"], 0.25)
    close(stats["clip_frac_high"], 0.0)


def test_clip_higher_is_asymmetric():
    logp, old = torch.log(torch.tensor([[1.25]])), torch.zeros(1, 1)
    mask, pos = torch.ones(1, 1), torch.tensor([1.0])
    for clip_high, expected, frac in [(0.2, -1.2, 1.0), (0.28, -1.25, 0.0)]:
        lp = logp.clone().requires_grad_()
        loss, stats = policy_loss(lp, old, pos, mask, clip_low=0.2, clip_high=clip_high)
        close(loss.detach(), [[expected]], atol=1e-6)
        close(stats["clip_frac"], frac)
        loss.sum().backward()
        assert (lp.grad != 0).item() == (frac == 0.0)  # the clipped branch has no gradient
    # clip_low still bites below 1 - 0.2 for negative advantages
    loss, _ = policy_loss(torch.log(torch.tensor([[0.7]])), old, -pos, mask, 0.2, 0.28)
    close(loss, [[0.8]], atol=1e-6)


def loop_policy_loss(logp, old, adv, mask, lo, hi):
    b, t = logp.shape
    loss = torch.zeros(b, t, dtype=logp.dtype)
    clipped_count, ratio_sum, n = 0, 0.0, 0
    for i in range(b):
        for j in range(t):
            ratio = math.exp(logp[i, j].item() - old[i, j].item())
            a = adv[i].item()
            un, cl = ratio * a, min(max(ratio, 1 - lo), 1 + hi) * a
            loss[i, j] = -min(un, cl)
            if mask[i, j]:
                n += 1
                ratio_sum += ratio
                clipped_count += cl < un
    return loss, clipped_count / max(n, 1), ratio_sum / max(n, 1)


def test_policy_loss_matches_loop():
    logp, old, adv, mask = random_batch(seed=1)
    logp, old, adv = logp.double(), old.double(), adv.double()
    loss, stats = POLICY_LOSSES["clip"](logp, old, adv, mask, 0.2, 0.28)
    ref_loss, ref_frac, ref_ratio = loop_policy_loss(logp, old, adv, mask, 0.2, 0.28)
    torch.testing.assert_close(loss, ref_loss)
    assert 0 < ref_frac < 1
    close(stats["clip_frac"], ref_frac, atol=1e-9)
    close(stats["ratio_mean"], ref_ratio, atol=1e-9)
    assert not stats["ratio_mean"].requires_grad


def test_policy_loss_garbage_in_padding_stays_finite():
    logp = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1e4]])  # padded slot: absurd log-ratio
    mask = torch.tensor([[1, 0]])
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), mask)
    total = aggregate(loss, mask, "token-mean")
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logp.grad).all()
    close(stats["ratio_mean"], 1.0)


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_worked_example():
    loss = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    close(aggregate(loss, mask, "seq-mean-token-mean"), 1.5)
    close(aggregate(loss, mask, "token-mean"), 1.75)
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", max_len=4), 0.875)
    parts = [aggregate(loss[i:i + 1], mask[i:i + 1], "token-mean", normalizer=4) for i in (0, 1)]
    close(sum(parts), 1.75)


def test_aggregate_errors_and_empty_rows():
    loss, mask = torch.ones(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="seq-mean-token-mean, seq-mean-token-sum-norm"):
        aggregate(loss, mask, "sum")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(loss, mask, "seq-mean-token-sum-norm")
    for mode in MODES:
        assert aggregate(loss * float("nan"), mask, mode, max_len=3) == 0
    close(masked_mean(torch.tensor([[1.0, 9.0], [3.0, 5.0]]), torch.tensor([[1, 0], [1, 1]])), 3.0)
    close(masked_mean(torch.ones(2, 2), torch.tensor([[1, 1], [0, 0]]), dim=1), [1.0, 0.0])


def loop_aggregate(loss, mask, mode, max_len):
    per_seq, total, tokens = [], 0.0, 0
    for i in range(loss.shape[0]):
        valid = [loss[i, j].item() for j in range(loss.shape[1]) if mask[i, j]]
        total, tokens = total + sum(valid), tokens + len(valid)
        per_seq.append(sum(valid) / (len(valid) if mode == "seq-mean-token-mean" else max_len)
                       if valid else 0.0)
    return total / max(tokens, 1) if mode == "token-mean" else sum(per_seq) / len(per_seq)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_matches_loop(mode):
    _, _, _, mask = random_batch(seed=2)
    loss = torch.randn(mask.shape, dtype=torch.float64)
    expected = loop_aggregate(loss, mask, mode, max_len=10)
    close(aggregate(loss, mask, mode, max_len=10), expected, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_split_invariance(mode):
    """1x8 vs 4x2 vs 8x1 micro-batches: same summed loss and same accumulated gradient."""
    logp, old, adv, mask = random_batch(b=8, seed=3)
    norm = loss_normalizer(mask, mode)

    def accumulated(n_micro: int):
        lp = logp.clone().requires_grad_()
        total = torch.zeros(())
        for rows in torch.arange(8).chunk(n_micro):
            per_tok, _ = policy_loss(lp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
            part = aggregate(per_tok, mask[rows], mode, max_len=7, normalizer=norm)
            part.backward()
            total = total + part.detach()
        return total, lp.grad

    full_loss, full_grad = accumulated(1)
    for n_micro in (4, 8):
        loss, grad = accumulated(n_micro)
        torch.testing.assert_close(loss, full_loss)
        torch.testing.assert_close(grad, full_grad)
    per_tok, _ = policy_loss(logp, old, adv, mask, 0.2, 0.28)
    torch.testing.assert_close(full_loss, aggregate(per_tok, mask, mode, max_len=7))


def test_loss_normalizer_counts():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert loss_normalizer(mask, "token-mean") == 3.0
    assert loss_normalizer(mask, "seq-mean-token-mean") == 3.0
    assert loss_normalizer(torch.zeros(2, 2), "token-mean") == 1.0


# ----------------------------------------------------------------------------- GSPO
def test_gspo_hand_values_one_ratio_per_output():
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.3, -0.3], [0.2, 0.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, stats = POLICY_LOSSES["gspo"](logp, old, torch.tensor([1.0, 1.0]), mask, 3e-4, 4e-4)
    close(loss, [[-1.0, -1.0], [-1.0004, -1.0004]], atol=1e-6)  # s = 1; s = e^0.1, clipped
    close(stats["clip_frac"], 0.5)
    close(stats["ratio_mean"], (2 + 2 * math.exp(0.1)) / 4, atol=1e-6)


def loop_gspo(logp, old, adv, mask, lo, hi):
    """GSPO as the paper writes it: one differentiable ratio per output, mean over outputs."""
    total = 0.0
    for i in range(logp.shape[0]):
        valid = [j for j in range(logp.shape[1]) if mask[i, j]]
        if valid:
            s = torch.exp(sum(logp[i, j] - old[i, j] for j in valid) / len(valid))
            total = total - torch.minimum(s * adv[i], s.clamp(1 - lo, 1 + hi) * adv[i])
    return total / logp.shape[0]


def test_gspo_gradient_is_the_sequence_level_losses():
    logp, old, adv, mask = random_batch(seed=4)
    old = logp + torch.randn(logp.shape, generator=torch.Generator().manual_seed(5)) * 0.05
    logp, old, adv = logp.double(), old.double(), adv.double()
    lp = logp.clone().requires_grad_()
    per_token, stats = POLICY_LOSSES["gspo"](lp, old, adv, mask, 0.01, 0.02)
    aggregate(per_token, mask, "seq-mean-token-mean").backward()
    ref = logp.clone().requires_grad_()
    loop_gspo(ref, old, adv, mask, 0.01, 0.02).backward()
    torch.testing.assert_close(lp.grad, ref.grad)
    assert 0 < float(stats["clip_frac"]) < 1  # both branches were exercised


# ----------------------------------------------------------------------------- CISPO
def test_cispo_hand_values_and_a_capped_token_keeps_its_gradient():
    old = torch.zeros(1, 3)
    lp = torch.tensor([[math.log(1.5), math.log(0.9), math.log(0.5)]], requires_grad=True)
    mask = torch.ones(1, 3)
    loss, stats = POLICY_LOSSES["cispo"](lp, old, torch.tensor([1.0]), mask, 0.2, 0.28)
    weights = [1.28, 0.9, 0.8]  # 1.5 capped at 1 + 0.28; 0.5 raised to 1 - 0.2
    close(loss.detach(), [[-w * x for w, x in zip(weights, lp[0].tolist(), strict=True)]])
    close(stats["clip_frac"], 2 / 3)
    loss.sum().backward()
    close(lp.grad, [[-w for w in weights]])  # the weight is a constant, never 0


def test_cispo_matches_loop():
    logp, old, adv, mask = random_batch(seed=6)
    logp, old, adv = logp.double(), old.double(), adv.double()
    loss, _ = POLICY_LOSSES["cispo"](logp, old, adv, mask, 1.0, 0.28)
    expected = torch.zeros_like(logp)
    for i in range(logp.shape[0]):
        for j in range(logp.shape[1]):
            ratio = math.exp(logp[i, j].item() - old[i, j].item())
            expected[i, j] = -min(max(ratio, 0.0), 1.28) * adv[i].item() * logp[i, j].item()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("mode", MODES)
def test_every_policy_loss_is_micro_batch_split_invariant(name, mode):
    logp, old, adv, mask = random_batch(b=8, seed=7)
    norm = loss_normalizer(mask, mode)
    grads = []
    for n_micro in (1, 4):
        lp = logp.clone().requires_grad_()
        for rows in torch.arange(8).chunk(n_micro):
            per_tok, _ = POLICY_LOSSES[name](lp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
            aggregate(per_tok, mask[rows], mode, max_len=7, normalizer=norm).backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])
