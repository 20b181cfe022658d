"""The seeded order in which a trainer sees its data, and the seed it starts from."""

from __future__ import annotations

import hashlib
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


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a stable hash of `parts` (the same in every process and Python run).

    A sampling generator seeded by (step, draw, prompt) draws the same tokens whichever other
    prompts share its batch and whichever rank runs it.

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    """
    text = ":".join(str(part) for part in ("r1lab", *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)
