"""The configuration of rejection sampling (`r1lab sample`): R1's stage 3 data collection.

A sample recipe starts with `kind: sample`. It shares `model`, `task` and `template` with the
other recipes (same dataclasses, same validation) and adds:

    prompts:        which split of the task is sampled, and how many of its prompts
    generation:     n samples per prompt and how they are drawn
    judge:          an optional generative judge for prompts no rule can check
    filters:        what a kept sample must pass (correct, readable, one language, unique)
    max_per_prompt: at most this many kept samples per prompt
    mix:            non-reasoning conversations added per kept reasoning sample

Example (recipes/r1_sample.yaml has a full one):

    kind: sample
    name: rejection
    model: {spec: runs/r1_mini/reasoning_rl/final}
    task: {name: arith, options: {digits: 2, ops: "+-"}}
    generation: {n: 8, max_new_tokens: 160, stop: ["</answer>"]}
    filters: {language: en, max_paragraph_chars: 1500}
    mix: {path: data/chat.jsonl, ratio: 0.33}
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
    check_sampling,
    choice,
    from_dict,
    load_kind_recipe,
    validate_sections,
)
from r1lab.core.errors import UserError
from r1lab.core.models import ModelConfig
from r1lab.tasks import TaskConfig, check_task
from r1lab.text.formats import SPECIAL_TOKEN, STYLES, check_style
from r1lab.text.language import LANGUAGE_SCRIPTS
from r1lab.text.templates import TemplateConfig, check_template

SPLITS = ("train", "test")
SCOPES = ("cot", "response")


@dataclass
class PromptsConfig:
    split: str = "train"  # the paper samples its training prompts; `test` would leak evaluation
    limit: int | None = None  # the first N prompts of the split (None: all)

    def validate(self) -> None:
        choice("prompts.split", self.split, SPLITS)
        if self.limit is not None:
            at_least("prompts.limit", self.limit, 1)


@dataclass
class SampleGenerationConfig:
    engine: str = "prefix"
    n: int = 4  # samples per prompt
    max_new_tokens: int = 256
    temperature: float = 0.7  # R1's all-scenario rollouts; evaluation uses 0.6
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    batch_size: int = 16  # prompts per engine call and write to results.jsonl (resume unit)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    concurrency: int = 8  # requests at once to a model behind an endpoint (openai:MODEL@URL)

    def validate(self) -> None:
        at_least("generation.n", self.n, 1)
        at_least("generation.max_new_tokens", self.max_new_tokens, 1)
        at_least("generation.batch_size", self.batch_size, 1)
        at_least("generation.concurrency", self.concurrency, 1)
        check_sampling("generation", self.temperature, self.top_p)


@dataclass
class JudgeConfig:
    """A generative judge: a language model asked whether a prediction matches the reference.

    It decides for prompts without a rule-checkable answer (general prompts; a reference
    text in their `reference` field is shown to it), and for every prompt when `always`.
    It decodes greedily, in the `model` section's dtype, on `generation.device`; a judge behind
    an endpoint (`openai:MODEL@URL`) needs room for its verdict line (`max_new_tokens`).
    """

    spec: str | None = None  # any model spec; None: no judge (unchecked samples are dropped)
    max_new_tokens: int = 8  # the verdict is one word; a little room for "The answer is ..."
    always: bool = False  # judge rule-checkable samples too; the judge's verdict then decides

    def validate(self) -> None:
        at_least("judge.max_new_tokens", self.max_new_tokens, 1)
        if self.always and not self.spec:
            raise UserError("judge.always needs a judge model: set judge.spec")


@dataclass
class FiltersConfig:
    """What a sample must pass to be kept, checked in this order (the report counts each)."""

    style: str = "think"  # the response format: think (<think>/<answer>) or r1 (special token)
    special_token: str = SPECIAL_TOKEN
    correct: bool = True  # rule-checked or judged correct (false: keep graded-wrong ones too)
    format: bool = True  # exactly in `style`'s strict format (formats.format_ok)
    require_summary: bool = True  # a non-empty summary after the reasoning
    # what the readability filters (language, paragraph, code_block) read: `cot`, the chain of
    # thought, as R1 filtered it (a final answer may hold code); or the whole `response`
    scope: str = "cot"
    language: str | None = "en"  # the one language of the thought; None: no language filter
    min_language_share: float = 0.95  # share of its letters in that language's script
    max_paragraph_chars: int | None = 2000  # longest paragraph (blank-line separated); None: off
    drop_code_blocks: bool = True  # drop thoughts with ``` fences
    dedup: bool = True  # drop exact duplicates (whitespace and case aside) of a kept sample
    near_duplicate: float | None = 0.9  # with dedup: Jaccard of word shingles; None: exact only
    shingle_words: int = 3  # words per shingle of the near-duplicate test

    def validate(self) -> None:
        choice("filters.style", self.style, STYLES)
        choice("filters.scope", self.scope, SCOPES)
        check_style(self.style, self.special_token)
        if self.language is not None:
            choice("filters.language", self.language, LANGUAGE_SCRIPTS)
        if not 0 <= self.min_language_share <= 1:
            raise UserError(
                f"filters.min_language_share must be in [0, 1], got {self.min_language_share}"
            )
        if self.max_paragraph_chars is not None:
            at_least("filters.max_paragraph_chars", self.max_paragraph_chars, 1)
        if self.near_duplicate is not None and not 0 < self.near_duplicate <= 1:
            raise UserError(
                f"filters.near_duplicate must be in (0, 1] (or null), got {self.near_duplicate}"
            )
        at_least("filters.shingle_words", self.shingle_words, 1)


@dataclass
class MixConfig:
    """Non-reasoning conversations (writing, factual QA, self-cognition) added to the data.

    `path`: a conversations file (`text.conversations`: `messages`, or `prompt`
    + `completion`); `ratio`: rows added per kept reasoning sample (R1: 200k per 600k, 1/3).
    """

    path: str | None = None
    ratio: float = 0.0

    def validate(self) -> None:
        if self.ratio < 0:
            raise UserError(f"mix.ratio must be >= 0, got {self.ratio}")
        if self.ratio > 0 and not self.path:
            raise UserError("mix.ratio > 0 needs mix.path, the file of non-reasoning rows")
        if self.path and self.ratio == 0:
            raise UserError(f"mix.path is {self.path!r} but mix.ratio is 0: set the ratio")


@dataclass
class SampleConfig:
    kind: str = "sample"
    name: str = "sample"
    out_dir: str = "runs"  # the output is out_dir/name
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: SampleGenerationConfig = field(default_factory=SampleGenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    max_per_prompt: int | None = None  # kept samples per prompt, the first by sample index
    mix: MixConfig = field(default_factory=MixConfig)
    seed: int = 0

    def validate(self) -> None:
        choice("kind", self.kind, ("sample",))
        check_name("name", self.name)
        validate_sections(self)
        if self.max_per_prompt is not None:
            at_least("max_per_prompt", self.max_per_prompt, 1)
        if self.model.lora is not None:
            raise UserError(
                "model.lora trains an adapter, and sampling trains nothing: name a LoRA run's "
                "final/ (or a checkpoint) as model.spec instead"
            )
        if self.judge.spec and not self.filters.correct:
            raise UserError(
                "judge.spec is set but filters.correct is false: the verdict would decide "
                "nothing; remove the judge or keep the correctness filter"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_sample_config(config: SampleConfig) -> None:
    """Validate values and the names the registries must know (template, task, options)."""
    config.validate()
    check_template(config.template.name)
    check_task(config.task.name, config.task.options)


def build_sample_config(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> SampleConfig:
    """Validate a raw mapping (plus `--set` overrides) into a `SampleConfig`.

    `kind` defaults to `sample` here; a recipe *file* must say `kind: sample`.
    """
    raw = apply_overrides(raw, overrides)
    raw.setdefault("kind", "sample")
    check_kind(raw, "sample")
    config = from_dict(SampleConfig, raw)
    check_sample_config(config)
    return config


def load_sample_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> SampleConfig:
    """Load a sample recipe YAML (it must say `kind: sample`) with overrides applied."""
    raw = load_kind_recipe(path, "sample", "a rejection-sampling recipe")
    return build_sample_config(raw, overrides)
