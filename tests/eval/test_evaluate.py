"""Evaluation numbers people can trust: the pass@k estimator against brute force, cons@k on
hand-made vote tables, the bootstrap CI, and `run_eval`'s reproducibility (batch size, limit,
interruption and resume never change a number)."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import combinations
from math import comb

import pytest
import torch

import r1lab
from r1lab.core.errors import UserError
from r1lab.eval import run as evaluate
from r1lab.eval.metrics import (
    bootstrap_ci,
    eval_metrics,
    majority_vote,
    pass_at_k,
    pass_ks,
    problem_scores,
    summarize,
)
from r1lab.eval.protocol import Runtime
from r1lab.eval.report import summary_table
from r1lab.eval.store import default_out_dir, make_settings, problem_seed
from r1lab.rollout.base import Generation
from r1lab.rollout.prefix import PrefixEngine

RESULT_FIELDS = {
    "id",
    "sample",
    "completion",
    "answer",
    "normalized",
    "correct",
    "gold",
    "format",
    "length",
    "truncated",
}
TINY = dict(k=3, max_new_tokens=8, temperature=0.6, top_p=0.95)


def run_eval(model, task, limit=None, out_dir=None, batch_size=16, **fields):
    """One evaluation the way `r1lab eval` runs it: settings, then the run."""
    settings, notes = make_settings(model, task, **fields)
    return evaluate.run_eval(settings, out_dir, limit, Runtime(batch_size), notes)


# --- pass@k ------------------------------------------------------------------------------


def brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (c correct) that contain a correct one."""
    subsets = list(combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(64, 1, 32), (64, 10, 8), (64, 63, 1), (200, 3, 100)])
def test_pass_at_k_is_stable_where_binomials_are_huge(n, c, k):
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="at least 4"):
        pass_at_k(3, 1, 4)


@pytest.mark.parametrize(
    ("k", "ks"),
    [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (64, [1, 2, 4, 8, 16, 32, 64])],
)
def test_reported_pass_ks(k, ks):
    assert pass_ks(k) == ks


# --- majority vote and cons@k ----------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "winner"),
    [
        (["1", "2", "2"], "2"),
        (["1", "2", "2", "1"], "1"),  # tie: the answer seen first wins
        (["2", "1", "1", "2"], "2"),
        (["a", "b", "c"], "a"),
        ([None, None, "3"], "3"),  # no answer never wins, however many
        ([None, "a", None, "b", "b"], "b"),
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers, winner):
    assert majority_vote(answers) == winner


def rows_of(pid: str, votes: list[tuple[str | None, bool]]) -> list[dict]:
    return [
        {"id": pid, "sample": i, "normalized": a, "correct": ok, "format": True, "length": 5}
        for i, (a, ok) in enumerate(votes)
    ]


@pytest.mark.parametrize(
    ("votes", "cons", "pass1"),
    [
        ([("7", True), ("3", False), ("3", False)], 0.0, 1 / 3),  # majority wrong
        ([("7", True), ("7", True), ("3", False)], 1.0, 2 / 3),
        ([("7", True), ("3", False), ("3", False), ("7", True)], 1.0, 0.5),  # tie, first right
        ([("3", False), ("7", True), ("7", True), ("3", False)], 0.0, 0.5),  # tie, first wrong
        ([(None, False), (None, False), ("7", True)], 1.0, 1 / 3),  # None does not vote
        ([(None, False), (None, False)], 0.0, 0.0),
        # the voted answer is graded as itself: a class whose first answer is wrong fails,
        # whatever another sample that normalised alike was graded
        ([("7", False), ("7", True), ("3", False)], 0.0, 1 / 3),
        ([("7", True), ("7", False), ("3", False)], 1.0, 1 / 3),
    ],
)
def test_cons_at_k_on_vote_tables(votes, cons, pass1):
    scores = problem_scores(rows_of("p", votes))
    assert scores["cons@k"] == cons
    assert scores["pass@1"] == pytest.approx(pass1)


def test_eval_metrics_over_problems_agree_with_summarize():
    groups = [
        rows_of("a", [("1", True), ("1", True), ("2", False), ("2", False)]),
        rows_of("b", [("5", False), ("6", False), ("6", False), ("9", True)]),
        rows_of("c", [("4", True)] * 4),
    ]
    metrics, ci = eval_metrics(groups, k=4, seed=0, resamples=200)
    assert metrics["pass@1"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert metrics["cons@k"] == pytest.approx(2 / 3)
    expected_pass2 = (pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2) + 1.0) / 3
    assert metrics["pass@2"] == pytest.approx(expected_pass2)
    assert metrics["pass@4"] == pytest.approx(1.0)
    flat = summarize([r for g in groups for r in reversed(g)])  # order-proof
    assert flat["pass@1"] == pytest.approx(metrics["pass@1"])
    assert flat["cons@k"] == pytest.approx(metrics["cons@k"])
    assert set(ci) == {"pass@1", "cons@k"}


# --- bootstrap -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_bootstrap_ci_contains_the_point_estimate(seed):
    gen = torch.Generator().manual_seed(seed)
    values = (torch.rand(40, generator=gen) < 0.3).float().tolist()
    low, high = bootstrap_ci(values, seed=seed)
    mean = sum(values) / len(values)
    assert low <= mean <= high
    assert 0.0 < high - low < 0.5
    assert bootstrap_ci(values, seed=seed) == (low, high)  # seeded: reproducible


@pytest.mark.parametrize("value", [0.0, 1.0, 1 / 3])
def test_bootstrap_ci_of_constant_data_is_a_point(value):
    assert bootstrap_ci([value] * 17) == (value, value)


def test_bootstrap_ci_of_nothing():
    assert bootstrap_ci([]) == (0.0, 0.0)


# --- settings ----------------------------------------------------------------------------


def test_greedy_forces_k_1_with_a_note():
    settings, notes = make_settings("tiny:llama", "arith", k=8, temperature=0.6, greedy=True)
    assert (settings.k, settings.temperature, settings.greedy) == (1, 0.0, True)
    assert any("greedy" in n and "k forced" in n for n in notes)
    settings, _ = make_settings("tiny:llama", "arith", k=1, temperature=0.0)
    assert settings.greedy


@pytest.mark.parametrize(
    "bad",
    [dict(k=0), dict(top_p=0.0), dict(max_new_tokens=0), dict(temperature=-1), dict(shots=-1)],
)
def test_bad_settings_are_user_errors(bad):
    """Never silently something else: a negative temperature is not greedy decoding."""
    with pytest.raises(UserError, match=next(iter(bad))):
        make_settings("tiny:llama", "arith", **bad)


def test_default_out_dir_is_stable_and_unique_per_settings():
    a, _ = make_settings("builtin:smollm2-135m-instruct", "jsonl:data/gsm8k_sample.jsonl", k=8)
    b, _ = make_settings("builtin:smollm2-135m-instruct", "jsonl:data/gsm8k_sample.jsonl", k=4)
    assert default_out_dir(a) == default_out_dir(a)
    assert default_out_dir(a) != default_out_dir(b)
    assert default_out_dir(a).name.startswith("smollm2-135m-instruct_gsm8k_sample_r1_zero_k8-")


def test_problem_seed_depends_on_seed_and_id_only():
    assert problem_seed(0, "a") == problem_seed(0, "a")
    assert len({problem_seed(0, "a"), problem_seed(1, "a"), problem_seed(0, "b")}) == 3


# --- run_eval end to end ------------------------------------------------------------------


def read_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_run_eval_writes_results_and_summary(tmp_path):
    out = tmp_path / "ev"
    summary = run_eval("tiny:llama", "arith", limit=3, out_dir=out, **TINY)
    rows = read_rows(out)
    assert len(rows) == 3 * 3
    assert all(set(r) == RESULT_FIELDS for r in rows)
    assert [r["sample"] for r in rows[:3]] == [0, 1, 2]
    assert all(1 <= r["length"] <= 8 for r in rows)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert set(summary["metrics"]) == {
        "pass@1",
        "pass@2",
        "pass@3",
        "cons@k",
        "format",
        "length",
        "truncated",
    }
    assert set(summary["ci95"]) == {"pass@1", "cons@k"}
    s = summary["settings"]
    assert (s["model"], s["task"], s["template"], s["k"], s["seed"]) == (
        "tiny:llama",
        "arith",
        "r1_zero",
        3,
        0,
    )
    assert (s["temperature"], s["top_p"], s["max_new_tokens"], s["limit"]) == (0.6, 0.95, 8, 3)
    assert summary["greedy"] is False and summary["problems"] == 3
    assert summary["r1lab_version"] == r1lab.__version__
    assert summary["timestamp"] and summary["versions"]["torch"]


def test_results_do_not_depend_on_batch_size(tmp_path):
    one = run_eval("tiny:llama", "arith", limit=4, out_dir=tmp_path / "b1", batch_size=1, **TINY)
    four = run_eval("tiny:llama", "arith", limit=4, out_dir=tmp_path / "b4", batch_size=4, **TINY)
    rows = read_rows(tmp_path / "b1")
    assert rows == read_rows(tmp_path / "b4")
    assert len({r["completion"] for r in rows}) > 1  # really sampled, not a constant
    assert one["metrics"] == four["metrics"] and one["ci95"] == four["ci95"]


class CountingGenerate:
    """Wraps PrefixEngine.generate and counts the prompts it was asked to sample."""

    def __init__(self, monkeypatch):
        self.prompts = 0
        original = PrefixEngine.generate

        def generate(engine, prompts, params):
            self.prompts += len(prompts)
            return original(engine, prompts, params)

        monkeypatch.setattr(PrefixEngine, "generate", generate)


def comparable(summary: dict) -> dict:
    return {key: summary[key] for key in ("metrics", "ci95", "problems", "k", "greedy")}


def test_resume_skips_finished_problems_and_matches_a_fresh_run(tmp_path, monkeypatch):
    fresh = run_eval("tiny:llama", "arith", limit=5, out_dir=tmp_path / "fresh", **TINY)
    counter = CountingGenerate(monkeypatch)
    out = tmp_path / "resumed"
    run_eval("tiny:llama", "arith", limit=2, out_dir=out, **TINY)
    assert counter.prompts == 2
    # an interruption in the middle of problem 4: a full problem 3, a partial 4, a torn line
    rows = read_rows(tmp_path / "fresh")  # the same samples: seeds depend on problem ids only
    torn = "".join(json.dumps(r) + "\n" for r in rows[6:11]) + '{"id": "arith-'
    with (out / "results.jsonl").open("a") as f:
        f.write(torn)
    counter.prompts = 0
    resumed = run_eval("tiny:llama", "arith", limit=5, out_dir=out, **TINY)
    assert counter.prompts == 2  # problem 4 (partial) and 5; 1-3 were reused
    assert read_rows(out) == read_rows(tmp_path / "fresh")
    assert comparable(resumed) == comparable(fresh)
    assert any("resumed" in note for note in resumed["notes"])
    counter.prompts = 0
    again = run_eval("tiny:llama", "arith", limit=5, out_dir=out, **TINY)
    assert counter.prompts == 0 and comparable(again) == comparable(fresh)


def test_a_smaller_limit_reports_a_prefix_of_the_same_samples(tmp_path, monkeypatch):
    run_eval("tiny:llama", "arith", limit=4, out_dir=tmp_path / "ev", **TINY)
    counter = CountingGenerate(monkeypatch)
    small = run_eval("tiny:llama", "arith", limit=2, out_dir=tmp_path / "ev", **TINY)
    fresh = run_eval("tiny:llama", "arith", limit=2, out_dir=tmp_path / "two", **TINY)
    assert counter.prompts == 2  # only the fresh run sampled
    assert comparable(small) == comparable(fresh)


def test_resume_with_other_settings_is_a_user_error(tmp_path):
    out = tmp_path / "ev"
    run_eval("tiny:llama", "arith", limit=1, out_dir=out, **TINY)
    with pytest.raises(UserError, match=r"other settings \(k: 3 there, 2 now\).*another --out"):
        run_eval("tiny:llama", "arith", limit=1, out_dir=out, **{**TINY, "k": 2})


def test_results_without_settings_are_refused(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="settings cannot be checked"):
        run_eval("tiny:llama", "arith", limit=1, out_dir=out, **TINY)


def test_greedy_run_is_labelled(tmp_path):
    summary = run_eval(
        "tiny:llama", "arith", limit=2, out_dir=tmp_path / "g", greedy=True, k=4, max_new_tokens=4
    )
    assert summary["greedy"] is True and summary["k"] == 1
    assert summary["settings"]["temperature"] == 0.0
    assert any("k forced" in note for note in summary["notes"])
    assert len(read_rows(tmp_path / "g")) == 2
    assert "GREEDY (temperature 0, k=1)" in str(summary_table(summary).renderables[0])


class ScriptedEngine:
    """Answers each problem correctly in sample 0 and with a random wrong number otherwise.

    The wrong numbers come from each prompt's seeded generator, as the real engines draw, so
    the per-problem seeding is visible in them.
    """

    def __init__(self, task):
        self.task = task

    def generate(self, prompts, params):
        gold = {ex.prompt: ex.answer for ex in self.task.examples("test")}
        groups = []
        for prompt, seed in zip(prompts, params.seeds, strict=True):
            answer = next(a for q, a in gold.items() if q in prompt.text)
            rng = torch.Generator().manual_seed(seed)
            group = []
            for i in range(params.n):
                wrong = int(torch.randint(0, 3, (), generator=rng).item())
                said = answer if i == 0 else str(10_000 + wrong)
                text = f"<think> sure </think> <answer> {said} </answer>"
                group.append(Generation([1], [2, 3], text, True))
            groups.append(group)
        return groups


def test_metrics_through_the_whole_path_with_a_scripted_engine(tmp_path, monkeypatch):
    from r1lab.tasks import make_task

    task = make_task("arith")

    def fake_engine(settings, todo, shots, runtime, cache):
        return ScriptedEngine(task), object()

    monkeypatch.setattr(evaluate, "_engine", fake_engine)
    monkeypatch.setattr(evaluate, "render", lambda name, q, tok, shots=(): _Prompt(q))
    summary = run_eval("tiny:llama", "arith", limit=6, k=4, out_dir=tmp_path / "s")
    m = summary["metrics"]
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx(pass_at_k(4, 1, 2))
    assert m["pass@4"] == 1.0
    assert m["format"] == 1.0 and m["length"] == 2.0 and m["truncated"] == 0.0
    # the three wrong answers are drawn from 3 values: three distinct ones tie with the right
    # answer, which was seen first and wins; any repeat is a wrong majority
    rows = read_rows(tmp_path / "s")
    assert all(r["correct"] == (r["sample"] == 0) for r in rows)
    wrong: dict[str, set] = {}
    for r in rows:
        if r["sample"]:
            wrong.setdefault(r["id"], set()).add(r["answer"])
    assert m["cons@k"] == pytest.approx(sum(len(w) == 3 for w in wrong.values()) / 6)


class _Prompt:
    def __init__(self, text):
        self.text, self.prefill, self.add_special_tokens = text, "", True


@pytest.mark.parametrize("style", ["brief", "solution"])
def test_shots_come_from_train_in_the_training_style(tmp_path, monkeypatch, style):
    from r1lab.tasks import make_task
    from r1lab.text.templates import pick_shots

    task = make_task("arith")
    seen = []

    def fake_engine(settings, todo, shots, runtime, cache):
        return ScriptedEngine(task), object()

    def fake_render(name, question, tokenizer, shots=()):
        seen.append(list(shots))
        return _Prompt(question)

    monkeypatch.setattr(evaluate, "_engine", fake_engine)
    monkeypatch.setattr(evaluate, "render", fake_render)
    out = tmp_path / style
    summary = run_eval("tiny:llama", "arith", limit=1, k=1, shots=2, shot_style=style, out_dir=out)
    assert seen == [pick_shots(task, task.examples("train"), 2, style)]
    assert (summary["settings"]["shots"], summary["settings"]["shot_style"]) == (2, style)


class _R1Engine:
    """Answers every problem in R1's readable format."""

    def generate(self, prompts, params):
        text = "|special_token| 1 + 1 = 2 |special_token| The answer is \\boxed{2}."
        return [[Generation([1], [2, 3], text, True)] * params.n for _ in prompts]


def test_format_is_judged_in_the_runs_own_style():
    from r1lab.rollout import SamplingParams
    from r1lab.tasks import make_task
    from r1lab.text.formats import OutputFormat

    task = make_task("arith", {"digits": 1})
    examples = task.examples("test", limit=2)
    params = SamplingParams(n=2)
    think = evaluate.sample_and_grade(_R1Engine(), task, examples, None, "r1_zero", params)
    r1 = evaluate.sample_and_grade(
        _R1Engine(), task, examples, None, "r1_zero", params, (), OutputFormat("r1")
    )
    assert {r["format"] for r in think} == {False} and {r["format"] for r in r1} == {True}


def test_the_style_is_a_setting_and_older_settings_still_match():
    think, _ = make_settings("tiny:llama", "arith")
    r1, _ = make_settings("tiny:llama", "arith", style="r1")
    assert "style" not in think.to_json()  # an evaluation written before the setting matches
    assert r1.to_json()["style"] == "r1" and default_out_dir(r1) != default_out_dir(think)
    with pytest.raises(UserError, match="format style"):
        make_settings("tiny:llama", "arith", style="xml")
