"""`r1lab eval`: one evaluation with its table, `--compare` with a PNG, `--run` over a run's
checkpoints, user errors as exit code 2, and a smoke test on the built-in model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab import cli
from r1lab.core.checkpoint import save_checkpoint
from r1lab.core.config import dump_config
from r1lab.core.models import load_model
from r1lab.grpo.config import load_config

TINY = ["--model", "tiny:llama", "--task", "arith", "--max-new-tokens", "6", "--quiet"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as wide as a big terminal, so a long spec is not folded across lines."""
    monkeypatch.setenv("COLUMNS", "200")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), " ".join(err.split())


@pytest.fixture(scope="module")
def two_evals(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished tiny evaluations that differ in k."""
    root = tmp_path_factory.mktemp("evals")
    for name, k in (("a", "2"), ("b", "3")):
        argv = ["eval", *TINY, "--limit", "2", "--k", k, "--out", str(root / name)]
        assert cli.main(argv) == 0
    return root / "a", root / "b"


def test_eval_prints_the_table_and_writes_both_files(capsys, tmp_path):
    out = tmp_path / "ev"
    code, stdout, _ = run(capsys, "eval", *TINY, "--limit", "2", "--k", "2", "--out", out)
    assert code == 0
    for word in ("metric", "95% CI", "pass@1", "pass@2", "cons@2", "format", "length"):
        assert word in stdout
    assert "tiny:llama on arith [r1_zero]: 2 problems, k=2, temperature 0.6, top-p 0.95" in stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "summary.json").read_text())["settings"]["k"] == 2


def test_eval_greedy_is_labelled_in_the_table(capsys, tmp_path):
    code, stdout, _ = run(capsys, "eval", *TINY, "--limit", "1", "--greedy", "--out", tmp_path)
    assert code == 0
    assert "GREEDY (temperature 0, k=1)" in stdout and "k forced from 8 to 1" in stdout


def test_eval_default_out_dir_resumes_on_rerun(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "eval", *TINY, "--limit", "1", "--k", "2")[0] == 0
    (found,) = (tmp_path / "evals").iterdir()
    assert found.name.startswith("llama_arith_r1_zero_k2-")
    code, stdout, _ = run(capsys, "eval", *TINY, "--limit", "1", "--k", "2")
    assert code == 0 and "resumed: 1 problems reused" in stdout


def test_unknown_task_exits_2_listing_valid_tasks(capsys):
    code, _, err = run(capsys, "eval", "--model", "tiny:llama", "--task", "nope")
    assert code == 2
    assert "unknown task 'nope'" in err and "arith" in err and "countdown" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "tiny:llama"], "--task is required"),
        ([*TINY, "--template", "nope"], "unknown template"),
        ([*TINY, "--engine", "nope"], "unknown rollout engine"),
        ([*TINY, "--option", "digits=0"], "digits must be"),
        ([*TINY, "--k", "0"], "k must be"),
        (["--compare", "nowhere"], "no summary.json in nowhere"),
        (["--compare", "a", "--task", "arith"], "--compare takes eval directories only"),
    ],
)
def test_user_errors_exit_2(capsys, argv, message):
    code, _, err = run(capsys, "eval", *argv)
    assert code == 2
    assert message in err


def test_a_missing_model_path_fails_writing_nothing(capsys, tmp_path):
    out = tmp_path / "ev"
    argv = ["--task", "arith", "--limit", "1", "--k", "1", "--max-new-tokens", "4", "--quiet"]
    code, _, err = run(capsys, "eval", "--model", "runs/nope/final", *argv, "--out", out)
    assert code == 2 and "model directory not found: runs/nope/final" in err
    assert not out.exists()
    code, _, _ = run(capsys, "eval", "--model", "tiny:llama", *argv, "--out", out)
    assert code == 0  # the corrected command is not refused as "other settings"


def test_a_missing_model_path_fails_before_the_model_libraries_load():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from r1lab.cli import main\n"
        "assert main(['eval', '--model', 'runs/nope/final', '--task', 'arith']) == 2\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_truncated_samples_are_a_warning_in_the_table(capsys, tmp_path):
    argv = ["--model", "tiny:llama", "--task", "arith", "--max-new-tokens", "3", "--quiet"]
    code, stdout, _ = run(capsys, "eval", *argv, "--limit", "2", "--k", "1", "--out", tmp_path)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["truncated"] > 0.3  # 3 tokens of random text rarely end
    assert "warning:" in stdout and "hit max_new_tokens=3 without finishing" in stdout
    assert summary["warnings"] and "raise the limit" in summary["warnings"][0]


def test_split_train_evaluates_the_training_problems(capsys, tmp_path):
    code, stdout, _ = run(
        capsys, "eval", *TINY, "--split", "train", "--limit", "1", "--k", "1", "--out", tmp_path
    )
    assert code == 0 and "on arith (train split)" in stdout
    row = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    from r1lab.tasks import make_task

    assert row["id"] == make_task("arith", {}).examples("train", limit=1)[0].id


def test_no_test_problems_suggests_test_fraction(capsys, tmp_path):
    data = Path(__file__).resolve().parents[2] / "data" / "gsm8k_sample.jsonl"
    argv = ["--model", "tiny:llama", "--task", f"jsonl:{data}", "--option", "test_fraction=0"]
    code, _, err = run(capsys, "eval", *argv, "--out", tmp_path / "ev")
    assert code == 2
    assert "no checkable test problems" in err and "test_fraction" in err
    assert not (tmp_path / "ev").exists()


def test_resume_with_other_settings_exits_2(capsys, two_evals):
    a, _ = two_evals
    code, _, err = run(capsys, "eval", *TINY, "--limit", "2", "--k", "4", "--out", a)
    assert code == 2 and "pick another --out" in err


def test_compare_prints_side_by_side_and_writes_a_png(capsys, two_evals, tmp_path):
    a, b = two_evals
    plot = tmp_path / "cmp.png"
    code, stdout, _ = run(capsys, "eval", "--compare", a, b, "--plot-out", plot)
    assert code == 0
    for word in ("r1lab eval comparison", "decoding", "k=2", "k=3", "pass@1", "cons@k"):
        assert word in stdout
    assert "decoding ≠" in stdout and "not measured alike: k 2 vs 3" in stdout
    assert plot.read_bytes().startswith(PNG_MAGIC)


def test_compare_figure_names_the_mismatch_and_labels_every_bar(two_evals):
    import matplotlib.pyplot as plt

    from r1lab.eval.report import compare_figure, load_summary

    summaries = [load_summary(d) for d in two_evals]
    fig = compare_figure(summaries, ["a", "b"])
    (ax,) = fig.axes
    assert "not measured alike: k 2 vs 3" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()][0].startswith("a\nk=2")
    values = [t.get_text() for t in ax.texts]
    assert len(values) == 4 and all(len(v) == 5 for v in values)  # "0.000": zero bars too
    assert ax.get_ylim()[0] < 0  # a bar at 0 shows above the frame
    plt.close(fig)


def test_compare_default_plot_goes_next_to_the_first_dir(capsys, two_evals):
    a, b = two_evals
    code, stdout, _ = run(capsys, "eval", "--compare", a, b)
    assert code == 0
    assert (a.parent / "compare.png").read_bytes().startswith(PNG_MAGIC)


def make_run(tmp_path: Path) -> Path:
    """A training run directory as `r1lab train` leaves it: config.yaml and a checkpoint."""
    overrides = [
        "name=tiny",
        f"train.out_dir={tmp_path}",
        "train.steps=5",
        "model.spec=tiny:llama",
        "eval.max_new_tokens=6",
    ]
    config = load_config(None, overrides)
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    dump_config(config, run_dir / "config.yaml")
    model, tokenizer = load_model("tiny:llama")
    save_checkpoint(run_dir, 5, model, tokenizer, {"step": 5}, keep=2)
    return run_dir


def test_run_evaluates_every_checkpoint_and_writes_the_curve(capsys, tmp_path):
    run_dir = make_run(tmp_path)
    argv = ("eval", "--run", run_dir, "--limit", "2", "--k", "2", "--quiet")
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    assert "accuracy vs step" in stdout and "step-000005" in stdout
    for name in ("step-000000", "step-000005"):
        summary = json.loads((run_dir / "eval" / name / "summary.json").read_text())
        assert summary["settings"]["max_new_tokens"] == 6  # the run's own settings
        assert summary["settings"]["template"] == "r1_zero"
        assert summary["settings"]["shot_style"] == "brief"
    curve = json.loads((run_dir / "eval" / "accuracy_vs_step.json").read_text())
    assert [p["step"] for p in curve["points"]] == [0, 5]
    assert curve["points"][1]["model"] == str((run_dir / "checkpoints" / "step-000005").resolve())
    png = run_dir / "eval" / "accuracy_vs_step.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    code, _, _ = run(capsys, *argv)  # a second time: everything resumes, nothing is redone
    assert code == 0


def test_run_of_a_non_run_directory_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--run", tmp_path)
    assert code == 2 and "config.yaml" in err


@pytest.mark.smoke
def test_eval_on_the_builtin_model(capsys, tmp_path):
    out = tmp_path / "builtin"
    argv = ["eval", "--task", "arith", "--limit", "3", "--k", "2", "--max-new-tokens", "32"]
    code, stdout, _ = run(capsys, *argv, "--out", out, "--quiet")
    assert code == 0
    assert "builtin:smollm2-135m-instruct on arith" in stdout and "pass@1" in stdout
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3 and 0.0 <= summary["metrics"]["pass@1"] <= 1.0
