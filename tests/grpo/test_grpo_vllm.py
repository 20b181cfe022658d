"""GRPO with `generation.engine: vllm` on the built-in model: two steps log the engine's gap to
the trainer (the importance weights' inputs), evaluate through the engine, and leave the
engine holding the trained policy. Marked `vllm`; the session's engine (conftest.py) stands
in for the one the run would start, so the suite pays for one engine start."""

from __future__ import annotations

import math

import pytest

from r1lab.core.models import load_model
from r1lab.core.runfiles import read_jsonl
from r1lab.grpo import loop
from r1lab.grpo.config import build_config
from r1lab.rollout import SamplingParams, make_engine
from r1lab.text.templates import Prompt

pytestmark = pytest.mark.vllm


def test_two_grpo_steps_on_vllm_correct_for_the_engine_and_sync_the_policy(
    vllm_engine, tmp_path, monkeypatch
):
    engine, model, tokenizer = vllm_engine
    built = []

    def session_engine(name, policy, tokenizer, **options):
        assert name == "vllm"
        engine.sync_weights(policy)  # what building it from the policy does
        built.append(options)
        return engine

    monkeypatch.setattr(loop, "make_engine", session_engine)
    config = build_config({}, [
        "model.spec=builtin:smollm2-135m-instruct", "task.name=arith", "task.options.digits=1",
        "template.shots=2", "template.shot_style=brief", "generation.engine=vllm",
        "generation.max_new_tokens=24", "generation.stop=[\"</answer>\"]", "grpo.batch_size=8",
        "grpo.group_size=4", "grpo.beta=0.04", "optim.lr=1e-4", "train.steps=2",
        "train.save_every=0", "eval.size=4", "eval.k=2", f"train.out_dir={tmp_path}",
    ])
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    asked = [Prompt("What is 2 + 2?"), Prompt("Name a colour.")]
    try:
        run_dir = loop.train(config, progress=False)
        synced = engine.generate(asked, greedy)
    finally:
        engine.sync_weights(model)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "reward" in r]
    assert len(built) == 1 and len(steps) == 2
    for row in steps:  # the engine's fp32 kernels are close to the trainer's, not identical
        assert 0 <= row["engine_kl"] < 1e-2 and math.isfinite(row["loss"])
        assert row["engine_min_ratio"] <= 1 <= row["engine_max_ratio"] < 1.5
        assert row["time/sync"] > 0
    assert [r["step"] for r in rows if "eval/pass@1" in r] == [0, 2]
    final, _ = load_model(str(run_dir / "final"), "float32")
    own = make_engine("hf", final, tokenizer).generate(asked, greedy)
    assert [g[0].completion_ids for g in synced] == [g[0].completion_ids for g in own]
