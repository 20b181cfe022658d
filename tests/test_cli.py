"""The command line: help, listing models and tasks, showing task examples, and user errors
reported as one `error:` message with exit code 2 instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from r1lab import cli
from r1lab.core.models import DEFAULT_MODEL
from r1lab.tasks import TASKS

COMMANDS = ("models", "tasks", "preflight", "train", "zero", "plot")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as wide as a big terminal, so a long spec is not folded across lines."""
    monkeypatch.setenv("COLUMNS", "200")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), " ".join(err.split())


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_no_command_prints_the_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: r1lab" in err and "pipeline" in err


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("r1lab")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "preflight" in result.stdout and "train" in result.stdout


def test_models_lists_builtin_and_tiny(capsys, tmp_cache):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert DEFAULT_MODEL in out
    assert "tiny:llama" in out and "tiny:qwen2" in out


def test_tasks_lists_the_registered_tasks(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0
    assert "arith" in out and "countdown" in out and "gsm8k" in out
    for name in TASKS:
        assert name in out


def test_tasks_shows_examples_with_prompt_answer_solution(capsys):
    code, out, _ = run(capsys, "tasks", "arith", "-n", "2", "--option", "digits=3")
    assert code == 0
    assert out.count("prompt:") == 2
    assert out.count("answer:") == 2
    assert out.count("solution:") == 2
    assert "What is" in out


def test_tasks_test_split(capsys):
    code, out, _ = run(capsys, "tasks", "countdown", "-n", "1", "--split", "test")
    assert code == 0
    assert out.count("prompt:") == 1 and "Using the numbers" in out


def test_unknown_task_exits_2_listing_valid_tasks(capsys):
    code, out, err = run(capsys, "tasks", "nosuch")
    assert code == 2
    assert err.startswith("error:")
    assert "'nosuch'" in err and "arith" in err and "countdown" in err
    assert "Traceback" not in out + err


def test_bad_task_option_exits_2(capsys):
    code, _, err = run(capsys, "tasks", "arith", "--option", "digitz=3")
    assert code == 2
    assert "'digitz'" in err and "digits" in err
    code, _, err = run(capsys, "tasks", "arith", "--option", "digits")
    assert code == 2 and "key=value" in err


def test_train_with_an_unknown_config_key_exits_2(capsys, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: {spec: 'tiny:llama'}\ngrpo: {grup_size: 4}\n")
    code, out, err = run(capsys, "train", str(recipe), "--quiet")
    assert code == 2
    assert err.startswith("error:")
    assert "grpo.grup_size" in err and "group_size" in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists()


def test_train_with_a_bad_set_override_exits_2(capsys, tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("model: {spec: 'tiny:llama'}\n")
    code, _, err = run(capsys, "train", str(recipe), "--set", "grpo.batch_size=7", "--quiet")
    assert code == 2
    assert "grpo.batch_size (7)" in err


def test_missing_recipe_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "preflight", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml" in err


def test_plot_of_a_non_run_directory_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 2
    assert "metrics.jsonl" in err


def test_plot_writes_figures(capsys, tmp_path):
    rows = [
        '{"step": 1, "reward": 0.1, "accuracy": 0.0, "completion_len_mean": 10}',
        '{"step": 2, "reward": 0.3, "accuracy": 0.5, "completion_len_mean": 12, '
        '"eval/pass@1": 0.25, "reflection_words": 0.1}',
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    code, out, _ = run(capsys, "plot", str(tmp_path))
    assert code == 0
    for name in ("reward.png", "length.png", "reflection.png"):
        path = tmp_path / "plots" / name
        assert path.exists() and path.stat().st_size > 1000
        assert name in out


def test_error_message_is_not_hard_wrapped(capsys, monkeypatch):
    # A long message piped to a log stays on one line, so it can be grepped.
    monkeypatch.setenv("COLUMNS", "60")
    assert cli.main(["tasks", "arith", "--option", "a_very_long_option_name_that_is_wrong=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a_very_long_option_name_that_is_wrong" in err


def test_preflight_checks_the_settings_of_a_torchrun_launch(capsys, tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("model: {spec: 'tiny:llama'}\ngeneration: {max_new_tokens: 4}\n")
    argv = ["preflight", str(recipe), "--prompts", "1", "--samples", "2"]
    code, _, err = run(capsys, *argv, "--nproc-per-node", "3")
    assert code == 0
    assert "distributed: grpo.batch_size (32) must be a multiple of the ranks" in err
    code, _, err = run(capsys, *argv, "--nproc-per-node", "2", "--nnodes", "2")
    assert code == 0 and "distributed:" not in err


def test_listing_and_showing_tasks_import_no_sympy_or_torch():
    """`r1lab tasks` answers at once: the math grader (sympy) loads only for a math dataset,
    whose gold answers it checks; torch never."""
    code = (
        "import sys\n"
        "from r1lab.cli import main\n"
        "assert main(['tasks']) == 0 and main(['tasks', 'arith', '-n', '1']) == 0\n"
        "heavy = {'sympy', 'math_verify', 'torch', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert main(['tasks', 'jsonl:data/gsm8k_sample.jsonl', '-n', '1']) == 0\n"
        "assert 'sympy' in sys.modules and 'torch' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)


@pytest.mark.parametrize(
    ("argv", "guess"),
    [
        (["tasks", "arth"], "unknown task 'arth' (did you mean 'arith'?)"),
        (["tasks", "arith", "--option", "digts=1"], "'digts' for task 'arith' (did you mean"),
        (["train", "recipes/r1_zero_arith.yaml", "--set", "grpo.grup_size=4"], "'group_size'"),
        (["train", "recipes/r1_zero_arith.yaml", "--set", "rewards.0.name=acuracy"], "'accuracy'"),
    ],
)
def test_a_misspelt_name_gets_a_suggestion(capsys, monkeypatch, argv, guess):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code, _, err = run(capsys, *argv)
    assert code == 2 and guess in err


def test_preflight_shows_the_prompt_as_the_model_sees_it(capsys, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: {spec: 'tiny:llama'}\ngeneration: {max_new_tokens: 4}\n"
        "task: {name: arith, options: {digits: 1}}\n"
    )
    code, out, _ = run(capsys, "preflight", str(recipe), "--prompts", "1", "--samples", "2")
    assert code == 0
    assert "prompt 1 of 1 as the model sees it:" in out
    assert "A conversation between User and Assistant." in out and "User: What is" in out
