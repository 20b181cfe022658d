"""The GRPO recipe (`r1lab train`): typed sections, presets, and the names the registries know.

Sections shared with the other recipes live next to what they configure: `model`
(`core.models.ModelConfig`), `task` (`tasks.TaskConfig`), `template`
(`text.templates.TemplateConfig`), `rewards` (a list of `rewards.RewardTerm`), `optim`
(`train.optim.OptimConfig`); the held-out `eval` section is DeepSeek's evaluation protocol
(`eval.protocol.EvalSampling`) plus its schedule. Here: rollout settings, the algorithm and the
run. `grpo.preset` picks a named bundle of algorithm settings; any key the recipe sets wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.core.config import (
    apply_overrides,
    at_least,
    check_kind,
    check_name,
    check_sampling,
    choice,
    from_dict,
    load_yaml,
    validate_sections,
)
from r1lab.core.errors import UserError
from r1lab.core.models import ModelConfig
from r1lab.eval.protocol import EvalSampling
from r1lab.grpo.algos import ADVANTAGE_SCALES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from r1lab.grpo.mismatch import AUTO, IS_CORRECTIONS
from r1lab.rewards import RewardTerm, check_terms
from r1lab.rollout.base import ENGINES, SAMPLE_APART
from r1lab.tasks import TaskConfig, check_task
from r1lab.text.templates import TemplateConfig, check_template
from r1lab.train.optim import OptimConfig
from r1lab.train.tracking import check_report_to


def _default_rewards() -> list[RewardTerm]:
    return [RewardTerm("accuracy", 1.0), RewardTerm("format", 0.5)]


@dataclass
class GenerationConfig:
    engine: str = "prefix"
    max_new_tokens: int = 128
    max_prompt_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)  # stop strings, e.g. ["</answer>"]

    def validate(self) -> None:
        choice("generation.engine", self.engine, ENGINES)
        at_least("generation.max_new_tokens", self.max_new_tokens, 1)
        at_least("generation.max_prompt_tokens", self.max_prompt_tokens, 1)
        at_least("generation.top_k", self.top_k, 0)
        check_sampling("generation", self.temperature, self.top_p)


# Named algorithm presets: a recipe picks one and may still override any single key.
PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "dr_grpo": {"advantage_scale": "none", "loss_agg": "seq-mean-token-sum-norm"},
    "dapo": {
        "clip_low": 0.2,
        "clip_high": 0.28,
        "loss_agg": "token-mean",
        "dynamic_sampling": True,
        "beta": 0.0,
        "overlong_buffer": 32,
    },
    # one clipped ratio per output (GSPO's epsilons; its sequence-level form wants a
    # per-output mean of the tokens)
    "gspo": {
        "policy_loss": "gspo",
        "clip_low": 3e-4,
        "clip_high": 4e-4,
        "loss_agg": "seq-mean-token-mean",
    },
    # clipped stop-gradient importance weights on REINFORCE (MiniMax-M1: no lower bound,
    # every token normalised alike)
    "cispo": {"policy_loss": "cispo", "clip_low": 1.0, "clip_high": 0.28, "loss_agg": "token-mean"},
}


@dataclass
class GRPOConfig:
    preset: str = "grpo"
    batch_size: int = 32  # completions per step = prompts per step x group size
    group_size: int = 8
    mu: int = 1  # optimisation passes over each batch of rollouts
    minibatches: int = 1  # optimizer steps per pass
    micro_batch_size: int = 8  # sequences per forward/backward (gradient accumulation)
    # recompute each decoder layer in the backward pass instead of keeping its activations:
    # far less memory per completion token, one more forward of the completions
    activation_checkpointing: bool = False
    # keep the frozen reference in a memory-mapped file in the run directory and drop its
    # pages after each step's reference pass: its weights leave the resident set for the
    # policy's forward/backward and the optimizer, for a re-read from the page cache per step
    offload_reference: bool = False
    # hand the memory each phase of a step freed (generation caches, a micro-batch's
    # activations) back to the OS at once: lower peak RSS, for page faults when the next
    # phase needs it again (fp32: ~3 s per micro-batch of 16 completions); off = reuse it
    release_memory: bool = False
    beta: float = 0.001
    kl: str = "k3"
    policy_loss: str = "clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    advantage_scale: str = "group"
    loss_agg: str = "seq-mean-token-mean"
    dynamic_sampling: bool = False
    max_resample: int = 4  # extra prompt draws per step when dynamic sampling drops groups
    mask_truncated: bool = False
    overlong_buffer: int = 0  # > 0 adds DAPO's soft overlong penalty over this many tokens
    ref_reset_every: int = 0  # reset the reference to the policy every N steps (R1: 400)
    # truncated importance sampling for engines whose sampling log-probs are not the trainer's
    # (vllm): auto = token-level for those engines, none for the others; token | sequence | none
    is_correction: str = AUTO
    is_cap: float = 2.0  # C: the largest importance weight

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size

    def validate(self) -> None:
        choice("grpo.preset", self.preset, PRESETS)
        at_least("grpo.group_size", self.group_size, 2)
        at_least("grpo.batch_size", self.batch_size, 1)
        if self.batch_size % self.group_size:
            raise UserError(
                f"grpo.batch_size ({self.batch_size}) must be a multiple of grpo.group_size "
                f"({self.group_size}): each prompt gets a whole group of samples"
            )
        at_least("grpo.mu", self.mu, 1)
        at_least("grpo.minibatches", self.minibatches, 1)
        if self.batch_size % self.minibatches:
            raise UserError(
                f"grpo.batch_size ({self.batch_size}) must be divisible by grpo.minibatches "
                f"({self.minibatches})"
            )
        at_least("grpo.micro_batch_size", self.micro_batch_size, 1)
        at_least("grpo.max_resample", self.max_resample, 0)
        at_least("grpo.overlong_buffer", self.overlong_buffer, 0)
        at_least("grpo.ref_reset_every", self.ref_reset_every, 0)
        if self.beta < 0:
            raise UserError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise UserError("grpo.clip_low and grpo.clip_high must be >= 0")
        choice("grpo.kl", self.kl, KL_ESTIMATORS)
        choice("grpo.policy_loss", self.policy_loss, POLICY_LOSSES)
        choice("grpo.advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)
        choice("grpo.loss_agg", self.loss_agg, AGGREGATIONS)
        choice("grpo.is_correction", self.is_correction, [AUTO, *IS_CORRECTIONS])
        if self.is_cap < 1:
            raise UserError(f"grpo.is_cap must be >= 1 (a weight cap below 1 shrinks every "
                            f"sample), got {self.is_cap}")


@dataclass
class EvalConfig(EvalSampling):
    """Held-out pass@1 during training: the evaluation protocol on `size` test problems every
    `every` steps (and at the start and the end). One sample per problem by default, so an
    eval row costs about one training step; `max_new_tokens` None means generation's."""

    every: int = 10  # held-out evaluation every N steps (0: only at the start and the end)
    size: int = 32  # test problems
    k: int = 1
    max_new_tokens: int | None = None

    def validate(self) -> None:
        at_least("eval.every", self.every, 0)
        at_least("eval.size", self.size, 0)
        super().validate("eval")


@dataclass
class TrainConfig:
    steps: int = 50
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    final_only: bool = False  # once final/ is written, delete checkpoints/ (pipeline stages)
    sample_every: int = 1  # write samples.jsonl rows every N steps
    max_bad_steps: int = 3  # stop after this many non-finite losses in a row
    out_dir: str = "runs"
    language: str = "en"  # target language of the chain of thought
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])  # + tensorboard, wandb

    def validate(self) -> None:
        check_report_to("train.report_to", self.report_to)
        at_least("train.steps", self.steps, 1)
        at_least("train.save_every", self.save_every, 0)
        at_least("train.keep_checkpoints", self.keep_checkpoints, 1)
        at_least("train.sample_every", self.sample_every, 0)
        at_least("train.max_bad_steps", self.max_bad_steps, 1)


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    rewards: list[RewardTerm] = field(default_factory=_default_rewards)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        validate_sections(self)
        if not self.rewards:
            raise UserError("rewards: at least one reward is needed")
        if self.model.lora is not None:
            check_lora_reference(self.grpo)
            if self.generation.engine == "vllm":
                raise UserError(
                    "generation.engine vllm loads whole weights into vLLM after every step; "
                    "with model.lora use the prefix engine (LoRA adapters in vLLM are not "
                    "supported yet)"
                )
        check_engine_correction(self.generation.engine, self.grpo.is_correction)


def check_engine_correction(engine: str, is_correction: str) -> None:
    """A correction for the engine's own sampling log-probs needs an engine that reports them:
    the others sample from the trainer's pi_old, where the weight would be 1."""
    if is_correction not in (AUTO, "none") and engine not in SAMPLE_APART:
        raise UserError(
            f"grpo.is_correction {is_correction!r} corrects for an engine's own "
            f"sampling log-probs, and engine {engine!r} samples from the trainer's: use "
            "auto or none (or generation.engine=vllm)"
        )


def check_lora_reference(g: GRPOConfig) -> None:
    """With LoRA the reference is the policy's own base weights (the adapter switched off):
    there is no copy to page out, and resetting it would overwrite the policy's base."""
    for key, on in (
        ("offload_reference", g.offload_reference),
        ("ref_reset_every", g.ref_reset_every > 0),
    ):
        if on:
            raise UserError(
                f"grpo.{key} needs a reference copy; with model.lora the reference is the "
                f"base model with the adapter switched off (no copy): remove grpo.{key} or "
                "model.lora"
            )


def _apply_preset(raw: dict[str, Any]) -> None:
    """Fill in the preset's values under any keys the user did not set explicitly."""
    if raw.get("grpo") is None:
        raw["grpo"] = {}
    grpo = raw["grpo"]
    if not isinstance(grpo, dict):
        return
    preset = grpo.get("preset", "grpo")
    if preset not in PRESETS:
        choice("grpo.preset", preset, PRESETS)
    for key, value in PRESETS[preset].items():
        grpo.setdefault(key, value)


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a raw mapping (plus `--set` overrides) into a `Config`."""
    raw = dict(raw or {})
    if "rewards" not in raw:  # before the overrides, so `--set rewards.0.weight=2` works
        raw["rewards"] = [dataclasses.asdict(r) for r in _default_rewards()]
    raw = apply_overrides(raw, overrides)  # overrides and presets must not touch the caller's
    check_kind(raw, "grpo")
    raw.pop("kind", None)
    _apply_preset(raw)
    config = from_dict(Config, raw)
    config.validate()
    check_references(config)
    return config


def check_references(config: Config) -> None:
    """Fail at load time on names the registries do not know.

    An unknown template, reward (or reward param) or task (or task option) is an error here,
    before a model is loaded, instead of a crash minutes into a run.
    """
    check_template(config.template.name)
    check_terms(config.rewards)
    check_task(config.task.name, config.task.options)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a recipe YAML (or the defaults when `path` is None) with overrides applied."""
    raw = load_yaml(path) if path is not None else {}
    return build_config(raw, overrides)
