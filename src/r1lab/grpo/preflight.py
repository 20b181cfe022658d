"""Preflight: look at what a run will see before spending an hour on it.

Renders prompts (shown as the model sees them), samples a few completions, scores each with
every reward term, and warns about the traps users of GRPO trainers hit most, in the words
training itself would use (`core.advice`): a template that prefills `<think>`, a reward that
is constant across samples or groups (no learning signal at all), samples cut at the token
limit, an empty or tiny test split (no held-out evaluation), gold answers that do not parse,
and prompts longer than the limit; and, for a torchrun launch, the distributed settings
(`distributed_problems`: whole groups per rank, one device per rank, a backend for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from r1lab.core import advice
from r1lab.core.errors import UserError
from r1lab.core.models import load_model
from r1lab.core.types import Example
from r1lab.grpo.config import Config
from r1lab.grpo.step import render_all, reward_terms, sampling_params, score_groups
from r1lab.rollout import Generation, make_engine
from r1lab.tasks import make_task
from r1lab.text.templates import Prompt, pick_shots
from r1lab.train import dist


@dataclass
class PreflightReport:
    samples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # rendered, as the model sees them
    prompt_tokens: list[int] = field(default_factory=list)


def distributed_problems(config: Config, ranks: int, per_machine: int) -> list[str]:
    """What would stop a launch of `ranks` processes (`per_machine` on each machine) from
    training `config`: each rank samples whole groups of an equal share of the prompts."""
    g = config.grpo
    problems = []
    if ranks > 1 and g.batch_size % (ranks * g.group_size):
        problems.append(
            f"grpo.batch_size ({g.batch_size}) must be a multiple of the ranks x grpo.group_size "
            f"({ranks} x {g.group_size}): each rank samples whole groups of an equal share of "
            "the step's prompts"
        )
    if ranks > 1 and config.generation.engine == "vllm":
        problems.append(
            "generation.engine vllm runs one engine next to a single trainer process; under "
            "torchrun use the prefix engine (one vLLM engine per rank is not supported yet)"
        )
    return problems + dist.device_problems(config.model.device, per_machine)


def preflight(
    config: Config, prompts: int = 2, samples: int = 4, ranks: tuple[int, int] | None = None
) -> PreflightReport:
    """Sample `samples` completions for each of `prompts` training prompts and check them;
    `ranks` (processes per machine, machines) checks the settings of a torchrun launch
    (default: this launch's)."""
    report = PreflightReport()
    per_machine, machines = ranks or (dist.local_world_size(), 1)
    total = dist.world_size() if ranks is None else per_machine * machines
    problems = distributed_problems(config, total, per_machine)
    report.warnings += [f"distributed: {problem}" for problem in problems]
    try:
        task = make_task(config.task.name, config.task.options)
        examples = task.examples("train", limit=max(prompts, config.template.shots + prompts))
    except UserError as err:
        report.warnings.append(f"the task does not load: {err}")
        return report
    if not examples:
        report.warnings.append("the training split is empty")
        return report
    check_test_split(config, task, report)
    shots = pick_shots(task, examples, config.template.shots, config.template.shot_style)
    shown = {shot.id for shot in shots}
    chosen = [ex for ex in examples if ex.id not in shown][:prompts] or examples[:prompts]
    model, tokenizer = load_model(config.model.spec, config.model.dtype)
    rendered = render_all(config.template.name, chosen, tokenizer, shots)
    report.prompts = [prompt.text for prompt in rendered]
    check_prompts(config, rendered, tokenizer, report)
    engine = make_engine(
        config.generation.engine,
        model,
        tokenizer,
        max_prompt_tokens=config.generation.max_prompt_tokens,
        compute_dtype=config.model.compute_dtype,
    )
    torch.manual_seed(config.train.seed)
    groups = engine.generate(rendered, replace(sampling_params(config), n=samples))
    rewards, terms = score_groups(config, task, chosen, rendered, groups)
    report.samples = sample_records(chosen, rendered, groups, rewards, terms)
    add_test_verdicts(task, report)
    check_samples(config, report, rewards, terms)
    return report


def check_test_split(config: Config, task: Any, report: PreflightReport) -> None:
    """Warn when the held-out evaluation would be skipped (no test problems) or too coarse."""
    count = sum(ex.checkable for ex in task.examples("test"))
    small = advice.test_split(count, config.eval.size, "held-out evaluation")
    if small:
        report.warnings.append(small)


def verdict_line(verdicts: Sequence[str]) -> str:
    """A sample's sandbox verdicts in one line.

    >>> verdict_line(["passed", "failed", "passed", "timeout"])
    '2/4 tests passed (failed 1, timeout 1)'
    """
    passed = sum(v == "passed" for v in verdicts)
    others = sorted({v for v in verdicts if v != "passed"})
    rest = ", ".join(f"{v} {verdicts.count(v)}" for v in others)
    return f"{passed}/{len(verdicts)} tests passed" + (f" ({rest})" if rest else "")


def add_test_verdicts(task: Any, report: PreflightReport) -> None:
    """For code problems: each sample's sandbox verdicts (run once: the rewards cached them),
    and a warning when the programs run without isolation."""
    texts = [s["prefill"] + s["completion"] for s in report.samples]
    verdicts = task.test_verdicts(texts, [s["example"] for s in report.samples])
    for sample, tests in zip(report.samples, verdicts, strict=True):
        sample["tests"] = None if tests is None else verdict_line(tests)
    sandbox = getattr(task, "sandbox", None)
    if any(v is not None for v in verdicts) and sandbox is not None and sandbox.mode != "strict":
        report.warnings.append(f"model-written code runs in {sandbox.describe()}")


def check_prompts(
    config: Config, rendered: list[Prompt], tokenizer: Any, report: PreflightReport
) -> None:
    """Warn about a template that prefills `<think>` and prompts over the length limit."""
    if rendered[0].prefill.strip():
        report.warnings.append(
            f"the template prefills {rendered[0].prefill.strip()!r}: completions start inside "
            "the think block; the format reward counts the prefill, make sure your own rewards do"
        )
    limit = config.generation.max_prompt_tokens
    for prompt in rendered:
        count = len(tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids)
        report.prompt_tokens.append(count)
        if count > limit:
            report.warnings.append(
                f"a prompt has {count} tokens, over generation.max_prompt_tokens={limit}: "
                "its start would be cut off"
            )


def sample_records(
    chosen: Sequence[Example],
    rendered: Sequence[Prompt],
    groups: Sequence[Sequence[Generation]],
    rewards: Sequence[float],
    terms: dict[str, list[float | None]],
) -> list[dict[str, Any]]:
    """One record per sample: prompt, completion, length, total reward and each term."""
    records, i = [], 0
    for ex, prompt, group in zip(chosen, rendered, groups, strict=True):
        for gen in group:
            records.append(
                {
                    "id": ex.id,
                    "example": ex,
                    "prefill": prompt.prefill,
                    "prompt": prompt.text,
                    "answer": ex.answer,
                    "completion": gen.text,
                    "tokens": len(gen.completion_ids),
                    "finished": gen.finished,
                    "reward": rewards[i],
                    "terms": {k: v[i] for k, v in terms.items()},
                }
            )
            i += 1
    return records


def check_samples(
    config: Config,
    report: PreflightReport,
    rewards: Sequence[float],
    terms: dict[str, list[float | None]],
) -> None:
    """Warn about rewards with no learning signal and samples cut at the token limit."""
    for term in reward_terms(config):
        applied = [v for v in terms[term.name] if v is not None]  # None: not applicable
        if len(set(applied)) == 1:
            report.warnings.append(
                f"reward {term.name!r} is {applied[0]} for all {len(applied)} samples it "
                "applies to: no learning signal from it (consider tag_count shaping, a worked "
                "example with template.shots, or a cold start)"
            )
    if len(set(rewards)) == 1:
        report.warnings.append("the total reward is constant: GRPO advantages would all be 0")
    else:
        groups: dict[str, set[float]] = {}
        for sample, reward in zip(report.samples, rewards, strict=True):
            groups.setdefault(sample["id"], set()).add(reward)
        if len(groups) > 1 and all(len(values) == 1 for values in groups.values()):
            report.warnings.append(advice.no_signal())
    truncated = sum(not s["finished"] for s in report.samples)
    limit = f"generation.max_new_tokens={config.generation.max_new_tokens}"
    share = truncated / max(1, len(report.samples))
    cut = advice.truncation(share, limit, f"the samples ({truncated}/{len(report.samples)})")
    if cut:
        report.warnings.append(cut)
    elif truncated:
        report.warnings.append(
            f"{truncated}/{len(report.samples)} samples hit {limit} without finishing"
        )
