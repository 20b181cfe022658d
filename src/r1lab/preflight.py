"""Preflight: look at what a run will see before spending an hour on it.

Renders prompts, samples a few completions, scores each with every reward term, and warns
about the traps users of GRPO trainers hit most: a template that prefills `<think>`, a reward
that is constant across samples (no learning signal at all), gold answers that do not parse,
and prompts longer than the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from r1lab.config import Config
from r1lab.errors import UserError
from r1lab.models import load_model
from r1lab.rollout import make_engine
from r1lab.tasks import make_task
from r1lab.templates import pick_shots
from r1lab.train.grpo import render_all, reward_terms, sampling_params, score_groups


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
    rendered = render_all(config, chosen, tokenizer, shots)
    if rendered[0].prefill.strip():
        report.warnings.append(
            f"the template prefills {rendered[0].prefill.strip()!r}: completions start inside "
            "the think block; the format reward counts the prefill, make sure your own rewards do"
        )
    for prompt in rendered:
        count = len(tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids)
        report.prompt_tokens.append(count)
        if count > config.generation.max_prompt_tokens:
            report.warnings.append(
                f"a prompt has {count} tokens, over generation.max_prompt_tokens="
                f"{config.generation.max_prompt_tokens}: its start would be cut off"
            )
    engine = make_engine(
        config.generation.engine,
        model,
        tokenizer,
        max_prompt_tokens=config.generation.max_prompt_tokens,
        compute_dtype=config.model.compute_dtype,
    )
    params = sampling_params(config)
    params = type(params)(**{**params.__dict__, "n": samples})
    torch.manual_seed(config.train.seed)
    groups = engine.generate(rendered, params)
    rewards, terms = score_groups(config, task, chosen, rendered, groups)
    i = 0
    for ex, prompt, group in zip(chosen, rendered, groups, strict=True):
        for gen in group:
            report.samples.append(
                {
                    "id": ex.id,
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
    return report
