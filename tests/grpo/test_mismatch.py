"""mismatch.py: truncated importance weights and the engine-vs-trainer gap, by hand and by loop."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.grpo.mismatch import IS_CORRECTIONS, engine_mismatch, resolve_correction


def close(a: torch.Tensor, b, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype).expand_as(a), atol=atol,
                               rtol=0)


def logs(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor([list(probs)]))


def test_token_weight_hand_values_truncated_at_the_cap():
    old, engine = logs(0.5, 0.2, 0.9, 0.1), logs(0.25, 0.2, 0.3, 0.2)
    weight = IS_CORRECTIONS["token"](old, engine, torch.ones(1, 4), 2.0)
    close(weight, [[2.0, 1.0, 2.0, 0.5]])  # ratio 3 truncated to 2; below 1 is kept


def test_sequence_weight_is_the_truncated_product_over_valid_tokens():
    old, engine = logs(0.5, 0.3, 0.7), logs(0.25, 0.4, 0.01)
    mask = torch.tensor([[1, 1, 0]])  # the padded third token must not count
    close(IS_CORRECTIONS["sequence"](old, engine, mask, 2.0), [[1.5]])
    close(IS_CORRECTIONS["sequence"](logs(0.5, 0.5), logs(0.25, 0.25), torch.ones(1, 2), 2.0),
          [[2.0]])  # 4, truncated


def test_weights_carry_no_gradient_and_stay_finite_on_padding():
    old = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    engine = torch.tensor([[-1.0, -1e4]])  # garbage in a padded slot
    for name in IS_CORRECTIONS:
        weight = IS_CORRECTIONS[name](old, engine, torch.tensor([[1, 0]]), 2.0)
        assert not weight.requires_grad and torch.isfinite(weight).all()


def test_weights_match_loop():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 5, generator=g, dtype=torch.float64) * 3
    engine = old + torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.4
    mask = torch.arange(5)[None, :] < torch.tensor([0, 1, 2, 3, 4, 5])[:, None]
    token = IS_CORRECTIONS["token"](old, engine, mask, 1.5)
    sequence = IS_CORRECTIONS["sequence"](old, engine, mask, 1.5)
    for i in range(6):
        product = 1.0
        for j in range(5):
            ratio = math.exp(old[i, j].item() - engine[i, j].item())
            assert token[i, j].item() == pytest.approx(min(ratio, 1.5))
            product *= ratio if mask[i, j] else 1.0
        assert sequence[i, 0].item() == pytest.approx(min(product, 1.5))


def test_engine_mismatch_hand_values():
    gap = engine_mismatch(logs(0.5, 0.2, 0.9), logs(0.25, 0.2, 0.01), torch.tensor([[1, 1, 0]]))
    close(gap["engine_kl"], (2 - math.log(2) - 1) / 2)
    close(gap["engine_max_ratio"], 2.0)
    close(gap["engine_min_ratio"], 1.0)
    same = engine_mismatch(logs(0.5), logs(0.5), torch.ones(1, 1))
    assert float(same["engine_kl"]) == 0 and float(same["engine_max_ratio"]) == 1
    empty = engine_mismatch(logs(0.5), logs(0.1), torch.zeros(1, 1))
    assert {k: float(v) for k, v in empty.items()} == {
        "engine_kl": 0.0, "engine_max_ratio": 1.0, "engine_min_ratio": 1.0}


def test_auto_corrects_exactly_when_the_engine_reports_log_probs():
    assert resolve_correction("auto", True) == "token"
    assert resolve_correction("auto", False) == "none"
    assert resolve_correction("sequence", True) == "sequence"
    assert resolve_correction("none", False) == "none"
    with pytest.raises(ValueError, match="needs the engine's sampling log-probs"):
        resolve_correction("token", False)


# ----------------------------------------------------------------------------- in the update
def engine_batch(policy, config, offset: float | None):
    """Two groups of two fabricated completions; the engine reports the trainer's own
    log-probs minus `offset` (pi_old / pi_engine = e^offset on every token), or none."""
    from r1lab.grpo import update
    from r1lab.rollout.base import Generation

    prompts, completions = [[1, 530, 2807], [1, 77]], [[11, 12, 13], [21, 22], [31, 32], [41]]
    groups = [[Generation(prompts[i // 2], completions[i], "", True) for i in (u * 2, u * 2 + 1)]
              for u in range(2)]
    g = config.grpo
    batch = update.build_batch(policy, None, groups, [1.0, 0.0, 0.0, 1.0], g, 2, 1.0)
    if offset is not None:
        own = update.batch_logprobs(policy, batch, 4, 1.0)  # [B, Tc]
        batch.engine_logp = (own - offset) * batch.completion_attn
    return batch


def gradients(policy, config, batch):
    from r1lab.grpo import update

    policy.zero_grad(set_to_none=True)
    stats = update.minibatch_loss(policy, batch, torch.arange(4), config.grpo, 1.0, 8)
    grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    policy.zero_grad(set_to_none=True)
    return grads, stats


@pytest.mark.parametrize(
    ("correction", "cap", "scale"),
    [("auto", 2.0, 1.5), ("token", 1.2, 1.2), ("sequence", 2.0, 2.0), ("none", 2.0, 1.0)],
)
def test_the_update_weights_each_loss_by_the_truncated_engine_ratio(
    policy, correction, cap, scale
):
    from r1lab.grpo.config import build_config

    base = ["model.spec=tiny:llama", "grpo.batch_size=4", "grpo.group_size=2", "grpo.beta=0",
            "generation.engine=vllm", f"grpo.is_cap={cap}"]
    config = build_config({}, [*base, f"grpo.is_correction={correction}"])
    unweighted = build_config({}, [*base, "grpo.is_correction=auto"])
    plain, _ = gradients(policy, unweighted, engine_batch(policy, config, None))  # none reported
    # every token ratio is 1.5; a sequence's is 1.5 ** length >= 1.5, all above the cap 2 but one
    weighted, stats = gradients(policy, config, engine_batch(policy, config, math.log(1.5)))
    if correction != "sequence":
        torch.testing.assert_close(weighted, plain * scale, rtol=1e-4, atol=1e-6)
    else:  # the one-token completion keeps 1.5, the others are capped at 2: not a plain scale
        assert not torch.allclose(weighted, plain * 1.5) and not torch.allclose(weighted, plain * 2)
    assert stats["engine_kl"] == pytest.approx(1.5 - math.log(1.5) - 1, rel=1e-4)
    assert stats["engine_max_ratio"] == pytest.approx(1.5, rel=1e-4)
    assert stats["engine_min_ratio"] == pytest.approx(1.5, rel=1e-4)
