"""The warnings that can save a run (core/advice.py): when each fires, and that it fires once."""

from __future__ import annotations

from r1lab.core import advice
from r1lab.core.advice import RunWatch

LIMITS = {"train": "generation.max_new_tokens=48", "eval": "eval.max_new_tokens=64"}


def test_equal_rewards_warn_once_after_the_streak():
    watch = RunWatch(LIMITS, steps=3)
    said = [watch.observe({"zero_std_frac": 1.0}) for _ in range(6)]
    assert [len(s) for s in said] == [0, 0, 1, 0, 0, 0]
    assert "for 3 steps in a row" in said[2][0] and "tag_count" in said[2][0]


def test_a_step_with_signal_resets_the_streak():
    watch = RunWatch(LIMITS, steps=3)
    for share in (1.0, 1.0, 0.5, 1.0, 1.0):
        assert watch.observe({"zero_std_frac": share}) == []


def test_truncation_above_the_threshold_names_the_limit_to_raise():
    watch = RunWatch(LIMITS)
    assert watch.observe({"truncated_frac": advice.TRUNCATION}) == []  # at it: fine
    said = watch.observe({"truncated_frac": 0.7})
    assert len(said) == 1 and "70% of training samples hit generation.max_new_tokens=48" in said[0]
    assert watch.observe({"truncated_frac": 0.9}) == []  # once
    held_out = watch.observe({"eval/truncated": 0.5})
    assert len(held_out) == 1 and "eval.max_new_tokens=64" in held_out[0]


def test_an_empty_test_split_says_how_to_get_one():
    said = advice.test_split(0, 32, "held-out evaluation")
    assert "no checkable test problems" in said and "test_fraction" in said


def test_a_tiny_test_split_warns_a_big_one_does_not():
    assert "only 4 checkable test problems" in advice.test_split(4, 32, "evaluation")
    assert advice.test_split(4, 4, "evaluation") is None  # asked for 4: not a surprise
    assert advice.test_split(0, 0, "evaluation") is None  # evaluation switched off
    assert advice.test_split(200, 32, "evaluation") is None


def test_incomparable_names_k_and_the_token_limit():
    a = {"settings": {"k": 8, "max_new_tokens": 48, "temperature": 0.6}, "problems": 100}
    b = {"settings": {"k": 4, "max_new_tokens": 128, "temperature": 0.6}, "problems": 100}
    assert advice.incomparable([a, b]) == ["k 8 vs 4", "max_new_tokens 48 vs 128"]
    assert advice.incomparable([a, a]) == []


def test_bf16_compute_warns_only_on_a_cpu_without_bf16_instructions():
    slow = advice.slow_bf16("bfloat16", "cpu", "fpu sse avx512f avx512_vnni")
    assert slow is not None and "model.compute_dtype=float32" in slow
    for flags in ("fpu avx512f avx512_bf16", "fpu amx_bf16 amx_tile"):
        assert advice.slow_bf16("bfloat16", "cpu", flags) is None
    assert advice.slow_bf16("float32", "cpu", "fpu avx512f") is None
    assert advice.slow_bf16("bfloat16", "cuda", "fpu avx512f") is None
    assert advice.slow_bf16("bfloat16", "cpu", "") is None  # flags unknown: no guess


def test_a_trainer_on_this_machine_reads_its_cpu_flags():
    from r1lab.train.replica import cpu_flags

    flags = cpu_flags()
    assert flags == "" or "fpu" in flags.split()
