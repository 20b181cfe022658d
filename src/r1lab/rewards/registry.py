"""The reward registry: pure batch functions registered by name, checked and summed per term.

DeepSeek-R1's reasoning rewards are rules, never neural nets (a neural reward model invites
reward hacking). Each reward here is a plain function `fn(inputs: RewardInputs, **params)`
that returns one value per completion, or `None` where the reward does not apply to a sample
(it then adds nothing to that sample's total, and logs show it as "not applicable" rather
than as a zero). A run names its rewards as `RewardTerm`s (name, weight, params, and the
registered `reward` it runs when that differs from its name, so one reward can serve two
terms); `check_terms` validates them when the config is loaded and `compute_rewards` sums them.

The rule rewards themselves are in `rewards.rules`. Only R1's last stage scores general
prompts (no rule-checkable answer) with a reward model: `reward_model` lives in
`rewards.reward_model`, imported on first use (`LAZY_REWARDS`), so the registry and the rules
import no transformers or torch: rule rewards are text in, floats out.
User rewards plug in by import path, `package.module:function`, with the same signature.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from r1lab.core.errors import UserError, did_you_mean, unknown_name
from r1lab.core.types import Example
from r1lab.text.formats import SPECIAL_TOKEN, THINK, OutputFormat

if TYPE_CHECKING:  # the task package pulls in its task modules; a type hint needs none of it
    from r1lab.tasks.base import Task


@dataclass
class RewardInputs:
    """Everything a reward may look at for one batch of completions.

    `completions` is generated text only; `prefill` is what the template already put at the
    start of the assistant turn (e.g. "<think>\\n"), so rewards that judge the whole response
    look at `prefill + completion`. `examples[i]` is the problem completion i answers (each
    prompt's example repeated G times). `lengths`/`truncated` are per completion, in tokens.
    """

    completions: list[str]
    examples: list[Example]
    task: Task | None = None
    prefill: str = ""
    lengths: list[int] | None = None
    max_length: int | None = None
    truncated: list[bool] | None = None
    language: str = "en"

    def __post_init__(self) -> None:
        n = len(self.completions)
        for name in ("examples", "lengths", "truncated"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"RewardInputs.{name} has {len(values)} items for {n} completions")

    def texts(self) -> list[str]:
        """The full responses, `prefill + completion`, as a reader would see them."""
        return [self.prefill + c for c in self.completions]


RewardFn = Callable[..., list[float | None]]
REWARDS: dict[str, RewardFn] = {}
PARAM_CHECKS: dict[str, Callable[..., None]] = {}
"""Per reward name, a function of the term's params that raises UserError on a bad value."""
LAZY_REWARDS = {"reward_model": "r1lab.rewards.reward_model"}
"""Rewards whose module loads models: imported (and so registered) when first named."""


def register_reward(
    name: str, check: Callable[..., None] | None = None
) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function to `REWARDS` under `name` (names are unique).

    `check(**params)` validates param *values* at config load time (a misspelt `style`
    fails before any model loads); the signature check of `check_terms` covers the keys.
    """

    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        if check is not None:
            PARAM_CHECKS[name] = check
        return fn

    return wrap


def resolve_reward(name: str) -> RewardFn:
    """The function for a registry name, or for an import path `package.module:function`.

    Unknown names and bad import paths are `UserError`s saying what would be valid, so a typo
    in a config fails at load time instead of after the model has loaded.
    """
    if name not in REWARDS and name in LAZY_REWARDS:
        importlib.import_module(LAZY_REWARDS[name])
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        err = unknown_name("reward", name, {*REWARDS, *LAZY_REWARDS})
        raise UserError(f"{err} (or an import path 'package.module:function')")
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"reward import path {name!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ModuleNotFoundError, or the user's module failing to import
        raise UserError(
            f"cannot import module {module_name!r} for reward {name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"module {module_name!r} has no attribute {attr!r} (reward {name!r})")
    if not callable(fn):
        raise UserError(f"reward {name!r}: {module_name}.{attr} is not callable")
    return fn


@dataclass(frozen=True)
class RewardTerm:
    """One weighted reward of a run: `weight * fn(inputs, **params)` is added to the total.

    `name` keys the term's logs (`reward/<name>`) and must be unique in a run; `reward` names
    the function when it differs, e.g. `RewardTerm("helpfulness", reward="reward_model")`.
    """

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    reward: str | None = None

    @property
    def reward_name(self) -> str:
        """The registry name or import path of the function this term runs."""
        return self.reward or self.name


FORMAT_REWARDS = ("format", "tag_count", "language_consistency")
"""Rewards whose `style`/`special_token` params name the response format a run trains."""


def output_format(terms: Iterable[RewardTerm]) -> OutputFormat:
    """The response format a run trains: the style its format rewards check, else `think`.

    Evaluation rows and step metrics judge `format` in it, so a run in R1's readable
    `|special_token|` style is not reported as format 0.
    """
    for term in terms:
        if term.reward_name in FORMAT_REWARDS and "style" in term.params:
            token = term.params.get("special_token", SPECIAL_TOKEN)
            return OutputFormat(term.params["style"], token)
    return THINK


def check_terms(terms: Iterable[RewardTerm]) -> None:
    """Validate reward terms at config load time: names resolve, params fit the signature.

    Term names key the per-term logs, so the same name twice is an error too.
    """
    seen: set[str] = set()
    for term in terms:
        if term.name in seen:
            raise UserError(
                f"reward {term.name!r} is listed twice; list each reward once, or give each "
                f"use its own name: {{name: other_name, reward: {term.reward_name}}}"
            )
        seen.add(term.name)
        if not isinstance(term.weight, (int, float)) or not math.isfinite(term.weight):
            raise UserError(f"reward {term.name!r}: weight must be a finite number")
        _check_params(term.name, resolve_reward(term.reward_name), term.params)
        check = PARAM_CHECKS.get(term.reward_name)
        if check is not None:
            try:
                check(**term.params)
            except UserError as exc:
                raise UserError(f"reward {term.name!r}: {exc}") from exc


def _check_params(name: str, fn: RewardFn, params: dict[str, Any]) -> None:
    """Unknown or missing keyword params of one reward -> UserError listing the valid ones."""
    sig = inspect.signature(fn)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = list(sig.parameters.values())[1:]  # the first parameter receives `inputs`
    valid = [p.name for p in accepted if p.kind in kinds]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted)
    unknown = sorted(k for k in params if k not in valid)
    if unknown and not takes_any:
        raise UserError(
            f"unknown param(s) {', '.join(map(repr, unknown))} for reward {name!r}"
            f"{did_you_mean(unknown[0], valid)}; "
            f"valid params: {', '.join(valid) or '(none)'}"
        )
    try:
        sig.bind(None, **params)
    except TypeError as exc:
        raise UserError(f"reward {name!r}: {exc}") from exc


def compute_rewards(
    terms: list[RewardTerm], inputs: RewardInputs
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Total reward per completion and every term's raw values (keyed by term name).

    total[i] = sum(weight * value) over the terms whose value for i is not None (0.0 when all
    are None). Terms with weight 0 are still computed, so a reward can be logged without
    being optimised.

    >>> import r1lab.rewards  # registers the rule rewards
    >>> ex = Example(id="q1", prompt="1+1", answer="2")
    >>> inputs = RewardInputs(["x</think><answer>2</answer>", "2"], [ex, ex], prefill="<think>")
    >>> compute_rewards([RewardTerm("format", 0.5), RewardTerm("tag_count")], inputs)
    ([1.5, 0.25], {'format': [1.0, 0.0], 'tag_count': [1.0, 0.25]})
    """
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise UserError(f"reward terms repeat a name: {names}")
    total = [0.0] * len(inputs.completions)
    per_term: dict[str, list[float | None]] = {}
    for term in terms:
        values = _call_reward(term, resolve_reward(term.reward_name), inputs)
        per_term[term.name] = values
        for i, value in enumerate(values):
            if value is not None:
                total[i] += term.weight * value
    return total, per_term


def _call_reward(term: RewardTerm, fn: RewardFn, inputs: RewardInputs) -> list[float | None]:
    """Run one reward; a failure names the reward and, where one reproduces it, the sample."""
    try:
        values = fn(inputs, **term.params)
    except UserError as exc:
        if f"reward {term.name!r}" in str(exc):
            raise
        raise UserError(f"reward {term.name!r}: {exc}") from exc
    except Exception as exc:
        raise _locate_failure(term, fn, inputs, exc) from exc
    n = len(inputs.completions)
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else repr(type(values))
        raise UserError(f"reward {term.name!r} returned {got} for {n} completions")
    checked: list[float | None] = []
    for i, value in enumerate(values):
        if value is not None:
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise UserError(
                    f"reward {term.name!r} returned {value!r} for sample {i} "
                    f"(example {inputs.examples[i].id!r}); expected a finite number or None"
                )
            value = float(value)
        checked.append(value)
    return checked


def _locate_failure(
    term: RewardTerm, fn: RewardFn, inputs: RewardInputs, exc: Exception
) -> UserError:
    """Re-run a failed batch reward one sample at a time to name the sample that breaks it."""
    for i in range(len(inputs.completions)):
        one = replace(
            inputs,
            completions=inputs.completions[i : i + 1],
            examples=inputs.examples[i : i + 1],
            lengths=None if inputs.lengths is None else inputs.lengths[i : i + 1],
            truncated=None if inputs.truncated is None else inputs.truncated[i : i + 1],
        )
        try:
            fn(one, **term.params)
        except Exception as single:
            return UserError(
                f"reward {term.name!r} failed on sample {i} (example {inputs.examples[i].id!r}): "
                f"{type(single).__name__}: {single}"
            )
    return UserError(
        f"reward {term.name!r} failed on a batch of {len(inputs.completions)} completions "
        f"(no single sample reproduces it): {type(exc).__name__}: {exc}"
    )
