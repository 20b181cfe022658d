"""`r1lab pipeline PIPELINE.yaml`: run the R1 recipe's stages in order, then evaluate them.

Each stage leaves `lineage.json` in its directory `runs/<pipeline>/<stage>/`: the resolved
config and its hash, its inputs (upstream stage, path, lineage hash), the output, a metrics
summary, timestamps, the r1lab version. It is written atomically with `status: running` when
the stage starts and `complete` when it ends. On a re-run a stage is
- skipped when complete, with the same config hash and the same inputs;
- started over (its directory deleted) when its config or an input changed, or for `--from`;
- resumed from its newest checkpoint otherwise (interrupted, `final/` missing, or a directory
  without lineage.json).
A stage that runs gets a new lineage hash (it covers the finish time), so every stage
downstream of it runs again too. Then every model is evaluated on the held-out split and
`runs/<pipeline>/report.md` is written (pipeline/report.py). The YAML: pipeline/config.py.
Under torchrun every rank runs each stage (each stage splits its own work over them); rank 0
alone writes lineage, deletes a stage to restart it, and writes the report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1lab import __version__
from r1lab.core.errors import UserError
from r1lab.core.runfiles import check_out_dir, write_atomic
from r1lab.pipeline.config import Pipeline, Stage, canonical_hash
from r1lab.pipeline.report import ModelScore, evaluate_models, write_report
from r1lab.pipeline.stages import StageResult
from r1lab.train import dist

LINEAGE = "lineage.json"


def read_lineage(out: Path) -> dict[str, Any] | None:
    path = out / LINEAGE
    return json.loads(path.read_text()) if path.is_file() else None


def write_lineage(out: Path, record: dict[str, Any]) -> None:
    """Replace lineage.json atomically: a crash leaves the old record or the new one."""
    dist.on_main(write_atomic, out / LINEAGE, json.dumps(record, indent=2) + "\n")


def lineage_hash(record: dict[str, Any]) -> str:
    """What downstream stages record of this one: its config, its inputs, when it finished."""
    return canonical_hash({k: record[k] for k in ("stage", "config_hash", "inputs", "finished")})


def stage_inputs(stage: Stage, done: dict[str, StageResult]) -> list[dict[str, Any]]:
    records = []
    for ref, name in stage.refs.items():
        lineage = done[name].lineage
        path = lineage["data"] if ref == "data" else lineage["model"]
        records.append({"ref": ref, "stage": name, "path": path, "hash": lineage["hash"]})
    return records


def plan(stage: Stage, inputs: list[dict[str, Any]], force: bool) -> str:
    """What a stage needs: "skip", "run" (fresh), "resume" or "restart" (delete, then run)."""
    lineage = read_lineage(stage.out)
    if force or lineage is None:
        if not stage.out.exists():
            return "run"
        return "restart" if force else "resume"  # no lineage: resume what is there
    if lineage.get("config_hash") != stage.config_hash or lineage.get("inputs") != inputs:
        return "restart"
    if lineage.get("status") == "complete" and stage.kind.is_complete(stage.out):
        return "skip"
    return "resume"


def run_stage(stage: Stage, inputs: list[dict[str, Any]], progress: bool) -> dict[str, Any]:
    """Run (or resume) one stage between a `running` and a `complete` lineage.json."""
    began = time.perf_counter()
    record: dict[str, Any] = {
        "stage": stage.name,
        "kind": stage.kind.name,
        "status": "running",
        "config_file": str(stage.recipe),
        "config": dataclasses.asdict(stage.config),
        "config_hash": stage.config_hash,
        "inputs": inputs,
        "output": str(stage.out),
        "model": str(stage.model_path) if stage.model_path else None,
        "data": str(stage.data_path) if stage.data_path else None,
        "started": _now(),
        "r1lab_version": __version__,
    }
    write_lineage(stage.out, record)
    out = stage.kind.execute(stage.config, progress)
    if out.resolve() != stage.out.resolve() or not stage.kind.is_complete(stage.out):
        raise UserError(
            f"stage {stage.name!r} finished without its output {stage.out / stage.kind.marker} "
            f"(it wrote {out})"
        )
    record.update(status="complete", finished=_now(), seconds=time.perf_counter() - began)
    record["metrics"] = stage.kind.metrics(stage.out)
    record["hash"] = lineage_hash(record)
    record = dist.broadcast(record)  # rank 0's times: every rank plans the next stages alike
    write_lineage(stage.out, record)
    return record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def upstream_of(pipeline: Pipeline, name: str) -> set[str]:
    """Every stage `name` reads from, directly or through others."""
    found: set[str] = set()
    todo = list(pipeline.stage(name).refs.values())
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo += pipeline.stage(current).refs.values()
    return found


def run_stages(
    pipeline: Pipeline,
    progress: bool = True,
    only: str | None = None,
    rerun_from: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, StageResult]:
    """Skip, resume or run each stage in order (see the module docstring for the rules).

    `only`: run that one stage; the stages it reads from must already be up to date.
    `rerun_from`: run that stage and every later one from scratch, up to date or not.
    """
    check_out_dir(pipeline.root, "pipeline directory")
    needed = upstream_of(pipeline, only) | {only} if only else None
    forced = False
    if rerun_from is not None:
        pipeline.stage(rerun_from)  # an unknown name is an error before anything runs
    done: dict[str, StageResult] = {}
    for stage in pipeline.stages:
        forced = forced or stage.name == rerun_from
        if needed is not None and stage.name not in needed:
            continue
        inputs = stage_inputs(stage, done)
        action = plan(stage, inputs, forced)
        if action == "skip":
            log(f"{stage.name} ({stage.kind.name}): up to date, skipped")
            done[stage.name] = StageResult(stage.name, "skipped", read_lineage(stage.out) or {})
            continue
        if only is not None and stage.name != only:
            raise UserError(
                f"--only {only}: stage {stage.name!r}, which it reads from, is not up to date "
                f"({action} needed); run the pipeline without --only first"
            )
        if action == "restart":
            dist.on_main(shutil.rmtree, stage.out)
        log(f"{stage.name} ({stage.kind.name}): {action} -> {stage.out}")
        lineage = run_stage(stage, inputs, progress)
        past = {"run": "ran", "resume": "resumed", "restart": "restarted"}[action]
        done[stage.name] = StageResult(stage.name, past, lineage)
    return done


@dataclass
class PipelineRun:
    stages: dict[str, StageResult]
    scores: list[ModelScore]  # one per evaluated model
    report: Path | None  # runs/<pipeline>/report.md (None with `only`)


def run_pipeline(
    pipeline: Pipeline,
    progress: bool = True,
    only: str | None = None,
    rerun_from: str | None = None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    """Run the stages (`run_stages`), then evaluate every model and write report.md.

    With `only`, just that stage runs: no evaluation, no report.
    """
    stages = run_stages(pipeline, progress, only, rerun_from, log)
    if only is not None:
        return PipelineRun(stages, [], None)
    log(f"evaluating {len(pipeline.models)} models -> {pipeline.root / 'eval'}")
    scores = evaluate_models(pipeline, stages, progress)
    return PipelineRun(stages, scores, dist.on_main(write_report, pipeline, stages, scores))
