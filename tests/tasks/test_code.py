"""Code tasks: extraction, the sandbox-backed grader (batched, cached, the one definition of
correct), pycode's generation and splits, HumanEval from the wheel, code JSONL in both shapes."""

from __future__ import annotations

import json

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks import make_task
from r1lab.tasks.code import encode_tests, extract_code, normalize_code
from r1lab.tasks.pycode import FAMILIES

FAST = {"timeout": 10, "workers": 2}
ASSERTS, STDIO = "data/code_asserts_sample.jsonl", "data/code_stdio_sample.jsonl"


def answer(code: str) -> str:
    return f"<think>easy</think> <answer>\n```python\n{code}\n```\n</answer>"


@pytest.mark.parametrize(
    ("completion", "code"),
    [
        (answer("x = 1"), "x = 1\n"),
        ("<answer>```py\nx = 2\n```</answer>", "x = 2\n"),
        ("<answer>```\nx = 3\n```</answer>", "x = 3\n"),
        ("<answer>```python\nx = 4\n", "x = 4\n"),  # cut off before </answer>: the fence
        ("<answer>```python\nx = 5\n</answer>", "x = 5\n"),  # an unclosed fence in the answer
        ("<answer>x = 6</answer>", "x = 6"),
        ("```python\nx = 7\n``` then ```python\nx = 8\n```", "x = 8\n"),
        ("```python\nx = 9\n``` <answer>```python\nx = 10\n```</answer>", "x = 10\n"),
        ("no code at all", None),
        ("<answer> </answer>", None),
    ],
)
def test_extract_code(completion, code):
    assert extract_code(completion) == code


def test_normalized_code_votes_together_across_formatting():
    assert normalize_code("def f(x):\n    return x+1  # c") == normalize_code(
        "def f(x): return (x + 1)"
    )
    assert normalize_code("def f(:") == "def f(:" and normalize_code(None) is None


def test_pycode_references_pass_and_wrong_programs_fail():
    task = make_task("pycode", {"level": 3, "train_size": 40, "test_size": 10, "sandbox": FAST})
    examples = task.examples("train") + task.examples("test")
    assert len({e.meta["family"] for e in examples}) > 5
    right = task.score_many([f"<answer>{e.answer}</answer>" for e in examples], examples)
    assert all(right)
    wrong = task.score_many([answer("def nothing():\n    pass")] * len(examples), examples)
    assert not any(wrong)


def test_pycode_reference_programs_pass_their_own_tests_for_every_family():
    task = make_task("pycode", {"level": 3, "train_size": 10**4, "test_size": 0, "sandbox": FAST})
    examples = task.examples("train")
    one_per_family = list({e.meta["family"]: e for e in examples}.values())
    assert len(one_per_family) == len(FAMILIES)
    assert all(
        task.score_many([f"<answer>{e.answer}</answer>" for e in one_per_family], one_per_family)
    )


def test_pycode_splits_are_disjoint_by_meaning_and_deterministic():
    task = make_task("pycode", {"level": 1, "sandbox": FAST})
    train, test = task.examples("train"), task.examples("test")
    meaning = lambda e: (e.meta["family"], e.meta["function"])  # noqa: E731
    assert not {meaning(e) for e in train} & {meaning(e) for e in test}
    again = make_task("pycode", {"level": 1, "sandbox": FAST})
    assert [e.prompt for e in again.examples("test")] == [e.prompt for e in test]
    assert all(e.meta["level"] == 1 for e in train + test) and len(test) > 40


def test_pycode_boolean_functions_have_both_answers_in_their_tests():
    task = make_task("pycode", {"level": 3, "train_size": 10**4, "test_size": 0, "sandbox": FAST})
    for e in task.examples("train"):
        if e.meta["family"] in ("divisible", "starts"):
            asserts = e.meta["tests"]["asserts"]
            assert any(a.endswith("== True") for a in asserts), e.prompt
            assert any(a.endswith("== False") for a in asserts), e.prompt


def test_pycode_options_are_checked():
    for bad in ({"level": 4}, {"tests": 0}, {"train_size": -1}, {"sandbox": {"mode": "none"}}):
        with pytest.raises(UserError):
            make_task("pycode", {**bad})


def test_grading_is_cached_and_score_many_equals_the_loop(monkeypatch):
    task = make_task("pycode", {"train_size": 6, "test_size": 0, "sandbox": FAST})
    examples = task.examples("train")
    completions = [answer(e.answer.split("\n", 1)[1].rsplit("```", 1)[0]) for e in examples]
    completions[1] = answer("def broken(:")
    batch = task.score_many(completions, examples)
    calls = []
    monkeypatch.setattr(task.sandbox, "check", lambda *a: calls.append(a) or [])  # no more runs
    assert batch == [task.score(c, e) for c, e in zip(completions, examples, strict=True)]
    assert batch[1] is False and sum(batch) == 5 and calls == []


def test_a_completion_without_code_fails_every_test_without_running():
    task = make_task("pycode", {"train_size": 1, "test_size": 0, "sandbox": FAST})
    (example,) = task.examples("train")
    assert task.test_verdicts(["I don't know"], [example]) == [["failed"] * 5]


def test_humaneval_loads_offline_and_its_canonical_solutions_pass():
    task = make_task("humaneval", {"sandbox": FAST})
    problems = task.examples("test")
    assert len(problems) == 164 and task.examples("train") == []
    assert problems[0].id == "HumanEval-0" and "def has_close_elements" in problems[0].prompt
    some = problems[:6]
    assert all(task.score_many([f"<answer>{e.answer}</answer>" for e in some], some))


def test_humaneval_accepts_a_full_function_or_the_body_only():
    task = make_task("humaneval", {"sandbox": FAST})
    problem = task.examples("test", limit=1)[0]  # has_close_elements
    full = (
        "def has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
        " for b in numbers[i + 1:])"
    )
    body = full.split("\n", 1)[1] + "\n"
    wrong = "def has_close_elements(numbers, threshold):\n    return True"
    assert task.score_many([answer(full), answer(body), answer(wrong)], [problem] * 3) == [
        True,
        True,
        False,
    ]


def test_code_jsonl_reads_mbpp_asserts_with_setup_code():
    task = make_task(f"code:{ASSERTS}", {"test_fraction": 1.0, "sandbox": FAST})
    problems = task.examples("test")
    assert len(problems) == 6 and task.examples("train") == []
    assert "Your code should pass this test:\nassert second_largest(" in problems[0].prompt
    assert all(task.score_many([f"<answer>{e.answer}</answer>" for e in problems], problems))
    sqrt = problems[5]
    assert sqrt.meta["tests"]["setup"] == "import math"


def test_code_jsonl_reads_apps_and_livecodebench_stdio_cases():
    task = make_task(f"code:{STDIO}", {"test_fraction": 1.0, "sandbox": FAST})
    problems = task.examples("test")
    assert [len(p.meta["tests"]["stdio"]) for p in problems] == [3, 2, 2, 2, 2]
    assert all(task.score_many([f"<answer>{e.answer}</answer>" for e in problems], problems))
    verdicts = task.test_verdicts([answer("print(input())")] * 2, problems[:2])
    assert verdicts == [["failed"] * 3, ["failed", "failed"]]


def test_code_jsonl_rows_without_tests_or_prompt_are_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "do it", "test_list": []}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: no tests found"):
        make_task(f"code:{path}", {"sandbox": FAST})
    path.write_text(json.dumps({"test_list": ["assert 1"]}) + "\n")
    with pytest.raises(UserError, match="no prompt field"):
        make_task(f"code:{path}", {"sandbox": FAST})
    path.write_text(json.dumps({"question": "q", "input_output": {"inputs": ["1"], "outputs": []}}))
    with pytest.raises(UserError, match="1 inputs but 0 outputs"):
        make_task(f"code:{path}", {"sandbox": FAST})
    functional = [{"input": "[1]", "output": "1", "testtype": "functional"}]
    path.write_text(json.dumps({"question": "q", "public_test_cases": json.dumps(functional)}))
    with pytest.raises(UserError, match="functional"):
        make_task(f"code:{path}", {"sandbox": FAST})
    with pytest.raises(UserError, match="unknown format"):
        make_task(f"code:{ASSERTS}", {"format": "yaml", "sandbox": FAST})


def test_a_mix_grades_code_and_math_each_by_its_own_task():
    mix = make_task(
        "mix",
        {
            "tasks": [
                {"name": "arith", "options": {"train_size": 4, "test_size": 0}},
                {"name": "pycode", "options": {"train_size": 4, "test_size": 0, "sandbox": FAST}},
            ]
        },
    )
    examples = mix.examples("train")
    texts = [
        f"<answer>{e.answer}</answer>" if i % 2 else "<answer>nothing</answer>"
        for i, e in enumerate(examples)
    ]
    assert mix.score_many(texts, examples) == [bool(i % 2) for i in range(len(examples))]
    verdicts = mix.test_verdicts(texts, examples)
    assert [v is None for v in verdicts] == [e.id.startswith("arith") for e in examples]


def test_examples_without_tests_are_not_code():
    task = make_task("pycode", {"train_size": 1, "test_size": 0, "sandbox": FAST})
    plain = Example(id="q", prompt="1+1", answer="2")
    coded = Example(
        id="c", prompt="p", answer="a", meta={"tests": encode_tests(["assert f() == 1"])}
    )
    assert task.test_verdicts([answer("def f():\n    return 1")] * 2, [plain, coded]) == [
        None,
        ["passed"],
    ]


def test_pycode_worked_solutions_make_cold_start_rows_that_pass():
    from r1lab.sft.data import task_rows

    task = make_task("pycode", {"level": 3, "train_size": 8, "test_size": 0, "sandbox": FAST})
    rows = task_rows(task, "think", "|special_token|")
    assert len(rows) == 8 and all("Check: " in row.completion for row in rows)
    assert all(task.score_many([r.completion for r in rows], task.examples("train")))
