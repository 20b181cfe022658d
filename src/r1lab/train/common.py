"""Pieces every training loop shares: seeding, the LR schedule, the optimizer, the prompt stream."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from r1lab.config import OptimConfig
from r1lab.errors import UserError
from r1lab.train.master import HALF, MasterAdamW
from r1lab.types import Example


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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


class PromptStream:
    """Endless, seeded stream of training examples: a fresh shuffle per epoch.

    Its whole state is (epoch, position), saved in checkpoints so a resumed run draws exactly
    the prompts an uninterrupted run would have drawn.
    """

    def __init__(self, examples: Sequence[Example], seed: int) -> None:
        if not examples:
            raise UserError("the training split is empty: nothing to train on")
        self.examples = list(examples)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, count: int) -> list[Example]:
        out = []
        for _ in range(count):
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffle(self.epoch)
            out.append(self.examples[self._order[self.position]])
            self.position += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._shuffle(self.epoch)
