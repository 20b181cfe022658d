"""MasterAdamW: torch's AdamW on fp32 weights; fp32 masters under bf16 weights."""

from __future__ import annotations

import torch

from r1lab.core.models import load_model
from r1lab.grpo.config import OptimConfig
from r1lab.train.master import CHUNK, MasterAdamW, join_master, split_master
from r1lab.train.optim import build_optimizer


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
    master = optimizer.master(half)
    assert master.dtype == torch.float32
    torch.testing.assert_close(master, full.detach(), rtol=1e-6, atol=1e-7)
    # the master rounded to nearest (exact ties away from zero, where torch rounds to even)
    tie = (master.view(torch.int32) & 0xFFFF) == 0x8000
    assert torch.equal(half.detach()[~tie], master.bfloat16()[~tie])
    assert (half.detach()[tie].float().abs() > master[tie].abs()).all()
    assert optimizer.state[half]["master_low"].dtype == torch.int16  # half the memory of a copy


def test_split_and_join_of_fp32_masters_are_exact() -> None:
    values = torch.cat(
        [
            torch.randn(1000) * 10.0 ** torch.randint(-8, 8, (1000,)),
            torch.tensor([0.0, -0.0, 1.0, -1.0, 1e38, -1e-40, 1.00390625, -3.0078125]),
        ]
    )
    high = torch.empty(values.shape, dtype=torch.bfloat16)
    low = torch.empty(values.shape, dtype=torch.int16)
    split_master(values, high, low)
    assert torch.equal(join_master(high, low).view(torch.int32), values.view(torch.int32))
    # rounded to nearest: never more than half a bf16 ulp (2^-9 relative) from the master
    assert ((high.float() - values).abs() <= values.abs() * 2.0**-8 + 1e-40).all()  # subnormals
    tie = (values.view(torch.int32) & 0xFFFF) == 0x8000  # away from zero; torch: to even
    assert torch.equal(high[~tie], values[~tie].bfloat16())


def test_fp16_weights_keep_a_full_fp32_master() -> None:
    half = torch.ones(8, dtype=torch.float16, requires_grad=True)
    optimizer = MasterAdamW([half], lr=1e-5, weight_decay=0.0)
    _run(optimizer, half, [torch.ones(8)] * 3)
    assert optimizer.state[half]["master"].dtype == torch.float32
    torch.testing.assert_close(optimizer.master(half), torch.full((8,), 1 - 3e-5))


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


def test_state_dict_round_trip_keeps_exact_masters_and_fp32_moments() -> None:
    half = torch.randn(16, 8).bfloat16().requires_grad_()
    optimizer = MasterAdamW([half], lr=1e-3)
    _run(optimizer, half, _grads(half.shape, 2))
    saved = optimizer.state_dict()
    again = MasterAdamW([half.detach().clone().requires_grad_()], lr=1e-3)
    again.load_state_dict(saved)
    state = next(iter(again.state.values()))
    assert state["master_low"].dtype == torch.int16
    for key in ("master_low", "exp_avg", "exp_avg_sq"):
        assert state[key].dtype == optimizer.state[half][key].dtype
        assert torch.equal(state[key], optimizer.state[half][key])
    assert state["exp_avg"].dtype == torch.float32


def test_build_optimizer_picks_masters_for_bf16_models_only() -> None:
    model, _ = load_model("tiny:llama", "float32")
    assert type(build_optimizer(model, OptimConfig())) is torch.optim.AdamW
    model, _ = load_model("tiny:llama", "bfloat16")
    assert isinstance(build_optimizer(model, OptimConfig()), MasterAdamW)


def test_tensors_larger_than_a_chunk_update_like_small_ones(monkeypatch) -> None:
    start = torch.randn(3, 50).bfloat16()
    grads = [g.bfloat16().float() for g in _grads(start.shape, 3)]
    results = []
    for chunk in (CHUNK, 16):  # one slice vs ten slices (the last one partial)
        monkeypatch.setattr("r1lab.train.master.CHUNK", chunk)
        half = start.clone().requires_grad_()
        optimizer = MasterAdamW([half], lr=1e-3)
        _run(optimizer, half, grads)
        results.append(optimizer.master(half))
    assert torch.equal(results[0], results[1])


def test_a_step_far_below_resolution_leaves_bf16_weights_where_they_are() -> None:
    # Rounding to nearest: a master that moves by 1e-6 keeps its weight (half an ulp at 16 is
    # 0.03); truncation would drop every weight whose master moved toward zero by a whole ulp.
    half = torch.full((256,), 16.0, dtype=torch.bfloat16, requires_grad=True)
    optimizer = MasterAdamW([half], lr=1e-6, weight_decay=0.0)
    _run(optimizer, half, _grads(half.shape, 1))
    assert torch.equal(half.detach(), torch.full((256,), 16.0, dtype=torch.bfloat16))
    assert not torch.equal(optimizer.master(half), torch.full((256,), 16.0))
