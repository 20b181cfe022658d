"""One GRPO step's rollouts: draw prompts, sample G completions each, score every completion.

The step hands a `StepRollout` to the update (`grpo.update`) and to the metrics row
(`grpo.metrics`): the kept groups with their rewards, every reward term's values, and what the
sampling cost. With dynamic sampling (DAPO), groups whose rewards are all equal carry no
gradient and are replaced by fresh draws, up to `grpo.max_resample` times.

Each prompt's G samples come from its own generator, seeded by (the step's seed, the draw,
the prompt's place in it), so they depend neither on which prompts share an engine call nor
on which rank draws them. Under torchrun every rank draws the same prompts, samples and scores
its contiguous share and gathers the others' (`train.dist`): every rank then holds the step's
whole rollout, the one a single process would have sampled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from r1lab.core.types import Example
from r1lab.grpo.config import Config
from r1lab.rewards import RewardInputs, RewardTerm, compute_rewards
from r1lab.rollout.base import Generation, RolloutEngine, SamplingParams
from r1lab.tasks import Task
from r1lab.text.templates import Prompt, render
from r1lab.train import dist
from r1lab.train.stream import derive_seed


@dataclass
class StepRollout:
    """What one step sampled and kept: P groups of G completions, flattened group-contiguous
    in `rewards` and in each of `terms` (a term's value is None where it does not apply)."""

    examples: list[Example] = field(default_factory=list)  # [P]
    prompts: list[Prompt] = field(default_factory=list)  # [P]
    groups: list[list[Generation]] = field(default_factory=list)  # [P][G]
    rewards: list[float] = field(default_factory=list)  # [P*G] the weighted totals
    terms: dict[str, list[float | None]] = field(default_factory=dict)  # name -> [P*G]
    sampled_tokens: int = 0  # every token sampled this step, dropped groups included
    gen_seconds: float = 0.0
    zero_std_frac: float = 0.0  # share of the first draw's groups with equal rewards

    def keep(
        self,
        example: Example,
        prompt: Prompt,
        group: list[Generation],
        rewards: list[float],
        terms: dict[str, list[float | None]],
    ) -> None:
        """Add one group with its G rewards and term values."""
        self.examples.append(example)
        self.prompts.append(prompt)
        self.groups.append(group)
        self.rewards.extend(rewards)
        for name, values in terms.items():
            self.terms.setdefault(name, []).extend(values)


def reward_terms(config: Config) -> list[RewardTerm]:
    """The configured reward terms, plus DAPO's overlong shaping when the preset asks for it."""
    terms = list(config.rewards)
    if config.grpo.overlong_buffer and not any(t.reward_name == "overlong" for t in terms):
        terms.append(RewardTerm("overlong", 1.0, {"buffer": config.grpo.overlong_buffer}))
    return terms


def sampling_params(config: Config) -> SamplingParams:
    gen = config.generation
    return SamplingParams(
        n=config.grpo.group_size,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        stop=tuple(gen.stop),
        logprobs=True,  # an engine that samples apart from the trainer says with what log-probs
    )


def render_all(
    template: str, examples: Sequence[Example], tokenizer: Any, shots: Sequence[Example]
) -> list[Prompt]:
    return [render(template, ex.prompt, tokenizer, shots) for ex in examples]


def score_groups(
    config: Config,
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[Generation]],
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Rewards for every completion (flattened group-contiguous) and the per-term values."""
    flat = [
        (ex, p, g) for ex, p, group in zip(examples, prompts, groups, strict=True) for g in group
    ]
    inputs = RewardInputs(
        completions=[g.text for _, _, g in flat],
        examples=[ex for ex, _, _ in flat],
        task=task,
        prefill=prompts[0].prefill if prompts else "",
        lengths=[len(g.completion_ids) for _, _, g in flat],
        max_length=config.generation.max_new_tokens,
        truncated=[not g.finished for _, _, g in flat],
        language=config.train.language,
    )
    return compute_rewards(reward_terms(config), inputs)


def sample_shared(
    config: Config,
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    prompts: Sequence[Prompt],
    seeds: Sequence[int],
) -> tuple[list[list[Generation]], list[float], dict[str, list[float | None]], float]:
    """Groups, rewards and term values of every prompt, and the slowest rank's seconds of
    sampling: each rank samples and scores its share, then all are gathered in order."""
    mine = dist.share(len(examples))
    part = slice(mine.start, mine.stop)
    local: tuple[list[list[Generation]], list[float], dict[str, list[float | None]], float]
    local = ([], [], {}, 0.0)
    if mine:
        params = replace(sampling_params(config), seeds=tuple(seeds[part]))
        start = time.perf_counter()
        groups = engine.generate(prompts[part], params)
        seconds = time.perf_counter() - start
        rewards, terms = score_groups(config, task, examples[part], prompts[part], groups)
        local = (groups, rewards, terms, seconds)
    groups, rewards, terms, seconds = [], [], {}, 0.0
    for g, r, t, s in dist.gather(local):
        groups += g
        rewards += r
        for name, values in t.items():
            terms.setdefault(name, []).extend(values)
        seconds = max(seconds, s)
    return groups, rewards, terms, seconds


def rollout_step(
    config: Config,
    engine: RolloutEngine,
    task: Task,
    draw: Callable[[int], list[Example]],
    tokenizer: Any,
    shots: Sequence[Example],
    seed: int = 0,
) -> StepRollout:
    """Sample, score and (with dynamic sampling) refill until P groups carry a signal.

    The first draw defines `zero_std_frac`; the sampling statistics cover everything drawn.
    `seed` is the step's: each prompt is sampled from its own generator seeded by it.
    """
    g = config.grpo
    out, size = StepRollout(), g.group_size
    first = True
    for attempt in range(1 + (g.max_resample if g.dynamic_sampling else 0)):
        need = g.prompts_per_step - len(out.groups)
        if need <= 0:
            break
        examples = draw(g.prompts_per_step if first else need)
        prompts = render_all(config.template.name, examples, tokenizer, shots)
        seeds = [derive_seed(seed, attempt, i) for i in range(len(examples))]
        groups, rewards, terms, seconds = sample_shared(
            config, engine, task, examples, prompts, seeds
        )
        out.gen_seconds += seconds
        out.sampled_tokens += sum(len(x.completion_ids) for grp in groups for x in grp)
        spread = [
            max(rewards[i * size : (i + 1) * size]) > min(rewards[i * size : (i + 1) * size])
            for i in range(len(groups))
        ]
        if first:
            out.zero_std_frac = 1.0 - sum(spread) / len(spread)
            first = False
        for i in range(len(groups)):
            if g.dynamic_sampling and not spread[i]:
                continue
            if len(out.groups) >= g.prompts_per_step:
                break
            part = slice(i * size, (i + 1) * size)
            values = {name: v[part] for name, v in terms.items()}
            out.keep(examples[i], prompts[i], groups[i], rewards[part], values)
    return out
