"""Distillation (`r1lab distill`): a teacher's checked answers fine-tune a student, SFT only.

DeepSeek distilled R1 into small Qwen and Llama models with SFT on its 800k stage-3 samples
and no RL. Here one recipe names both halves:

    kind: distill
    name: distill
    out_dir: runs                  # everything goes to runs/distill/
    teacher:                       # a sample recipe (sample/config.py) without name/out_dir
      model: {spec: runs/r1_mini/all_scenario/final}
      task: {name: arith, options: {digits: 2, ops: "+-"}}
      generation: {n: 4, max_new_tokens: 160}
    student:                       # an SFT recipe (sft/config.py) without name/train.out_dir
      model: {spec: "tiny:qwen2"}
      train: {steps: 40, batch_size: 8}

`distill` runs the teacher's rejection sampling into `<out>/teacher_data/`, then SFT of the
student into `<out>/student/` on those rows (before any `data.sources` the student section
lists; its `task` defaults to the teacher's), links `<out>/final` to the student's
`student/final/` (where every trainer's model is: `<dir>/final/`), and writes
`<out>/report.json` last. Text is the
interface between the two, so the student may have another architecture and tokenizer than
the teacher. Each part resumes where it stopped: samples already drawn are never drawn again
(a resume only reapplies the teacher's filters, so loosening them after a teacher that kept
nothing works), and the student continues from its newest checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1lab.core.config import (
    apply_overrides,
    check_kind,
    check_name,
    from_dict,
    load_kind_recipe,
)
from r1lab.core.errors import UserError
from r1lab.core.runfiles import check_out_dir, write_atomic
from r1lab.sample.config import SampleConfig, build_sample_config
from r1lab.sft.config import SFTConfig, build_sft_config

TEACHER_DIR, STUDENT_DIR, REPORT = "teacher_data", "student", "report.json"


@dataclass
class DistillConfig:
    kind: str = "distill"
    name: str = "distill"
    out_dir: str = "runs"  # the output is out_dir/name
    teacher: SampleConfig = field(default_factory=SampleConfig)
    student: SFTConfig = field(default_factory=SFTConfig)

    @property
    def out(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{name} must be a mapping, got {value!r}")
    return copy.deepcopy(value)


def _placed_by_distill(section: dict[str, Any], part: str, keys: tuple[str, ...]) -> None:
    """Refuse the keys distill sets itself, instead of silently overriding them."""
    for dotted in keys:
        node: Any = section
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            raise UserError(
                f"{part}.{dotted}: distill places the {part}'s output under out_dir/name; "
                "set the top-level name and out_dir instead"
            )


def teacher_raw(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """The teacher's sample recipe, placed at `<out>/teacher_data/`."""
    teacher = _section(raw, "teacher")
    _placed_by_distill(teacher, "teacher", ("name", "out_dir"))
    return {**teacher, "name": TEACHER_DIR, "out_dir": str(out)}


def student_raw(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """The student's SFT recipe at `<out>/student/`, trained on the teacher's rows first."""
    student = _section(raw, "student")
    _placed_by_distill(student, "student", ("name", "train.out_dir"))
    student["name"] = STUDENT_DIR
    student["train"] = {**(student.get("train") or {}), "out_dir": str(out)}
    data = dict(student.get("data") or {})
    rows = {"kind": "jsonl", "path": str(out / TEACHER_DIR / "data.jsonl")}
    data["sources"] = [rows, *(data.get("sources") or [])]
    student["data"] = data
    teacher = _section(raw, "teacher")
    if "task" not in student and "task" in teacher:
        student["task"] = teacher["task"]  # the student is evaluated on what it learns
    return student


def _part(name: str, build: Any, raw: dict[str, Any]) -> Any:
    """Build one half, its errors prefixed with the section they are in."""
    try:
        return build(raw)
    except UserError as err:
        raise UserError(f"{name}: {err}") from err


def build_distill_config(
    raw: dict[str, Any], overrides: typing.Sequence[str] = ()
) -> DistillConfig:
    """Validate a raw mapping (plus `--set` overrides such as `student.train.steps=5`)."""
    raw = apply_overrides(raw, overrides)
    raw.setdefault("kind", "distill")
    check_kind(raw, "distill")
    top = from_dict(
        DistillConfig, {k: v for k, v in raw.items() if k not in ("teacher", "student")}
    )
    check_name("name", top.name)
    teacher = _part("teacher", build_sample_config, teacher_raw(raw, top.out))
    student = _part("student", build_sft_config, student_raw(raw, top.out))
    return dataclasses.replace(top, teacher=teacher, student=student)


def load_distill_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> DistillConfig:
    """Load a distillation recipe YAML (it must say `kind: distill`) with overrides applied."""
    raw = load_kind_recipe(path, "distill", "a distillation recipe")
    return build_distill_config(raw, overrides)


def distill(config: DistillConfig, resume: bool | str = False, progress: bool = True) -> Path:
    """Sample the teacher, then fine-tune the student; returns `out_dir/name`.

    `resume=True` continues a started distillation (an error when there is none); `"auto"`
    continues one when it exists and starts fresh otherwise; `False` refuses an existing one.
    """
    # imported here: loading a distillation recipe (the pipeline checks every stage's) must
    # not import the trainers and their model libraries
    from r1lab.sample.run import sample
    from r1lab.sft.loop import sft
    from r1lab.train import dist

    out = config.out
    check_out_dir(out)
    started = (out / TEACHER_DIR).exists() or (out / STUDENT_DIR).exists()
    if resume is True and not started:
        raise UserError(f"--resume: no distillation in {out} to continue")
    if not resume and started:
        raise UserError(
            f"{out} already holds a distillation: pass --resume to continue it, or choose "
            "another name with --set name=..."
        )
    dist.on_main(_start, config)
    teacher_out = sample(config.teacher, resume="auto", progress=progress)  # reuses drawn rows
    teacher = json.loads((teacher_out / REPORT).read_text())
    if not teacher["rows"]:
        raise UserError(
            f"the teacher kept no samples ({teacher_out / REPORT}: {teacher['dropped']}); "
            "loosen teacher.filters or draw more with teacher.generation.n"
        )
    run_dir = sft(config.student, resume="auto", progress=progress)
    final = dist.on_main(link_final, out, run_dir / "final")
    counts = ("prompts", "samples", "correct", "dropped", "kept", "mixed", "rows")
    report = {
        "teacher": {key: teacher[key] for key in counts},
        "teacher_data": str(teacher_out / "data.jsonl"),
        "student": str(run_dir),
        "student_final": str(run_dir / "final"),
        "final": str(final),
    }
    dist.on_main(write_atomic, out / REPORT, json.dumps(report, indent=2) + "\n")
    return out


def _start(config: DistillConfig) -> None:
    """Mark the distillation incomplete and record its config (rank 0 under torchrun)."""
    (config.out / REPORT).unlink(missing_ok=True)  # incomplete until the new report is written
    write_atomic(config.out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def link_final(out: Path, model: Path) -> Path:
    """`<out>/final`, a relative link to the student's final model: every command that
    trains leaves its model in `<its directory>/final/`, and so does distillation."""
    link, target = out / "final", os.path.relpath(model, out)
    if link.is_symlink() and os.readlink(link) == target:
        return link
    tmp = out / ".final.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)  # atomic: a reader sees the old link or the new one
    return link
