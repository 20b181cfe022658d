"""The kinds of stage a pipeline chains, and how the pipeline drives each one.

Every stage is one of the recipe's commands run on its own recipe file. A `StageKind` says,
for one command, everything the pipeline needs without knowing the command's internals:

- how to load its recipe and run it (named as `module:function`, imported only when used, so
  checking a pipeline never imports torch through a trainer);
- which config keys put its output at `runs/<pipeline>/<stage>/`;
- which references it takes from earlier stages (`model:`, `data:`, `teacher:`) and how each
  one becomes overrides of its recipe;
- what it leaves behind: a model directory, a data file, the file whose existence marks the
  output complete, and a short metrics summary for `lineage.json`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.core.runfiles import read_jsonl


@dataclass
class StageResult:
    name: str
    action: str  # "skipped", "ran", "resumed" or "restarted"
    lineage: dict[str, Any]


# (the stage recipe as read, after its own `set:` overrides; the upstream path) -> overrides
Wiring = Callable[[dict[str, Any], str], list[str]]


def assign(key: str, value: Any) -> str:
    """One `--set` override; the value as JSON (valid YAML), so a path is never re-typed."""
    return f"{key}={json.dumps(value)}"


def set_key(key: str) -> Wiring:
    """A reference that replaces one config value (a model spec) with the upstream's path."""
    return lambda raw, path: [assign(key, path)]


def prepend_jsonl_source(raw: dict[str, Any], path: str) -> list[str]:
    """`data: <stage>` for SFT: the upstream's rows first, then any sources the recipe lists.

    A recipe without `data.sources` trains on the upstream's rows alone; one that lists
    sources (R1's non-reasoning data, say) trains on both.
    """
    sources = (raw.get("data") or {}).get("sources") or []
    return [assign("data.sources", [{"kind": "jsonl", "path": path}, *sources])]


def metrics_summary(path: Path) -> dict[str, Any]:
    """The latest value of every metric in a metrics.jsonl (train and eval rows alike)."""
    summary: dict[str, Any] = {}
    if path.is_file():
        for row in read_jsonl(path, partial_tail=True):
            summary.update(row)
    return summary


def json_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class StageKind:
    """How the pipeline loads, places, wires, runs and reads back one kind of stage."""

    name: str
    load: str  # "module:function": (recipe path, overrides) -> validated config
    run: str  # "module:function": (config, resume, progress) -> output directory
    placement: tuple[str, str]  # config keys of (output root, output name)
    refs: dict[str, Wiring]  # the references it takes from earlier stages
    marker: str  # relative to the output directory: exists once the output is complete
    metrics: Callable[[Path], dict[str, Any]]  # output directory -> metrics summary
    model_dir: str | None = None  # the model it produces, relative to the output directory
    data_file: str | None = None  # the SFT-ready rows it produces
    report_keys: tuple[str, ...] = ()  # metrics shown in report.md's stage table
    final_only_key: str | None = None  # the config key that makes a finished run keep final/
    student_key: str | None = None  # distillation: the student's starting model, evaluated too
    plots: bool = False  # its run directory has the GRPO curves `r1lab plot` draws

    def load_config(self, path: Path, overrides: Sequence[str]) -> Any:
        return _import(self.load)(path, list(overrides))

    def execute(self, config: Any, progress: bool) -> Path:
        """Run the stage; it resumes from its newest checkpoint when there is one."""
        return Path(_import(self.run)(config, resume="auto", progress=progress))

    def placement_overrides(self, root: Path, name: str, keep_checkpoints: bool) -> list[str]:
        """Where the output goes, and (unless the pipeline keeps them) no checkpoints left
        once the stage is done: a finished stage is never resumed."""
        out_key, name_key = self.placement
        overrides = [assign(out_key, str(root)), assign(name_key, name)]
        if self.final_only_key and not keep_checkpoints:
            overrides.append(assign(self.final_only_key, True))
        return overrides

    def wire(self, ref: str, raw: dict[str, Any], path: str) -> list[str]:
        return self.refs[ref](raw, path)

    def is_complete(self, out: Path) -> bool:
        return (out / self.marker).exists()


def _import(target: str) -> Callable[..., Any]:
    """The function named `module:function`, its module imported on first use."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _sft_metrics(out: Path) -> dict[str, Any]:
    return metrics_summary(out / "metrics.jsonl")


def _distill_metrics(out: Path) -> dict[str, Any]:
    """The teacher's sampling counts (`teacher/kept`, ...), then the student's SFT metrics."""
    teacher = json_file(out / "report.json").get("teacher") or {}
    student = metrics_summary(out / "student" / "metrics.jsonl")
    return {**{f"teacher/{key}": value for key, value in teacher.items()}, **student}


KINDS: dict[str, StageKind] = {
    "sft": StageKind(
        name="sft",
        load="r1lab.sft.config:load_sft_config",
        run="r1lab.sft.loop:sft",
        placement=("train.out_dir", "name"),
        refs={"model": set_key("model.spec"), "data": prepend_jsonl_source},
        marker="final",
        metrics=_sft_metrics,
        model_dir="final",
        report_keys=("loss", "eval/loss", "eval/pass@1", "eval/format"),
        final_only_key="train.final_only",
    ),
    "grpo": StageKind(
        name="grpo",
        load="r1lab.grpo.config:load_config",
        run="r1lab.grpo.loop:train",
        placement=("train.out_dir", "name"),
        refs={"model": set_key("model.spec")},
        marker="final",
        metrics=_sft_metrics,
        model_dir="final",
        report_keys=("reward", "accuracy", "format", "completion_len_mean", "eval/pass@1"),
        final_only_key="train.final_only",
        plots=True,
    ),
    "sample": StageKind(
        name="sample",
        load="r1lab.sample.config:load_sample_config",
        run="r1lab.sample.run:sample",
        placement=("out_dir", "name"),
        refs={"model": set_key("model.spec")},
        marker="report.json",
        metrics=lambda out: json_file(out / "report.json"),
        data_file="data.jsonl",
        report_keys=("prompts", "samples", "correct", "kept", "mixed", "rows"),
    ),
    "distill": StageKind(
        name="distill",
        load="r1lab.distill:load_distill_config",
        run="r1lab.distill:distill",
        placement=("out_dir", "name"),
        refs={"teacher": set_key("teacher.model.spec")},
        marker="student/final",
        metrics=_distill_metrics,
        model_dir="student/final",
        report_keys=("teacher/kept", "loss", "eval/loss", "eval/pass@1"),
        final_only_key="student.train.final_only",
        student_key="student.model.spec",
    ),
}


def config_value(config: Any, dotted: str) -> Any:
    """`config.a.b` for the dotted key `a.b` (None where a part is missing)."""
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value
