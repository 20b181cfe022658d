"""The README's shown outputs are what the commands print.

Every ```text block of README.md that starts with `$ r1lab ...` is an example: the command
and its output as a log file gets it (stdout and stderr together). Each is in `CHECKS`: run
(in a scratch directory that sees the repository's recipes and data) and compared line for
line, or, where sampling makes the numbers machine-dependent, compared on the lines that do
not depend on it, or with every number masked. A new example without a check fails the
suite, so an example cannot drift unnoticed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Check:
    lines: str = ""  # a regex: compare only the lines it matches ("" = every line)
    masked: bool = False  # compare with every number and duration masked
    smoke: bool = False  # runs the real model (minutes)


CHECKS = {
    "r1lab tasks arith -n 1 --option digits=1": Check(),
    # the completions differ from CPU to CPU; the rendered prompt, the problems, their
    # token counts and the layout do not
    "r1lab preflight recipes/r1_zero_arith.yaml --prompts 2 --samples 3": Check(
        lines=r"^(─+ (prompt 1 of 2 .*|arith-\w+  answer=\d+) ─+|prompt tokens: .*|A conv.*)$",
        smoke=True,
    ),
    # a plain line per step, with numbers that depend on the machine
    "r1lab train recipes/r1_zero_arith.yaml --set train.steps=3 --set eval.size=0 "
    "--set name=piped": Check(
        lines=r"^(step \d|done: |no evaluation rows)", masked=True, smoke=True
    ),
}


def examples() -> dict[str, list[str]]:
    """{command: the output lines shown under it} for every `$ r1lab` example."""
    text = (ROOT / "README.md").read_text()
    found = {}
    for block in re.findall(r"```text\n(.*?)```", text, flags=re.S):
        lines = block.rstrip("\n").split("\n")
        if lines[0].startswith("$ r1lab "):
            found[lines[0][2:]] = lines[1:]
    return found


def run(command: str, cwd: Path) -> list[str]:
    """The command's output with stderr merged into stdout, as `cmd > log 2>&1` writes it."""
    for name in ("recipes", "data"):
        if not (cwd / name).exists():
            (cwd / name).symlink_to(ROOT / name)
    code = "import sys; from r1lab.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, *shlex.split(command)[1:]]
    done = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, timeout=1800
    )
    assert done.returncode == 0, done.stdout
    return done.stdout.rstrip("\n").split("\n")


def mask(line: str) -> str:
    """A line with its durations and numbers masked, e.g. `eta 1m05s` -> `eta T`."""
    line = re.sub(r"\b(\d+h)?(\d+m)?\d+s\b", "T", line)
    return re.sub(r"\d+(\.\d+)?", "#", line)


def compared(lines: list[str], check: Check) -> list[str]:
    pattern = re.compile(check.lines)
    kept = [line for line in lines if pattern.match(line)]
    return [mask(line) for line in kept] if check.masked else kept


def test_every_example_is_checked():
    shown = set(examples())
    assert shown, "no `$ r1lab` examples found in README.md"
    assert not shown - set(CHECKS), f"README examples without a check: {shown - set(CHECKS)}"
    assert not set(CHECKS) - shown, f"checks for examples no longer shown: {set(CHECKS) - shown}"


def marked(smoke: bool) -> list:
    return [
        pytest.param(command, marks=[pytest.mark.smoke] if smoke else [])
        for command, check in sorted(CHECKS.items())
        if check.smoke == smoke
    ]


@pytest.mark.parametrize("command", marked(smoke=False) + marked(smoke=True))
def test_the_output_shown_is_the_output(command, tmp_path):
    check = CHECKS[command]
    shown = compared(examples()[command], check)
    assert len(shown) >= 1
    assert compared(run(command, tmp_path), check) == shown
