"""The pipeline YAML (`kind: pipeline`), validated into dataclasses with every stage resolved.

    kind: pipeline
    name: r1_mini
    out_dir: runs                     # stage <s> writes runs/r1_mini/<s>/
    base_model: builtin:smollm2-135m-instruct
    stages:                           # run in this order; recipe paths are relative to this file
      - {name: cold_start, run: sft, config: r1_cold_start.yaml}
      - {name: reasoning_rl, run: grpo, config: r1_reasoning_rl.yaml, model: cold_start}
      - {name: rejection, run: sample, config: r1_sample.yaml, model: reasoning_rl}
      - {name: sft2, run: sft, config: r1_cold_start.yaml, data: rejection,
         set: ["data.sources=[]", "train.steps=20"]}
      - {name: all_scenario, run: grpo, config: r1_all_scenario.yaml, model: sft2}
      - {name: distill, run: distill, config: r1_distill.yaml, teacher: all_scenario}
    eval: {k: 4, limit: 32, max_new_tokens: 256}   # task/template: the first stage's

What flows between stages is named by references to *earlier* stages: `model: <s>` starts
from stage s's final model (an sft, grpo or sample stage without one starts from
`base_model`), `data: <s>` trains an SFT stage on a sample stage's rows (before any sources
its recipe lists: `data.sources=[]` keeps those alone), `teacher: <s>` distils from s's model
(a distillation's student is its recipe's). The pipeline sets each stage's output name and
place; `set:` (and `--set <stage>.key=value`) overrides anything else in its recipe. The
evaluation (`eval`) scores `base`, every stage's model and a distillation's student before it
was trained, unless `eval.models` lists fewer.

Loading checks the whole pipeline, every stage recipe included, before any trainer (or
torch) is imported: an unknown key, stage kind or reference, a reference to a later stage (so
no cycle can be written) is an error naming the key and the valid values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
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
    load_yaml,
)
from r1lab.core.errors import UserError, unknown_name
from r1lab.core.models import DEFAULT_MODEL, DTYPES
from r1lab.eval.protocol import EvalSampling
from r1lab.pipeline.stages import KINDS, StageKind, config_value
from r1lab.tasks import TaskConfig, check_task
from r1lab.text.formats import SPECIAL_TOKEN, check_style
from r1lab.text.language import LANGUAGE_SCRIPTS
from r1lab.text.templates import TemplateConfig, check_template

PIPELINE_KEYS = ("kind", "name", "out_dir", "base_model", "keep_checkpoints", "stages", "eval")
REFS = ("model", "data", "teacher")
RESERVED_NAMES = {"base", *PIPELINE_KEYS}  # `--set <stage>.key` must not read as a pipeline key
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class StageConfig:
    name: str = ""
    run: str = ""  # the stage kind: sft, grpo, sample, distill
    config: str = ""  # its recipe YAML, relative to the pipeline file
    model: str | None = None
    data: str | None = None
    teacher: str | None = None
    set: list[str] = field(default_factory=list)  # overrides of its recipe

    def refs(self) -> dict[str, str]:
        """The references this stage makes: {"model": "cold_start", ...}."""
        return {ref: getattr(self, ref) for ref in REFS if getattr(self, ref) is not None}


@dataclass
class PipelineEvalConfig(EvalSampling):
    """The final table: the evaluation protocol on every model the pipeline made."""

    task: TaskConfig | None = None  # None: the first stage's task
    template: TemplateConfig | None = None  # None: the first stage's template
    k: int = 4
    limit: int | None = None  # the first N test problems (None: all)
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    language: str = "en"  # the target language of the chain of thought
    models: list[str] | None = None  # "base", stage names, "<distill>.before"; None: all
    style: str = "think"  # the response format `format` is judged in: think or r1
    special_token: str = SPECIAL_TOKEN
    compute_dtype: str = "float32"  # "bfloat16": bf16 matmuls while sampling
    batch_size: int = 16  # problems per engine call

    def validate(self) -> None:
        choice("eval.compute_dtype", self.compute_dtype, DTYPES)
        at_least("eval.batch_size", self.batch_size, 1)
        if self.limit is not None:
            at_least("eval.limit", self.limit, 1)
        super().validate("eval")
        choice("eval.language", self.language, LANGUAGE_SCRIPTS)
        check_style(self.style, self.special_token)


@dataclass
class PipelineConfig:
    kind: str = "pipeline"
    name: str = "pipeline"
    out_dir: str = "runs"
    base_model: str = DEFAULT_MODEL
    # a finished stage keeps final/ only; true keeps its checkpoints (for `r1lab eval --run`)
    keep_checkpoints: bool = False
    stages: list[StageConfig] = field(default_factory=list)
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        if not self.stages:
            raise UserError("stages: a pipeline needs at least one stage")
        names = {s.name for s in self.stages}
        for i, stage in enumerate(self.stages):
            check_stage(stage, f"stages.{i}", self.stages[:i], names)
        self.eval.validate()


def check_stage(stage: StageConfig, key: str, earlier: list[StageConfig], names: set[str]) -> None:
    """Name, kind, recipe and references of one stage; references must name earlier stages."""
    if not stage.name:
        raise UserError(f"{key}.name is required")
    if not _NAME_RE.fullmatch(stage.name) or stage.name in RESERVED_NAMES:
        raise UserError(
            f"{key}.name: {stage.name!r} must be letters, digits, _ and - and none of "
            f"{', '.join(sorted(RESERVED_NAMES))}"
        )
    before = {s.name: KINDS[s.run] for s in earlier}
    if stage.name in before:
        raise UserError(f"{key}.name: two stages are named {stage.name!r}")
    if stage.run not in KINDS:
        raise UserError(f"{key}.run: unknown stage kind {stage.run!r}; valid: {', '.join(KINDS)}")
    if not stage.config:
        raise UserError(f"{key}.config: name the stage's recipe YAML")
    kind = KINDS[stage.run]
    for ref, upstream in stage.refs().items():
        where = f"{key}.{ref} ({stage.name})"
        if ref not in kind.refs:
            raise UserError(
                f"{where}: a `{kind.name}` stage takes no `{ref}:`; "
                f"it takes: {', '.join(kind.refs)}"
            )
        if upstream not in before:
            why = "a later stage (or itself)" if upstream in names else "not a stage"
            raise UserError(
                f"{where}: {upstream!r} is {why}; a stage reads from earlier stages only: "
                f"{', '.join(before) or '(none: it is the first)'}"
            )
        source = before[upstream]
        produced = source.data_file if ref == "data" else source.model_dir
        if produced is None:
            what = "rows (a `sample` stage)" if ref == "data" else "a model"
            raise UserError(f"{where}: stage {upstream!r} ({source.name}) produces no {what}")


@dataclass
class Stage:
    """One stage resolved: its validated config and where its output goes."""

    name: str
    kind: StageKind
    recipe: Path
    config: Any
    out: Path
    refs: dict[str, str]
    config_hash: str

    @property
    def model_path(self) -> Path | None:
        return self.out / self.kind.model_dir if self.kind.model_dir else None

    @property
    def data_path(self) -> Path | None:
        return self.out / self.kind.data_file if self.kind.data_file else None


@dataclass
class EvalModel:
    label: str  # the row of the table and the folder under eval/
    spec: str
    stage: str | None  # the stage that makes it (its lineage hash versions the evaluation)


@dataclass
class Pipeline:
    config: PipelineConfig
    stages: list[Stage]
    root: Path  # out_dir/name
    task: TaskConfig  # what the evaluation runs on
    template: TemplateConfig
    models: list[EvalModel]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise unknown_name("stage", name, [s.name for s in self.stages])


def canonical_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`--set` for the pipeline (`eval.k=2`) and per stage (`cold_start.train.steps=3`)."""
    pipeline: list[str] = []
    stages: dict[str, list[str]] = {}
    for assignment in overrides:
        head, _, rest = assignment.partition(".")
        if head.split("=", 1)[0] in PIPELINE_KEYS:
            pipeline.append(assignment)
        elif not rest:
            raise UserError(f"--set {assignment}: expected <stage>.<key>=value or a pipeline key")
        else:
            stages.setdefault(head, []).append(rest)
    return pipeline, stages


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and check a pipeline YAML and every stage recipe it names, importing no trainer."""
    path = Path(path)
    pipeline_sets, stage_sets = split_overrides(overrides)
    raw = apply_overrides(load_yaml(path), pipeline_sets)
    check_kind(raw, "pipeline")
    config = from_dict(PipelineConfig, raw)
    config.validate()
    for name, sets in stage_sets.items():
        matches = [s for s in config.stages if s.name == name]
        if not matches:
            valid = [s.name for s in config.stages] + list(PIPELINE_KEYS)
            raise UserError(
                f"--set {name}.{sets[0]}: {name!r} is no stage or pipeline key; "
                f"valid: {', '.join(valid)}"
            )
        matches[0].set = [*matches[0].set, *sets]
    root = Path(config.out_dir) / config.name
    stages: list[Stage] = []
    for spec in config.stages:
        stages.append(resolve_stage(spec, path.parent, root, config, stages))
    task, template = eval_prompt(config, stages)
    return Pipeline(config, stages, root, task, template, eval_models(config, stages))


def resolve_stage(
    spec: StageConfig, base_dir: Path, root: Path, pipeline: PipelineConfig, earlier: list[Stage]
) -> Stage:
    """Load a stage's recipe with its `set:` overrides and the pipeline's wiring on top."""
    kind = KINDS[spec.run]
    recipe = Path(spec.config) if Path(spec.config).is_absolute() else base_dir / spec.config
    try:
        raw = apply_overrides(load_yaml(recipe), spec.set)
        placement = kind.placement_overrides(root, spec.name, pipeline.keep_checkpoints)
        overrides = [*spec.set, *placement]
        if "model" in kind.refs and spec.model is None:  # no `model:`: the base model
            overrides += kind.wire("model", raw, pipeline.base_model)
        upstream = {s.name: s for s in earlier}
        for ref, name in spec.refs().items():
            source = upstream[name]
            produced = source.data_path if ref == "data" else source.model_path
            overrides += kind.wire(ref, raw, str(produced))
        config = kind.load_config(recipe, overrides)
    except UserError as err:
        raise UserError(f"stage {spec.name!r} ({recipe}): {err}") from err
    config_hash = canonical_hash(dataclasses.asdict(config))
    return Stage(spec.name, kind, recipe, config, root / spec.name, spec.refs(), config_hash)


def eval_prompt(config: PipelineConfig, stages: list[Stage]) -> tuple[TaskConfig, TemplateConfig]:
    """The evaluation's task and template: the `eval` section's, else the first stage's."""
    task = config.eval.task or next(
        (t for s in stages if isinstance(t := config_value(s.config, "task"), TaskConfig)), None
    )
    if task is None:
        raise UserError("eval.task: no stage has a task to evaluate on; set eval.task")
    template = config.eval.template or next(
        (t for s in stages if isinstance(t := config_value(s.config, "template"), TemplateConfig)),
        TemplateConfig(),
    )
    check_task(task.name, task.options)
    check_template(template.name)
    return task, template


def eval_models(config: PipelineConfig, stages: list[Stage]) -> list[EvalModel]:
    """The base model, then every stage's model (a distillation: its student before, after)."""
    found = [EvalModel("base", config.base_model, None)]
    for stage in stages:
        key = stage.kind.student_key
        start = config_value(stage.config, key) if key else None
        if start and str(start) not in {m.spec for m in found}:
            found.append(EvalModel(f"{stage.name}.before", str(start), None))
        if stage.model_path is not None:
            found.append(EvalModel(stage.name, str(stage.model_path), stage.name))
    if config.eval.models is None:
        return found
    by_label = {m.label: m for m in found}
    for label in config.eval.models:
        if label not in by_label:
            raise UserError(f"eval.models: unknown model {label!r}; valid: {', '.join(by_label)}")
    return [by_label[label] for label in config.eval.models]
