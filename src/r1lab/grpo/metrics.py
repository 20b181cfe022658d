"""What a GRPO step writes: its row of metrics.jsonl and its rows of samples.jsonl.

The row is the run-directory contract other tools read (`r1lab plot`, the pipeline report):
`reward`, `reward/<term>` (None where no sample had the term), `accuracy` (rule-checkable
samples only), `format`, lengths, truncation, reflection words, the update's statistics
(`kl`, `clip_frac`, `entropy`, `grad_norm`, `loss`), the engine's sampling distribution
against the trainer's (`engine_kl`, `engine_max_ratio`, `engine_min_ratio`: None for engines
that sample from the trainer's own), `zero_std_frac`, sampling throughput,
and where the step's time went (`time/*`, seconds).
"""

from __future__ import annotations

from typing import Any

from r1lab.grpo.step import StepRollout
from r1lab.grpo.update import UpdateStats
from r1lab.rewards import RewardTerm, output_format
from r1lab.tasks import Task
from r1lab.text.reflection import count_reflections


def step_row(
    rollout: StepRollout, update: UpdateStats, task: Task, terms: list[RewardTerm]
) -> dict[str, Any]:
    """The per-step metrics row (without `step`, `lr` and `step_seconds`, added by the loop);
    `format` is judged in the run's own response format (`rewards.output_format`)."""
    fmt = output_format(terms)
    prefill = rollout.prompts[0].prefill if rollout.prompts else ""
    gens = [
        (ex, gen)
        for ex, group in zip(rollout.examples, rollout.groups, strict=True)
        for gen in group
    ]
    n = max(1, len(gens))
    lengths = [len(g.completion_ids) for _, g in gens] or [0]
    texts = [prefill + g.text for _, g in gens]
    rewards = rollout.rewards or [0.0]
    checkable = [(t, ex) for t, (ex, _) in zip(texts, gens, strict=True) if ex.checkable]
    graded = task.score_many([t for t, _ in checkable], [ex for _, ex in checkable])
    row: dict[str, Any] = {
        "reward": sum(rewards) / len(rewards),
        "accuracy": sum(graded) / len(graded) if graded else None,  # general prompts: no rule
        "format": sum(fmt.ok(t) for t in texts) / n,
    }
    for term in terms:  # every term, even with no groups
        present = [v for v in rollout.terms.get(term.name, []) if v is not None]
        row[f"reward/{term.name}"] = sum(present) / len(present) if present else None
    row.update(
        completion_len_mean=sum(lengths) / len(lengths),
        completion_len_max=max(lengths),
        truncated_frac=sum(not g.finished for _, g in gens) / n,
        reflection_words=sum(count_reflections(t) for t in texts) / n,
        reflection_frac=sum(count_reflections(t) > 0 for t in texts) / n,
        kl=update.kl,
        clip_frac=update.clip_frac,
        entropy=update.entropy,
        grad_norm=update.grad_norm,
        loss=update.loss,
        engine_kl=update.engine_kl,
        engine_max_ratio=update.engine_max_ratio,
        engine_min_ratio=update.engine_min_ratio,
        zero_std_frac=rollout.zero_std_frac,
        skipped_updates=update.skipped_updates,
        gen_tokens_per_s=rollout.sampled_tokens / max(rollout.gen_seconds, 1e-9),
    )
    # where the step's time went (seconds): generation, old/ref log-probs, the policy's
    # forward/backward, clipping + optimizer update, and refreshing the engine's weights
    row["time/generate"] = rollout.gen_seconds
    for part in ("logprobs", "policy", "optimizer", "sync"):
        row[f"time/{part}"] = update.seconds.get(part, 0.0)
    return row


def sample_rows(step: int, rollout: StepRollout) -> list[dict[str, Any]]:
    """samples.jsonl rows: each completion with its prompt, answer and per-term rewards."""
    rows, i = [], 0
    for ex, prompt, group in zip(rollout.examples, rollout.prompts, rollout.groups, strict=True):
        for gen in group:
            rows.append(
                {
                    "step": step,
                    "id": ex.id,
                    "prompt": prompt.text,
                    "answer": ex.answer,
                    "completion": gen.text,
                    "reward": rollout.rewards[i],
                    "rewards": {name: values[i] for name, values in rollout.terms.items()},
                }
            )
            i += 1
    return rows
