"""Cold-start data (sft_data.py): task solutions rendered in both formats, conversation files
with errors that name file:line and the field, an earlier run's samples filtered to correct and
well-formatted completions, and a deterministic held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.sft.config import build_sft_config
from r1lab.sft.data import (
    load_rows,
    render_completion,
    samples_rows,
    split_rows,
    task_rows,
    with_verification,
    write_rows,
)
from r1lab.tasks import make_task
from r1lab.tasks.base import Task
from r1lab.text.conversations import SFTRow, jsonl_rows
from r1lab.text.formats import OutputFormat, format_ok

TOKEN = "|special_token|"


@pytest.fixture(scope="module")
def arith():
    return make_task("arith", {"digits": 2, "ops": "+-", "train_size": 30, "test_size": 6})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- task solutions
def test_think_format_passes_the_format_reward_and_the_grader(arith):
    rows = task_rows(arith, "think", TOKEN)
    assert len(rows) == 30 and len({r.id for r in rows}) == 30
    by_id = {ex.id: ex for ex in arith.examples("train")}
    for row in rows:
        example = by_id[row.id]
        assert row.prompt == example.prompt and row.source == "task:arith"
        assert format_ok(row.completion), row.completion
        assert arith.score(row.completion, example)
        assert example.solution in row.completion  # the worked reasoning, verbatim
        assert "Check:" in row.completion  # the self-verification step
        assert TOKEN not in row.completion


def test_r1_format_is_token_reasoning_token_summary(arith):
    example = arith.examples("train")[0]
    text = render_completion(example, "r1", TOKEN)
    assert text.count(TOKEN) == 2
    head, reasoning, summary = text.split(TOKEN)
    assert head == "" and reasoning.strip() == example.solution
    assert summary.strip() == f"The answer is \\boxed{{{example.answer}}}."
    assert arith.score(text, example)  # the summary states a gradable final answer
    assert render_completion(example, "r1", "<SEP>").count("<SEP>") == 2  # configurable


def test_a_solution_without_a_check_gets_a_verification_step():
    assert with_verification("a\nCheck: b ✓", "7") == "a\nCheck: b ✓"
    text = with_verification("3 + 4 = 7.", "7")
    assert text.startswith("3 + 4 = 7.\n") and "re-check" in text and text.endswith("7.")
    example = Example("q", "What is 3 + 4?", "7", solution="3 + 4 = 7.")
    assert "re-check" in render_completion(example, "think", TOKEN)
    with pytest.raises(UserError, match="unknown cold-start format 'xml'"):
        render_completion(example, "xml", TOKEN)


def test_task_limit_and_a_task_without_solutions(arith):
    assert [r.id for r in task_rows(arith, "think", TOKEN, limit=3)] == [
        ex.id for ex in arith.examples("train")[:3]
    ]

    class Unsolved(Task):
        name = "unsolved"

        def examples(self, split, limit=None):
            return [Example("a", "q?", "1")]

        def grade(self, answer, example):
            return False

    with pytest.raises(UserError, match="no worked solutions"):
        task_rows(Unsolved(), "think", TOKEN)


# --------------------------------------------------------------------------- JSONL files
def test_conversations_in_both_shapes(tmp_path):
    path = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "A"},
                ]
            },
            "",
            {"prompt": "2+2?", "completion": "<think>x</think> <answer>4</answer>", "id": 7},
        ],
    )
    rows = jsonl_rows(path)
    assert [(r.prompt, r.completion) for r in rows] == [
        ("Hi?", "A"),
        ("2+2?", "<think>x</think> <answer>4</answer>"),
    ]
    assert rows[0].id.startswith("jsonl-") and rows[1].id == "7"
    assert {r.source for r in rows} == {"jsonl:conv.jsonl"}
    assert jsonl_rows(path) == rows  # ids are stable
    assert len(jsonl_rows(path, limit=1)) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "completion": ', r"conv.jsonl:2: invalid JSON"),
        ("[1, 2]", r"conv.jsonl:2: expected a JSON object, got list"),
        ('{"prompt": "a"}', r"conv.jsonl:2: missing field 'completion'"),
        ('{"completion": "a"}', r"conv.jsonl:2: missing field 'prompt'"),
        ('{"text": "a"}', r"conv.jsonl:2: missing field 'messages'"),
        ('{"prompt": "a", "completion": 3}', r"conv.jsonl:2: field 'completion' must be"),
        (
            '{"messages": [{"role": "user"}]}',
            r"conv.jsonl:2: messages\[0\]: missing field 'content'",
        ),
        (
            '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},'
            ' {"role": "assistant", "content": "a"}]}',
            r"conv.jsonl:2: messages must alternate user and assistant turns.*system prompt",
        ),
    ],
)
def test_a_bad_line_names_the_file_the_line_and_the_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "conv.jsonl", [{"prompt": "ok", "completion": "fine"}, line])
    with pytest.raises(UserError, match=message):
        jsonl_rows(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        jsonl_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no rows"):
        jsonl_rows(tmp_path / "empty.jsonl")


# --------------------------------------------------------------------------- earlier runs
def sample(example, completion, accuracy=None, prompt="User: q. Assistant:"):
    rewards = {} if accuracy is None else {"accuracy": accuracy, "format": 1.0}
    return {
        "step": 1,
        "id": example.id,
        "prompt": prompt,
        "completion": completion,
        "answer": example.answer,
        "reward": 0.0,
        "rewards": rewards,
    }


def test_samples_keep_only_correct_and_well_formatted_completions_once(tmp_path, arith):
    a, b = arith.examples("train")[:2]
    good = f"<think> add </think> <answer> {a.answer} </answer>"
    path = write_jsonl(
        tmp_path / "samples.jsonl",
        [
            sample(a, good, accuracy=1.0),
            sample(a, good, accuracy=1.0),  # the same text again: kept once
            sample(a, f"<answer> {a.answer} </answer>", accuracy=1.0),  # no think block
            sample(a, "<think> x </think> <answer> 0 </answer>", accuracy=0.0),  # wrong
            sample(b, f"<think> y </think> <answer> {b.answer} </answer> more", 1.0),  # trailing
            sample(b, f"think </think> <answer> {b.answer} </answer>", prompt="Q <think>\n"),
            sample(b, "<think> z </think> <answer> -1 </answer>"),  # no reward: graded, wrong
        ],
    )
    rows = samples_rows(path, arith)
    assert [(r.prompt, r.completion) for r in rows] == [
        (a.prompt, good),  # the bare question, looked up by id
        (b.prompt, f"<think>\nthink </think> <answer> {b.answer} </answer>"),  # prefill kept
    ]
    assert len({r.id for r in rows}) == 2 and rows[0].source == f"samples:{path}"
    assert len(samples_rows(path, arith, limit=1)) == 1


def test_samples_of_an_r1_style_run_are_kept_in_their_own_format(tmp_path, arith):
    """A run trained in R1's readable format: its correct samples are SFT data too."""
    a = arith.examples("train")[0]
    r1 = f"|special_token| add |special_token| The answer is \\boxed{{{a.answer}}}."
    path = write_jsonl(tmp_path / "samples.jsonl", [sample(a, r1, accuracy=1.0)])
    assert samples_rows(path, arith) == []  # judged as <think>: not in the format
    kept = samples_rows(path, arith, fmt=OutputFormat("r1"))
    assert [r.completion for r in kept] == [r1]
    options = {"digits": 2, "ops": "+-", "train_size": 30, "test_size": 6}
    task = {"name": "arith", "options": options}
    source = {"kind": "samples", "path": str(path), "format": "r1"}
    config = build_sft_config({"task": task, "data": {"sources": [source]}})
    assert [r.completion for r in load_rows(config)] == [r1]


def test_samples_from_another_task_are_an_error(tmp_path, arith):
    other = Example("arith-000000000000", "q", "1")
    path = write_jsonl(tmp_path / "samples.jsonl", [sample(other, "x", 1.0)])
    with pytest.raises(UserError, match=r"samples.jsonl:1: example 'arith-0+' is not in task"):
        samples_rows(path, arith)
    write_jsonl(path, [{"step": 1, "completion": "x"}])
    with pytest.raises(UserError, match=r"samples.jsonl:1: missing field 'id'"):
        samples_rows(path, arith)


# --------------------------------------------------------------------------- the dataset
def test_held_out_split_is_by_prompt_deterministic_and_order_free():
    rows = [SFTRow(f"r{i}", f"question {i // 2}", f"answer {i}", "t") for i in range(400)]
    train, held = split_rows(rows, 0.2)
    assert len(train) + len(held) == 400 and 40 < len(held) < 120
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in held})  # no prompt leaks
    again_train, again_held = split_rows(rows[::-1], 0.2)
    assert {r.id for r in again_held} == {r.id for r in held}
    assert split_rows(rows, 0.0) == (rows, [])


def test_load_rows_concatenates_sources_and_rejects_repeated_ids(tmp_path):
    conv = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "c", "id": "x"}])
    options = "task.options={digits: 1, train_size: 5, test_size: 1}"
    config = build_sft_config(
        {}, [options, f"data.sources=[{{kind: task}}, {{kind: jsonl, path: {conv}}}]"]
    )
    rows = load_rows(config)
    assert [r.source for r in rows] == ["task:arith"] * 5 + ["jsonl:c.jsonl"]
    twice = build_sft_config(
        {},
        [options, f"data.sources=[{{kind: jsonl, path: {conv}}}, {{kind: jsonl, path: {conv}}}]"],
    )
    with pytest.raises(UserError, match="row id 'x' appears twice"):
        load_rows(twice)


def test_written_rows_carry_their_split(tmp_path):
    train = [SFTRow("a", "p", "c", "s")]
    held = [SFTRow("b", "q", "d", "s")]
    write_rows(tmp_path / "data.jsonl", train, held)
    lines = [json.loads(x) for x in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert lines == [
        {"id": "a", "prompt": "p", "completion": "c", "source": "s", "split": "train"},
        {"id": "b", "prompt": "q", "completion": "d", "source": "s", "split": "eval"},
    ]
