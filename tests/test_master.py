"""MasterAdamW: torch's AdamW on fp32 weights; fp32 masters under bf16 weights."""

from __future__ import annotations

import torch

from r1lab.config import OptimConfig
from r1lab.models import load_model
from r1lab.train.common import build_optimizer
from r1lab.train.master import MasterAdamW


def _grads(shape: tuple[int, ...], steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) for _ in range(steps)]


def _run(optimizer: torch.optim.Optimizer, param: torch.Tensor, grads: list[torch.Tensor]) -> None:
    for grad in grads:
        param.grad = grad.to(param.dtype)
        optimizer.step()


def test_fp32_weights_follow_torch_adamw() -> None:
    start = torch.randn(64, 32)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    kwargs = {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.1}
    grads = _grads(start.shape, 5)
    _run(MasterAdamW([ours], **kwargs), ours, grads)
    _run(torch.optim.AdamW([theirs], **kwargs), theirs, grads)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_bf16_weights_keep_an_fp32_master_that_follows_fp32_adamw() -> None:
    start = torch.randn(64, 32).bfloat16().float()  # representable in bf16
    half = start.bfloat16().requires_grad_()
    full = start.clone().requires_grad_()
    kwargs = {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.0}
    grads = [g.bfloat16().float() for g in _grads(start.shape, 4)]
    optimizer = MasterAdamW([half], **kwargs)
    _run(optimizer, half, grads)
    _run(torch.optim.AdamW([full], **kwargs), full, grads)
    master = optimizer.state[half]["master"]
    assert master.dtype == torch.float32
    torch.testing.assert_close(master, full.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(half.detach(), master.bfloat16())


def test_updates_below_bf16_resolution_accumulate_in_the_master() -> None:
    # Plain AdamW on a bf16 weight of 1.0 loses every 1e-4 step (resolution 2^-7 near 1);
    # the master keeps them and the weight moves once they add up.
    half = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    plain = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    grads = [torch.ones(8)] * 100
    _run(MasterAdamW([half], lr=1e-4, weight_decay=0.0), half, grads)
    _run(torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0), plain, grads)
    assert torch.equal(plain.detach(), torch.ones(8, dtype=torch.bfloat16))
    assert float(half.detach()[0]) < 1.0


def test_state_dict_round_trip_keeps_fp32_masters() -> None:
    half = torch.randn(16, 8).bfloat16().requires_grad_()
    optimizer = MasterAdamW([half], lr=1e-3)
    _run(optimizer, half, _grads(half.shape, 2))
    saved = optimizer.state_dict()
    again = MasterAdamW([half.detach().clone().requires_grad_()], lr=1e-3)
    again.load_state_dict(saved)
    state = next(iter(again.state.values()))
    for key in ("master", "exp_avg", "exp_avg_sq"):
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], optimizer.state[half][key])


def test_build_optimizer_picks_masters_for_bf16_models_only() -> None:
    model, _ = load_model("tiny:llama", "float32")
    assert type(build_optimizer(model, OptimConfig())) is torch.optim.AdamW
    model, _ = load_model("tiny:llama", "bfloat16")
    assert isinstance(build_optimizer(model, OptimConfig()), MasterAdamW)
