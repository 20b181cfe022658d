"""Engines report tokens as they sample them (`on_token`), which `r1lab serve` streams from:
the reported tokens are the generation's own, and a row the callback ends stops there."""

from __future__ import annotations

from r1lab.rollout import SamplingParams, make_engine
from r1lab.text.templates import Prompt

PROMPTS = [Prompt("What is 2 + 2?"), Prompt("Name a colour.")]


def collect(engine, params):
    seen: dict[int, list[int]] = {}

    def on_token(row: int, token: int) -> bool:
        seen.setdefault(row, []).append(token)
        return False

    groups = engine.generate(PROMPTS, params, on_token=on_token)
    return groups, seen


def test_prefix_engine_reports_each_rows_tokens_as_sampled(tiny_llama):
    engine = make_engine("prefix", *tiny_llama)
    params = SamplingParams(n=2, max_new_tokens=6, temperature=1.0, seeds=(1, 2))
    groups, seen = collect(engine, params)
    for p, group in enumerate(groups):
        for j, gen in enumerate(group):
            assert seen[p * 2 + j] == gen.completion_ids
    plain = engine.generate(PROMPTS, params)
    assert [[g.text for g in grp] for grp in plain] == [[g.text for g in grp] for grp in groups]


def test_a_row_ended_by_the_callback_stops_there_and_the_others_go_on(tiny_llama):
    engine = make_engine("prefix", *tiny_llama)
    params = SamplingParams(n=1, max_new_tokens=8, temperature=1.0, seeds=(1, 2))
    counts: dict[int, int] = {}

    def on_token(row: int, token: int) -> bool:
        counts[row] = counts.get(row, 0) + 1
        return row == 0 and counts[row] == 3

    groups = engine.generate(PROMPTS, params, on_token=on_token)
    assert len(groups[0][0].completion_ids) == 3
    assert len(groups[1][0].completion_ids) == 8


def test_hf_engine_reports_each_rows_tokens_up_to_its_end(tiny_llama):
    engine = make_engine("hf", *tiny_llama)
    params = SamplingParams(n=2, max_new_tokens=5, temperature=1.0, seeds=(3, 4))
    groups, seen = collect(engine, params)
    for p, group in enumerate(groups):
        for j, gen in enumerate(group):
            assert seen[p * 2 + j] == gen.completion_ids
