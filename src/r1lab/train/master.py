"""AdamW for half-precision weights, with fp32 master weights and fp32 moments.

Why: with bf16 weights the forward/backward passes need no casts and no autocast cache of
cast copies, the gradients are half the size, and the rollout engine reads the weights as
they are. But bf16 cannot hold an update: a weight of 0.05 has a resolution of 2e-4, so an
AdamW step of lr 1e-6 rounds away entirely. Here each half-precision weight has an fp32
master copy in the optimizer state; the step runs in fp32 on the master, one tensor at a
time (the gradient is upcast per tensor, never all at once), and the result is rounded into
the model's weight. fp32 weights are updated in place as by `torch.optim.AdamW`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

HALF = (torch.bfloat16, torch.float16)


class MasterAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments), as `torch.optim.AdamW`.

    Its state per weight: `step`, `exp_avg`, `exp_avg_sq` (fp32) and, for a half-precision
    weight, `master` (fp32). It checkpoints through `state_dict()` like any optimizer, and a
    resumed run continues from the exact fp32 masters.
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
        # torch casts loaded state to its weight's dtype; the masters and moments stay fp32.
        params = [p for group in self.param_groups for p in group["params"]]
        for index, values in state_dict["state"].items():
            param = params[index]
            for key, value in values.items():
                if key != "step" and torch.is_tensor(value):
                    self.state[param][key] = value.to(param.device, copy=True)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102
        if closure is not None:
            raise ValueError("MasterAdamW.step takes no closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                    if param.dtype in HALF:
                        state["master"] = param.detach().float()
                master = state.get("master", param)
                grad = param.grad.float()
                state["step"] += 1
                step = float(state["step"])
                master.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                master.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
                if master is not param:
                    param.copy_(master)
