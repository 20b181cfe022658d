"""Bad input of every kind, through the CLI: one line naming what was wrong (and what is valid),
exit code 2, no traceback; and nothing already written is lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from r1lab import cli

ROOT = Path(__file__).resolve().parents[1]
ZERO = str(ROOT / "recipes" / "r1_zero_arith.yaml")
SFT = str(ROOT / "recipes" / "r1_cold_start.yaml")
SAMPLE = str(ROOT / "recipes" / "r1_sample.yaml")
MINI = str(ROOT / "recipes" / "r1_mini.yaml")
TINY_EVAL = ["eval", "--task", "arith", "--model", "tiny:llama", "--quiet"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory with broken files of every kind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    (tmp_path / "binary.yaml").write_bytes(b"\x80\x81\x00binary\xff")
    (tmp_path / "truncated.yaml").write_text("grpo: {batch_size: 8\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "trunc.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    (tmp_path / "bin.jsonl").write_bytes(b"\x80\x81\x00")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    return tmp_path


CASES = {
    # files: missing, a directory, binary, truncated, the wrong shape
    "missing recipe": (["train", "nope.yaml"], "config file not found: nope.yaml"),
    "a directory": (["train", "adir"], "adir is not a file"),
    "binary recipe": (["train", "binary.yaml"], "binary.yaml: not a text file"),
    "truncated YAML": (["train", "truncated.yaml"], r"truncated.yaml: invalid YAML: line 2"),
    "a list recipe": (["train", "list.yaml"], "the top level must be a mapping"),
    "the wrong kind": (["train", SFT], "this is a `kind: sft` recipe: run it with `r1lab sft`"),
    # overrides: unparseable, wrong types and ranges, unknown keys and names
    "unparseable --set": (["train", ZERO, "--set", "grpo.group_size=["], "'\\[' is not a valid"),
    "unparseable --option": (["tasks", "arith", "--option", "digits={a"], "not a valid value"),
    "a string for an int": (["train", ZERO, "--set", "grpo.batch_size=abc"], "must be of type int"),
    "a negative beta": (["train", ZERO, "--set", "grpo.beta=-1"], "grpo.beta must be >= 0"),
    "zero steps": (["train", ZERO, "--set", "train.steps=0"], "train.steps must be >= 1"),
    "nan weight": (["train", ZERO, "--set", "rewards.0.weight=nan"], "must be of type float"),
    "an unknown key": (["train", ZERO, "--set", "foo.bar=1"], "unknown config key 'foo'; valid"),
    "an unknown reward": (["train", ZERO, "--set", "rewards.0.name=nope"], "valid rewards:"),
    "an unknown task": (["train", ZERO, "--set", "task.name=nope"], "valid tasks: aime2024"),
    "an unknown preset": (["train", ZERO, "--set", "grpo.preset=nope"], "valid: grpo, dr_grpo"),
    "an unknown device": (["train", ZERO, "--set", "model.device=tpu"], "auto, cpu, cuda"),
    "an empty name": (["train", ZERO, "--set", "name="], "'' is not a valid name"),
    "a name outside": (["train", ZERO, "--set", "name=../../x"], "is not a valid name"),
    "out_dir is a file": (["train", ZERO, "--set", "train.out_dir=afile"], "afile is a file"),
    "a task switched": (["train", ZERO, "--set", "task.name=jsonl:nope.jsonl"], "not found"),
    "truncated data": (["train", ZERO, "--set", "task.name=jsonl:trunc.jsonl"], "trunc.jsonl:2"),
    "binary data": (["tasks", "jsonl:bin.jsonl"], "bin.jsonl: not UTF-8 text"),
    "a bad scope": (["sample", SAMPLE, "--set", "filters.scope=all"], "valid: cot, response"),
    "an unknown stage": (["pipeline", MINI, "--only", "nope"], "valid stages:"),
    # flags: ranges and names
    "k 0": ([*TINY_EVAL, "--k", "0"], "k must be between 1 and 1024"),
    "a negative limit": ([*TINY_EVAL, "--limit", "-5"], "--limit: must be >= 1"),
    "a negative temperature": ([*TINY_EVAL, "--temperature", "-1"], "temperature must be >= 0"),
    "top-p 2": ([*TINY_EVAL, "--top-p", "2"], "top_p must be in"),
    "an unknown dtype": ([*TINY_EVAL, "--compute-dtype", "xx"], "compute_dtype: unknown value"),
    "an unknown style": ([*TINY_EVAL, "--style", "xml"], "invalid choice: 'xml'"),
    "--out is a file": ([*TINY_EVAL, "--out", "afile"], "afile is a file"),
    "a missing model": ([*TINY_EVAL[:3], "--model", "./missing"], "model directory not found"),
    "compare a file": (["eval", "--compare", "afile"], "is not an evaluation summary"),
    "a run that is not one": (["eval", "--run", "adir"], "has no config.yaml"),
    "n -1": (["tasks", "arith", "-n", "-1"], "-n: must be >= 1"),
    "an unknown option": (["tasks", "arith", "--option", "nope=1"], "valid options: digits"),
    "prompts 0": (["preflight", ZERO, "--prompts", "0"], "--prompts: must be >= 1"),
    "plot a non-run": (["plot", "adir"], "has no metrics.jsonl"),
    "an unknown command": (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    "a missing argument": (["train"], "the following arguments are required: config"),
}


def run(argv: list[str]) -> int:
    """`r1lab ARGV`'s exit code (argparse's own errors exit through SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as exit:
        return int(exit.code)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_exit_code_2(files, capsys, case):
    argv, expected = CASES[case]
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(expected, lines[0]), lines[0]


def test_a_damaged_trainer_state_stops_a_resume_with_a_clear_line(files, capsys):
    argv = ["train", ZERO, "--set", "model.spec=tiny:llama", "--set", "train.steps=1"]
    argv += ["--set", "eval.size=0", "--set", "generation.max_new_tokens=4", "--quiet"]
    assert cli.main(argv) == 0
    state = files / "runs" / "r1_zero_arith" / "checkpoints" / "step-000001" / "trainer_state.pt"
    state.write_bytes(b"garbage")
    metrics = (files / "runs" / "r1_zero_arith" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "trainer_state.pt cannot be read" in err and "Traceback" not in err
    assert (files / "runs" / "r1_zero_arith" / "metrics.jsonl").read_text() == metrics  # kept


def test_a_garbled_metrics_line_names_the_file_and_line(files, capsys):
    argv = ["train", ZERO, "--set", "model.spec=tiny:llama", "--set", "train.steps=1"]
    argv += ["--set", "eval.size=0", "--set", "generation.max_new_tokens=4", "--quiet"]
    assert cli.main(argv) == 0
    metrics = files / "runs" / "r1_zero_arith" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{broken", *rows]) + "\n")
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 2
    assert "metrics.jsonl:1: invalid JSON" in capsys.readouterr().err
    assert json.loads(metrics.read_text().splitlines()[1])  # nothing rewritten


def test_ctrl_c_exits_130_and_the_run_resumes_from_its_checkpoint(files, capsys, monkeypatch):
    from r1lab.grpo import loop, step

    calls = {"n": 0}

    def interrupted_at_step_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return step.rollout_step(*args, **kwargs)

    monkeypatch.setattr(loop, "rollout_step", interrupted_at_step_2)
    argv = ["train", ZERO, "--set", "model.spec=tiny:llama", "--set", "train.steps=2"]
    argv += ["--set", "train.save_every=1", "--set", "eval.size=0", "--quiet"]
    argv += ["--set", "generation.max_new_tokens=4"]
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert cli.main([*argv, "--resume"]) == 0
    rows = Path("runs/r1_zero_arith/metrics.jsonl").read_text().splitlines()
    steps = [json.loads(row)["step"] for row in rows]
    assert steps == [1, 2]
