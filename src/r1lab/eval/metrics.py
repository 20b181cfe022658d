"""The evaluation estimators as pure functions over graded samples (no model, no torch).

A graded sample is a row of results.jsonl: `id`, `sample` (index), `normalized` answer,
`correct`, `format`, `length`, `truncated`. pass@1 is the mean correctness over a problem's k
samples; cons@k grades the majority-voted answer itself; pass@k' uses the unbiased estimator
1 - C(n-c, k')/C(n, k'); confidence intervals resample problems.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]

RESAMPLES = 1000
LEVEL = 0.95


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k, 1 - C(n-c, k)/C(n, k), in the stable product form.

    The binomials overflow for n = 64 long before the ratio does; the product
    prod_{i=n-c+1..n} (1 - k/i) is the same ratio with every factor in [0, 1].

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


def pass_ks(k: int) -> list[int]:
    """The k' reported as pass@k': powers of two up to k, and k itself (1, 2, 4, 6 for k=6)."""
    ks = [1 << i for i in range(k.bit_length()) if 1 << i <= k]
    return ks if ks[-1] == k else [*ks, k]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common normalised answer; ties go to the answer seen first, None never wins.

    Breaking ties by first appearance (sample index order) keeps cons@k deterministic for a
    given set of samples; a sample with no answer does not vote.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def bootstrap_ci(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems (not samples).

    Problems are the unit because the k samples of one problem are correlated; resampling
    them as if independent would make the interval too narrow. Seeded: same data, same CI.
    """
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (0.0, 0.0)
    if np.all(data == data[0]):  # no spread: an exact point, not float noise around it
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            data[rng.integers(0, data.size, size=(min(100, resamples - s), data.size))].mean(1)
            for s in range(0, resamples, 100)
        ]
    )
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return (float(low), float(high))


def group_by_problem(records: Sequence[Row]) -> dict[str, list[Row]]:
    """Records per problem id, each list in sample-index order (the tie-break order)."""
    by_problem: dict[str, list[Row]] = {}
    for record in records:
        by_problem.setdefault(record["id"], []).append(record)
    return {pid: sorted(rows, key=lambda r: r["sample"]) for pid, rows in by_problem.items()}


def voted_correct(rows: Sequence[Row]) -> bool:
    """Whether the majority-voted answer is correct, graded as itself: the voted class's answer
    sampled first, with its own grade. Two answers can normalise alike and grade differently
    (`normalize` only groups votes); a lucky sample elsewhere in the class must not count.
    """
    voted = majority_vote([r["normalized"] for r in rows])
    if voted is None:
        return False
    return bool(next(r for r in rows if r["normalized"] == voted)["correct"])


def problem_scores(rows: Sequence[Row]) -> dict[str, float]:
    """One problem's correct count, pass@1, cons (0/1), format rate, length, truncation."""
    n = len(rows)
    cons = voted_correct(rows)
    return {
        "correct": sum(bool(r["correct"]) for r in rows),
        "pass@1": sum(bool(r["correct"]) for r in rows) / n,
        "cons@k": float(cons),
        "format": sum(bool(r["format"]) for r in rows) / n,
        "length": sum(r["length"] for r in rows) / n,
        "truncated": sum(bool(r.get("truncated", False)) for r in rows) / n,
    }


def summarize(records: Sequence[Row]) -> dict[str, float]:
    """pass@1 (mean correctness over samples, then problems), cons@k, format rate, length,
    and the share of samples cut at the token limit."""
    keys = ("pass@1", "cons@k", "format", "length", "truncated")
    scores = [problem_scores(rows) for rows in group_by_problem(records).values()]
    n = len(scores)
    if not n:
        return {**dict.fromkeys(keys, 0.0), "problems": 0}
    out: dict[str, float] = {key: sum(s[key] for s in scores) / n for key in keys}
    out["problems"] = n
    return out


def eval_metrics(
    groups: Sequence[Sequence[Row]], k: int, seed: int = 0, resamples: int = RESAMPLES
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(metrics, 95% CIs) over problems that each have exactly k graded samples.

    pass@1 is the plain mean correctness (the unbiased estimator at k'=1, without float
    error); pass@k' for k' > 1 uses the unbiased estimator on the same k samples.
    """
    scores = [problem_scores(rows) for rows in groups]
    n = max(1, len(scores))
    metrics: dict[str, float] = {}
    for j in pass_ks(k):
        if j == 1:
            metrics["pass@1"] = sum(s["pass@1"] for s in scores) / n
        else:
            metrics[f"pass@{j}"] = sum(pass_at_k(k, int(s["correct"]), j) for s in scores) / n
    for key in ("cons@k", "format", "length", "truncated"):
        metrics[key] = sum(s[key] for s in scores) / n
    ci = {
        key: list(bootstrap_ci([s[key] for s in scores], resamples, seed))
        for key in ("pass@1", "cons@k")
    }
    return metrics, ci
