"""A GRPO run (grpo/loop.py) end to end on a tiny Llama: the run-directory contract, resume
equivalence, and the faults that must stop a run cleanly without losing a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1lab.core.checkpoint import STATE_FILE, latest_checkpoint
from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_jsonl
from r1lab.grpo import algos
from r1lab.grpo import loop as run
from r1lab.grpo import step as grpo_step
from r1lab.grpo.config import build_config, load_config
from r1lab.grpo.loop import train
from r1lab.rewards import REWARDS
from r1lab.train.loop import TrainingStopped

STEP_KEYS = (
    "step",
    "reward",
    "accuracy",
    "format",
    "completion_len_mean",
    "completion_len_max",
    "truncated_frac",
    "kl",
    "clip_frac",
    "entropy",
    "grad_norm",
    "lr",
    "zero_std_frac",
    "step_seconds",
    "gen_tokens_per_s",
)
TIMING_KEYS = ("step_seconds", "gen_tokens_per_s")
TERMS = ("accuracy", "format", "spread")


def spread(inputs) -> list[float | None]:
    """A reward the random tiny model earns unevenly: it depends on the sampled text."""
    return [len(text) % 5 / 4 for text in inputs.completions]


def spread_if_even(inputs) -> list[float | None]:
    """`spread` for questions with an even answer, a constant (no signal) for the others."""
    return [
        len(text) % 5 / 4 if int(ex.answer) % 2 == 0 else 0.0
        for text, ex in zip(inputs.completions, inputs.examples, strict=True)
    ]


@pytest.fixture(autouse=True, scope="module")
def spread_rewards():
    """The `spread` rewards registered for the module's runs (threads: see conftest)."""
    REWARDS.update(spread=spread, spread_if_even=spread_if_even)
    yield
    REWARDS.pop("spread", None)
    REWARDS.pop("spread_if_even", None)


def make_config(out_dir: Path, *overrides: str, name: str = "run"):
    raw = {"rewards": [{"name": "accuracy"}, {"name": "format", "weight": 0.5}, {"name": "spread"}]}
    base = [
        f"name={name}",
        f"train.out_dir={out_dir}",
        "model.spec=tiny:llama",
        "task.options={digits: 1, operands: 2, train_size: 40, test_size: 4}",
        "generation.max_new_tokens=8",
        "grpo.batch_size=8",
        "grpo.group_size=4",
        "grpo.micro_batch_size=4",
        "grpo.beta=0.05",
        "optim.lr=0.01",
        "train.steps=3",
        "train.save_every=1",
        "train.keep_checkpoints=2",
        "eval.size=2",
        "eval.every=2",
    ]
    return build_config(raw, [*base, *overrides])


def step_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward" in r]


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/pass@1" in r]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stop_at_step(monkeypatch, step: int, error: type[BaseException] = KeyboardInterrupt):
    """Make the run die at the start of `step` (its rollout), like a Ctrl-C or a crash."""
    calls = {"n": 0}

    def rollout_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise error("interrupted by the test")
        return grpo_step.rollout_step(*args, **kwargs)

    monkeypatch.setattr(run, "rollout_step", rollout_step)


# ----------------------------------------------------------------------------- the contract
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One 3-step run shared by the contract tests (read-only for them)."""
    out = tmp_path_factory.mktemp("runs")
    config = make_config(out)
    return config, train(config, progress=False)


def test_run_dir_holds_the_resolved_config(finished):
    config, run_dir = finished
    assert run_dir == Path(config.train.out_dir) / "run"
    assert load_config(run_dir / "config.yaml") == config  # complete and reloadable


def test_metrics_have_one_row_per_step_with_every_contract_key(finished):
    _, run_dir = finished
    rows = step_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        missing = [k for k in (*STEP_KEYS, *(f"reward/{t}" for t in TERMS)) if k not in row]
        assert not missing, missing
        assert row["reward"] == pytest.approx(
            row["reward/accuracy"] + 0.5 * row["reward/format"] + row["reward/spread"]
        )
        assert row["completion_len_max"] <= 8 and 0 <= row["truncated_frac"] <= 1
        assert row["grad_norm"] > 0 and row["entropy"] > 0 and row["kl"] >= 0
        assert row["lr"] == pytest.approx(0.01) and row["gen_tokens_per_s"] > 0
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # step 1: the policy is the reference
    assert rows[1]["kl"] > 0
    evals = eval_rows(run_dir)
    assert [r["step"] for r in evals] == [0, 2, 3]  # start, every 2 steps, the end
    assert all(0 <= r["eval/pass@1"] <= 1 and 0 <= r["eval/format"] <= 1 for r in evals)


def test_samples_have_prompt_completion_and_every_reward_term(finished):
    _, run_dir = finished
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 3 * 8
    assert [s["step"] for s in samples] == [1] * 8 + [2] * 8 + [3] * 8
    for s in samples:
        assert "User:" in s["prompt"] and isinstance(s["completion"], str)
        assert set(s["rewards"]) == set(TERMS)
        assert s["reward"] == pytest.approx(
            s["rewards"]["accuracy"] + 0.5 * s["rewards"]["format"] + s["rewards"]["spread"]
        )
        assert s["rewards"]["spread"] == len(s["completion"]) % 5 / 4


def test_checkpoints_are_plain_hf_dirs_with_trainer_state_and_pruned(finished):
    config, run_dir = finished
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]  # keep_checkpoints=2 pruned step 1
    state = torch.load(run_dir / "checkpoints" / names[-1] / STATE_FILE, weights_only=False)
    assert state["step"] == 3
    assert {"optimizer", "stream", "generator", "rng"} <= state.keys()
    # only the newest keeps its trainer state: a resume never starts from an older one
    assert not (run_dir / "checkpoints" / names[0] / STATE_FILE).exists()
    last = weights(run_dir / "checkpoints" / "step-000003")
    assert same_weights(weights(run_dir / "final"), last)
    assert not same_weights(weights(run_dir / "checkpoints" / "step-000002"), last)


def test_a_run_that_keeps_final_only_deletes_its_checkpoints_when_done(tmp_path):
    config = make_config(tmp_path, "train.final_only=true", "train.steps=2", "eval.size=0")
    run_dir = train(config, progress=False)
    assert (run_dir / "final" / "config.json").exists()
    assert not (run_dir / "checkpoints").exists()


def test_plot_command_writes_the_three_figures(finished, capsys):
    from r1lab import cli

    _, run_dir = finished
    assert cli.main(["plot", str(run_dir)]) == 0
    for name in ("reward.png", "length.png", "reflection.png"):
        path = run_dir / "plots" / name
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerunning_into_an_existing_run_needs_resume(finished):
    config, run_dir = finished
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="--resume"):
        train(config, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resuming_a_finished_run_returns_at_once(finished):
    config, run_dir = finished
    before = read_jsonl(run_dir / "metrics.jsonl")
    final = weights(run_dir / "final")
    shutil.rmtree(run_dir / "final")  # as if it had died between the last checkpoint and final/
    assert train(config, resume=True, progress=False) == run_dir
    assert read_jsonl(run_dir / "metrics.jsonl") == before  # no step ran
    assert same_weights(weights(run_dir / "final"), final)  # final/ written from the checkpoint


# ----------------------------------------------------------------------------- resume
LEAN = (
    "model.dtype=bfloat16",
    "model.compute_dtype=bfloat16",
    "grpo.activation_checkpointing=true",
    "grpo.offload_reference=true",
    "grpo.release_memory=true",
)


@pytest.mark.parametrize("precision", [(), LEAN], ids=["fp32", "bf16-weights-fp32-masters"])
def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_one(
    tmp_path, monkeypatch, precision
):
    # Everything that draws randomness or carries state across steps is on: sampling, two
    # minibatches x two passes (the shuffling generator, AdamW moments and, under bf16
    # weights, the fp32 masters), dynamic sampling (the prompt stream), a reference reset
    # (saved ref weights), evaluation (a forked RNG), and a warmup + cosine schedule.
    overrides = (
        *precision,
        "train.steps=4",
        "grpo.mu=2",
        "grpo.minibatches=2",
        "grpo.dynamic_sampling=true",
        "grpo.max_resample=1",
        "grpo.ref_reset_every=2",
        "optim.warmup_steps=1",
        "optim.schedule=cosine",
        "rewards.2.name=spread_if_even",
    )
    whole_dir = train(make_config(tmp_path, *overrides, name="whole"), progress=False)

    config = make_config(tmp_path, *overrides, name="cut")
    with monkeypatch.context() as patch:
        stop_at_step(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(config, progress=False)
    cut_dir = run.run_dir_of(config)
    assert latest_checkpoint(cut_dir).name == "step-000002"
    assert not (cut_dir / "final").exists()
    with (cut_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward": 0.')  # killed in the middle of writing a row
    train(config, resume=True, progress=False)

    def comparable(run_dir):
        return [
            {k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time/")}
            for r in read_jsonl(run_dir / "metrics.jsonl")
        ]

    whole, resumed = comparable(whole_dir), comparable(cut_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]
    for a, b in zip(whole, resumed, strict=True):
        assert a == b, f"step {a['step']} differs"
    assert [r["grad_norm"] > 0 for r in step_rows(whole_dir)] == [True] * 4
    assert any(r["zero_std_frac"] > 0 for r in step_rows(whole_dir))  # groups were redrawn
    assert read_jsonl(whole_dir / "samples.jsonl") == read_jsonl(cut_dir / "samples.jsonl")
    assert same_weights(weights(whole_dir / "final"), weights(cut_dir / "final"))


def test_auto_resume_without_a_checkpoint_starts_over_cleanly(tmp_path, monkeypatch):
    config = make_config(tmp_path, "train.steps=2")
    with monkeypatch.context() as patch:
        stop_at_step(patch, 1)  # dies after the step-0 evaluation, before any checkpoint
        with pytest.raises(KeyboardInterrupt):
            train(config, resume="auto", progress=False)
    run_dir = run.run_dir_of(config)
    assert [r["step"] for r in eval_rows(run_dir)] == [0] and latest_checkpoint(run_dir) is None
    train(config, resume="auto", progress=False)
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2, 2]
    assert [s["step"] for s in read_jsonl(run_dir / "samples.jsonl")] == [1] * 8 + [2] * 8


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train(make_config(tmp_path), resume=True, progress=False)


# ----------------------------------------------------------------------------- faults
def test_empty_training_split_is_an_error(tmp_path):
    config = make_config(
        tmp_path, "task.options={digits: 1, operands: 2, train_size: 0, test_size: 4}"
    )
    with pytest.raises(UserError, match="training split is empty"):
        train(config, progress=False)
    assert not (run.run_dir_of(config) / "metrics.jsonl").exists()


def test_failing_reward_names_itself_and_the_sample_and_keeps_checkpoints(tmp_path, monkeypatch):
    calls = {"n": 0}

    def explodes(inputs):
        calls["n"] += 1
        if calls["n"] > 1:  # fine at step 1, broken from step 2 on
            raise ZeroDivisionError("bad luck")
        return [0.0] * len(inputs.completions)

    monkeypatch.setitem(REWARDS, "explodes", explodes)
    config = make_config(tmp_path, "rewards.2.name=explodes")
    with pytest.raises(
        UserError,
        match=r"reward 'explodes' failed on sample 0 "
        r"\(example 'arith-[0-9a-f]+'\): ZeroDivisionError",
    ):
        train(config, progress=False)
    run_dir = run.run_dir_of(config)
    assert latest_checkpoint(run_dir).name == "step-000001"
    AutoModelForCausalLM.from_pretrained(latest_checkpoint(run_dir))


def test_non_finite_loss_skips_updates_then_stops_with_checkpoints_intact(tmp_path, monkeypatch):
    poisoned = {"from_step": 3, "step": 0}

    def rollout_step(*args, **kwargs):
        poisoned["step"] += 1
        return grpo_step.rollout_step(*args, **kwargs)

    def clipped_policy_loss(logp, *args, **kwargs):
        loss, stats = grpo_loss(logp, *args, **kwargs)
        if poisoned["step"] >= poisoned["from_step"]:
            loss = loss * float("nan")
        return loss, stats

    grpo_loss = algos.clipped_policy_loss
    monkeypatch.setattr(run, "rollout_step", rollout_step)
    monkeypatch.setitem(algos.POLICY_LOSSES, "clip", clipped_policy_loss)
    config = make_config(
        tmp_path,
        "train.steps=8",
        "train.max_bad_steps=2",
        "train.keep_checkpoints=3",
        "eval.every=0",
    )
    with pytest.raises(TrainingStopped, match="non-finite for 2 steps"):
        train(config, progress=False)
    run_dir = run.run_dir_of(config)
    rows = step_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # stopped after 2 bad steps in a row
    assert [r["skipped_updates"] for r in rows] == [0, 0, 1, 1]
    assert rows[3]["grad_norm"] is None
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step-000001", "step-000002", "step-000003"]  # no step 4, none lost
    ckpt = run_dir / "checkpoints"
    assert same_weights(weights(ckpt / "step-000003"), weights(ckpt / "step-000002"))  # skipped
    assert not same_weights(weights(ckpt / "step-000002"), weights(ckpt / "step-000001"))
    assert not (run_dir / "final").exists()
    assert isinstance(TrainingStopped("x"), UserError)


def test_reference_reset_brings_the_kl_back_to_zero(tmp_path):
    overrides = ("train.steps=4", "grpo.ref_reset_every=2", "eval.every=0", "eval.size=0")
    run_dir = train(make_config(tmp_path, *overrides), progress=False)
    rows = step_rows(run_dir)
    assert len(rows) == len(read_jsonl(run_dir / "metrics.jsonl"))  # eval.size=0: no eval rows
    kl = [r["kl"] for r in rows]
    assert kl[0] == pytest.approx(0.0, abs=1e-7)  # step 1: policy = initial reference
    assert kl[1] > 1e-4  # the policy moved away
    assert kl[2] == pytest.approx(0.0, abs=1e-7)  # reset after step 2: reference = policy
    assert kl[3] > 1e-4


def test_offloaded_reference_trains_exactly_like_a_resident_one(tmp_path):
    # a reset writes the policy's weights into the mapped reference: they must be what the
    # next steps read after the pages were dropped
    overrides = ("train.steps=4", "grpo.ref_reset_every=2", "eval.every=0", "eval.size=0")
    resident = train(make_config(tmp_path, *overrides, name="resident"), progress=False)
    config = make_config(tmp_path, *overrides, "grpo.offload_reference=true", name="offloaded")
    offloaded = train(config, progress=False)

    def comparable(run_dir):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time/")}
                for r in step_rows(run_dir)]

    assert comparable(offloaded) == comparable(resident)
    assert [r["kl"] > 1e-4 for r in step_rows(offloaded)] == [False, True, False, True]
    assert same_weights(weights(resident / "final"), weights(offloaded / "final"))
    assert not list(offloaded.glob(".weights-*"))


def test_a_step_without_any_signal_makes_no_update_and_still_logs_every_key(tmp_path):
    # every reward constant: dynamic sampling drops every group, so there is nothing to train on
    config = make_config(
        tmp_path,
        "rewards=[{name: format}]",
        "grpo.dynamic_sampling=true",
        "grpo.max_resample=0",
        "train.steps=2",
        "eval.size=0",
    )
    run_dir = train(config, progress=False)
    rows = step_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert all(k in row for k in STEP_KEYS) and "reward/format" in row
        assert row["zero_std_frac"] == 1.0 and row["grad_norm"] is None
    assert same_weights(
        weights(run_dir / "final"), weights(run_dir / "checkpoints" / "step-000001")
    )
