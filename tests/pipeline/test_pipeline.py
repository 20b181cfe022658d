"""`r1lab pipeline`: the YAML checked before torch loads, stages chained on tiny Llamas with
lineage.json and report.md, and the re-run rules (skip, restart downstream, resume)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1lab import cli
from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_jsonl
from r1lab.pipeline.config import load_pipeline
from r1lab.pipeline.report import language_consistency
from r1lab.pipeline.run import LINEAGE, plan, read_lineage, run_pipeline, run_stages, stage_inputs
from r1lab.pipeline.stages import StageKind, prepend_jsonl_source

ROOT = Path(__file__).resolve().parents[2]
TASK = {"name": "arith", "options": {"digits": 1, "operands": 2, "train_size": 24, "test_size": 4}}
SFT = {
    "kind": "sft",
    "task": TASK,
    "data": {"eval_fraction": 0.25},
    "optim": {"lr": 0.003},
    "eval": {"every": 0, "size": 4},
    "train": {"steps": 2, "batch_size": 4, "micro_batch_tokens": 300, "keep_checkpoints": 1},
}
GRPO = {
    "task": TASK,
    "generation": {"max_new_tokens": 8},
    "grpo": {"batch_size": 8, "group_size": 4, "micro_batch_size": 4, "beta": 0.05},
    "optim": {"lr": 0.01},
    "eval": {"size": 0},
    "train": {"steps": 2, "save_every": 1, "keep_checkpoints": 1},
}
STAGES = [
    {"name": "cold", "run": "sft", "config": "sft.yaml"},
    {"name": "rl", "run": "grpo", "config": "grpo.yaml", "model": "cold"},
    {"name": "polish", "run": "sft", "config": "sft.yaml", "model": "rl"},
]
PIPELINE = {
    "kind": "pipeline",
    "name": "tiny",
    "base_model": "tiny:llama",
    "stages": STAGES,
    "eval": {"k": 2, "limit": 2, "max_new_tokens": 8},
}


def write_project(folder: Path, pipeline: dict | None = None) -> Path:
    """The pipeline YAML and its two recipes in `folder`; returns the pipeline's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sft.yaml").write_text(yaml.safe_dump(SFT))
    (folder / "grpo.yaml").write_text(yaml.safe_dump(GRPO))
    path = folder / "pipe.yaml"
    path.write_text(yaml.safe_dump(pipeline or PIPELINE))
    return path


def count_runs(monkeypatch) -> list[str]:
    """Record the name of every stage that runs (`StageKind.execute` still runs it)."""
    ran: list[str] = []
    execute = StageKind.execute

    def counted(self, config, progress):
        ran.append(config.name)
        return execute(self, config, progress)

    monkeypatch.setattr(StageKind, "execute", counted)
    return ran


# --------------------------------------------------------------------------- the YAML
def bad(pipeline: dict, **stage_changes) -> dict:
    stages = [dict(s) for s in STAGES]
    for index, changes in stage_changes.items():
        stages[int(index[1:])].update(changes)
    return {**pipeline, "stages": stages}


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            {**PIPELINE, "stagez": []},
            "unknown config key 'stagez' (did you mean 'stages'?); valid keys under the config",
        ),
        (bad(PIPELINE, s1={"runs": "grpo"}), "unknown config key 'stages.1.runs'"),
        (bad(PIPELINE, s1={"run": "rl"}), "unknown stage kind 'rl'; valid: sft, grpo, sample"),
        (bad(PIPELINE, s1={"model": "nope"}), "'nope' is not a stage; a stage reads from"),
        (bad(PIPELINE, s0={"model": "rl"}), "'rl' is a later stage (or itself)"),
        (bad(PIPELINE, s1={"model": "rl"}), "earlier stages only: cold"),
        (bad(PIPELINE, s1={"teacher": "cold"}), "takes no `teacher:`; it takes: model"),
        (bad(PIPELINE, s2={"data": "rl"}), "stage 'rl' (grpo) produces no rows"),
        (bad(PIPELINE, s2={"name": "cold"}), "two stages are named 'cold'"),
        (bad(PIPELINE, s2={"name": "eval"}), "must be letters, digits"),
        (bad(PIPELINE, s1={"set": ["grpo.bogus=1"]}), "stage 'rl' ("),
        ({**PIPELINE, "kind": "sft"}, "this is a `kind: sft` recipe"),
        ({**PIPELINE, "eval": {"models": ["base", "x"]}}, "unknown model 'x'; valid: base, cold"),
        ({**PIPELINE, "eval": {"language": "xx"}}, "eval.language: unknown value 'xx'"),
        ({**PIPELINE, "stages": []}, "at least one stage"),
    ],
)
def test_pipeline_mistakes_are_errors_naming_the_key(tmp_path, pipeline, message):
    with pytest.raises(UserError) as err:
        load_pipeline(write_project(tmp_path, pipeline))
    assert message in str(err.value)


def test_a_stage_recipe_mistake_names_the_stage_and_the_key(tmp_path):
    with pytest.raises(UserError) as err:
        load_pipeline(write_project(tmp_path), ["rl.grpo.bogus=1"])
    assert "stage 'rl'" in str(err.value) and "unknown config key 'grpo.bogus'" in str(err.value)
    with pytest.raises(UserError, match="'nope' is no stage or pipeline key; valid: cold, rl"):
        load_pipeline(write_project(tmp_path), ["nope.train.steps=1"])


def test_loading_checks_every_recipe_without_importing_a_model_library(tmp_path):
    """Config mistakes are reported before transformers or any trainer is imported (torch
    is: the GRPO algorithm registries that validate `grpo.*` names are torch functions)."""
    path = write_project(tmp_path)
    script = (  # run in the repository: r1_mini.yaml has a stage of every kind
        "import sys\nfrom r1lab.core.errors import UserError\n"
        "from r1lab.pipeline.config import load_pipeline\n"
        "load_pipeline('recipes/r1_mini.yaml')\n"
        f"load_pipeline({str(path)!r})\n"
        f"try:\n    load_pipeline({str(path)!r}, ['cold.train.steps=0'])\n"
        "except UserError as err:\n    print(err)\n"
        "print(any(m in sys.modules for m in ('transformers', 'r1lab.grpo.loop')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"stage 'cold' ({tmp_path / 'sft.yaml'}): train.steps must be >= 1, got 0",
        "False",
    ]


def test_stages_are_wired_placed_and_overridden(tmp_path):
    path = write_project(tmp_path)
    pipeline = load_pipeline(path, ["rl.train.steps=5", "eval.k=3"])
    cold, rl, polish = pipeline.stages
    assert pipeline.root == Path("runs/tiny") and pipeline.config.eval.k == 3
    assert (cold.config.name, cold.config.train.out_dir) == ("cold", "runs/tiny")
    assert cold.config.model.spec == "tiny:llama"  # no `model:`: the base model
    assert rl.config.model.spec == "runs/tiny/cold/final" and rl.config.train.steps == 5
    assert polish.config.model.spec == "runs/tiny/rl/final"
    assert [(m.label, m.spec) for m in pipeline.models] == [
        ("base", "tiny:llama"),
        ("cold", "runs/tiny/cold/final"),
        ("rl", "runs/tiny/rl/final"),
        ("polish", "runs/tiny/polish/final"),
    ]
    assert pipeline.task.name == "arith" and pipeline.template.name == "r1_zero"  # the first's
    assert load_pipeline(path).stages[1].config_hash != rl.config_hash
    assert load_pipeline(path).stages[0].config_hash == cold.config_hash


def test_data_from_a_sample_stage_comes_before_the_recipe_sources():
    (only,) = prepend_jsonl_source({}, "runs/p/s/data.jsonl")
    assert json.loads(only.split("=", 1)[1]) == [{"kind": "jsonl", "path": "runs/p/s/data.jsonl"}]
    extra = {"data": {"sources": [{"kind": "jsonl", "path": "chat.jsonl"}]}}
    (both,) = prepend_jsonl_source(extra, "x.jsonl")
    assert [s["path"] for s in json.loads(both.split("=", 1)[1])] == ["x.jsonl", "chat.jsonl"]


def test_language_consistency_is_the_thought_share_in_the_target_language(tmp_path):
    rows = [
        {"id": "a", "sample": 0, "completion": "<think>we add them 所以</think><answer>2"},
        {"id": "a", "sample": 1, "completion": "<think>1+1=2</think><answer>2</answer>"},
        {"id": "b", "sample": 0, "completion": "<think>all english</think>"},
        {"id": "c", "sample": 0, "completion": "<think>其他</think>"},  # beyond the limit
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # "we add them 所以": 9 Latin letters of 11; "1+1=2" has none: consistent, 1.0
    assert language_consistency(path, {"a", "b"}, "en") == pytest.approx((9 / 11 + 1 + 1) / 3)
    assert language_consistency(path, {"a"}, "zh") == pytest.approx((2 / 11 + 1) / 2)
    assert language_consistency(path, set(), "en") is None


# --------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The three-stage pipeline run once from its own folder (the cwd during the run)."""
    folder = tmp_path_factory.mktemp("project")
    path = write_project(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        done = run_pipeline(load_pipeline(path), progress=False, log=lambda message: None)
    return folder, done


@pytest.fixture
def project(finished, tmp_path, monkeypatch) -> Path:
    """A private copy of the finished project, as the cwd (the tests may change it)."""
    copy = tmp_path / "copy"
    shutil.copytree(finished[0], copy)
    monkeypatch.chdir(copy)
    return copy / "pipe.yaml"


def test_each_stage_writes_its_run_and_lineage(finished):
    folder, done = finished
    assert [r.action for r in done.stages.values()] == ["ran", "ran", "ran"]
    root = folder / "runs" / "tiny"
    cold, rl = read_lineage(root / "cold"), read_lineage(root / "rl")
    for lineage, name in ((cold, "cold"), (rl, "rl")):
        assert (root / name / "final" / "config.json").is_file()
        assert not (root / name / "checkpoints").exists()  # a stage keeps final/ only
        assert lineage["status"] == "complete" and lineage["output"] == f"runs/tiny/{name}"
        assert lineage["config"]["name"] == name and len(lineage["config_hash"]) == 64
        assert lineage["seconds"] > 0 and lineage["started"] <= lineage["finished"]
        assert lineage["r1lab_version"]
    assert cold["inputs"] == [] and cold["metrics"]["step"] == 2 and "eval/loss" in cold["metrics"]
    assert rl["inputs"] == [
        {"ref": "model", "stage": "cold", "path": "runs/tiny/cold/final", "hash": cold["hash"]}
    ]
    assert rl["metrics"]["step"] == 2 and "reward" in rl["metrics"]


def test_every_model_is_evaluated_into_the_report(finished):
    folder, done = finished
    root = folder / "runs" / "tiny"
    assert [s.model.label for s in done.scores] == ["base", "cold", "rl", "polish"]
    for score in done.scores:
        assert score.summary["problems"] == 2 and score.summary["k"] == 2
        assert (root / "eval" / score.model.label / "results.jsonl").is_file()
    report = (root / "report.md").read_text()
    assert done.report == Path("runs/tiny/report.md")
    assert "| model | pass@1 | 95% CI | cons@2 | format | mean length | lang (en) |" in report
    for label in ("base", "cold", "rl", "polish"):
        assert f"\n| {label} | " in report
    assert "| rl | grpo | model: cold | ran |" in report
    assert "![pass@1 and cons@k per model](pass_at_1.png)" in report
    assert "](rl/plots/reward.png)" in report and (root / "rl/plots/reward.png").is_file()
    assert (root / "pass_at_1.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_every_stage_and_reuses_the_evaluations(finished, monkeypatch, capsys):
    folder, _ = finished
    monkeypatch.chdir(folder)  # in place: a moved project would be evaluated afresh
    monkeypatch.setenv("COLUMNS", "200")
    ran = count_runs(monkeypatch)
    before = {p: p.read_text() for p in Path("runs/tiny").glob("*/" + LINEAGE)}
    assert cli.main(["pipeline", "pipe.yaml", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert ran == [] and err.count("up to date, skipped") == 3  # progress: stderr
    assert {p: p.read_text() for p in before} == before
    assert "lang (en)" in out and "wrote runs/tiny/report.md" in out
    summary = json.loads(Path("runs/tiny/eval/rl/summary.json").read_text())
    assert "resumed: 2 problems reused from results.jsonl" in summary["notes"]


def test_a_changed_stage_reruns_with_everything_downstream(project, monkeypatch):
    ran = count_runs(monkeypatch)
    old = read_lineage(Path("runs/tiny/polish"))
    done = run_stages(load_pipeline(project, ["rl.optim.lr=0.02"]), progress=False)
    assert ran == ["rl", "polish"]
    assert [r.action for r in done.values()] == ["skipped", "restarted", "restarted"]
    new = read_lineage(Path("runs/tiny/polish"))
    assert new["config_hash"] == old["config_hash"] and new["inputs"] != old["inputs"]
    assert new["inputs"][0]["hash"] == done["rl"].lineage["hash"]
    ran.clear()
    run_stages(load_pipeline(project, ["rl.optim.lr=0.02"]), progress=False)
    assert ran == []  # and now all up to date


def test_an_interrupted_stage_resumes_from_its_checkpoint(project, monkeypatch):
    from r1lab.grpo import loop as run
    from r1lab.grpo import step as grpo

    shutil.rmtree("runs/tiny/rl")
    calls = {"n": 0}

    def rollout_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return grpo.rollout_step(*args, **kwargs)

    monkeypatch.setattr(run, "rollout_step", rollout_step)
    pipeline = load_pipeline(project)
    with pytest.raises(KeyboardInterrupt):
        run_stages(pipeline, progress=False, only="rl")
    assert read_lineage(Path("runs/tiny/rl"))["status"] == "running"
    assert [r["step"] for r in read_jsonl(Path("runs/tiny/rl/metrics.jsonl"))] == [1]
    calls["n"] = 10
    done = run_stages(pipeline, progress=False)
    assert calls["n"] == 11  # one more rollout: step 2 only, step 1 came from the checkpoint
    assert [r.action for r in done.values()] == ["skipped", "resumed", "restarted"]
    assert [r["step"] for r in read_jsonl(Path("runs/tiny/rl/metrics.jsonl"))] == [1, 2]


def test_plan_resumes_a_run_without_lineage_and_restarts_on_change_or_from(project):
    pipeline = load_pipeline(project)
    cold = pipeline.stage("cold")
    assert plan(cold, [], force=False) == "skip"
    assert plan(cold, [], force=True) == "restart"
    (cold.out / LINEAGE).unlink()
    assert plan(cold, [], force=False) == "resume"  # someone's run there: continue it
    changed = load_pipeline(project, ["cold.optim.lr=0.1"]).stage("cold")
    assert plan(pipeline.stage("rl"), [], force=False) == "restart"  # inputs differ
    shutil.rmtree(cold.out)
    assert plan(changed, [], force=False) == "run"


def test_only_needs_its_inputs_up_to_date_and_from_forces_a_rerun(project, monkeypatch):
    ran = count_runs(monkeypatch)
    changed = load_pipeline(project, ["cold.optim.lr=0.1"])
    with pytest.raises(UserError, match="--only rl: stage 'cold', which it reads from, is not"):
        run_stages(changed, progress=False, only="rl")
    done = run_stages(load_pipeline(project), progress=False, rerun_from="polish")
    assert ran == ["polish"] and done["polish"].action == "restarted"
    with pytest.raises(UserError, match="unknown stage 'nope'"):
        run_stages(load_pipeline(project), progress=False, rerun_from="nope")
    assert stage_inputs(load_pipeline(project).stage("cold"), {}) == []


LOOSE = {"correct": False, "format": False, "require_summary": False, "language": None}
SAMPLE = {  # a random tiny model writes no tags: keep whatever it writes
    "kind": "sample",
    "task": TASK,
    "prompts": {"limit": 3},
    "generation": {"n": 2, "max_new_tokens": 8},
    "filters": LOOSE,
}
DISTILL = {
    "kind": "distill",
    "teacher": {k: v for k, v in SAMPLE.items() if k != "kind"},
    "student": {"model": {"spec": "tiny:qwen2"}, **{k: SFT[k] for k in ("optim", "eval", "train")}},
}
STAGE3 = {
    **PIPELINE,
    "name": "stage3",
    "stages": [
        {"name": "rejection", "run": "sample", "config": "sample.yaml"},
        {"name": "sft2", "run": "sft", "config": "sft.yaml", "data": "rejection"},
        {"name": "distill", "run": "distill", "config": "distill.yaml", "teacher": "sft2"},
    ],
}


def test_sampled_rows_train_the_base_model_which_teaches_a_student(tmp_path, monkeypatch):
    path = write_project(tmp_path, STAGE3)
    (tmp_path / "sample.yaml").write_text(yaml.safe_dump(SAMPLE))
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(DISTILL))
    monkeypatch.chdir(tmp_path)
    done = run_pipeline(load_pipeline(path), progress=False, log=lambda message: None)
    rejection, sft2, student = (done.stages[n].lineage for n in ("rejection", "sft2", "distill"))
    rows = read_jsonl(Path("runs/stage3/rejection/data.jsonl"))
    assert rejection["metrics"]["rows"] == len(rows) == 6 and rejection["model"] is None
    assert sft2["config"]["model"]["spec"] == "tiny:llama"  # no `model:`: the base model
    assert sft2["inputs"] == [
        {
            "ref": "data",
            "stage": "rejection",
            "path": "runs/stage3/rejection/data.jsonl",
            "hash": rejection["hash"],
        }
    ]
    trained = read_jsonl(Path("runs/stage3/sft2/data.jsonl"))
    assert sorted(r["id"] for r in trained) == sorted(r["id"] for r in rows)
    assert student["config"]["teacher"]["model"]["spec"] == "runs/stage3/sft2/final"
    assert student["metrics"]["teacher/kept"] == 6 and student["metrics"]["step"] == 2
    assert [(s.model.label, s.model.spec) for s in done.scores] == [
        ("base", "tiny:llama"),
        ("sft2", "runs/stage3/sft2/final"),
        ("distill.before", "tiny:qwen2"),
        ("distill", "runs/stage3/distill/student/final"),
    ]
    assert "| distill | distill | teacher: sft2 | ran |" in Path(done.report).read_text()
    models = sorted(p.parent.relative_to("runs/stage3") for p in Path("runs").rglob("config.json"))
    assert [str(m) for m in models] == ["distill/student/final", "sft2/final"]  # nothing else
    again = run_stages(load_pipeline(path), progress=False, log=lambda message: None)
    assert [r.action for r in again.values()] == ["skipped"] * 3


def test_the_mini_recipe_wires_the_r1_stages(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name data files relative to the repository
    pipeline = load_pipeline(ROOT / "recipes" / "r1_mini.yaml")
    runs = {s.name: s.config for s in pipeline.stages}
    assert list(runs) == [
        "cold_start",
        "reasoning_rl",
        "rejection",
        "sft2",
        "all_scenario",
        "distill",
    ]
    assert runs["reasoning_rl"].model.spec == "runs/r1_mini/cold_start/final"
    assert runs["rejection"].model.spec == "runs/r1_mini/reasoning_rl/final"
    assert runs["sft2"].model.spec == pipeline.config.base_model  # stage 3 SFT: the base model
    assert [s.path for s in runs["sft2"].data.sources] == ["runs/r1_mini/rejection/data.jsonl"]
    assert runs["all_scenario"].model.spec == "runs/r1_mini/sft2/final"
    assert runs["distill"].teacher.model.spec == "runs/r1_mini/all_scenario/final"
    assert pipeline.models[-1].spec == "runs/r1_mini/distill/student/final"
