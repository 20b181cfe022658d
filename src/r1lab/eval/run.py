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

Under torchrun the problems are split over the ranks (`train.dist`): since each problem's
samples depend only on its own seed, rank 0 gathers and writes exactly the rows, in exactly
the order, that one process writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from r1lab.core import advice
from r1lab.core.console import counting
from r1lab.core.errors import UserError, unknown_name
from r1lab.core.models import check_spec
from r1lab.core.runfiles import append_rows, check_out_dir, write_atomic
from r1lab.core.types import Example
from r1lab.eval.metrics import LEVEL, RESAMPLES, Row, eval_metrics
from r1lab.eval.protocol import Runtime
from r1lab.eval.store import (
    RESPONSES,
    RESULTS,
    SUMMARY,
    EvalSettings,
    check_settings,
    default_out_dir,
    load_finished,
    problem_seed,
)
from r1lab.rollout import ENGINES, RolloutEngine, SamplingParams
from r1lab.tasks import Task, make_task
from r1lab.text.formats import THINK, OutputFormat
from r1lab.text.templates import check_template, pick_shots, render
from r1lab.train import dist


def sample_and_grade(
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    params: SamplingParams,
    shots: Sequence[Example] = (),
    fmt: OutputFormat = THINK,
) -> list[Row]:
    """Draw `params.n` samples per example and grade each: one record per (problem, sample);
    `format` says whether a response is in the run's own format `fmt`.

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
            "format": fmt.ok(full),
            "length": gen.length,
            "truncated": not gen.finished,
        }
        if tests is not None:
            record["tests"] = {v: tests.count(v) for v in sorted(set(tests))}
        records.append(record)
    return records


def sample_and_grade_shared(
    engine: RolloutEngine,
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    template: str,
    params: SamplingParams,
    seed: int,
    shots: Sequence[Example] = (),
    fmt: OutputFormat = THINK,
) -> list[Row]:
    """`sample_and_grade` with each problem drawn under its own seed from (seed, problem id),
    the problems split over the ranks: the same records, in order, on every rank."""
    mine = dist.share(len(examples))
    part = list(examples[mine.start : mine.stop])
    records: list[Row] = []
    if part:
        seeds = tuple(problem_seed(seed, example.id) for example in part)
        seeded = replace(params, seeds=seeds)
        records = sample_and_grade(engine, task, part, tokenizer, template, seeded, shots, fmt)
    return [row for rows in dist.gather(records) for row in rows]


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
    runtime.validate()
    check_out_dir(out, "--out")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1, got {limit}")
    # every mistake a user can make is reported before settings.json is written, so the
    # corrected command is not refused as "other settings"
    task = make_task(settings.task, settings.task_options)
    check_template(settings.template)
    if settings.engine not in ENGINES:
        raise unknown_name("rollout engine", settings.engine, ENGINES)
    check_spec(settings.model)
    notes = list(notes)
    problems = checkable_problems(task, settings, limit, notes)
    dist.on_main(check_settings, out, settings)
    finished = dist.on_main(load_finished, out, settings.k)
    todo = [p for p in problems if p.id not in finished]
    if len(todo) < len(problems):
        notes.append(f"resumed: {len(problems) - len(todo)} problems reused from {RESULTS}")
    if todo:
        train = [ex for ex in task.examples("train") if ex.checkable][: settings.shots]
        if len(train) < settings.shots:
            notes.append(f"only {len(train)} train examples available for {settings.shots} shots")
        shots = pick_shots(task, train, settings.shots, settings.shot_style)
        sample_problems(settings, task, todo, shots, out / RESULTS, runtime)
        finished = dist.on_main(load_finished, out, settings.k)
    summary = build_summary(settings, [finished[p.id] for p in problems], notes, limit, out)
    summary["warnings"] = eval_warnings(summary, limit)
    dist.on_main(write_atomic, out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def eval_warnings(summary: dict[str, Any], limit: int | None) -> list[str]:
    """What makes an evaluation's numbers hard to read: many truncated samples, a tiny split."""
    settings, found = summary["settings"], []
    cut = advice.truncation(
        summary["metrics"]["truncated"], f"max_new_tokens={settings['max_new_tokens']}", "samples"
    )
    if cut:
        found.append(cut)
    problems = summary["problems"]
    if limit is None or problems < limit:
        small = advice.test_split(problems, advice.TINY_SPLIT, "this evaluation")
        if small:
            found.append(small)
    return found


def checkable_problems(
    task: Task, settings: EvalSettings, limit: int | None, notes: list[str]
) -> list[Example]:
    """The split's first `limit` problems a rule can check; general prompts are noted, left out."""
    split = settings.split
    listed = task.examples(split, limit=limit)
    problems = [p for p in listed if p.checkable]
    if len(problems) < len(listed):
        notes.append(
            f"skipped {len(listed) - len(problems)} general prompts (no rule-checkable answer): "
            "pass@1 is over the other problems"
        )
    if not problems:
        hint = f"; {advice.split_hint()}" if split == "test" else ""
        raise UserError(
            f"task {settings.task!r} has no checkable {split} problems to evaluate{hint}"
        )
    if len({p.id for p in problems}) != len(problems):
        raise UserError(f"task {settings.task!r} has duplicate problem ids in its {split} split")
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
    granularity; under torchrun, each rank's batch of a round of world x batch_size problems);
    each draws from its own generator seeded by (seed, problem id), so the samples do not
    depend on the batch size, `--limit`, a resume or the ranks. Shared by evaluation and
    rejection sampling (`r1lab.sample`, `label="sample"`), so a sample means the same in
    both: same seed per (seed, problem id), same grader, same rows.
    """
    engine, tokenizer = _engine(settings, todo, shots, runtime, path.parent / RESPONSES)
    params = SamplingParams(
        n=settings.k,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop=settings.stop,
    )
    round_size = runtime.batch_size * dist.world_size()
    with counting(label, len(todo), runtime.progress) as advance:
        for start in range(0, len(todo), round_size):
            batch = todo[start : start + round_size]
            rows = sample_and_grade_shared(
                engine,
                task,
                batch,
                tokenizer,
                settings.template,
                params,
                settings.seed,
                shots,
                settings.format,
            )
            if dist.is_main():
                append_rows(path, rows)
            advance(len(batch))


def _engine(
    settings: EvalSettings,
    todo: Sequence[Example],
    shots: Sequence[Example],
    runtime: Runtime,
    cache: Path,
) -> tuple[RolloutEngine, Any]:
    """(engine, tokenizer) for the settings' model on the runtime's device; prompts are never
    cut: the engine keeps the last `max_prompt_tokens` of a prompt, and sizing it to the longest
    prompt evaluated means a long few-shot prompt is never silently truncated. A model behind
    an endpoint gets the endpoint engine, its answers cached in `cache` for a resume."""
    from r1lab.core.models import endpoint_parts, load_model, load_tokenizer
    from r1lab.rollout import make_engine

    if endpoint_parts(settings.model):
        from r1lab.rollout.endpoint import EndpointEngine

        engine = EndpointEngine(settings.model, cache, settings.format, runtime.concurrency)
        return engine, load_tokenizer(settings.model)
    with dist.main_first():  # the first load of a built-in model converts it once
        model, tokenizer = load_model(settings.model, runtime.dtype)
    model.to(dist.device(runtime.device))
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
