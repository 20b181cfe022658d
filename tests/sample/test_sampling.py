"""Rejection sampling (sample/run.py, sample/select.py): every drawn sample is kept or dropped by
exactly one filter and the report adds up, rows carry their provenance and read as SFT data,
resume skips finished prompts and reproduces an uninterrupted run, the generative judge
decides for general prompts (and is asked once), the non-reasoning mix, config errors, and
the `r1lab sample` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from r1lab import cli
from r1lab.core.errors import UserError
from r1lab.eval import run as evaluate
from r1lab.rollout.base import Generation
from r1lab.rollout.prefix import PrefixEngine
from r1lab.sample import judge
from r1lab.sample.config import build_sample_config, load_sample_config
from r1lab.sample.judge import Verdict
from r1lab.sample.run import sample
from r1lab.sample.select import pick_mix
from r1lab.sft.config import build_sft_config
from r1lab.sft.data import load_rows
from r1lab.text.conversations import SFTRow, jsonl_rows

TASK = "task.options={digits: 1, operands: 2, train_size: 24, test_size: 4}"
LOOSE = (  # a random tiny model writes no tags: keep what it writes
    "filters.correct=false",
    "filters.format=false",
    "filters.require_summary=false",
    "filters.language=null",
)
PROVENANCE = {
    "model",
    "task",
    "task_options",
    "template",
    "split",
    "seed",
    "prompt_id",
    "sample",
    "grade",
    "judge",
    "filters",
    "length",
    "truncated",
}


def make_config(out: Path, *overrides: str, name: str = "s"):
    base = [
        f"name={name}",
        f"out_dir={out}",
        "model.spec=tiny:llama",
        TASK,
        "prompts.limit=3",
        "generation.n=3",
        "generation.max_new_tokens=8",
    ]
    return build_sample_config({}, [*base, *overrides])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- a scripted policy
SCRIPT = [  # after the chat_think prefill "<think>\n"; {a} is the gold answer
    "{a} is the sum. </think> <answer> {a} </answer>",  # kept
    "{a} IS the   sum. </think> <answer> {a} </answer>",  # exact duplicate of 0
    "Adding the two numbers gives {a}. </think> <answer> {a} </answer>",  # kept
    "Counting up from the first one, the total is {a}. </think> <answer> {a} </answer>",  # cap
    "It is {a}1. </think> <answer> {a}1 </answer>",  # incorrect
    "The answer is \\boxed{{{a}}}.",  # correct, but not the format
    "所以 答案 是 {a} 我们 计算 </think> <answer> {a} </answer>",  # language
    "Step one.\n\n" + "y" * 300 + "\n\n</think> <answer> {a} </answer>",  # paragraph
    "```{a}``` </think> <answer> {a} </answer>",  # code block
    "",  # empty
]
SCRIPT_DROPS = {
    "empty": 1,
    "unchecked": 0,
    "incorrect": 1,
    "format": 1,
    "summary": 0,
    "language": 1,
    "paragraph": 1,
    "code_block": 1,
    "duplicate": 1,
    "max_per_prompt": 1,
}


class ScriptedEngine:
    """Answers every prompt with SCRIPT (or `texts`), the gold answer filled in."""

    def __init__(self, answers: dict[str, str], texts: list[str] = SCRIPT):
        self.answers, self.texts = answers, texts

    def generate(self, prompts, params):
        groups = []
        for prompt in prompts:
            answer = next(a for q, a in self.answers.items() if q in prompt.text)
            texts = [self.texts[i % len(self.texts)].format(a=answer) for i in range(params.n)]
            groups.append([Generation([1], [2] * (1 + len(t) // 4), t, True) for t in texts])
        return groups


@pytest.fixture
def scripted(monkeypatch, tokenizer):
    """Replace the policy by a ScriptedEngine; `scripted(answers, texts)` sets what it says."""

    def install(answers: dict[str, str], texts: list[str] = SCRIPT) -> None:
        engine = ScriptedEngine(answers, texts)
        monkeypatch.setattr(evaluate, "_engine", lambda *args: (engine, tokenizer))

    return install


def answers_of(config) -> dict[str, str]:
    from r1lab.tasks import make_task

    task = make_task(config.task.name, config.task.options)
    return {ex.prompt: ex.answer for ex in task.examples("train")}


def test_each_sample_is_kept_or_dropped_by_its_first_failing_filter(tmp_path, scripted):
    config = make_config(
        tmp_path,
        "template.name=chat_think",
        "generation.n=10",
        "max_per_prompt=2",
        "filters.max_paragraph_chars=200",
    )
    scripted(answers_of(config))
    out = sample(config, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"] == {k: 3 * v for k, v in SCRIPT_DROPS.items()}
    assert (report["prompts"], report["samples"], report["kept"], report["rows"]) == (3, 30, 6, 6)
    assert report["samples"] == report["kept"] + sum(report["dropped"].values())
    assert report["correct"] == 3 * 8  # all but the wrong one and the empty one
    kept, rejected = read(out / "data.jsonl"), read(out / "rejected.jsonl")
    assert [r["provenance"]["sample"] for r in kept] == [0, 2] * 3
    assert all(r["completion"].startswith("<think>\n") for r in kept)  # the prefill is kept
    assert all(set(r["provenance"]) == PROVENANCE for r in kept + rejected)
    first = kept[0]["provenance"]
    assert first["grade"] == {
        "correct": True,
        "by": "rule",
        "rule": True,
        "answer": first["grade"]["gold"],
        "gold": first["grade"]["gold"],
    }
    assert first["filters"] == dict.fromkeys(
        ["format", "summary", "language", "paragraph", "code_block"], True
    )
    assert (first["model"], first["template"], first["split"]) == (
        "tiny:llama",
        "chat_think",
        "train",
    )
    by_sample = {r["provenance"]["sample"]: r for r in rejected[:8]}
    assert (
        by_sample[1]["dropped_by"] == "duplicate" and by_sample[1]["duplicate_of"] == kept[0]["id"]
    )
    assert (
        by_sample[6]["dropped_by"] == "language"
        and not by_sample[6]["provenance"]["filters"]["language"]
    )
    # the SFT `jsonl` source reads data.jsonl as it is
    rows = jsonl_rows(out / "data.jsonl")
    assert [(r.id, r.prompt, r.completion) for r in rows] == [
        (r["id"], r["prompt"], r["completion"]) for r in kept
    ]
    assert (out / "config.yaml").exists() and (out / "settings.json").exists()


def test_a_changed_filter_refilters_on_resume_without_sampling(tmp_path, scripted, monkeypatch):
    config = make_config(tmp_path, "template.name=chat_think", "generation.n=10")
    scripted(answers_of(config))
    sample(config, progress=False)
    monkeypatch.setattr(evaluate, "_engine", lambda *a: pytest.fail("sampled again"))
    loose = make_config(
        tmp_path, "template.name=chat_think", "generation.n=10", "filters.drop_code_blocks=false"
    )
    out = sample(loose, resume=True, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert "code_block" not in report["dropped"] and "max_per_prompt" not in report["dropped"]
    assert report["kept"] == 3 * 5  # 0, 2, 3, the long paragraph (under 2000), the code block
    assert any("resumed: 3 prompts" in note for note in report["notes"])


# --------------------------------------------------------------------------- resume
class CountingGenerate:
    """Wraps PrefixEngine.generate and counts the prompts it was asked to sample."""

    def __init__(self, monkeypatch):
        self.prompts = 0
        original = PrefixEngine.generate

        def generate(engine, prompts, params):
            self.prompts += len(prompts)
            return original(engine, prompts, params)

        monkeypatch.setattr(PrefixEngine, "generate", generate)


def test_resume_skips_finished_prompts_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    fresh = sample(make_config(tmp_path, *LOOSE, "prompts.limit=4", name="fresh"), progress=False)
    counter = CountingGenerate(monkeypatch)
    cut = sample(make_config(tmp_path, *LOOSE, "prompts.limit=2", name="cut"), progress=False)
    assert counter.prompts == 2
    # interrupted in the middle of prompt 3: a partial prompt and a torn line
    torn = read(fresh / "results.jsonl")[6:8]
    with (cut / "results.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in torn) + '{"id": "arith-')
    (cut / "report.json").unlink()
    counter.prompts = 0
    with pytest.raises(UserError, match="already holds a sampling run: pass --resume"):
        sample(make_config(tmp_path, *LOOSE, "prompts.limit=4", name="cut"), progress=False)
    sample(
        make_config(tmp_path, *LOOSE, "prompts.limit=4", name="cut"), resume=True, progress=False
    )
    assert counter.prompts == 2  # prompts 3 (partial) and 4
    for name in ("data.jsonl", "rejected.jsonl", "results.jsonl"):
        assert (cut / name).read_text() == (fresh / name).read_text(), name
    assert read(fresh / "data.jsonl")  # the comparison compared something
    with pytest.raises(UserError, match="--resume: no sampling run in"):
        sample(make_config(tmp_path, *LOOSE, name="none"), resume=True, progress=False)
    with pytest.raises(UserError, match=r"other settings \(k: 3 there, 2 now\)"):
        sample(make_config(tmp_path, *LOOSE, "generation.n=2", name="cut"), resume=True)


# --------------------------------------------------------------------------- the judge
@pytest.fixture
def general(tmp_path) -> Path:
    rows = [
        {"prompt": "Name the capital of France.", "reference": "Paris"},
        {"prompt": "Name the capital of Italy.", "reference": "Rome"},
        {"prompt": "Say hello."},
    ]
    return write_jsonl(tmp_path / "general.jsonl", rows)


GENERAL_SCRIPT = [
    "Thinking. </think> <answer> Paris </answer>",
    "Thinking. </think> <answer> Rome </answer>",
]


class KnowingJudge:
    """A judge that calls a prediction correct when it contains the reference."""

    calls = 0

    def __init__(self, *args, **kwargs):
        KnowingJudge.calls += 1

    def verdicts(self, items):
        return [
            Verdict(bool(ref) and ref in pred, "Correct" if ref and ref in pred else "Incorrect")
            for _, ref, pred in items
        ]


def test_general_prompts_go_to_the_judge_and_its_verdicts_are_cached(
    tmp_path, general, scripted, monkeypatch
):
    options = [f"task.name=general:{general}", "task.options={test_fraction: 0}"]
    config = make_config(tmp_path, *options, "template.name=chat_think", "generation.n=2")
    scripted({"France": "", "Italy": "", "hello": ""}, GENERAL_SCRIPT)
    unjudged = json.loads((sample(config, progress=False) / "report.json").read_text())
    assert unjudged["dropped"]["unchecked"] == 6 and unjudged["kept"] == 0
    monkeypatch.setattr(judge, "Judge", KnowingJudge)
    judged = make_config(
        tmp_path,
        *options,
        "template.name=chat_think",
        "generation.n=2",
        "judge.spec=tiny:llama",
        name="judged",
    )
    out = sample(judged, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert (report["judged"], report["kept"], report["dropped"]["incorrect"]) == (6, 2, 4)
    kept = read(out / "data.jsonl")
    assert [r["completion"].split("<answer>")[1].strip() for r in kept] == [
        "Paris </answer>",
        "Rome </answer>",
    ]
    assert kept[0]["provenance"]["judge"] == {"correct": True, "text": "Correct"}
    assert kept[0]["provenance"]["grade"]["by"] == "judge"
    assert len(read(out / "judge.jsonl")) == 6
    sample(judged, resume=True, progress=False)
    assert KnowingJudge.calls == 1  # the second run found every verdict in judge.jsonl


def test_a_tiny_judge_model_reads_the_prompts_and_its_text_is_recorded(tmp_path, general, scripted):
    options = [f"task.name=general:{general}", "task.options={test_fraction: 0}", "prompts.limit=1"]
    config = make_config(
        tmp_path,
        *options,
        "template.name=chat_think",
        "generation.n=2",
        "judge.spec=tiny:llama",
        "judge.max_new_tokens=3",
    )
    scripted({"France": ""}, GENERAL_SCRIPT)
    out = sample(config, progress=False)
    rows = read(out / "data.jsonl") + read(out / "rejected.jsonl")
    assert len(rows) == 2
    for row in rows:
        verdict = row["provenance"]["judge"]
        assert verdict["text"] and verdict["correct"] in (True, False, None)
        assert row["provenance"]["grade"]["by"] == "judge"


# --------------------------------------------------------------------------- the mix
def test_mix_draws_ratio_rows_per_kept_sample_deterministically():
    rows = [SFTRow(f"c{i}", f"q{i}", f"a{i}", "jsonl:chat.jsonl") for i in range(10)]
    config = build_sample_config({}, ["mix.path=chat.jsonl", "mix.ratio=0.25"])
    notes: list[str] = []
    picked = pick_mix(rows, 9, config, notes)  # 0.25 * 9 = 2.25 -> 2
    assert len(picked) == 2 and picked == pick_mix(rows, 9, config, notes)
    assert all(r["id"].startswith("mix-c") and r["provenance"]["source"] == "mix" for r in picked)
    assert [r["id"] for r in picked] == sorted(r["id"] for r in picked)  # file order
    assert len(pick_mix(rows, 10, config, notes)) == 3  # 2.5 rounds up
    assert len(pick_mix(rows, 100, config, notes)) == 10 and "has 10: all used" in notes[0]
    others = build_sample_config({}, ["mix.path=chat.jsonl", "mix.ratio=0.5", "seed=1"])
    assert pick_mix(rows, 8, others, []) != pick_mix(
        rows, 8, build_sample_config({}, ["mix.path=chat.jsonl", "mix.ratio=0.5"]), []
    )


def test_mixed_rows_join_the_data_and_the_sft_reader_takes_them(tmp_path):
    chat = [{"prompt": f"Write line {i}.", "completion": f"Line {i}."} for i in range(20)]
    path = write_jsonl(tmp_path / "chat.jsonl", chat)
    config = make_config(tmp_path, *LOOSE, f"mix.path={path}", "mix.ratio=1.0")
    out = sample(config, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["mixed"] == report["kept"] and report["rows"] == 2 * report["kept"]
    sft = build_sft_config({}, [f"data.sources=[{{kind: jsonl, path: {out / 'data.jsonl'}}}]"])
    assert len(load_rows(sft)) == report["rows"]


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"prompt": "p", "completion": "c"}, "{not json"], r"chat.jsonl:2: invalid JSON"),
        ([{"prompt": "p"}], r"chat.jsonl:1: missing field 'completion'"),
    ],
)
def test_a_malformed_mix_file_names_the_file_and_line(tmp_path, lines, message, monkeypatch):
    path = write_jsonl(tmp_path / "chat.jsonl", lines)
    monkeypatch.setattr(evaluate, "_engine", lambda *a: pytest.fail("loaded the model first"))
    with pytest.raises(UserError, match=message):
        sample(make_config(tmp_path, f"mix.path={path}", "mix.ratio=0.5"), progress=False)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["filters.langauge=en"],
            r"unknown config key 'filters.langauge' \(did you mean 'language'\?\); valid keys "
            r"under filters: style, special_token, correct, format",
        ),
        (
            ["prompt.limit=3"],
            r"unknown config key 'prompt' \(did you mean 'prompts' or 'max_per_prompt'\?\); "
            r"valid keys under the config: kind",
        ),
        (["kind=sft"], r"`kind: sft` recipe: run it with `r1lab sft`"),
        (["generation.n=0"], r"generation.n must be >= 1"),
        (["filters.language=xx"], r"filters.language: unknown value 'xx'"),
        (["prompts.split=dev"], r"prompts.split: unknown value 'dev'; valid: train, test"),
        (["mix.ratio=0.5"], r"mix.ratio > 0 needs mix.path"),
        (["judge.always=true"], r"judge.always needs a judge model"),
        (["judge.spec=tiny:llama", "filters.correct=false"], r"the verdict would decide nothing"),
        (["filters.near_duplicate=1.5"], r"filters.near_duplicate must be in \(0, 1\]"),
        (["task.name=nope"], r"unknown task 'nope'"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        build_sample_config({}, overrides)


def test_a_recipe_file_must_say_its_kind(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}))
    with pytest.raises(UserError, match="starts with `kind: sample`"):
        load_sample_config(path)
    path.write_text(yaml.safe_dump({"kind": "sample", "name": "x"}))
    assert load_sample_config(path, ["generation.n=2"]).generation.n == 2


# --------------------------------------------------------------------------- the command
def test_the_sample_command_prints_the_report_and_exits_0_or_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    recipe = tmp_path / "sample.yaml"
    recipe.write_text(yaml.safe_dump({"kind": "sample", "model": {"spec": "tiny:llama"}}))
    sets = [
        f"out_dir={tmp_path}",
        "prompts.limit=2",
        "generation.n=2",
        "generation.max_new_tokens=4",
        TASK,
        *LOOSE,
    ]
    argv = ["sample", str(recipe), "--quiet", *[a for s in sets for a in ("--set", s)]]
    assert cli.main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"samples\W+4\W", out) and re.search(r"dropped: duplicate\W+0\W", out)
    assert cli.main(argv) == 2  # the run exists: --resume continues it
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main([*argv, "--resume"]) == 0
    assert cli.main(["sample", str(recipe), "--set", "filters.nope=1"]) == 2
    assert "unknown config key 'filters.nope'" in " ".join(capsys.readouterr().err.split())
