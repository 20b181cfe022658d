"""The one run loop every trainer shares: resume, steps, bad steps, evaluation, checkpoints.

A trainer (GRPO, SFT) is a `Job`: it knows how to take one optimizer step, evaluate, and
save and restore its own state (optimizer, data position, ...). `run_loop` owns the rest of
the run-directory contract, the same for both:

  1. resume: from a checkpoint the common state (step, bad-step count, every RNG) and the
     job's are restored, and rows written after that step are dropped from metrics.jsonl
     (and the job's other per-step files), so a resumed run writes exactly the rows an
     uninterrupted one would; a fresh start clears rows an abandoned attempt left;
  2. `config.yaml`, then an evaluation row at step 0 (before any update);
  3. each step: the job's metrics row (+ `step`, `step_seconds`) is appended and shown; a
     step whose update was skipped (non-finite loss) counts as bad, and `max_bad_steps` in a
     row stop the run with the last checkpoint intact;
  4. evaluation rows every `eval_every` steps and at the end; a checkpoint every
     `save_every` steps and at the end, the newest `keep_checkpoints` kept;
  5. `final/`: written when the run trained, or when it stopped between its last checkpoint
     and `final/`; with `final_only` the checkpoints go once it is there (a finished pipeline
     stage is never resumed: it is skipped, or started over when its inputs change).

Under torchrun every rank runs the loop in step; rank 0 alone writes (its rows are the whole
world's, reduced by the job) and shows progress, each rank's RNG state goes into the
checkpoint, and a checkpoint resumes only on as many ranks as wrote it (`train.dist`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from r1lab.core.checkpoint import (
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    save_final,
    set_rng_state,
)
from r1lab.core.config import dump_config
from r1lab.core.errors import UserError
from r1lab.core.runfiles import JsonlWriter
from r1lab.train import dist
from r1lab.train.progress import ProgressDisplay
from r1lab.train.tracking import Tracked


class TrainingStopped(UserError):
    """The run cannot usefully go on (e.g. the loss kept going non-finite)."""


@dataclass(frozen=True)
class Schedule:
    """When the loop steps, evaluates and saves (from the trainer's config)."""

    steps: int
    save_every: int
    keep_checkpoints: int
    eval_every: int
    max_bad_steps: int
    final_only: bool = False  # a finished run keeps final/ and deletes checkpoints/

    def due(self, every: int, step: int) -> bool:
        """At the last step, and every `every` steps (0: never in between)."""
        return step == self.steps or bool(every and step % every == 0)


class Job(Protocol):
    """What a trainer plugs into `run_loop`."""

    model: Any  # what checkpoints and final/ save (a LoRA run: its adapter)
    tokenizer: Any
    files: Sequence[JsonlWriter]  # per-step files besides metrics.jsonl (e.g. samples.jsonl)
    stop_advice: str  # what to try when the loss keeps going non-finite

    def step(self, step: int) -> tuple[dict[str, Any], bool]:
        """One optimizer step: its metrics row, and whether the update was taken."""
        ...

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out metrics (`eval/...`) after `step` updates; {} when there is nothing to do."""
        ...

    def state(self) -> dict[str, Any]:
        """The job's own part of a checkpoint's trainer state."""
        ...

    def load(self, state: dict[str, Any]) -> None:
        """Restore what `state()` saved (a checkpoint's trainer state)."""
        ...


def run_loop(
    job: Job,
    run_dir: Path,
    config: Any,
    schedule: Schedule,
    state: dict[str, Any] | None,
    display: Callable[[int, int], ProgressDisplay],
    report_to: Sequence[str] = ("jsonl",),
) -> Path:
    """Run `job` from `state` (None: a fresh start) to `schedule.steps`; returns `run_dir`.

    `display(total, start)` builds the progress line; `config` is written as config.yaml;
    metrics rows also go to the trackers `report_to` names (`train.tracking`).
    """
    main = dist.is_main()
    metrics = JsonlWriter(run_dir / "metrics.jsonl")
    start, bad_steps = _begin(job, [metrics, *job.files], state, run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
    log = Tracked(metrics, report_to if main else (), run_dir, config, start)
    if start == 0:
        _write_eval(log, job, 0)
    shown_by = display if main else lambda total, at: ProgressDisplay(total, at, enabled=False)
    with log, shown_by(schedule.steps, start) as shown:
        for step in range(start + 1, schedule.steps + 1):
            began = time.perf_counter()
            row, ok = job.step(step)
            bad_steps = 0 if ok else bad_steps + 1
            row = {"step": step, **row, "step_seconds": time.perf_counter() - began}
            log(row)
            shown.update(step, row)
            if bad_steps >= schedule.max_bad_steps:
                raise TrainingStopped(
                    f"the loss was non-finite for {bad_steps} steps in a row (last: step "
                    f"{step}); updates were skipped and the last checkpoint in "
                    f"{run_dir / 'checkpoints'} is intact. {job.stop_advice}"
                )
            if schedule.due(schedule.eval_every, step):
                _write_eval(log, job, step)
            if schedule.due(schedule.save_every, step):
                saved = {"step": step, "bad_steps": bad_steps, "rng": _rng(), **job.state()}
                saved["world_size"] = dist.world_size()
                keep = schedule.keep_checkpoints
                if main:
                    save_checkpoint(run_dir, step, job.model, job.tokenizer, saved, keep)
    if main and (start < schedule.steps or not (run_dir / "final").exists()):
        save_final(job.model, job.tokenizer, run_dir / "final")
    if main and schedule.final_only:
        prune_checkpoints(run_dir)
    dist.barrier()  # no rank goes on (a pipeline's next stage) before final/ is there
    return run_dir


def _begin(
    job: Job, files: list[JsonlWriter], state: dict[str, Any] | None, run_dir: Path
) -> tuple[int, int]:
    """Restore a checkpoint's state (or start fresh) and its files; (step, bad steps)."""
    for file in files if not dist.is_main() else ():
        file.mute()
    if state is None:
        for file in files:
            file.clear()
        return 0, 0
    dist.check_world(state, run_dir / "checkpoints")
    job.load(state)
    rng = state["rng"]
    set_rng_state(rng[dist.rank()] if isinstance(rng, list) else rng)
    for file in files:
        file.truncate_after(state["step"])
    return state["step"], state["bad_steps"]


def _rng() -> Any:
    """This process's RNG state; under torchrun every rank's, in rank order."""
    return rng_state() if dist.world_size() == 1 else dist.gather(rng_state())


def _write_eval(log: Callable[[dict[str, Any]], None], job: Job, step: int) -> None:
    row = job.evaluate(step)
    if row:
        log({"step": step, **row})
