"""Sampling-based evaluation as DeepSeek reported it: the reproducible path behind `r1lab eval`.

The grader is the task's own `score`, the same code behind the accuracy reward, so a number
seen during training and one reported by evaluation always mean the same thing. The rules:
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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError, unknown_name
from r1lab.core.runfiles import append_rows, write_atomic
from r1lab.core.types import Example
from r1lab.eval.metrics import LEVEL, RESAMPLES, Row, eval_metrics
from r1lab.eval.protocol import Runtime
from r1lab.eval.store import (
    RESULTS,
    SPLIT,
    SUMMARY,
    EvalSettings,
    check_settings,
    default_out_dir,
    load_finished,
    problem_seed,
)
from r1lab.rollout import ENGINES, RolloutEngine, SamplingParams
from r1lab.tasks import Task, make_task
from r1lab.text.formats import format_ok
from r1lab.text.templates import check_template, pick_shots, render


def sample_and_grade(
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    params: SamplingParams,
    shots: Sequence[Example] = (),
) -> list[Row]:
    """Draw `params.n` samples per example and grade each: one record per (problem, sample).

    The whole batch is graded in one call (a code task runs every program across the
    sandbox's workers at once); a code problem's record also counts its test verdicts.
    """
    prompts = [render(template, ex.prompt, tokenizer, shots) for ex in examples]
    generations = engine.generate(prompts, params)
    flat = [
        (example, index, prompt.prefill + gen.text, gen)
        for example, prompt, group in zip(examples, prompts, generations, strict=True)
        for index, gen in enumerate(group)
    ]
    fulls, problems = [full for _, _, full, _ in flat], [ex for ex, _, _, _ in flat]
    verdicts = task.test_verdicts(fulls, problems)
    answers = [task.extract(full) for full in fulls]
    correct = task.grade_many(answers, problems)
    records = []
    for (example, index, full, gen), answer, ok, tests in zip(
        flat, answers, correct, verdicts, strict=True
    ):
        record = {
            "id": example.id,
            "sample": index,
            "completion": gen.text,
            "answer": answer,
            "normalized": task.normalize(answer),
            "correct": ok,
            "gold": example.answer,
            "format": format_ok(full),
            "length": len(gen.completion_ids),
            "truncated": not gen.finished,
        }
        if tests is not None:
            record["tests"] = {v: tests.count(v) for v in sorted(set(tests))}
        records.append(record)
    return records


def run_eval(
    settings: EvalSettings,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    runtime: Runtime | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate `settings` (see `store.make_settings`) on the first `limit` test problems.

    Writes `out_dir/results.jsonl`, `settings.json` and `summary.json` (default out_dir:
    `default_out_dir`) and returns the summary; finished problems of an earlier, interrupted
    run with the same settings are reused. `runtime` (default `Runtime()`) says how the
    samples are computed.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(settings)
    runtime = runtime or Runtime()
    if runtime.batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {runtime.batch_size}")
    task = make_task(settings.task, settings.task_options)  # bad names fail before model loading
    check_template(settings.template)
    if settings.engine not in ENGINES:
        raise unknown_name("rollout engine", settings.engine, ENGINES)
    notes = list(notes)
    problems = checkable_problems(task, settings, limit, notes)
    check_settings(out, settings)
    finished = load_finished(out, settings.k)
    todo = [p for p in problems if p.id not in finished]
    if len(todo) < len(problems):
        notes.append(f"resumed: {len(problems) - len(todo)} problems reused from {RESULTS}")
    if todo:
        train = [ex for ex in task.examples("train") if ex.checkable][: settings.shots]
        if len(train) < settings.shots:
            notes.append(f"only {len(train)} train examples available for {settings.shots} shots")
        shots = pick_shots(task, train, settings.shots, settings.shot_style)
        sample_problems(settings, task, todo, shots, out / RESULTS, runtime)
        finished = load_finished(out, settings.k)
    summary = build_summary(settings, [finished[p.id] for p in problems], notes, limit, out)
    write_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def checkable_problems(
    task: Task, settings: EvalSettings, limit: int | None, notes: list[str]
) -> list[Example]:
    """The split's first `limit` problems a rule can check; general prompts are noted, left out."""
    listed = task.examples(SPLIT, limit=limit)
    problems = [p for p in listed if p.checkable]
    if len(problems) < len(listed):
        notes.append(
            f"skipped {len(listed) - len(problems)} general prompts (no rule-checkable answer): "
            "pass@1 is over the other problems"
        )
    if not problems:
        raise UserError(f"task {settings.task!r} has no checkable {SPLIT} problems to evaluate")
    if len({p.id for p in problems}) != len(problems):
        raise UserError(f"task {settings.task!r} has duplicate problem ids in its {SPLIT} split")
    return problems


def sample_problems(
    settings: EvalSettings,
    task: Task,
    todo: Sequence[Example],
    shots: Sequence[Example],
    path: Path,
    runtime: Runtime,
    label: str = "eval",
) -> None:
    """Draw and grade k samples per problem, each problem under its own seed; append rows.

    `runtime.batch_size` problems share one engine call (and one write to `path`, the resume
    granularity); each draws from its own generator seeded by (seed, problem id), so the
    samples do not depend on the batch size, `--limit` or a resume. Shared by evaluation and
    rejection sampling (`r1lab.sample`, `label="sample"`), so a sample means the same in
    both: same seed per (seed, problem id), same grader, same rows.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    engine, tokenizer = _engine(settings, todo, shots, runtime)
    params = SamplingParams(
        n=settings.k,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=settings.stop,
    )
    columns = (label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True), disable=not runtime.progress)
    with bar:
        job = bar.add_task(label, total=len(todo))
        for start in range(0, len(todo), runtime.batch_size):
            batch = todo[start : start + runtime.batch_size]
            seeds = tuple(problem_seed(settings.seed, example.id) for example in batch)
            seeded = replace(params, seeds=seeds)
            rows = sample_and_grade(
                engine, task, batch, tokenizer, settings.template, seeded, shots
            )
            append_rows(path, rows)
            bar.advance(job, len(batch))


def _engine(
    settings: EvalSettings, todo: Sequence[Example], shots: Sequence[Example], runtime: Runtime
) -> tuple[RolloutEngine, Any]:
    """(engine, tokenizer) for the settings' model on the runtime's device; prompts are never
    cut: the engine keeps the last `max_prompt_tokens` of a prompt, and sizing it to the longest
    prompt evaluated means a long few-shot prompt is never silently truncated."""
    from r1lab.core.models import load_model, pick_device
    from r1lab.rollout import make_engine

    model, tokenizer = load_model(settings.model, runtime.dtype)
    model.to(pick_device(runtime.device))
    prompts = [render(settings.template, ex.prompt, tokenizer, shots) for ex in todo]
    longest = max(
        len(tokenizer(p.text, add_special_tokens=p.add_special_tokens).input_ids) for p in prompts
    )
    engine = make_engine(
        settings.engine,
        model,
        tokenizer,
        max_prompt_tokens=longest,
        compute_dtype=runtime.compute_dtype,
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
