"""Preflight: look at what a run will see before spending an hour on it.

Renders prompts, samples a few completions, scores each with every reward term, and warns
about the traps users of GRPO trainers hit most: a template that prefills `<think>`, a reward
that is constant across samples (no learning signal at all), gold answers that do not parse,
and prompts longer than the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from r1lab.core.errors import UserError
from r1lab.core.models import load_model
from r1lab.core.types import Example
from r1lab.grpo.config import Config
from r1lab.grpo.step import render_all, reward_terms, sampling_params, score_groups
from r1lab.rollout import Generation, make_engine
from r1lab.tasks import make_task
from r1lab.text.templates import Prompt, pick_shots


@dataclass
class PreflightReport:
    samples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)


def preflight(config: Config, prompts: int = 2, samples: int = 4) -> PreflightReport:
    """Sample `samples` completions for each of `prompts` training prompts and check them."""
    report = PreflightReport()
    try:
        task = make_task(config.task.name, config.task.options)
        examples = task.examples("train", limit=max(prompts, config.template.shots + prompts))
    except UserError as err:
        report.warnings.append(f"the task does not load: {err}")
        return report
    if not examples:
        report.warnings.append("the training split is empty")
        return report
    shots = pick_shots(task, examples, config.template.shots, config.template.shot_style)
    shown = {shot.id for shot in shots}
    chosen = [ex for ex in examples if ex.id not in shown][:prompts] or examples[:prompts]
    model, tokenizer = load_model(config.model.spec, config.model.dtype)
    rendered = render_all(config.template.name, chosen, tokenizer, shots)
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
    truncated = sum(not s["finished"] for s in report.samples)
    if truncated:
        report.warnings.append(
            f"{truncated}/{len(report.samples)} samples hit generation.max_new_tokens="
            f"{config.generation.max_new_tokens} without finishing"
        )
