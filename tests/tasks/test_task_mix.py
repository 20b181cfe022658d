"""General prompts (`general:PATH`) and the `mix` task: answerless examples, deterministic
weighted splits, grading routed to each example's own sub-task, config-time option checks,
and evaluation that leaves general prompts out of pass@1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.core.errors import UserError
from r1lab.grpo.config import build_config
from r1lab.tasks import check_task, make_task
from r1lab.text.templates import pick_shots

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "general_prompts.jsonl"
ARITH = {"name": "arith", "options": {"digits": 1, "ops": "+", "train_size": 30, "test_size": 6}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def general(path: Path, weight: float = 1.0) -> dict:
    return {"name": f"general:{path}", "weight": weight}


@pytest.fixture
def prompts(tmp_path) -> Path:
    rows = [
        {"prompt": f"Write a line about the number {i}.", "category": "writing"} for i in range(20)
    ]
    return write_jsonl(tmp_path / "general.jsonl", rows)


# ---------------------------------------------------------------- general prompts


def test_sample_file_loads_as_general_prompts():
    task = make_task(f"general:{SAMPLE}")
    train, test = task.examples("train"), task.examples("test")
    assert len(train) + len(test) == len(SAMPLE.read_text().splitlines()) >= 25
    assert {e.id for e in train}.isdisjoint(e.id for e in test)
    assert all(not e.checkable and e.answer == "" for e in train + test)
    assert any("who are you" in e.prompt.lower() for e in train + test)  # self-cognition
    assert task.score("<answer>anything</answer>", train[0]) is False
    again = make_task(f"general:{SAMPLE}")
    assert [e.id for e in again.examples("test")] == [e.id for e in test]


def test_general_rows_are_checked(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}])
    with pytest.raises(UserError, match=r"bad.jsonl:1: a general prompt has no answer"):
        make_task(f"general:{bad}")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "  "}])
    with pytest.raises(UserError, match="empty"):
        make_task(f"general:{empty}")
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "hi"}, {"text": "hello"}])
    with pytest.raises(UserError, match="missing prompt field"):
        make_task(f"general:{other}")
    task = make_task(f"general:{other}", {"prompt_field": "text", "test_fraction": 0.0})
    assert [e.prompt for e in task.examples("train")] == ["hi", "hello"]


# ---------------------------------------------------------------- the mix


def test_mix_weights_interleave_and_are_deterministic(prompts):
    options = {"tasks": [{**ARITH, "weight": 3}, general(prompts, 1)], "size": 40}
    task = make_task("mix", options)
    train = task.examples("train")
    assert len(train) == 40
    assert sum(not e.checkable for e in train) == 10  # a quarter, general prompts repeated
    assert any(not e.checkable for e in task.examples("train", limit=4))  # interleaved
    assert [e.id for e in make_task("mix", options).examples("train")] == [e.id for e in train]
    # The test split is every sub-task's own test split, unweighted.
    arith_test = make_task("arith", ARITH["options"]).examples("test")
    general_test = make_task(f"general:{prompts}").examples("test")
    assert len(task.examples("test")) == len(arith_test) + len(general_test)


def test_mix_default_size_is_every_train_example(prompts):
    task = make_task("mix", {"tasks": [ARITH, general(prompts)]})
    sizes = [
        len(make_task(s, o).examples("train"))
        for s, o in [("arith", ARITH["options"]), (f"general:{prompts}", {})]
    ]
    assert len(task.examples("train")) == sum(sizes)


def test_mix_grades_with_each_examples_own_task(prompts):
    task = make_task("mix", {"tasks": [ARITH, general(prompts)]})
    problem = next(e for e in task.examples("train") if e.checkable)
    prompt = next(e for e in task.examples("train") if not e.checkable)
    right = f"<think>x</think><answer>{problem.answer}</answer>"
    assert task.score(right, problem) and not task.score("<answer>-1</answer>", problem)
    assert task.grade(task.extract(right), problem)
    assert task.normalize(" 1,234 ") == "1234"  # the arithmetic task's normaliser
    assert not task.score(right, prompt)
    assert task.brief(problem).endswith(f"= {problem.answer}")
    shots = pick_shots(task, task.examples("train"), 2, "brief")
    assert len(shots) == 2 and all(s.checkable for s in shots)
    stranger = make_task("arith", {"digits": 3}).examples("train")[0]
    with pytest.raises(UserError, match="not from this task mix"):
        task.grade("1", stranger)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": []}, "non-empty list"),
        ({"tasks": [{"options": {}}]}, r"tasks.0 must be a mapping with a task `name`"),
        ({"tasks": [{"name": "arith", "wieght": 2}]}, r"tasks.0: unknown key\(s\) \['wieght'\]"),
        ({"tasks": [{"name": "arith", "weight": -1}]}, r"tasks.0.weight must be a number > 0"),
        ({"tasks": [{"name": "arith", "options": {"digitz": 1}}]}, "unknown option 'digitz'"),
        ({"tasks": [{"name": "nope"}]}, "unknown task 'nope'"),
        ({"tasks": [{"name": "arith"}], "size": 0}, "size must be an integer >= 1"),
    ],
)
def test_mix_options_are_checked_at_config_time(options, message):
    with pytest.raises(UserError, match=message):
        check_task("mix", options)
    with pytest.raises(UserError, match=message):
        build_config({"task": {"name": "mix", "options": options}})


def test_mix_refuses_the_same_examples_twice():
    with pytest.raises(UserError, match="is in sub-tasks 'arith' and 'arith'"):
        make_task("mix", {"tasks": [ARITH, ARITH]}).examples("train")


def test_eval_skips_general_prompts_with_a_note(prompts, tmp_path):
    from r1lab.eval.run import run_eval
    from r1lab.eval.store import make_settings

    options = {"tasks": [ARITH, general(prompts)]}
    settings, notes = make_settings(
        "tiny:llama", "mix", task_options=options, k=1, max_new_tokens=2
    )
    summary = run_eval(settings, tmp_path / "eval", 8, notes=notes)
    listed = make_task("mix", options).examples("test", limit=8)
    assert summary["problems"] == sum(e.checkable for e in listed) < len(listed)
    assert any("skipped" in note and "general prompts" in note for note in summary["notes"])
