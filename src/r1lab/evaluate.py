"""Sampling-based evaluation as DeepSeek reported it: pass@1 over k samples, cons@k, pass@k.

The grader is the task's own `score`, the same code behind the accuracy reward, so a number
seen during training and one reported by evaluation always mean the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from r1lab.rewards import format_ok
from r1lab.rollout.base import RolloutEngine, SamplingParams
from r1lab.tasks.base import Task
from r1lab.templates import render
from r1lab.types import Example


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k, 1 - C(n-c, k)/C(n, k), in the stable product form.

    >>> round(pass_at_k(4, 1, 2), 4)
    0.5
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common normalised answer; ties go to the answer seen first, None never wins.

    Breaking ties by first appearance keeps cons@k deterministic for a given sample order.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def sample_and_grade(
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    params: SamplingParams,
    shots: Sequence[Example] = (),
) -> list[dict[str, Any]]:
    """Draw `params.n` samples per example and grade each: one record per (problem, sample)."""
    prompts = [render(template, ex.prompt, tokenizer, shots) for ex in examples]
    generations = engine.generate(prompts, params)
    records = []
    for example, prompt, group in zip(examples, prompts, generations, strict=True):
        for index, gen in enumerate(group):
            full = prompt.prefill + gen.text
            answer = task.extract(full)
            records.append(
                {
                    "id": example.id,
                    "sample": index,
                    "completion": gen.text,
                    "answer": answer,
                    "normalized": task.normalize(answer),
                    "correct": task.grade(answer, example),
                    "format": format_ok(full),
                    "length": len(gen.completion_ids),
                    "truncated": not gen.finished,
                }
            )
    return records


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """pass@1 (mean correctness over samples, then problems), cons@k, format rate, length."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_problem.setdefault(record["id"], []).append(record)
    if not by_problem:
        return {"pass@1": 0.0, "cons@k": 0.0, "format": 0.0, "length": 0.0, "problems": 0}
    pass1, cons, fmt, length = [], [], [], []
    for rows in by_problem.values():
        pass1.append(sum(r["correct"] for r in rows) / len(rows))
        fmt.append(sum(r["format"] for r in rows) / len(rows))
        length.append(sum(r["length"] for r in rows) / len(rows))
        voted = majority_vote([r["normalized"] for r in rows])
        cons.append(
            any(r["correct"] for r in rows if voted is not None and r["normalized"] == voted)
        )
    n = len(by_problem)
    return {
        "pass@1": sum(pass1) / n,
        "cons@k": sum(cons) / n,
        "format": sum(fmt) / n,
        "length": sum(length) / n,
        "problems": n,
    }
