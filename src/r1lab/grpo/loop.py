"""A GRPO run (`r1lab train`): the policy, its reference and rollout engine, stepped by the
shared run loop (`train.loop`).

`runs/<name>/` holds `config.yaml` (fully resolved), `metrics.jsonl` (one row per step plus
evaluation rows), `samples.jsonl`, `checkpoints/step-XXXXXX/` (atomic, HF format + trainer
state) and `final/`. `resume` continues from the newest checkpoint and, on the CPU with the
same seed, reproduces the rows an uninterrupted run would have written.

Each step (`GRPOJob.step`) reads top to bottom: set the learning rate, sample and score
(`grpo.step`), build the batch with its old/ref log-probs and run the update
(`grpo.update`), hand the new weights to the rollout engine, reset the reference every
`ref_reset_every` steps (R1), and write the metrics and sample rows.

Under torchrun (`train.dist`) every rank runs the same job: the same prompts are drawn, each
rank samples its share and all gather the whole rollout, each rank trains its share of the
batch through `train.replica.Replica` (DDP or FSDP2), and the shared run loop lets rank 0
alone write; the metrics row is then the one a single process would have written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from r1lab.core import advice
from r1lab.core.checkpoint import checkpoint_to_resume, load_state
from r1lab.core.console import warn
from r1lab.core.errors import UserError
from r1lab.core.lora import base_view
from r1lab.core.memory import DiskBackedWeights, between_phases, configure_allocator, supported
from r1lab.core.models import compute_context, load_model
from r1lab.core.runfiles import JsonlWriter
from r1lab.eval.metrics import summarize
from r1lab.eval.run import sample_and_grade_shared
from r1lab.grpo.config import Config
from r1lab.grpo.metrics import sample_rows, step_row
from r1lab.grpo.preflight import distributed_problems
from r1lab.grpo.step import reward_terms, rollout_step
from r1lab.grpo.update import UpdateStats, build_batch, make_reference, optimize
from r1lab.rewards import output_format
from r1lab.rollout import SamplingParams, make_engine
from r1lab.tasks import make_task
from r1lab.text.templates import pick_shots
from r1lab.train import dist
from r1lab.train.loop import Schedule, run_loop
from r1lab.train.optim import build_optimizer, lr_at, set_lr
from r1lab.train.progress import ProgressDisplay
from r1lab.train.replica import Replica, load_trainable
from r1lab.train.stream import PromptStream, derive_seed, set_seed


def run_dir_of(config: Config) -> Path:
    return Path(config.train.out_dir) / config.name


def train(config: Config, resume: bool | str = False, progress: bool = True) -> Path:
    """Run GRPO for `config`; returns the run directory.

    `resume=True` requires a checkpoint; `resume="auto"` resumes when one exists and starts
    fresh otherwise (what `r1lab zero` does, so re-running the demo continues or no-ops).
    """
    run_dir = run_dir_of(config)
    problems = distributed_problems(config, dist.world_size(), dist.local_world_size())
    if problems:  # before any model is loaded
        raise UserError(problems[0])
    checkpoint = checkpoint_to_resume(run_dir, resume)
    set_seed(config.train.seed)
    state = load_state(checkpoint) if checkpoint else None
    job = GRPOJob(config, run_dir, checkpoint, state)
    t = config.train
    schedule = Schedule(
        t.steps,
        t.save_every,
        t.keep_checkpoints,
        config.eval.every,
        t.max_bad_steps,
        t.final_only,
    )
    return run_loop(
        job,
        run_dir,
        config,
        schedule,
        state,
        lambda total, start: ProgressDisplay(total, start, progress, stats),
        report_to=config.train.report_to,
    )


def stats(row: dict[str, Any]) -> str:
    """The progress line's numbers for one step row."""
    return (
        f"reward {row.get('reward', 0):.3f}  acc {row.get('accuracy') or 0:.2f}  "
        f"fmt {row.get('format', 0):.2f}  len {row.get('completion_len_mean', 0):.0f}  "
        f"{row.get('step_seconds', 0):.1f}s/step"
    )


def limits(config: Config) -> dict[str, str]:
    """The run's generation limits as a user sets them, for `advice.RunWatch`'s warnings."""
    train = f"generation.max_new_tokens={config.generation.max_new_tokens}"
    held_out = config.eval.max_new_tokens
    return {"train": train, "eval": f"eval.max_new_tokens={held_out}" if held_out else train}


class GRPOJob:
    """The GRPO trainer as a `train.loop.Job`: everything a step needs, built once."""

    stop_advice = "Lower optim.lr or check the rewards."

    def __init__(
        self, config: Config, run_dir: Path, checkpoint: Path | None, state: dict | None
    ) -> None:
        self.config = config
        self.task = make_task(config.task.name, config.task.options)
        train_examples = self.task.examples("train")
        # pass@1 is over problems a rule can check: general prompts are left out of evaluation.
        checkable = [ex for ex in self.task.examples("test") if ex.checkable]
        self.test_examples = checkable[: config.eval.size]
        self.watch = advice.RunWatch(limits(config))
        small = advice.test_split(len(checkable), config.eval.size, "held-out evaluation")
        if small:
            warn(small)
        template = config.template
        self.shots = pick_shots(self.task, train_examples, template.shots, template.shot_style)
        model, adapter, self.tokenizer = load_trainable(config.model, checkpoint)
        self.ref, self.offloaded = self._reference(model, run_dir, state)
        self.ref_reset = state is not None and "ref" in state
        configure_allocator(release=config.grpo.release_memory)
        self.replica = Replica(model, config.model.parallel, adapter)
        self.optimizer = build_optimizer(self.replica.model, config.optim)
        self.stream = PromptStream(train_examples, config.train.seed)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.engine = make_engine(
            config.generation.engine,
            self.replica.weights,
            self.tokenizer,
            max_prompt_tokens=config.generation.max_prompt_tokens,
            compute_dtype=config.model.compute_dtype,
            keep_weights=False,
        )
        self.terms = reward_terms(config)
        self.samples = JsonlWriter(run_dir / "samples.jsonl")
        self.files = [self.samples]
        self.temperature = max(config.generation.temperature, 1e-6)

    @property
    def model(self) -> Any:
        """What checkpoints and final/ save (the LoRA adapter, or the policy)."""
        return self.replica.saved

    def _reference(self, model: Any, run_dir: Path, state: dict | None) -> tuple[Any, Any]:
        """pi_ref (None when beta is 0): the initial policy, or the policy at the last reset
        (saved with the state); offloaded to a file mapping when the config asks for it.
        With LoRA, the policy's own base weights with the adapter bypassed (no copy)."""
        config = self.config
        if config.grpo.beta <= 0:
            return None, None
        if config.model.lora is not None:
            return base_view(model).eval(), None
        initial = model
        if state is not None:
            initial = load_model(config.model.spec, config.model.dtype)[0]
        ref = make_reference(initial.to(model.device), config.model.compute_dtype)
        if state is not None and "ref" in state:
            ref.load_state_dict(state["ref"])
        if not config.grpo.offload_reference:
            return ref, None
        if not supported() or model.device.type != "cpu":
            raise UserError(
                "grpo.offload_reference maps the reference's weights to a file in CPU "
                "memory: it needs Linux and a CPU run; set it false"
            )
        return ref, DiskBackedWeights(ref, run_dir)

    def step(self, step: int) -> tuple[dict[str, Any], bool]:
        config = self.config
        lr = lr_at(step, config.train.steps, config.optim)
        set_lr(self.optimizer, lr)
        seed = derive_seed("grpo", config.train.seed, step)
        rollout = rollout_step(
            config, self.engine, self.task, self.stream.take, self.tokenizer, self.shots, seed
        )
        between_phases()  # the generation's caches
        update = self._update(rollout.groups, rollout.rewards)
        began = time.perf_counter()
        self.engine.sync_weights(self.replica.weights)
        update.seconds["sync"] = time.perf_counter() - began
        every = config.grpo.ref_reset_every
        if self.ref is not None and every and step % every == 0:
            self.ref.load_state_dict(self.replica.weights.state_dict())
            self.ref_reset = True
            if self.offloaded is not None:
                self.offloaded.release()
        if config.train.sample_every and step % config.train.sample_every == 0:
            for row in sample_rows(step, rollout):
                self.samples.write(row)
        row = {**step_row(rollout, update, self.task, self.terms), "lr": lr}
        for message in self.watch.observe(row):
            warn(f"step {step}: {message}")
        return row, update.ok

    def _update(self, groups: list, rewards: list[float]) -> UpdateStats:
        """The policy update on this step's groups (none kept: nothing to update)."""
        if not groups:
            return UpdateStats()
        config = self.config
        with compute_context(config.model.compute_dtype, self.replica.weights.device):
            began = time.perf_counter()
            batch = build_batch(
                self.replica,
                self.ref,
                groups,
                rewards,
                config.grpo,
                self.tokenizer.pad_token_id,
                self.temperature,
            )
            logprob_seconds = time.perf_counter() - began
            if self.offloaded is not None:
                self.offloaded.release()
            between_phases()
            update = optimize(
                self.replica,
                self.optimizer,
                batch,
                config.grpo,
                self.generator,
                self.temperature,
                config.generation.max_new_tokens,
                config.optim.grad_clip,
            )
        update.seconds["logprobs"] = logprob_seconds
        return update

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out pass@1 over k samples, each problem under its own seed (from the run's
        seed and its id, as `r1lab eval` draws them), split over the ranks."""
        if not self.test_examples:
            return {}
        config, ev = self.config, self.config.eval
        params = SamplingParams(
            n=ev.k,
            max_new_tokens=ev.max_new_tokens or config.generation.max_new_tokens,
            temperature=ev.temperature,
            top_p=ev.top_p,
            stop=tuple(config.generation.stop),
        )
        records = sample_and_grade_shared(
            self.engine,
            self.task,
            self.test_examples,
            self.tokenizer,
            config.template.name,
            params,
            config.train.seed + 1,
            self.shots,
            output_format(self.terms),
        )
        row = {f"eval/{k}": v for k, v in summarize(records).items()}
        for message in self.watch.observe(row):
            warn(f"evaluation at step {step}: {message}")
        return row

    def state(self) -> dict[str, Any]:
        state = {
            **self.replica.optimizer_state(self.optimizer),
            "stream": self.stream.state(),
            "generator": self.generator.get_state(),
        }
        if self.ref_reset and self.ref is not None:
            state["ref"] = self.ref.state_dict()
        return state

    def load(self, state: dict[str, Any]) -> None:
        self.replica.load_optimizer_state(self.optimizer, state, "the checkpoint")
        self.stream.load(state["stream"])
        self.generator.set_state(state["generator"])
