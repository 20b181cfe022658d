"""Code end to end through the shared samplers: `r1lab eval` reports pass@1/pass@k from
sandbox verdicts, rejection sampling keeps passing programs, preflight shows verdicts."""

from __future__ import annotations

import json

import pytest

from r1lab.core.errors import UserError
from r1lab.eval import run as evaluate
from r1lab.eval.protocol import Runtime
from r1lab.eval.store import make_settings
from r1lab.grpo.config import build_config
from r1lab.grpo.preflight import preflight
from r1lab.rollout.base import Generation
from r1lab.sample.config import build_sample_config
from r1lab.sample.run import sample
from r1lab.tasks import make_task

OPTIONS = {"level": 1, "train_size": 6, "test_size": 3, "sandbox": {"timeout": 10, "workers": 2}}


class CodeEngine:
    """Writes the reference program for even-numbered samples and a wrong one for odd ones."""

    def __init__(self, task):
        self.programs = {
            ex.prompt: ex.answer for split in ("train", "test") for ex in task.examples(split)
        }

    def generate(self, prompts, params):
        groups = []
        for prompt in prompts:
            right = next(
                code for question, code in self.programs.items() if question in prompt.text
            )
            wrong = "```python\nx = 1\n```"
            answers = [right if i % 2 == 0 else wrong for i in range(params.n)]
            texts = [f" I write it. </think> <answer> {code} </answer>" for code in answers]
            groups.append([Generation([1], [2] * 9, text, True) for text in texts])
        return groups


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    engine = CodeEngine(make_task("pycode", OPTIONS))
    monkeypatch.setattr(evaluate, "_engine", lambda *args: (engine, tokenizer))


def test_eval_reports_pass_at_k_from_test_verdicts(tmp_path, scripted):
    settings, notes = make_settings(
        "tiny:llama", "pycode", task_options=OPTIONS, k=2, template="chat_think"
    )
    summary = evaluate.run_eval(settings, tmp_path, None, Runtime(), notes)
    assert summary["problems"] == 3
    assert summary["metrics"]["pass@1"] == 0.5 and summary["metrics"]["pass@2"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["tests"] for r in rows[:2]] == [{"passed": 5}, {"crashed": 5}]  # x is no function
    assert [r["correct"] for r in rows] == [True, False] * 3


def test_rejection_sampling_keeps_passing_programs(tmp_path, scripted):
    overrides = [
        "name=code",
        f"out_dir={tmp_path}",
        "model.spec=tiny:llama",
        "task.name=pycode",
        f"task.options={json.dumps(OPTIONS)}",
        "template.name=chat_think",
        "generation.n=2",
        "generation.max_new_tokens=8",
        "filters.language=null",
    ]
    with pytest.raises(UserError, match="drop_code_blocks"):
        sample(build_sample_config({}, overrides), progress=False)
    out = sample(
        build_sample_config({}, [*overrides, "filters.drop_code_blocks=false"]), progress=False
    )
    kept = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert len(kept) == 6 and report["dropped"]["incorrect"] == 6
    assert all("```python\ndef " in row["completion"] for row in kept)


def test_preflight_shows_sandbox_verdicts_per_sample():
    config = build_config(
        {
            "model": {"spec": "tiny:llama"},
            "generation": {"max_new_tokens": 8},
            "task": {"name": "pycode", "options": OPTIONS},
            "rewards": [{"name": "code_tests", "params": {"partial": True}}],
        }
    )
    report = preflight(config, prompts=1, samples=2)
    assert [s["tests"] for s in report.samples] == ["0/5 tests passed (failed 5)"] * 2
    assert all(s["terms"]["code_tests"] == 0.0 for s in report.samples)
