"""AdamW for half-precision weights, with exact fp32 master weights and fp32 moments.

Why: with bf16 weights the forward/backward passes need no casts and no autocast cache of
cast copies, the gradients are half the size, and the rollout engine reads the weights as
they are. But bf16 cannot hold an update: a weight of 1.0 has a resolution of 2^-7, so an
AdamW step of lr 1e-5 rounds away entirely. So the optimizer keeps an fp32 master of every
half-precision weight and runs the update in fp32 on it.

A bf16 number is the top 16 bits of an fp32 one. For a bf16 weight the master is therefore
stored as the weight (the master rounded to nearest bf16) plus the signed int16 difference of
their bit patterns (`master_low`): together they are the exact fp32 master at half the memory
of a copy. An fp16 weight keeps a full fp32 `master`. fp32 weights are updated in place as by
`torch.optim.AdamW`.

Each tensor is updated in flat chunks of CHUNK elements, so the fp32 temporaries (upcast
gradient, reassembled master, denominator) stay small even for a [vocab, hidden] embedding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

HALF = (torch.bfloat16, torch.float16)
CHUNK = 1 << 22  # elements per update slice (16 MB of fp32)
_HALF_ULP = 1 << 15  # half a bf16 ulp, in units of the fp32 bit pattern


def join_master(high: Tensor, low: Tensor) -> Tensor:
    """fp32 values from bf16 `high` and the int16 bit-pattern differences `low`."""
    bits = (high.view(torch.int16).to(torch.int32) << 16) + low.to(torch.int32)
    return bits.view(torch.float32)


def split_master(master: Tensor, high: Tensor, low: Tensor) -> None:
    """Write fp32 `master` into bf16 `high` (rounded to nearest, ties away from zero) and
    int16 `low` (master's bit pattern minus high's), in place.

    fp32 is sign-magnitude, so adding half a bf16 ulp to the bit pattern rounds the magnitude
    (a carry moves to the next binade, as it should); the difference then lies in
    [-2^15, 2^15) and fits int16 exactly.
    """
    bits = master.view(torch.int32)
    top = (bits + _HALF_ULP) >> 16
    high.view(torch.int16).copy_(top)
    low.copy_(bits - (top << 16))


class MasterAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments), as `torch.optim.AdamW`.

    Its state per weight: `step`, `exp_avg`, `exp_avg_sq` (fp32) and, for a bf16 weight,
    `master_low` (int16; see the module docstring), for an fp16 one `master` (fp32). It
    checkpoints through `state_dict()` like any optimizer, and a resumed run continues from
    the exact fp32 masters.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        super().load_state_dict(state_dict)
        # torch casts loaded state to its weight's dtype; masters and moments keep theirs.
        params = [p for group in self.param_groups for p in group["params"]]
        for index, values in state_dict["state"].items():
            param = params[index]
            for key, value in values.items():
                if key != "step" and torch.is_tensor(value):
                    self.state[param][key] = value.to(param.device, copy=True)

    def master(self, param: Tensor) -> Tensor:
        """The exact fp32 value of `param` that the optimizer updates."""
        state = self.state[param]
        if "master_low" in state:
            return join_master(param.detach(), state["master_low"])
        return state.get("master", param.detach()).float()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        if closure is not None:
            raise ValueError("MasterAdamW.step takes no closure")
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
            if param.dtype == torch.bfloat16:
                state["master_low"] = torch.zeros_like(param, dtype=torch.int16)
            elif param.dtype in HALF:
                state["master"] = param.detach().float()
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, decay = group["lr"], group["weight_decay"]
        bias1, bias2 = 1 - beta1**step, 1 - beta2**step
        weight, grad = param.detach().view(-1), param.grad.detach().reshape(-1)
        exp_avg, exp_avg_sq = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        low = state["master_low"].view(-1) if "master_low" in state else None
        full = state["master"].view(-1) if "master" in state else weight
        for start in range(0, weight.numel(), CHUNK):
            part = slice(start, start + CHUNK)
            master = join_master(weight[part], low[part]) if low is not None else full[part]
            g = grad[part].float()
            master.mul_(1 - lr * decay)
            exp_avg[part].lerp_(g, 1 - beta1)
            exp_avg_sq[part].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (exp_avg_sq[part] / bias2).sqrt_().add_(group["eps"])
            master.addcdiv_(exp_avg[part], denom, value=-lr / bias1)
            if low is not None:
                split_master(master, weight[part], low[part])
            elif full is not weight:
                weight[part].copy_(master)
