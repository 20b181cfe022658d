"""Rejection sampling, R1's stage 3: many answers per prompt, keep the correct, readable ones.

`sample(config)` reads top to bottom:
  1. the prompts: the task's `prompts.split` (train by default), without the worked shots;
  2. draw `generation.n` samples per prompt and grade each with the task's rule, through the
     evaluation's own sampler (`eval.run.sample_problems`): one seed per (seed, prompt id),
     so the samples depend on neither batching nor interruption; rows are appended to
     `results.jsonl` per batch of prompts and `--resume` skips the prompts already there;
  3. a generative judge (`sample.judge`) decides for prompts no rule can check (or for all, with
     `judge.always`); its verdicts are cached in `judge.jsonl`, so a resume never re-asks;
  4. the filters, in order: empty, correctness (unchecked/incorrect), then the readability
     filters of `sample.filters`, exact/near duplicates within a prompt, `max_per_prompt`;
  5. non-reasoning rows from `mix.path`, `mix.ratio` per kept sample, drawn with the seed;
  6. `data.jsonl` (kept + mixed rows: `id`, `prompt`, `completion`, `provenance`, readable
     by the SFT `jsonl` source as is), `rejected.jsonl` (each with `dropped_by`),
     `report.json` last: its presence marks the stage complete.

Steps 3-6 are recomputed from the saved rows on every run, so changing a filter and
resuming refilters without drawing a sample again. Under torchrun the ranks split step 2's
prompts (`eval.run.sample_problems`); rank 0 alone judges, filters and writes. Where this
departs from the paper: the judge is any model — local, or behind an endpoint
(`openai:MODEL@URL`, as DeepSeek-V3 was) — and the filters are rules, not people. A model
behind an endpoint keeps its answers in `responses.jsonl` (the judge's in
`judge_responses.jsonl`), so a resume asks nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from r1lab import __version__
from r1lab.core import console
from r1lab.core.errors import UserError, unknown_name
from r1lab.core.models import load_tokenizer
from r1lab.core.runfiles import append_rows, check_out_dir, jsonl_text, read_jsonl, write_atomic
from r1lab.core.types import Example
from r1lab.eval.protocol import Runtime
from r1lab.eval.run import sample_problems
from r1lab.eval.store import (
    RESULTS,
    SETTINGS,
    EvalSettings,
    check_settings,
    load_finished,
    make_settings,
)
from r1lab.rollout import ENGINES
from r1lab.sample.config import SampleConfig
from r1lab.sample.judge import Verdict, judge_inputs
from r1lab.sample.select import Drawn, pick_mix, select
from r1lab.tasks import Task, make_task
from r1lab.tasks.code import problem_tests
from r1lab.text.conversations import jsonl_rows
from r1lab.text.templates import pick_shots, render
from r1lab.train import dist

DATA, REJECTED, REPORT, JUDGE, CONFIG = (
    "data.jsonl",
    "rejected.jsonl",
    "report.json",
    "judge.jsonl",
    "config.yaml",
)
JUDGE_RESPONSES = "judge_responses.jsonl"  # an endpoint judge's replies, cached for a resume


def sample(config: SampleConfig, resume: bool | str = False, progress: bool = True) -> Path:
    """Run rejection sampling for `config`; returns its directory `out_dir/name`.

    `resume=True` continues a started run (an error when there is none); `"auto"` continues
    one when it exists and starts fresh otherwise; `False` refuses to touch an existing one.
    """
    out = Path(config.out_dir) / config.name
    check_resume(out, resume)
    task, examples, shots, notes = sample_prompts(config)
    mix_rows = jsonl_rows(config.mix.path) if config.mix.path else []  # a bad file fails now
    settings, settings_notes = sample_settings(config)
    notes += settings_notes
    dist.on_main(start, config, settings, out)
    drawn = draw(config, settings, task, examples, shots, out, progress, notes)
    dist.on_main(finish, config, settings, drawn, mix_rows, out, progress, notes)
    return out


def start(config: SampleConfig, settings: EvalSettings, out: Path) -> None:
    """Mark the run incomplete, pin its settings, record its config."""
    (out / REPORT).unlink(missing_ok=True)  # incomplete until the new report is written
    check_settings(out, settings)
    write_atomic(out / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))


def finish(
    config: SampleConfig,
    settings: EvalSettings,
    drawn: Sequence[Drawn],
    mix_rows: Sequence[Any],
    out: Path,
    progress: bool,
    notes: list[str],
) -> None:
    """Judge, filter, mix, and write data.jsonl, rejected.jsonl and report.json (last)."""
    verdicts = judge_drawn(config, drawn, out / JUDGE, progress)
    kept, rejected, dropped = select(config, settings, drawn, verdicts)
    mixed = pick_mix(mix_rows, len(kept), config, notes)
    write_atomic(out / DATA, jsonl_text(kept + mixed))
    write_atomic(out / REJECTED, jsonl_text(rejected))
    counts = {
        "prompts": len({d.example.id for d in drawn}),
        "samples": len(drawn),
        "correct": sum(r["provenance"]["grade"]["correct"] is True for r in kept + rejected),
        "judged": len(verdicts),
        "dropped": dropped,
        "kept": len(kept),
        "mixed": len(mixed),
        "rows": len(kept) + len(mixed),
    }
    report = {**counts, "notes": notes, **report_settings(config, settings, out)}
    write_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")


def check_resume(out: Path, resume: bool | str) -> None:
    """The resume rule of the trainers, for a sampling directory (settings.json marks one)."""
    check_out_dir(out)
    started = (out / SETTINGS).exists()
    if resume is True and not started:
        raise UserError(f"--resume: no sampling run in {out} to continue")
    if not resume and started:
        raise UserError(
            f"{out} already holds a sampling run: pass --resume to continue it, or choose "
            "another name with --set name=..."
        )


def sample_prompts(config: SampleConfig) -> tuple[Task, list[Example], list[Example], list[str]]:
    """(task, prompts to sample, worked shots, notes); a shot is never also a prompt."""
    task = make_task(config.task.name, config.task.options)
    template = config.template
    train = [ex for ex in task.examples("train") if ex.checkable][: template.shots]
    shots = pick_shots(task, train, template.shots, template.shot_style)
    shown = {shot.id for shot in shots}
    listed = task.examples(config.prompts.split)
    examples = [ex for ex in listed if ex.id not in shown][: config.prompts.limit]
    notes = []
    if len(examples) < len(listed[: config.prompts.limit]):
        notes.append(f"left out {len(shown)} prompts shown as worked shots")
    if not examples:
        raise UserError(f"task {config.task.name!r} has no {config.prompts.split} prompts")
    if len({ex.id for ex in examples}) != len(examples):
        raise UserError(f"task {config.task.name!r} has duplicate prompt ids")
    if config.filters.drop_code_blocks and any(problem_tests(ex) is not None for ex in examples):
        raise UserError(
            f"task {config.task.name!r} answers with programs in ``` blocks, which "
            "filters.drop_code_blocks would drop, every one: set it false for code tasks"
        )
    return task, examples, shots, notes


def sample_settings(config: SampleConfig) -> tuple[EvalSettings, list[str]]:
    """What a sample *is*, in the evaluation's terms: resuming with other settings is refused."""
    gen = config.generation
    return make_settings(
        config.model.spec,
        config.task.name,
        task_options=config.task.options,
        template=config.template.name,
        shots=config.template.shots,
        shot_style=config.template.shot_style,
        k=gen.n,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=config.seed,
        engine=gen.engine,
        stop=tuple(gen.stop),
        split=config.prompts.split,
    )


def draw(
    config: SampleConfig,
    settings: EvalSettings,
    task: Task,
    examples: Sequence[Example],
    shots: Sequence[Example],
    out: Path,
    progress: bool,
    notes: list[str],
) -> list[Drawn]:
    """Every prompt's k graded samples: sampled now, or read back from results.jsonl."""
    if settings.engine not in ENGINES:
        raise unknown_name("rollout engine", settings.engine, ENGINES)
    finished = dist.on_main(load_finished, out, settings.k)
    todo = [ex for ex in examples if ex.id not in finished]
    if len(todo) < len(examples):
        notes.append(f"resumed: {len(examples) - len(todo)} prompts reused from {RESULTS}")
    if todo:
        gen = config.generation
        model = config.model
        runtime = Runtime(
            gen.batch_size, model.dtype, model.compute_dtype, gen.device, progress, gen.concurrency
        )
        sample_problems(settings, task, todo, shots, out / RESULTS, runtime, label="sample")
        finished = dist.on_main(load_finished, out, settings.k)
    tokenizer = load_tokenizer(settings.model)  # the prefill of its template, no weights
    drawn = []
    for example in examples:
        prefill = render(settings.template, example.prompt, tokenizer, shots).prefill
        drawn += [Drawn(example, row, prefill + row["completion"]) for row in finished[example.id]]
    return drawn


def judge_drawn(
    config: SampleConfig, drawn: Sequence[Drawn], path: Path, progress: bool
) -> dict[tuple[str, int], Verdict]:
    """Verdicts for the samples the judge decides, asked once and cached in judge.jsonl.

    Each prompt's samples are judged in one greedy call and appended together, so the cache
    grows by whole prompts and a resume asks only what is missing.
    """
    judge = config.judge
    if not (judge.spec and config.filters.correct):
        return {}
    needed = [
        d
        for d in drawn
        if d.row["completion"].strip() and (judge.always or not d.example.checkable)
    ]
    cache = read_cache(path)
    by_prompt: dict[str, list[Drawn]] = {}
    for d in needed:
        if d.key not in cache:
            by_prompt.setdefault(d.example.id, []).append(d)
    if by_prompt:
        from r1lab.sample.judge import Judge

        model = Judge(
            judge.spec,
            config.model.dtype,
            judge.max_new_tokens,
            config.generation.device,
            cache=path.parent / JUDGE_RESPONSES,
        )
        style, token = config.filters.style, config.filters.special_token
        with console.counting("judge", len(by_prompt), progress) as advance:
            for group in by_prompt.values():
                found = model.verdicts(
                    [judge_inputs(d.example, d.text, d.row["answer"], style, token) for d in group]
                )
                rows = [
                    {"id": d.key[0], "sample": d.key[1], **asdict(v)}
                    for d, v in zip(group, found, strict=True)
                ]
                append_rows(path, rows)
                cache.update({d.key: v for d, v in zip(group, found, strict=True)})
                advance(1)
    return {d.key: cache[d.key] for d in needed}


def read_cache(path: Path) -> dict[tuple[str, int], Verdict]:
    """judge.jsonl as {(prompt id, sample): verdict}; a torn last line is dropped and the
    file rewritten without it, so the next append starts on a fresh line."""
    if not path.exists():
        return {}
    rows = read_jsonl(path, partial_tail=True)
    if not path.read_text().endswith("\n") and path.stat().st_size:
        write_atomic(path, jsonl_text(rows))
    return {(r["id"], r["sample"]): Verdict(r["correct"], r["text"]) for r in rows}


# --------------------------------------------------------------------------- files
def report_table(path: Path) -> Table:
    """A report.json as a table: drawn, correct, each filter's drops, kept, mixed."""
    report = json.loads(Path(path).read_text())
    table = console.table("samples", "count")
    for key in ("prompts", "samples", "correct", "judged"):
        table.add_row(key, str(report[key]))
    for reason, count in report["dropped"].items():
        table.add_row(f"dropped: {reason}", str(count))
    for key in ("kept", "mixed", "rows"):
        table.add_row(key, str(report[key]))
    return table


def report_settings(config: SampleConfig, settings: EvalSettings, out: Path) -> dict[str, Any]:
    """The part of report.json that says how the counts were made."""
    return {
        "settings": settings.to_json(),
        "filters": asdict(config.filters),
        "judge": asdict(config.judge),
        "max_per_prompt": config.max_per_prompt,
        "mix": asdict(config.mix),
        "out_dir": str(out),
        "r1lab_version": __version__,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
