"""The optimizer every trainer shares: its config section, the LR schedule, AdamW (with exact
fp32 masters for half-precision weights, `train/master.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from r1lab.core.config import at_least, choice
from r1lab.core.errors import UserError
from r1lab.train.master import HALF, MasterAdamW


@dataclass
class OptimConfig:
    """The `optim:` section of a training recipe."""

    lr: float = 3e-6
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio

    def validate(self) -> None:
        if self.lr <= 0:
            raise UserError(f"optim.lr must be > 0, got {self.lr}")
        at_least("optim.warmup_steps", self.warmup_steps, 0)
        choice("optim.schedule", self.schedule, ("constant", "cosine"))


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate for 1-based `step`: linear warmup, then constant or cosine decay.

    A pure function of the step (no scheduler object), so a resumed run gets the same LR
    from nothing but the step counter.
    """
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; for bf16/fp16 weights one that keeps fp32 master weights (see train/master.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = MasterAdamW if any(p.dtype in HALF for p in params) else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
