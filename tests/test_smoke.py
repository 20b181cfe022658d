"""Smoke tests on the real built-in model (SmolLM2-135M-Instruct): it loads, answers a chat
prompt with real text, and `r1lab preflight` runs end to end on the R1-Zero recipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lab.core.models import DEFAULT_MODEL, load_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.text.templates import render

pytestmark = pytest.mark.smoke
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builtin():
    return load_model(DEFAULT_MODEL)


def test_builtin_model_loads(builtin):
    model, tokenizer = builtin
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_builtin_model_answers_a_chat_prompt_greedily(builtin):
    model, tokenizer = builtin
    prompt = render("chat", "What is 2+3?", tokenizer)
    engine = make_engine("hf", model, tokenizer, max_prompt_tokens=512)
    params = SamplingParams(n=1, max_new_tokens=24, temperature=0.0)
    [[first]] = engine.generate([prompt], params)
    [[second]] = engine.generate([prompt], params)
    assert first.completion_ids == second.completion_ids  # greedy is deterministic
    text = first.text.strip()
    assert text, "the built-in model produced no text"
    assert re.search(r"[A-Za-z0-9]", text)
    assert "<|im_start|>" not in first.text  # special tokens are not in the decoded text


def test_preflight_cli_end_to_end():
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).with_name("r1lab")
    cmd = [
        str(exe),
        "preflight",
        "recipes/r1_zero_arith.yaml",
        "--prompts",
        "1",
        "--samples",
        "2",
        "--set",
        "generation.max_new_tokens=16",  # keeps it quick on a busy 2-core CPU
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    reward_lines = [line for line in out.splitlines() if line.startswith("reward ")]
    assert len(reward_lines) == 2
    from r1lab.grpo.config import load_config

    terms = [f"{r.name}=" for r in load_config(REPO / "recipes/r1_zero_arith.yaml").rewards]
    for line in reward_lines:
        for term in (*terms, "tokens=", "finished="):
            assert term in line
    assert "prompt tokens:" in out
    assert "Traceback" not in result.stderr


def test_the_builtin_model_as_judge_keeps_to_the_verdict_format():
    """Real outputs of a small judge parse: the prefilled `Verdict:` line leaves it no room to
    ramble first (its verdicts are not trusted here, only their form)."""
    from r1lab.sample.judge import Judge, parse_verdict

    judge = Judge(DEFAULT_MODEL, max_new_tokens=8)
    items = [
        ("What is 2 + 2?", "4", "The answer is 4."),
        ("What is 2 + 2?", "4", "The answer is 5."),
        ("What is the capital of France?", "Paris", "Paris"),
        ("What is 7 * 6?", "42", "It is 48."),
    ]
    verdicts = judge.verdicts(items)
    for verdict in verdicts:
        assert verdict.text.startswith("Verdict:")
        assert verdict.correct is not None and verdict.correct is parse_verdict(verdict.text)
