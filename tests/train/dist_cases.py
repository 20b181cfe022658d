"""The runs the distributed tests compare: one definition, run by pytest in one process and by
`dist_worker.py` under torchrun in two (gloo, one thread each).

Each case is a function of the output directory that runs a tiny-model GRPO run, SFT run or
evaluation; `crash_at` makes a trainer die at the start of that step (both ranks at once, as
a Ctrl-C does), leaving its last checkpoint for a resume by a fresh launch.
"""

from __future__ import annotations

from pathlib import Path


def spread(inputs) -> list[float | None]:
    """A reward the random tiny model earns unevenly: it depends on the sampled text (named
    by its import path, so `torchrun -m r1lab train` run from this folder finds it)."""
    return [len(text) % 5 / 4 for text in inputs.completions]

GRPO = [
    "model.spec=tiny:llama",
    "task.options={digits: 1, operands: 2, train_size: 40, test_size: 4}",
    "generation.max_new_tokens=8",
    "grpo.batch_size=8",
    "grpo.group_size=4",
    "grpo.micro_batch_size=2",
    "grpo.mu=2",  # old log-probs and shuffled minibatches, split over the ranks
    "grpo.minibatches=2",
    "grpo.beta=0.05",
    "optim.lr=0.01",
    "train.steps=2",
    "train.save_every=1",
    "eval.size=3",
    "eval.every=1",
]
SFT = [
    "model.spec=tiny:llama",
    "task.options={digits: 1, operands: 2, train_size: 24, test_size: 4}",
    "data.eval_fraction=0.25",
    "optim.lr=0.003",
    "train.steps=2",
    "train.batch_size=5",  # 2 + 3 sequences: the ranks pack different numbers of micro-batches
    "train.micro_batch_tokens=120",
    "train.save_every=1",
    "eval.every=1",
    "eval.size=3",
]
LORA = ["model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"]


class Crash(Exception):
    """What a case raises on every rank to die mid-run."""


def grpo_run(out: Path, name: str, *overrides: str, crash_at: int = 0, resume: bool = False):
    from r1lab.grpo import loop
    from r1lab.grpo.config import build_config

    terms = [{"name": "accuracy"}, {"name": "format", "weight": 0.5}, {"name": "dist_cases:spread"}]
    raw = {"rewards": terms}
    config = build_config(raw, [f"name={name}", f"train.out_dir={out}", *GRPO, *overrides])
    real = loop.rollout_step
    calls = {"n": 0}

    def rollout_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash(f"died at step {crash_at}")
        return real(*args, **kwargs)

    loop.rollout_step = rollout_step
    try:
        return loop.train(config, resume=resume, progress=False)
    except Crash:
        return None
    finally:
        loop.rollout_step = real


def sft_run(out: Path, name: str, *overrides: str, crash_at: int = 0, resume: bool = False):
    from r1lab.sft import loop
    from r1lab.sft.config import build_sft_config

    config = build_sft_config({}, [f"name={name}", f"train.out_dir={out}", *SFT, *overrides])
    real = loop.SFTJob.step

    def step(self, number):
        if number == crash_at:
            raise Crash(f"died at step {crash_at}")
        return real(self, number)

    loop.SFTJob.step = step
    try:
        return loop.sft(config, resume=resume, progress=False)
    except Crash:
        return None
    finally:
        loop.SFTJob.step = real


def eval_run(out: Path, name: str):
    from r1lab.eval.protocol import Runtime
    from r1lab.eval.run import run_eval
    from r1lab.eval.store import make_settings

    settings, notes = make_settings(
        "tiny:llama", "arith", k=2, max_new_tokens=6, temperature=0.8, top_p=0.95
    )
    return run_eval(settings, out / name, 5, Runtime(batch_size=2), notes)


FSDP = "model.parallel=fsdp"

# what each torchrun launch of dist_worker.py runs, in order: the runs, then their resumes
LAUNCHES = {
    "first": [
        lambda out: grpo_run(out, "grpo"),
        lambda out: grpo_run(out, "grpo_killed", crash_at=2),
        lambda out: sft_run(out, "sft"),
        lambda out: sft_run(out, "sft_killed", crash_at=2),
        lambda out: eval_run(out, "eval"),
        lambda out: grpo_run(out, "lora", *LORA),
        lambda out: grpo_run(out, "fsdp", FSDP),
        lambda out: grpo_run(out, "fsdp_killed", FSDP, crash_at=2),
        lambda out: sft_run(out, "fsdp_sft", FSDP),
    ],
    "resume": [  # grpo_killed resumes through the CLI (test_dist.py)
        lambda out: sft_run(out, "sft_killed", resume=True),
        lambda out: grpo_run(out, "fsdp_killed", FSDP, resume=True),
    ],
}
