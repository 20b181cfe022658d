"""`train.report_to` (train/tracking.py): a GRPO or SFT run writes its metrics rows to
TensorBoard event files and an offline W&B run as well as metrics.jsonl, under the same names
and steps; a resumed run does not duplicate the steps it redoes; unknown trackers are refused."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_jsonl
from r1lab.grpo.config import build_config
from r1lab.grpo.loop import train
from r1lab.sft.config import build_sft_config
from r1lab.sft.loop import sft

TASK = "task.options={digits: 1, operands: 2, train_size: 24, test_size: 4}"


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def sft_config(out, *overrides):
    base = [
        "name=s",
        f"train.out_dir={out}",
        "model.spec=tiny:llama",
        TASK,
        "optim.lr=0.003",
        "train.batch_size=4",
        "train.micro_batch_tokens=300",
        "train.save_every=1",
        "eval.every=2",
        "eval.size=4",
        "data.eval_fraction=0.25",
    ]
    return build_sft_config({}, [*base, *overrides])


def test_an_sft_run_writes_tensorboard_events_and_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = sft_config(tmp_path, "train.steps=3", "train.report_to=[jsonl, tensorboard, wandb]")
    run_dir = sft(config, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    scalars = tensorboard_scalars(run_dir)
    for name in ("loss", "lr", "grad_norm", "eval/loss"):
        logged = {r["step"]: r[name] for r in rows if r.get(name) is not None}
        assert scalars[name] == pytest.approx(logged), name
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert (run_dir / "wandb-id").read_text().strip() in offline[0].name


def test_a_grpo_run_sends_the_same_names_and_a_resume_does_not_duplicate_steps(tmp_path):
    base = [
        "name=g",
        f"train.out_dir={tmp_path}",
        "model.spec=tiny:llama",
        TASK,
        "generation.max_new_tokens=8",
        "grpo.batch_size=8",
        "grpo.group_size=4",
        "grpo.micro_batch_size=4",
        "train.save_every=1",
        "eval.size=2",
        "eval.every=2",
        "train.report_to=[tensorboard]",
    ]
    train(build_config({}, [*base, "train.steps=2"]), progress=False)
    run_dir = train(build_config({}, [*base, "train.steps=3"]), resume=True, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    scalars = tensorboard_scalars(run_dir)
    assert sorted(scalars["reward"]) == [1, 2, 3]
    assert scalars["reward"] == pytest.approx(
        {r["step"]: r["reward"] for r in rows if "reward" in r}
    )
    assert sorted(scalars["eval/pass@1"]) == [0, 2, 3]


@pytest.mark.parametrize("value", ["[mlflow]", "[tensorboard, tensorboard]"])
def test_unknown_or_repeated_trackers_are_refused(value):
    with pytest.raises(UserError, match="train.report_to must list distinct trackers"):
        build_config({}, [f"train.report_to={value}"])
    with pytest.raises(UserError, match="train.report_to must list distinct trackers"):
        build_sft_config({}, [f"train.report_to={value}"])
