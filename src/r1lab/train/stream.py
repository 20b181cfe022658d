"""The seeded order in which a trainer sees its data, and the seed it starts from."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

import torch

from r1lab.core.errors import UserError

T = TypeVar("T")


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class PromptStream(Generic[T]):
    """Endless, seeded stream of training examples: a fresh shuffle per epoch.

    Its whole state is (epoch, position), saved in checkpoints so a resumed run draws exactly
    the prompts an uninterrupted run would have drawn.
    """

    def __init__(self, examples: Sequence[T], seed: int) -> None:
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

    def take(self, count: int) -> list[T]:
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
