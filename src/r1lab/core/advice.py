"""The warnings that can save a run: each check's threshold and wording, in one place.

Training (`grpo/loop.py`, `sft/loop.py`), preflight (`grpo/preflight.py`), evaluation
(`eval/run.py`) and comparisons of evaluations (`eval/report.py`) ask here, so a user gets the
same sentence at the same threshold wherever the problem shows up: at the start of a run, at
the step it happens, or in the table at the end. Pure functions of numbers; printing is the
caller's (`core.console.warn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ZERO_SIGNAL_STEPS = 3
"""Steps in a row in which every group had equal rewards before training warns."""

TRUNCATION = 0.3
"""Share of completions cut at the token limit above which a number is mostly the limit's."""

TINY_SPLIT = 10
"""Held-out problems below which pass@1 moves in steps too coarse to read."""

BF16_INSTRUCTIONS = ("avx512_bf16", "amx_bf16")
"""CPU flags of the instructions that make bf16 matmuls faster than fp32 on a CPU."""

COMPARED = ("k", "max_new_tokens", "temperature", "top_p", "split")
"""Evaluation settings that must agree for two pass@1 numbers to compare."""


def split_hint() -> str:
    """How to put problems into a task's test split."""
    return (
        "a jsonl task holds some out with its test_fraction option (--option "
        "test_fraction=0.1, or task.options.test_fraction in a recipe); built-in tasks size "
        "theirs with test_size"
    )


def test_split(count: int, wanted: int, what: str) -> str | None:
    """An empty or tiny test split, said before `what` (e.g. "held-out evaluation") runs.

    >>> test_split(0, 50, "held-out evaluation").split(":")[0]
    'the task has no checkable test problems'
    >>> test_split(40, 50, "held-out evaluation") is None
    True
    """
    if wanted <= 0:
        return None
    if count == 0:
        return f"the task has no checkable test problems: {what} is skipped; {split_hint()}"
    if count < min(wanted, TINY_SPLIT):
        return (
            f"only {count} checkable test problems for {what}: pass@1 moves in steps of "
            f"{1 / count:.2f} and its confidence interval is wide; {split_hint()}"
        )
    return None


def truncation(share: float, limit: str, what: str) -> str | None:
    """Too many `what` (samples) cut at `limit` (e.g. "generation.max_new_tokens=48").

    >>> truncation(0.7, "max_new_tokens=48", "evaluation samples").split(":")[0]
    '70% of evaluation samples hit max_new_tokens=48 without finishing'
    >>> truncation(0.25, "max_new_tokens=48", "evaluation samples") is None
    True
    """
    if share <= TRUNCATION:
        return None
    return (
        f"{share:.0%} of {what} hit {limit} without finishing: their answers are cut off, so "
        "rewards and pass@1 measure the limit more than the model; raise the limit or add a "
        "stop string"
    )


def slow_bf16(compute_dtype: str, device: str, cpu_flags: str) -> str | None:
    """bf16 compute on a CPU that has no bf16 instructions: there bf16 matmuls are emulated
    and run several times slower than fp32 (measured on a 2-core Xeon without them: a linear
    layer at 65 GFLOP/s in bf16, 296 in fp32), so the setting meant to save time costs it.
    `cpu_flags` is /proc/cpuinfo's flags line ("" when unknown: no warning).

    >>> slow_bf16("bfloat16", "cpu", "fpu avx512f").split(":")[0]
    'model.compute_dtype bfloat16 on a CPU without bf16 instructions (avx512_bf16, amx_bf16)'
    >>> slow_bf16("bfloat16", "cpu", "fpu avx512f avx512_bf16") is None
    True
    """
    flags = set(cpu_flags.split())
    if compute_dtype != "bfloat16" or device != "cpu" or not flags:
        return None
    if flags & set(BF16_INSTRUCTIONS):
        return None
    return (
        f"model.compute_dtype bfloat16 on a CPU without bf16 instructions "
        f"({', '.join(BF16_INSTRUCTIONS)}): bf16 matmuls run several times slower than fp32 "
        "here; set model.compute_dtype=float32 (--set model.compute_dtype=float32)"
    )


def no_signal(steps: int | None = None) -> str:
    """Every group's rewards were equal: all advantages 0, no gradient at all."""
    when = f"for {steps} steps in a row" if steps else "in every group sampled"
    return (
        f"{when} all samples of each prompt got the same reward (zero_std_frac 1.0): every "
        "advantage is 0 and the policy gets no gradient; try partial-credit shaping "
        "(tag_count), a worked example (template.shots), a larger grpo.group_size, a higher "
        "temperature, an easier task, or a cold start (r1lab sft)"
    )


def incomparable(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Sampling settings that differ between evaluations (`COMPARED`, and the problem
    count): their pass@1 numbers are not measured the same way.

    >>> incomparable([{"settings": {"k": 8}, "problems": 5}, {"settings": {"k": 4}, "problems": 5}])
    ['k 8 vs 4']
    """
    found = []
    for key in COMPARED:
        values = [s["settings"].get(key) for s in summaries]
        if any(v != values[0] for v in values):
            found.append(f"{key} " + " vs ".join(str(v) for v in values))
    counts = [s.get("problems") for s in summaries]
    if any(c != counts[0] for c in counts):
        found.append("problems " + " vs ".join(str(c) for c in counts))
    return found


class RunWatch:
    """Watches a training run's rows and says, once each, what is going wrong.

    `limits` names each generation limit as the user would set it, e.g.
    `{"train": "generation.max_new_tokens=48", "eval": "eval.max_new_tokens=128"}`.

    >>> watch = RunWatch({"train": "generation.max_new_tokens=48"})
    >>> [len(watch.observe({"zero_std_frac": 1.0})) for _ in range(4)]
    [0, 0, 1, 0]
    """

    def __init__(self, limits: dict[str, str], steps: int = ZERO_SIGNAL_STEPS) -> None:
        self.limits, self.steps = limits, steps
        self.flat = 0  # steps in a row with every group's rewards equal
        self.said: set[str] = set()

    def observe(self, row: dict[str, Any]) -> list[str]:
        """The warnings a new metrics row (a step's or an evaluation's) raises."""
        found = []
        share = row.get("zero_std_frac")
        if share is not None:
            self.flat = self.flat + 1 if share >= 1.0 else 0
            if self.flat >= self.steps:
                found.append(("signal", no_signal(self.flat)))
        for key, part, what in (
            ("truncated_frac", "train", "training samples"),
            ("eval/truncated", "eval", "held-out samples"),
        ):
            if row.get(key) is not None and part in self.limits:
                message = truncation(row[key], self.limits[part], what)
                if message:
                    found.append((key, message))
        new = [message for key, message in found if key not in self.said]
        self.said |= {key for key, _ in found}
        return new
