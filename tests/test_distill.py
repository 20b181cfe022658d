"""Distillation (distill.py): the recipe's two halves placed under one output, the student
trained on the teacher's rows first, errors that name the half they are in, an end-to-end
run from a tiny Llama teacher to a tiny Qwen2 student that resumes without redoing either
part, and the `r1lab distill` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from r1lab import cli
from r1lab.core.errors import UserError
from r1lab.distill import build_distill_config, distill, load_distill_config
from r1lab.eval import run as evaluate
from r1lab.sft.loop import SFTJob

TEACHER = {
    "model": {"spec": "tiny:llama"},
    "task": {"name": "arith", "options": {"digits": 1, "train_size": 16, "test_size": 4}},
    "prompts": {"limit": 4},
    "generation": {"n": 2, "max_new_tokens": 8},
    "filters": {"correct": False, "format": False, "require_summary": False, "language": None},
}
STUDENT = {
    "model": {"spec": "tiny:qwen2"},
    "optim": {"lr": 0.001},
    "train": {"steps": 2, "batch_size": 4, "save_every": 1},
    "eval": {"every": 0, "size": 2},
}


def recipe(out: Path, **changes) -> dict:
    raw = {"kind": "distill", "name": "d", "out_dir": str(out), "teacher": TEACHER}
    return {**raw, "student": STUDENT, **changes}


def test_the_halves_are_placed_under_out_dir_name(tmp_path):
    extra = {"sources": [{"kind": "jsonl", "path": "chat.jsonl"}]}
    config = build_distill_config(
        recipe(tmp_path, student={**STUDENT, "data": extra}), ["name=run", "student.train.steps=3"]
    )
    root = tmp_path / "run"
    assert (config.teacher.out_dir, config.teacher.name) == (str(root), "teacher_data")
    assert (config.student.train.out_dir, config.student.name) == (str(root), "student")
    paths = [s.path for s in config.student.data.sources]
    assert paths == [str(root / "teacher_data" / "data.jsonl"), "chat.jsonl"]
    assert config.student.task == config.teacher.task  # evaluated on what it learns
    assert config.student.train.steps == 3 and config.teacher.model.spec == "tiny:llama"
    assert build_distill_config(recipe(tmp_path)).student.data.sources[0].kind == "jsonl"


@pytest.mark.parametrize(
    "changes, overrides, message",
    [
        ({}, ["teacher.generation.nn=2"], r"teacher: unknown config key 'generation.nn'"),
        ({}, ["student.train.stepz=2"], r"student: unknown config key 'train.stepz'"),
        (
            {},
            ["teachers.model.spec=x"],
            r"unknown config key 'teachers' \(did you mean 'teacher'\?\); valid keys under the "
            r"config: kind, name, out_dir, teacher, student",
        ),
        ({}, ["teacher.name=x"], r"teacher.name: distill places the teacher's output"),
        ({}, ["student.train.out_dir=x"], r"student.train.out_dir: distill places"),
        ({}, ["kind=sample"], r"`kind: sample` recipe: run it with `r1lab sample`"),
        ({"teacher": "tiny:llama"}, [], r"teacher must be a mapping"),
        ({}, ["student.template.shots=1"], r"student: template.shots must be 0 for SFT"),
    ],
)
def test_errors_name_the_half_they_are_in(tmp_path, changes, overrides, message):
    with pytest.raises(UserError, match=message):
        build_distill_config(recipe(tmp_path, **changes), overrides)


def test_a_recipe_file_must_say_its_kind(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "teacher": TEACHER}))
    with pytest.raises(UserError, match="starts with `kind: distill`"):
        load_distill_config(path)


def test_a_tiny_llama_teaches_a_tiny_qwen2_and_resume_redoes_nothing(tmp_path, monkeypatch):
    config = build_distill_config(recipe(tmp_path))
    out = distill(config, progress=False)
    report = json.loads((out / "report.json").read_text())
    teacher = json.loads((out / "teacher_data" / "report.json").read_text())
    assert report["teacher"]["rows"] == teacher["rows"] > 0
    assert (out / "student" / "final" / "config.json").exists()
    student = json.loads((out / "student" / "final" / "config.json").read_text())
    assert student["model_type"] == "qwen2"
    trained = [
        json.loads(line) for line in (out / "student" / "data.jsonl").read_text().splitlines()
    ]
    assert len(trained) == teacher["rows"]  # every kept row reached the student (train + eval)
    # the final model where every trainer leaves it: <dir>/final, a relative link
    assert (out / "final").is_symlink() and report["final"] == str(out / "final")
    assert (out / "final").resolve() == (out / "student" / "final").resolve()
    assert not Path(os.readlink(out / "final")).is_absolute()  # the run directory can move
    with pytest.raises(UserError, match="already holds a distillation: pass --resume"):
        distill(config, progress=False)
    monkeypatch.setattr(evaluate, "_engine", lambda *a, **k: pytest.fail("sampled again"))
    monkeypatch.setattr(SFTJob, "step", lambda *a, **k: pytest.fail("trained again"))
    assert distill(config, resume=True, progress=False) == out
    assert (out / "report.json").exists() and (out / "final" / "config.json").exists()


def test_a_teacher_that_keeps_nothing_stops_and_looser_filters_resume_it(tmp_path):
    strict = {**TEACHER, "filters": {}}  # a random model is never correct
    with pytest.raises(UserError, match="the teacher kept no samples"):
        distill(build_distill_config(recipe(tmp_path, teacher=strict)), progress=False)
    assert not (tmp_path / "d" / "student").exists()
    loose = build_distill_config(recipe(tmp_path))  # the same prompts, filters loosened
    assert (distill(loose, resume=True, progress=False) / "student" / "final").exists()
    with pytest.raises(UserError, match="--resume: no distillation in"):
        distill(build_distill_config(recipe(tmp_path, name="none")), resume=True)


def test_the_distill_command_exits_2_on_a_config_mistake(tmp_path, capsys):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    assert cli.main(["distill", str(path), "--set", "student.optim.lrr=1"]) == 2
    assert "student: unknown config key 'optim.lrr'" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["distill", str(path), "--resume", "--quiet"]) == 2
    assert "--resume: no distillation" in capsys.readouterr().err
