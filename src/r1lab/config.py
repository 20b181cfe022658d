"""Typed configuration: YAML recipes validated into dataclasses, with `--set a.b=c` overrides.

Every key a user can write is a dataclass field here, so a typo is an error naming the key and
the valid ones, and a bad value (a batch that is not a multiple of the group size, a negative
length) is an error at load time rather than an hour into a run.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from r1lab.errors import UserError
from r1lab.models import DEFAULT_MODEL, DTYPES

if TYPE_CHECKING:  # rewards are imported lazily (see check_references)
    from r1lab.rewards import RewardTerm


@dataclass
class ModelConfig:
    spec: str = DEFAULT_MODEL
    dtype: str = "float32"  # weights (bf16: fp32 master copies and moments in the optimizer)
    compute_dtype: str = "float32"  # "bfloat16": autocast the training forward/backward passes
    device: str = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda", "cuda:1"

    def validate(self) -> None:
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.compute_dtype", self.compute_dtype, DTYPES)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UserError(
                f"model.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )


@dataclass
class TaskConfig:
    name: str = "arith"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TemplateConfig:
    name: str = "r1_zero"
    shots: int = 0  # worked examples from the task's train split shown before the question
    shot_style: str = "brief"  # "brief" (one-line derivation) or "solution" (full worked one)

    def validate(self) -> None:
        _at_least("template.shots", self.shots, 0)
        _choice("template.shot_style", self.shot_style, ("brief", "solution"))


@dataclass
class RewardConfig:
    """One reward term. `name` keys its logs; `reward` names the registered function when it
    differs, so one function serves two terms (`{name: helpfulness, reward: reward_model}`)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    reward: str | None = None

    def term(self) -> RewardTerm:
        from r1lab.rewards import RewardTerm

        return RewardTerm(self.name, self.weight, dict(self.params), self.reward)


def _default_rewards() -> list[RewardConfig]:
    return [RewardConfig("accuracy", 1.0), RewardConfig("format", 0.5)]


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
        _at_least("generation.max_new_tokens", self.max_new_tokens, 1)
        _at_least("generation.max_prompt_tokens", self.max_prompt_tokens, 1)
        _at_least("generation.top_k", self.top_k, 0)
        check_sampling("generation", self.temperature, self.top_p)


ADVANTAGE_SCALES = ("group", "batch", "none")
KL_KINDS = ("k1", "k2", "k3")
LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")

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
    clip_low: float = 0.2
    clip_high: float = 0.2
    advantage_scale: str = "group"
    loss_agg: str = "seq-mean-token-mean"
    dynamic_sampling: bool = False
    max_resample: int = 4  # extra prompt draws per step when dynamic sampling drops groups
    mask_truncated: bool = False
    overlong_buffer: int = 0  # > 0 adds DAPO's soft overlong penalty over this many tokens
    ref_reset_every: int = 0  # reset the reference to the policy every N steps (R1: 400)

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size

    def validate(self) -> None:
        _choice("grpo.preset", self.preset, PRESETS)
        _at_least("grpo.group_size", self.group_size, 2)
        _at_least("grpo.batch_size", self.batch_size, 1)
        if self.batch_size % self.group_size:
            raise UserError(
                f"grpo.batch_size ({self.batch_size}) must be a multiple of grpo.group_size "
                f"({self.group_size}): each prompt gets a whole group of samples"
            )
        _at_least("grpo.mu", self.mu, 1)
        _at_least("grpo.minibatches", self.minibatches, 1)
        if self.batch_size % self.minibatches:
            raise UserError(
                f"grpo.batch_size ({self.batch_size}) must be divisible by grpo.minibatches "
                f"({self.minibatches})"
            )
        _at_least("grpo.micro_batch_size", self.micro_batch_size, 1)
        _at_least("grpo.max_resample", self.max_resample, 0)
        _at_least("grpo.overlong_buffer", self.overlong_buffer, 0)
        _at_least("grpo.ref_reset_every", self.ref_reset_every, 0)
        if self.beta < 0:
            raise UserError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise UserError("grpo.clip_low and grpo.clip_high must be >= 0")
        _choice("grpo.kl", self.kl, KL_KINDS)
        _choice("grpo.advantage_scale", self.advantage_scale, ADVANTAGE_SCALES)
        _choice("grpo.loss_agg", self.loss_agg, LOSS_AGGS)


@dataclass
class OptimConfig:
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
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _choice("optim.schedule", self.schedule, ("constant", "cosine"))


@dataclass
class EvalConfig:
    every: int = 10  # held-out evaluation every N steps (0: only at the start and the end)
    size: int = 32  # test problems
    k: int = 1  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int | None = None  # None: generation.max_new_tokens

    def validate(self) -> None:
        _at_least("eval.every", self.every, 0)
        _at_least("eval.size", self.size, 0)
        _at_least("eval.k", self.k, 1)
        if self.max_new_tokens is not None:
            _at_least("eval.max_new_tokens", self.max_new_tokens, 1)
        check_sampling("eval", self.temperature, self.top_p)


@dataclass
class TrainConfig:
    steps: int = 50
    seed: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    sample_every: int = 1  # write samples.jsonl rows every N steps
    max_bad_steps: int = 3  # stop after this many non-finite losses in a row
    out_dir: str = "runs"
    language: str = "en"  # target language of the chain of thought

    def validate(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _at_least("train.save_every", self.save_every, 0)
        _at_least("train.keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("train.sample_every", self.sample_every, 0)
        _at_least("train.max_bad_steps", self.max_bad_steps, 1)


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    rewards: list[RewardConfig] = field(default_factory=_default_rewards)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if hasattr(value, "validate"):
                value.validate()
        if not self.rewards:
            raise UserError("rewards: at least one reward is needed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_sampling(section: str, temperature: float, top_p: float) -> None:
    """Temperature >= 0 (0 = greedy) and top_p in (0, 1], named by config section."""
    if temperature < 0:
        raise UserError(f"{section}.temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"{section}.top_p must be in (0, 1], got {top_p}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key} must be >= {low}, got {value}")


def _choice(key: str, value: str, valid: typing.Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        raise UserError(f"{key}: unknown value {value!r}; valid: {', '.join(valid)}")


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one YAML value against a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, {} if value is None else value, key)  # `grpo:` left empty
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `3e-6` (no dot) as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if hint is Any:
        return value
    raise UserError(f"{key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys name themselves and the valid ones."""
    where = prefix or "the config"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise UserError(
                f"unknown config key {dotted!r}; valid keys under {where}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"{where}: {err}") from err


def _apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b=c` override to the raw mapping; `c` is parsed as YAML (`8`, `[..]`)."""
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text else ""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: i + 1])]
        elif isinstance(node, dict):
            if node.get(part) is None:  # absent, or an empty YAML section (`grpo:`)
                node[part] = {}
            node = node[part]
        else:
            break
    if not isinstance(node, dict | list):
        raise UserError(f"--set {key.strip()}: {'.'.join(parts[:-1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(
            f"--set {'.'.join(parts)}: {part!r} is not an index of a {len(node)}-item list"
        )
    return int(part)


def _apply_preset(raw: dict[str, Any]) -> None:
    """Fill in the preset's values under any keys the user did not set explicitly."""
    if raw.get("grpo") is None:
        raw["grpo"] = {}
    grpo = raw["grpo"]
    if not isinstance(grpo, dict):
        return
    preset = grpo.get("preset", "grpo")
    if preset not in PRESETS:
        _choice("grpo.preset", preset, PRESETS)
    for key, value in PRESETS[preset].items():
        grpo.setdefault(key, value)


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """A deep copy of `raw` with the `--set a.b=c` overrides applied (the caller's is untouched)."""
    raw = copy.deepcopy(dict(raw or {}))
    for assignment in overrides:
        _apply_override(raw, assignment)
    return raw


def load_kind_recipe(path: str | Path, kind: str, what: str) -> dict[str, Any]:
    """A recipe YAML that must say `kind: KIND` (`what`, e.g. "an SFT recipe", names it).

    A recipe without `kind` is a GRPO recipe; saying so beats listing unknown keys.
    """
    raw = load_yaml(path)
    if "kind" not in raw:
        raise UserError(
            f"{path}: {what} starts with `kind: {kind}` (a recipe without `kind` is a GRPO "
            "recipe: run it with `r1lab train`)"
        )
    return raw


def check_kind(raw: dict[str, Any], kind: str) -> None:
    """A recipe's top-level `kind` (default `grpo`) must be the one the command runs."""
    found = raw.get("kind", "grpo")
    if found != kind:
        command = {"grpo": "r1lab train"}.get(str(found), f"r1lab {found}")
        raise UserError(
            f"this is a `kind: {found}` recipe: run it with `{command}` "
            f"(this command runs `kind: {kind}` recipes)"
        )


def build_config(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
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
    before a model is loaded, instead of a crash minutes into a run. The registries are
    imported lazily: they pull in the task modules, which a plain config load does not need.
    """
    from r1lab.rewards import check_terms
    from r1lab.templates import check_template

    check_template(config.template.name)
    check_terms(r.term() for r in config.rewards)
    check_task(config.task.name, config.task.options)


def check_task(spec: str, options: dict[str, Any]) -> None:
    """The task exists and its options fit its constructor, without building it.

    Building a dataset task reads its data (a hub download for `gsm8k`), which a config load
    must not do; option *values* are checked when the run builds the task, before the model.
    """
    from r1lab.errors import unknown_name
    from r1lab.tasks import TASKS

    name, _, path = spec.partition(":")
    if name not in TASKS:
        raise unknown_name("task", spec, TASKS)
    signature = inspect.signature(TASKS[name])
    kwargs = {"path": path, **options} if path else dict(options)
    valid = list(signature.parameters)
    for key in kwargs:
        if key not in signature.parameters:
            raise UserError(
                f"unknown option {key!r} for task {name!r}; valid options: {', '.join(valid)}"
            )
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise UserError(f"task {spec!r}: {err}; valid options: {', '.join(valid)}") from err
    check_options = getattr(TASKS[name], "check_options", None)
    if check_options is not None:  # a task whose options name other tasks (`mix`)
        check_options(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a mapping, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file: name a recipe YAML")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a recipe YAML (or the defaults when `path` is None) with overrides applied."""
    raw = load_yaml(path) if path is not None else {}
    return build_config(raw, overrides)


def dump_config(config: Config, path: str | Path) -> None:
    """Write the fully resolved config, so a run records exactly how it was made."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
