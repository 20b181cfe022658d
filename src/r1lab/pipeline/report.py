"""The end of a pipeline: every stage's model scored on the held-out split, in one table and in
`runs/<pipeline>/report.md` with the plots.

Each model is evaluated by `run_eval` into `runs/<pipeline>/eval/<model>/`, so a re-run reuses
its finished problems. A stage's model keeps its path when the stage runs again, so each eval
folder records the lineage hash of the model it scored (`model.json`) and starts over when the
stage has produced a new model since.

Language consistency is the paper's measure behind its language reward: per sample, the share
of the chain of thought (`text.formats.think_text`) written in `eval.language`'s script
(`text.language.language_consistency`, the reward's own measure), averaged over the samples.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from r1lab.core import console
from r1lab.eval.protocol import Runtime
from r1lab.eval.report import decoding, plot_compare
from r1lab.eval.run import run_eval
from r1lab.eval.store import make_settings, read_results
from r1lab.pipeline.config import EvalModel, Pipeline
from r1lab.pipeline.stages import StageResult
from r1lab.tasks import make_task
from r1lab.text import language
from r1lab.text.formats import think_text
from r1lab.train.plots import plot_run

MODEL_FILE = "model.json"
PLOT = "pass_at_1.png"
REPORT = "report.md"


@dataclass
class ModelScore:
    model: EvalModel
    summary: dict[str, Any]  # run_eval's summary.json
    language: float | None  # mean share of the thought in the target language


def language_consistency(results: Path, ids: set[str], target: str) -> float | None:
    """Mean language consistency of the samples' thoughts (None: no sample)."""
    shares = [
        language.language_consistency(think_text(row["completion"]), target)
        for row in read_results(results)
        if row["id"] in ids
    ]
    return sum(shares) / len(shares) if shares else None


def _start_over_if_stale(out: Path, spec: str, version: str) -> None:
    """Delete an evaluation of another model at the same path; record which one is scored.

    A local model is named by its absolute path, as run_eval's settings.json names it, so a
    moved run directory is evaluated afresh instead of failing run_eval's settings check.
    """
    local = Path(spec).expanduser()
    marker = {"model": str(local.resolve()) if local.exists() else spec, "version": version}
    path = out / MODEL_FILE
    if out.exists() and (not path.is_file() or json.loads(path.read_text()) != marker):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(marker, indent=2) + "\n")


def evaluate_models(
    pipeline: Pipeline, done: dict[str, StageResult], progress: bool
) -> list[ModelScore]:
    """Evaluate the base model and each stage's model with the pipeline's eval settings."""
    ev, task, template = pipeline.config.eval, pipeline.task, pipeline.template
    ids = {ex.id for ex in make_task(task.name, task.options).examples("test", limit=ev.limit)}
    runtime = Runtime(ev.batch_size, compute_dtype=ev.compute_dtype, progress=progress)
    scores = []
    for model in pipeline.models:
        out = pipeline.root / "eval" / model.label
        version = done[model.stage].lineage["hash"] if model.stage else model.spec
        _start_over_if_stale(out, model.spec, version)
        console.log(f"evaluating {model.label} ({model.spec}) -> {out}")
        settings, notes = make_settings(
            model.spec,
            task.name,
            task_options=task.options,
            template=template.name,
            shots=template.shots,
            shot_style=template.shot_style,
            k=ev.k,
            temperature=ev.temperature,
            top_p=ev.top_p,
            max_new_tokens=ev.max_new_tokens,
            stop=ev.stop,
            seed=ev.seed,
            style=ev.style,
            special_token=ev.special_token,
        )
        summary = run_eval(settings, out, ev.limit, runtime, notes)
        for warning in summary.get("warnings", []):
            console.warn(f"{model.label}: {warning}")
        consistency = language_consistency(out / "results.jsonl", ids, ev.language)
        scores.append(ModelScore(model, summary, consistency))
    return scores


# --------------------------------------------------------------------------- tables
def _cells(score: ModelScore) -> list[str]:
    """pass@1, its CI, cons@k, format, mean length, language consistency, as text."""
    m, ci = score.summary["metrics"], score.summary["ci95"]["pass@1"]
    language = "-" if score.language is None else f"{score.language:.3f}"
    return [
        f"{m['pass@1']:.3f}",
        f"[{ci[0]:.3f}, {ci[1]:.3f}]",
        f"{m['cons@k']:.3f}",
        f"{m['format']:.3f}",
        f"{m['length']:.1f}",
        language,
    ]


def _headers(pipeline: Pipeline, scores: list[ModelScore]) -> list[str]:
    k = scores[0].summary["k"] if scores else pipeline.config.eval.k
    language = pipeline.config.eval.language
    return ["model", "pass@1", "95% CI", f"cons@{k}", "format", "mean length", f"lang ({language})"]


def _setting_line(pipeline: Pipeline, scores: list[ModelScore]) -> str:
    first = scores[0].summary
    return (
        f"{pipeline.task.name} test split, {first['problems']} problems, template "
        f"{pipeline.template.name}, {decoding(first)}, max {pipeline.config.eval.max_new_tokens} "
        "new tokens"
    )


def score_rows(scores: list[ModelScore]) -> list[dict[str, Any]]:
    """The scores as plain records (`--json`): one per model, the pipeline's order."""
    return [
        {
            "model": score.model.label,
            "spec": score.model.spec,
            "metrics": score.summary["metrics"],
            "ci95": score.summary["ci95"],
            "language": score.language,
            "eval_dir": score.summary["out_dir"],
        }
        for score in scores
    ]


def score_table(pipeline: Pipeline, scores: list[ModelScore]) -> Table:
    """The console table: one row per model, the pipeline's order."""
    title = f"{pipeline.config.name}: {_setting_line(pipeline, scores)}" if scores else None
    table = console.table(*_headers(pipeline, scores), title=title)
    for score in scores:
        table.add_row(score.model.label, *_cells(score))
    return table


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    escape = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in escape]


def _key_metrics(pipeline: Pipeline, result: StageResult) -> str:
    """The stage's headline numbers from its lineage metrics summary."""
    metrics = result.lineage.get("metrics") or {}
    parts = []
    for key in pipeline.stage(result.name).kind.report_keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts) or "-"


def _stage_rows(pipeline: Pipeline, done: dict[str, StageResult]) -> list[list[str]]:
    rows = []
    for stage in pipeline.stages:
        result = done[stage.name]
        inputs = ", ".join(f"{ref}: {name}" for ref, name in stage.refs.items()) or "-"
        seconds = result.lineage.get("seconds")
        wall = "-" if seconds is None else f"{seconds:.1f} s"
        rows.append(
            [
                stage.name,
                stage.kind.name,
                inputs,
                result.action,
                wall,
                _key_metrics(pipeline, result),
            ]
        )
    return rows


def write_report(
    pipeline: Pipeline, done: dict[str, StageResult], scores: list[ModelScore]
) -> Path:
    """report.md: the score table, the pass@1 chart, the stages and their training curves."""
    root = pipeline.root
    lines = [f"# Pipeline `{pipeline.config.name}`", ""]
    if scores:
        lines += [f"Held-out evaluation: {_setting_line(pipeline, scores)}.", ""]
        rows = [[s.model.label, *_cells(s)] for s in scores]
        lines += _markdown_table(_headers(pipeline, scores), rows)
        lines += [
            "",
            "Models: " + "; ".join(f"`{s.model.label}` = `{s.model.spec}`" for s in scores),
        ]
        labels = [s.model.label for s in scores]
        plot_compare([s.summary for s in scores], labels, root / PLOT)
        lines += ["", f"![pass@1 and cons@k per model]({PLOT})", ""]
    lines += ["## Stages", "", "Wall time: the attempt that completed the stage.", ""]
    headers = ["stage", "kind", "inputs", "this run", "wall time", "key metrics"]
    lines += _markdown_table(headers, _stage_rows(pipeline, done))
    for stage in pipeline.stages:
        if stage.kind.plots and (stage.out / "metrics.jsonl").is_file():
            lines += ["", f"### {stage.name} ({stage.kind.name})", ""]
            for path in plot_run(stage.out):
                lines.append(f"![{stage.name} {path.stem}]({os.path.relpath(path, root)})")
    root.mkdir(parents=True, exist_ok=True)
    (root / REPORT).write_text("\n".join(lines) + "\n")
    return root / REPORT
