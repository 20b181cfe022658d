"""The `code_tests` reward: all-or-nothing or the passed fraction, None off code problems,
one sandbox run per program shared with `accuracy`, and no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.rewards import RewardInputs, RewardTerm, check_terms, compute_rewards
from r1lab.tasks import make_task
from r1lab.tasks.code import encode_tests

FAST = {"timeout": 10, "workers": 2}
TESTS = encode_tests(
    ["assert f(1) == 2", "assert f(2) == 3", "assert f(0) == 1", "assert f(5) == 6"]
)
PROBLEM = Example(id="c", prompt="f(x) = x + 1", answer="def f(x): ...", meta={"tests": TESTS})


def code(body: str) -> str:
    return f"<think>ok</think> <answer>```python\ndef f(x):\n    {body}\n```</answer>"


@pytest.fixture(scope="module")
def task():
    return make_task("pycode", {"train_size": 1, "test_size": 0, "sandbox": FAST})


def test_all_or_nothing_and_partial_credit(task):
    completions = [
        code("return x + 1"),
        code("return 2 if x == 1 else x + 1 if x else 0"),
        "no code",
    ]
    inputs = RewardInputs(completions, [PROBLEM] * 3, task=task)
    terms = [
        RewardTerm("code_tests"),
        RewardTerm("partial", params={"partial": True}, reward="code_tests"),
        RewardTerm("accuracy"),
    ]
    total, per_term = compute_rewards(terms, inputs)
    assert per_term["code_tests"] == [1.0, 0.0, 0.0]
    assert per_term["partial"] == [1.0, 0.75, 0.0]
    assert per_term["accuracy"] == per_term["code_tests"]
    assert total == [3.0, 0.75, 0.0]


def test_math_problems_in_the_batch_are_not_applicable(task):
    mix = make_task(
        "mix",
        {
            "tasks": [
                {"name": "arith", "options": {"train_size": 1, "test_size": 0}},
                {"name": "pycode", "options": {"train_size": 1, "test_size": 0, "sandbox": FAST}},
            ]
        },
    )
    examples = mix.examples("train")
    texts = [f"<answer>{e.answer}</answer>" for e in examples]
    _, per_term = compute_rewards(
        [RewardTerm("code_tests")], RewardInputs(texts, examples, task=mix)
    )
    assert per_term["code_tests"] == [None if e.id.startswith("arith") else 1.0 for e in examples]


def test_each_program_runs_once_for_both_terms(monkeypatch):
    task = make_task("pycode", {"train_size": 1, "test_size": 0, "sandbox": FAST})
    runs = []
    check = task.sandbox.check
    monkeypatch.setattr(
        task.sandbox,
        "check",
        lambda programs, limits: runs.append(len(programs)) or check(programs, limits),
    )
    completions = [code(f"return x + {k}") for k in (1, 2, 1)]
    inputs = RewardInputs(completions, [PROBLEM] * 3, task=task)
    compute_rewards([RewardTerm("code_tests"), RewardTerm("accuracy")], inputs)
    assert runs == [2]  # two distinct programs, one batch, nothing re-run


def test_params_are_checked_at_config_time():
    with pytest.raises(UserError, match="partial must be true or false"):
        check_terms([RewardTerm("code_tests", params={"partial": "yes"})])
    with pytest.raises(UserError, match="unknown param"):
        check_terms([RewardTerm("code_tests", params={"fraction": True})])


def test_the_reward_needs_a_task():
    with pytest.raises(UserError, match="needs a task"):
        compute_rewards([RewardTerm("code_tests")], RewardInputs(["x"], [PROBLEM]))


def test_rewards_and_the_sandbox_import_no_torch():
    probe = "import sys, r1lab.rewards, r1lab.sandbox, r1lab.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
