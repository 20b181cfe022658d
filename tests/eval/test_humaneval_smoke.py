"""The built-in model through HumanEval, end to end: real samples, sandbox grading, the
summary (what the README's HumanEval number is made of, on two problems)."""

from __future__ import annotations

import json

import pytest

from r1lab.eval.protocol import Runtime
from r1lab.eval.run import run_eval
from r1lab.eval.store import make_settings

pytestmark = pytest.mark.smoke


def test_builtin_model_on_two_humaneval_problems(tmp_path):
    settings, notes = make_settings(
        "builtin:smollm2-135m-instruct",
        "humaneval",
        template="chat",
        k=2,
        max_new_tokens=64,
        stop=("</answer>",),
    )
    summary = run_eval(settings, tmp_path, 2, Runtime(compute_dtype="bfloat16"), notes)
    assert summary["problems"] == 2 and 0.0 <= summary["metrics"]["pass@1"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(sum(r["tests"].values()) == 1 for r in rows)
    assert all(r["correct"] == (r["tests"] == {"passed": 1}) for r in rows)
