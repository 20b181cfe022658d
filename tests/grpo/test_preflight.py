"""Preflight on a tiny random model: samples carry every reward term, and the traps are
reported (constant rewards, a prefilled `<think>`, prompts over the limit, truncation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r1lab.grpo.config import build_config
from r1lab.grpo.preflight import distributed_problems, preflight
from r1lab.rewards import REWARDS


def tiny_config(**sections):
    raw = {
        "model": {"spec": "tiny:llama"},
        "generation": {"max_new_tokens": 8},
        "task": {"name": "arith", "options": {"digits": 1}},
        "rewards": [
            {"name": "accuracy", "weight": 1.0},
            {"name": "format", "weight": 0.5},
            {"name": "tag_count", "weight": 0.25},
        ],
    }
    raw.update(sections)
    return build_config(raw)


@pytest.fixture(scope="module")
def report():
    return preflight(tiny_config(), prompts=2, samples=3)


def test_samples_carry_every_reward_term(report):
    assert len(report.samples) == 2 * 3
    assert len({s["id"] for s in report.samples}) == 2
    weights = {"accuracy": 1.0, "format": 0.5, "tag_count": 0.25}
    for sample in report.samples:
        assert set(sample["terms"]) == set(weights)
        total = sum(weights[k] * (v or 0.0) for k, v in sample["terms"].items())
        assert sample["reward"] == pytest.approx(total)
        assert sample["prompt"].endswith(". Assistant:")  # the default r1_zero template
        assert 0 < sample["tokens"] <= 8
        assert isinstance(sample["completion"], str)


def test_a_random_model_gets_constant_reward_warnings(report):
    # A random 2-layer model never writes <think>...</think><answer>...</answer>.
    assert all(s["terms"]["format"] == 0.0 for s in report.samples)
    assert any("reward 'format' is 0.0 for all 6 samples" in w for w in report.warnings)
    assert any("reward 'accuracy'" in w and "no learning signal" in w for w in report.warnings)
    assert any("total reward is constant" in w for w in report.warnings)


def test_truncation_is_reported(report):
    truncated = sum(not s["finished"] for s in report.samples)
    assert truncated > 0  # 8 tokens of random text rarely end on EOS
    assert any(f"{truncated}/6" in w and "max_new_tokens=8" in w for w in report.warnings)


def test_prompt_token_counts(report):
    assert len(report.prompt_tokens) == 2
    assert all(20 < n < 200 for n in report.prompt_tokens)


def test_prompts_over_the_limit_are_reported():
    config = tiny_config(generation={"max_new_tokens": 2, "max_prompt_tokens": 16})
    report = preflight(config, prompts=1, samples=2)
    assert any("over generation.max_prompt_tokens=16" in w for w in report.warnings)


def test_chat_think_warns_about_the_prefill():
    config = tiny_config(template={"name": "chat_think"}, generation={"max_new_tokens": 2})
    report = preflight(config, prompts=1, samples=2)
    assert any("prefills '<think>'" in w for w in report.warnings)
    assert report.samples[0]["prompt"].endswith("<think>\n")


def test_r1_zero_does_not_warn_about_a_prefill(report):
    assert not any("prefills" in w for w in report.warnings)


def test_shots_are_not_asked_as_questions():
    config = tiny_config(template={"name": "r1_zero", "shots": 1}, generation={"max_new_tokens": 2})
    report = preflight(config, prompts=2, samples=2)
    for sample in report.samples:
        question = sample["prompt"].rsplit("User: ", 1)[1]
        assert question.count("What is") == 1
        first_question = sample["prompt"].split("User: ", 2)[1]
        assert first_question != question  # the worked example is a different problem


def test_the_settings_of_a_torchrun_launch_are_checked(report):
    assert not any(w.startswith("distributed:") for w in report.warnings)  # one process
    checked = preflight(tiny_config(), prompts=1, samples=2, ranks=(3, 1))
    warnings = [w for w in checked.warnings if w.startswith("distributed:")]
    assert len(warnings) == 1  # 32 completions of groups of 8 do not split over 3 ranks
    assert "grpo.batch_size (32) must be a multiple of the ranks x grpo.group_size (3 x 8)" in (
        warnings[0]
    )


@pytest.mark.parametrize(
    "device, ranks, message",
    [
        ("cuda:1", (2, 1), "each rank takes cuda:LOCAL_RANK"),
        ("cuda", (2, 1), "2 processes on this machine but"),
    ],
)
def test_one_device_per_rank_is_checked(device, ranks, message):
    if device == "cuda" and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    config = tiny_config(model={"spec": "tiny:llama", "device": device})
    problems = distributed_problems(config, ranks[0] * ranks[1], ranks[0])
    assert any(message in p for p in problems), problems


def test_a_batch_that_splits_into_whole_groups_per_rank_has_no_problem():
    assert distributed_problems(tiny_config(), 4, 2) == []  # 32 = 4 ranks x 8


def test_training_refuses_a_batch_the_ranks_cannot_split(tmp_path, monkeypatch):
    from r1lab.core.errors import UserError
    from r1lab.grpo.loop import train

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    config = tiny_config(train={"out_dir": str(tmp_path)})
    with pytest.raises(UserError, match="multiple of the ranks x grpo.group_size"):
        train(config, progress=False)  # before any model loads or process group starts


def test_an_empty_test_split_is_reported_with_the_option_to_set():
    data = Path(__file__).resolve().parents[2] / "data" / "gsm8k_sample.jsonl"
    task = {"name": f"jsonl:{data}", "options": {"test_fraction": 0.0}}
    report = preflight(tiny_config(task=task, generation={"max_new_tokens": 2}), 1, 2)
    found = [w for w in report.warnings if "no checkable test problems" in w]
    assert found and "test_fraction" in found[0]


def test_equal_rewards_within_every_group_are_reported():
    """Rewards that differ between prompts but never within one: GRPO learns nothing."""
    REWARDS["per_prompt"] = lambda inputs: [float(ex.answer) for ex in inputs.examples]
    try:
        config = tiny_config(
            task={"name": "arith", "options": {"digits": 2}},
            rewards=[{"name": "per_prompt"}],
            generation={"max_new_tokens": 2},
        )
        report = preflight(config, prompts=2, samples=3)
    finally:
        REWARDS.pop("per_prompt")
    assert len({s["reward"] for s in report.samples}) == 2  # not constant overall
    assert any("zero_std_frac 1.0" in w and "no gradient" in w for w in report.warnings)


def test_a_vllm_engine_under_several_ranks_is_a_problem_and_alone_is_not():
    config = tiny_config(generation={"max_new_tokens": 8, "engine": "vllm"})
    assert any("one vLLM engine per rank" in p for p in distributed_problems(config, 4, 2))
    assert distributed_problems(config, 1, 1) == []
