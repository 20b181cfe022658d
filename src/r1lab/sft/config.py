"""The configuration of an SFT run (`r1lab sft`): the cold start, and later rejection-sampled SFT
and distillation.

An SFT recipe starts with `kind: sft`, so a GRPO command given one (and the reverse) says so
instead of listing unknown keys. It shares the `model`, `task`, `template` and `optim` sections
with GRPO recipes (same dataclasses, same validation) and adds:

    data:  where the (prompt, completion) rows come from and how the held-out split is cut
    eval:  held-out loss every N steps, optionally pass@1/format on the task's test split
    train: steps or epochs, sequences per step, tokens per packed micro-batch, checkpoints

Example (recipes/r1_cold_start.yaml has the full one):

    kind: sft
    name: cold_start
    task: {name: arith, options: {digits: 2, ops: "+-"}}
    data: {sources: [{kind: task, format: think}]}
    train: {steps: 40, batch_size: 8}  # or epochs: 2
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.core.config import (
    apply_overrides,
    at_least,
    check_kind,
    check_name,
    choice,
    from_dict,
    load_kind_recipe,
    validate_sections,
)
from r1lab.core.errors import UserError
from r1lab.core.models import ModelConfig
from r1lab.eval.protocol import EvalSampling
from r1lab.tasks import TaskConfig, check_task
from r1lab.text.formats import SPECIAL_TOKEN
from r1lab.text.templates import TemplateConfig, check_template
from r1lab.train.optim import OptimConfig
from r1lab.train.tracking import check_report_to

SOURCE_KINDS = ("task", "jsonl", "samples")
FORMATS = ("think", "r1")  # <think>…</think> <answer>…</answer>, or |special_token| reasoning …


@dataclass
class SourceConfig:
    """One source of rows.

    `task`: the task's train split, each worked `solution` rendered as a long CoT in `format`;
    `jsonl`: a file of conversations (`messages`, or `prompt` + `completion`) at `path`;
    `samples`: an earlier run's samples.jsonl at `path`, keeping completions whose accuracy
    reward is 1 and that are exactly in `format` (the `task` section must be that run's task).
    """

    kind: str = "task"
    path: str | None = None
    format: str = "think"
    limit: int | None = None  # at most this many rows from this source

    def validate(self, key: str) -> None:
        choice(f"{key}.kind", self.kind, SOURCE_KINDS)
        choice(f"{key}.format", self.format, FORMATS)
        if self.kind in ("jsonl", "samples") and not self.path:
            raise UserError(f"{key}.path: a `{self.kind}` source needs the path of its file")
        if self.kind == "task" and self.path:
            raise UserError(f"{key}.path: a `task` source reads the `task` section, not a file")
        if self.limit is not None:
            at_least(f"{key}.limit", self.limit, 1)


def _default_sources() -> list[SourceConfig]:
    return [SourceConfig()]


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    special_token: str = SPECIAL_TOKEN  # the R1 readable format's delimiter (format: r1)
    eval_fraction: float = 0.05  # held-out share, cut by a hash of the prompt (deterministic)
    max_tokens: int = 1024  # prompt + completion + EOS; longer rows are dropped and counted
    # how earlier assistant turns of a multi-turn conversation are shown as context: `strip`
    # their reasoning (what R1's chat template does) or `keep` it; every turn is trained on
    history_thinking: str = "strip"

    def validate(self) -> None:
        if not self.sources:
            raise UserError("data.sources: at least one source is needed")
        for i, source in enumerate(self.sources):
            source.validate(f"data.sources.{i}")
        if not self.special_token.strip() or self.special_token != self.special_token.strip():
            raise UserError(
                f"data.special_token must be non-empty without surrounding spaces, "
                f"got {self.special_token!r}"
            )
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        at_least("data.max_tokens", self.max_tokens, 2)
        choice("data.history_thinking", self.history_thinking, ("strip", "keep"))


@dataclass
class SFTEvalConfig(EvalSampling):
    """Held-out loss every `every` steps, and (with `generate`) the evaluation protocol on that
    many test problems at the start and the end, `k` samples each."""

    every: int = 10  # held-out loss every N steps (0: only at the start and the end)
    size: int = 64  # held-out rows scored (the first N of the held-out split)
    generate: int = 0  # > 0: pass@1/format on this many test problems, at the start and the end
    k: int = 1
    max_new_tokens: int = 256

    def validate(self) -> None:
        at_least("eval.every", self.every, 0)
        at_least("eval.size", self.size, 0)
        at_least("eval.generate", self.generate, 0)
        super().validate("eval")


@dataclass
class SFTTrainConfig:
    steps: int | None = None  # optimizer steps; or
    epochs: float | None = None  # passes over the train rows (neither set: one epoch)
    batch_size: int = 16  # sequences per optimizer step
    micro_batch_tokens: int = 2048  # tokens per packed forward/backward (accumulation)
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    final_only: bool = False  # once final/ is written, delete checkpoints/ (pipeline stages)
    max_bad_steps: int = 3  # stop after this many non-finite losses in a row
    out_dir: str = "runs"
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])  # + tensorboard, wandb

    def validate(self) -> None:
        check_report_to("train.report_to", self.report_to)
        if self.steps is not None and self.epochs is not None:
            raise UserError("set train.steps or train.epochs, not both (the other to null)")
        if self.steps is not None:
            at_least("train.steps", self.steps, 1)
        if self.epochs is not None and self.epochs <= 0:
            raise UserError(f"train.epochs must be > 0, got {self.epochs}")
        at_least("train.batch_size", self.batch_size, 1)
        at_least("train.micro_batch_tokens", self.micro_batch_tokens, 1)
        at_least("train.save_every", self.save_every, 0)
        at_least("train.keep_checkpoints", self.keep_checkpoints, 1)
        at_least("train.max_bad_steps", self.max_bad_steps, 1)


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=1e-5, weight_decay=0.0, schedule="cosine", warmup_steps=0)


@dataclass
class SFTConfig:
    kind: str = "sft"
    name: str = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_sft_optim)
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)

    def validate(self) -> None:
        choice("kind", self.kind, ("sft",))
        check_name("name", self.name)
        validate_sections(self)
        if self.template.shots:
            raise UserError(
                "template.shots must be 0 for SFT: the training rows teach the format, and a "
                "worked shot in every prompt would also be trained on"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_sft_config(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> SFTConfig:
    """Validate a raw mapping (plus `--set` overrides) into an `SFTConfig`.

    `kind` defaults to `sft` here; a recipe *file* must say `kind: sft` (see `load_sft_config`).
    """
    raw = apply_overrides(raw, overrides)
    raw.setdefault("kind", "sft")
    check_kind(raw, "sft")
    config = from_dict(SFTConfig, raw)
    config.validate()
    check_template(config.template.name)
    check_task(config.task.name, config.task.options)
    return config


def load_sft_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> SFTConfig:
    """Load an SFT recipe YAML (it must say `kind: sft`) with overrides applied."""
    raw = load_kind_recipe(path, "sft", "an SFT recipe")
    return build_sft_config(raw, overrides)
