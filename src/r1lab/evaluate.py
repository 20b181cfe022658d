"""Sampling-based evaluation as DeepSeek reported it: pass@1 over k samples, cons@k, pass@k.

The grader is the task's own `score`, the same code behind the accuracy reward, so a number
seen during training and one reported by evaluation always mean the same thing.

`run_eval` is the reproducible path behind `r1lab eval`. Its rules:
- each problem's k samples are drawn in one engine call under a seed derived from
  (seed, problem id) only, so a number never depends on batch size, problem order, `--limit`,
  or on whether the evaluation was interrupted and resumed;
- `results.jsonl` (one row per sample) is the source of truth; `summary.json` is recomputed
  from it, so a resumed evaluation reports exactly what an uninterrupted one would;
- `settings.json` pins what a sample *is* (model, task, template, sampling); resuming with
  other settings is refused instead of silently mixing two evaluations.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from r1lab.errors import UserError, unknown_name
from r1lab.eval_store import (
    RESULTS,
    SPLIT,
    SUMMARY,
    EvalSettings,
    Row,
    check_settings,
    default_out_dir,
    load_finished,
    make_settings,
    problem_seed,
    write_rows,
)
from r1lab.rewards import format_ok
from r1lab.rollout.base import RolloutEngine, SamplingParams
from r1lab.tasks.base import Task
from r1lab.templates import pick_shots, render
from r1lab.types import Example

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


def sample_and_grade(
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    params: SamplingParams,
    shots: Sequence[Example] = (),
) -> list[Row]:
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
                    "gold": example.answer,
                    "format": format_ok(full),
                    "length": len(gen.completion_ids),
                    "truncated": not gen.finished,
                }
            )
    return records


def group_by_problem(records: Sequence[Row]) -> dict[str, list[Row]]:
    """Records per problem id, each list in sample-index order (the tie-break order)."""
    by_problem: dict[str, list[Row]] = {}
    for record in records:
        by_problem.setdefault(record["id"], []).append(record)
    return {pid: sorted(rows, key=lambda r: r["sample"]) for pid, rows in by_problem.items()}


def problem_scores(rows: Sequence[Row]) -> dict[str, float]:
    """One problem's correct count, pass@1, cons (0/1), format rate, length, truncation."""
    n = len(rows)
    voted = majority_vote([r["normalized"] for r in rows])
    cons = voted is not None and any(r["correct"] for r in rows if r["normalized"] == voted)
    return {
        "correct": sum(bool(r["correct"]) for r in rows),
        "pass@1": sum(bool(r["correct"]) for r in rows) / n,
        "cons@k": float(cons),
        "format": sum(bool(r["format"]) for r in rows) / n,
        "length": sum(r["length"] for r in rows) / n,
        "truncated": sum(bool(r.get("truncated", False)) for r in rows) / n,
    }


def summarize(records: Sequence[Row]) -> dict[str, float]:
    """pass@1 (mean correctness over samples, then problems), cons@k, format rate, length."""
    scores = [problem_scores(rows) for rows in group_by_problem(records).values()]
    n = len(scores)
    if not n:
        return {"pass@1": 0.0, "cons@k": 0.0, "format": 0.0, "length": 0.0, "problems": 0}
    out: dict[str, float] = {
        key: sum(s[key] for s in scores) / n for key in ("pass@1", "cons@k", "format", "length")
    }
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


def run_eval(
    model_spec: str,
    task_spec: str,
    task_options: dict[str, Any] | None = None,
    template: str = "r1_zero",
    k: int = 8,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    engine: str = "prefix",
    batch_size: int = 16,
    *,
    greedy: bool = False,
    shots: int = 0,
    shot_style: str = "brief",
    stop: Sequence[str] = (),
    dtype: str = "float32",
    compute_dtype: str = "float32",
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `model_spec` on the test split of `task_spec`; returns the summary dict.

    Writes `out_dir/results.jsonl`, `settings.json` and `summary.json` (default out_dir:
    `default_out_dir`). `batch_size` is how many problems share an engine call and a write to
    results.jsonl (the resume granularity); each problem samples from its own seeded
    generator, so it never changes a number. `compute_dtype` "bfloat16" runs the matmuls in
    bf16 (faster on CPUs with AVX-512 bf16; samples differ from fp32 ones).
    """
    settings, notes = make_settings(
        model_spec,
        task_spec,
        task_options=task_options,
        template=template,
        shots=shots,
        shot_style=shot_style,
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        greedy=greedy,
        engine=engine,
        stop=tuple(stop),
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(settings)
    runtime = {
        "batch_size": batch_size,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "device": device,
        "progress": progress,
    }
    return evaluate_settings(settings, out, limit, notes, **runtime)


def evaluate_settings(
    settings: EvalSettings,
    out: Path,
    limit: int | None = None,
    notes: Sequence[str] = (),
    batch_size: int = 16,
    dtype: str = "float32",
    compute_dtype: str = "float32",
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """`run_eval` once the settings are fixed: check inputs, resume, sample the rest, summarise."""
    from r1lab.rollout import ENGINES, hf, prefix  # noqa: F401  (registers the engines)
    from r1lab.tasks import make_task
    from r1lab.templates import check_template

    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    task = make_task(settings.task, settings.task_options)  # bad names fail before model loading
    check_template(settings.template)
    if settings.engine not in ENGINES:
        raise unknown_name("rollout engine", settings.engine, ENGINES)
    listed = task.examples(SPLIT, limit=limit)
    problems = [p for p in listed if p.checkable]
    notes = list(notes)
    if len(problems) < len(listed):
        notes.append(
            f"skipped {len(listed) - len(problems)} general prompts (no rule-checkable answer): "
            "pass@1 is over the other problems"
        )
    if not problems:
        raise UserError(f"task {settings.task!r} has no checkable {SPLIT} problems to evaluate")
    if len({p.id for p in problems}) != len(problems):
        raise UserError(f"task {settings.task!r} has duplicate problem ids in its {SPLIT} split")
    check_settings(out, settings)
    finished = load_finished(out, settings.k)
    todo = [p for p in problems if p.id not in finished]
    if len(todo) < len(problems):
        notes.append(f"resumed: {len(problems) - len(todo)} problems reused from {RESULTS}")
    if todo:
        train = [ex for ex in task.examples("train") if ex.checkable][: settings.shots]
        if len(train) < settings.shots:
            notes.append(f"only {len(train)} train examples available for {settings.shots} shots")
        shot_examples = pick_shots(task, train, settings.shots, settings.shot_style)
        runtime = {
            "batch_size": batch_size,
            "dtype": dtype,
            "compute_dtype": compute_dtype,
            "device": device,
        }
        sample_problems(settings, task, todo, shot_examples, out / RESULTS, progress, **runtime)
        finished = load_finished(out, settings.k)
    summary = build_summary(settings, [finished[p.id] for p in problems], notes, limit, out)
    tmp = out / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY)
    return summary


def sample_problems(
    settings: EvalSettings,
    task: Task,
    todo: Sequence[Example],
    shots: Sequence[Example],
    path: Path,
    progress: bool,
    batch_size: int,
    dtype: str,
    device: str,
    label: str = "eval",
    compute_dtype: str = "float32",
) -> None:
    """Draw and grade k samples per problem, each problem under its own seed; append rows.

    `batch_size` problems share one engine call (and one write to `path`, the resume
    granularity); each draws from its own generator seeded by (seed, problem id), so the
    samples do not depend on the batch size, `--limit` or a resume.
    Shared by evaluation and rejection sampling (`r1lab.sampling`, `label="sample"`), so a
    sample means the same in both: same seed per (seed, problem id), same grader, same rows.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    engine, tokenizer = _engine(settings, todo, shots, dtype, device, compute_dtype)
    params = SamplingParams(
        n=settings.k,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=settings.stop,
    )
    columns = (label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True), disable=not progress)
    with bar:
        job = bar.add_task(label, total=len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            seeds = tuple(problem_seed(settings.seed, example.id) for example in batch)
            rows = sample_and_grade(
                engine,
                task,
                batch,
                tokenizer,
                settings.template,
                replace(params, seeds=seeds),
                shots,
            )
            write_rows(path, rows)
            bar.advance(job, len(batch))


def _engine(
    settings: EvalSettings,
    todo: Sequence[Example],
    shots: Sequence[Example],
    dtype: str,
    device: str,
    compute_dtype: str = "float32",
) -> tuple[RolloutEngine, Any]:
    """(engine, tokenizer) for the settings' model on `device`; prompts are never cut.

    The engine keeps the last `max_prompt_tokens` of a prompt; sizing it to the longest prompt
    evaluated means a long few-shot prompt is never silently truncated.
    """
    from r1lab.models import load_model, pick_device
    from r1lab.rollout import make_engine

    model, tokenizer = load_model(settings.model, dtype)
    model.to(pick_device(device))
    prompts = [render(settings.template, ex.prompt, tokenizer, shots) for ex in todo]
    longest = max(
        len(tokenizer(p.text, add_special_tokens=p.add_special_tokens).input_ids) for p in prompts
    )
    engine = make_engine(
        settings.engine, model, tokenizer, max_prompt_tokens=longest, compute_dtype=compute_dtype
    )
    return engine, tokenizer


def build_summary(
    settings: EvalSettings,
    groups: Sequence[Sequence[Row]],
    notes: Sequence[str],
    limit: int | None,
    out: Path,
) -> dict[str, Any]:
    """summary.json: the metrics with their CIs and everything needed to reproduce them."""
    from datetime import UTC, datetime
    from importlib.metadata import PackageNotFoundError, version

    from r1lab import __version__

    metrics, ci = eval_metrics(groups, settings.k, settings.seed)
    versions = {"r1lab": __version__}
    for package in ("torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "metrics": metrics,
        "ci95": ci,
        "problems": len(groups),
        "k": settings.k,
        "greedy": settings.greedy,
        "settings": {**settings.to_json(), "limit": limit},
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": settings.seed},
        "notes": list(notes),
        "out_dir": str(out),
        "r1lab_version": __version__,
        "versions": versions,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
