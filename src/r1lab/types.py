"""The records that travel through the loop: an `Example` in, a `RolloutBatch` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One verifiable problem.

    `prompt` is the bare question (no template); `answer` is the gold answer as text, in the
    form the task's grader expects; `solution` is a worked step-by-step derivation when the
    task can produce one (cold-start SFT data is rendered from it); `meta` carries
    task-specific data the grader needs (e.g. countdown's numbers and target).
    """

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    solution: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "meta": self.meta,
            "solution": self.solution,
        }


@dataclass
class RolloutBatch:
    """One step's rollouts as tensors, B = prompts x G, laid out group-contiguous.

    Prompts are left-padded to Tp and completions right-padded to Tc, so every completion
    starts at column Tp and log-probs of the last Tc positions line up with `completion_mask`.
    """

    input_ids: Any  # [B, Tp + Tc] long
    attention_mask: Any  # [B, Tp + Tc] long
    completion_mask: Any  # [B, Tc] float, 1 on sampled tokens that enter the loss
    advantages: Any  # [B] float
    rewards: Any  # [B] float, the weighted total
    old_logp: Any = None  # [B, Tc], π_old log-probs when the policy moves within a step
    ref_logp: Any = None  # [B, Tc], π_ref log-probs when β > 0

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def completion_width(self) -> int:
        return int(self.completion_mask.shape[1])
