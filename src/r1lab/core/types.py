"""The records that travel through the loop: an `Example` in, a `RolloutBatch` out."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Example:
    """One problem: a verifiable one, or a general prompt.

    `prompt` is the bare question (no template); `answer` is the gold answer as text, in the
    form the task's grader expects, or "" for a general prompt (writing, factual QA,
    self-cognition) that no rule can check (see `checkable`); `solution` is a worked
    step-by-step derivation when the task can produce one (cold-start SFT data is rendered
    from it); `meta` carries task-specific data the grader needs (e.g. countdown's numbers).
    """

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    solution: str | None = None

    @property
    def checkable(self) -> bool:
        """Whether a rule can check an answer to it: rule rewards and pass@1 apply.

        General prompts are not checkable: the `accuracy` reward skips them, a reward model
        scores them (R1's last stage), and evaluation leaves them out of pass@1.
        """
        return bool(self.answer.strip())

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
    """One step's rollouts as tensors: U distinct prompts, B = U x G completions.

    Completions are laid out group-contiguous and refer to their prompt through `rows`, so the
    prompt's forward pass is shared by its G completions (see `logprobs.prefix_logprobs`).
    Prompts are left-padded to Tp, completions right-padded to Tc.
    """

    prompt_ids: Any  # [U, Tp] long
    prompt_mask: Any  # [U, Tp] long
    rows: Any  # [B] long, prompt index of each completion
    completion_ids: Any  # [B, Tc] long
    completion_attn: Any  # [B, Tc] long, 1 on every sampled token
    completion_mask: Any  # [B, Tc] float, 1 on sampled tokens that enter the loss
    advantages: Any  # [B] float
    rewards: Any  # [B] float, the weighted total
    old_logp: Any = None  # [B, Tc], pi_old log-probs when the policy moves within a step
    ref_logp: Any = None  # [B, Tc], pi_ref log-probs when beta > 0
    engine_logp: Any = None  # [B, Tc], the engine's own sampling log-probs when it reports them

    @property
    def size(self) -> int:
        return int(self.completion_ids.shape[0])

    def to(self, device: Any) -> RolloutBatch:
        """The same batch with every tensor on `device` (where the policy lives)."""
        moved = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return RolloutBatch(**moved)
