"""Supervised fine-tuning: R1's cold start (and the SFT of rejection sampling and distillation).

Each step:
  1. draw `batch_size` sequences `[rendered prompt | completion | EOS]` from a seeded stream
     (a fresh shuffle every epoch; its position is saved with every checkpoint);
  2. pack them, padding-free, into micro-batches of at most `micro_batch_tokens` tokens
     (`sft.loss`);
  3. forward/backward each micro-batch: the NLL of the completion tokens (+ EOS) only, divided
     by the completion tokens of the *whole step*, so the gradient is the same however the
     step is split into micro-batches;
  4. clip the gradient norm and take an AdamW step at the scheduled learning rate;
  5. every `eval.every` steps the loss on the held-out split (optionally pass@1/format on the
     task's test split at the start and the end). The shared run loop (`train.loop`) does the
     rest of the run-directory contract: checkpoints, `final/`, `metrics.jsonl`, `--resume`
     (data position, RNG, optimizer state and LR schedule).

Where this departs from the paper: DeepSeek collected thousands of cold-start CoTs by few-shot
prompting and human post-processing of R1-Zero outputs; here they are the tasks' procedural
worked solutions (`sft.data`), or an earlier run's samples cleaned by rules (correct answer,
strict format) instead of by people.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.core import advice
from r1lab.core.checkpoint import checkpoint_to_resume, load_state
from r1lab.core.console import warn
from r1lab.core.errors import UserError
from r1lab.core.models import compute_context
from r1lab.eval.metrics import summarize
from r1lab.eval.run import sample_and_grade_shared
from r1lab.rollout import SamplingParams, make_engine
from r1lab.sft.config import SFTConfig
from r1lab.sft.data import load_rows, split_rows, write_rows
from r1lab.sft.encode import Encoded, add_special_token, data_hash, encode_rows
from r1lab.sft.loss import accumulate_gradients, check_packing, mean_nll
from r1lab.tasks import make_task
from r1lab.text.formats import OutputFormat
from r1lab.train import dist
from r1lab.train.loop import Schedule, run_loop
from r1lab.train.optim import build_optimizer, lr_at, set_lr
from r1lab.train.progress import ProgressDisplay, log
from r1lab.train.replica import Replica, load_trainable
from r1lab.train.stream import PromptStream, set_seed


@dataclass
class Data:
    train: list[Encoded]
    held_out: list[Encoded]
    steps: int  # total optimizer steps


def prepare_data(
    config: SFTConfig, run_dir: Path, model: Any, tokenizer: Any, log: Callable[[str], None]
) -> Data:
    """Load, split and encode the rows; add the special token when the data uses it."""
    train_rows, held_rows = split_rows(load_rows(config), config.data.eval_fraction)
    token = config.data.special_token
    uses_token = any(token in r.completion or token in r.prompt for r in (*train_rows, *held_rows))
    if uses_token and config.model.lora is not None and token not in tokenizer.get_vocab():
        raise UserError(
            f"the data uses {token!r}, which the model's tokenizer lacks: adding it grows the "
            "embeddings, which a LoRA adapter leaves frozen; train without model.lora first"
        )
    if uses_token and add_special_token(model, tokenizer, token):
        log(f"added {token!r} to the tokenizer (vocabulary {len(tokenizer)})")
    dist.on_main(write_rows, run_dir / "data.jsonl", train_rows, held_rows)
    name, limit = config.template.name, config.data.max_tokens
    history = config.data.history_thinking
    train, dropped = encode_rows(train_rows, tokenizer, name, limit, history)
    held_out, _ = encode_rows(held_rows, tokenizer, name, limit, history)
    if dropped:
        log(f"dropped {dropped} training sequences longer than data.max_tokens={limit}")
    if not train:
        raise UserError(f"no training rows left (held out: {len(held_rows)}, too long: {dropped})")
    steps = config.train.steps
    if steps is None:  # epochs (default 1) over the rows that survived the length limit
        steps = math.ceil((config.train.epochs or 1.0) * len(train) / config.train.batch_size)
    return Data(train, held_out[: config.eval.size], steps)


def sft(config: SFTConfig, resume: bool | str = False, progress: bool = True) -> Path:
    """Run SFT for `config`; returns the run directory (`runs/<name>/`).

    `resume=True` requires a checkpoint; `resume="auto"` resumes when one exists and starts
    fresh otherwise.
    """
    run_dir = Path(config.train.out_dir) / config.name
    checkpoint = checkpoint_to_resume(run_dir, resume)
    set_seed(config.train.seed)
    job = SFTJob(config, run_dir, checkpoint)
    state = load_state(checkpoint) if checkpoint else None
    t = config.train
    schedule = Schedule(
        job.data.steps,
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
        f"loss {row.get('loss') or float('nan'):.4f}  lr {row.get('lr', 0):.2e}  "
        f"{row.get('step_seconds', 0):.1f}s/step"
    )


class SFTJob:
    """The SFT trainer as a `train.loop.Job`."""

    files: tuple = ()
    stop_advice = "Lower optim.lr."

    def __init__(self, config: SFTConfig, run_dir: Path, checkpoint: Path | None) -> None:
        self.config = config
        model, adapter, self.tokenizer = load_trainable(config.model, checkpoint)
        self.data = prepare_data(config, run_dir, model, self.tokenizer, log)
        check_packing(model)
        self.replica = Replica(model, config.model.parallel, adapter)  # after any new token
        self.optimizer = build_optimizer(self.replica.model, config.optim)
        self.stream = PromptStream(self.data.train, config.train.seed)
        self.checkpoint = checkpoint
        self.watch = advice.RunWatch({"eval": f"eval.max_new_tokens={config.eval.max_new_tokens}"})
        if config.eval.generate:
            task = make_task(config.task.name, config.task.options)
            count = sum(ex.checkable for ex in task.examples("test"))
            small = advice.test_split(count, config.eval.generate, "the sampled evaluation")
            if small:
                warn(small)

    @property
    def model(self) -> Any:
        """What checkpoints and final/ save (the LoRA adapter, or the model)."""
        return self.replica.saved

    def step(self, step: int) -> tuple[dict[str, Any], bool]:
        """One optimizer step; returns the metrics row and whether the update was taken."""
        config, replica, optimizer = self.config, self.replica, self.optimizer
        lr = lr_at(step, self.data.steps, config.optim)
        set_lr(optimizer, lr)
        seqs = self.stream.take(config.train.batch_size)  # the whole step's, on every rank
        optimizer.zero_grad(set_to_none=True)
        with compute_context(config.model.compute_dtype, replica.weights.device):
            out = accumulate_gradients(replica, seqs, config.train.micro_batch_tokens)
        norm = replica.clip(config.optim.grad_clip)
        ok = math.isfinite(norm) and math.isfinite(out["loss"])
        if ok:
            optimizer.step()
            replica.sync()
        optimizer.zero_grad(set_to_none=True)
        stream = self.stream
        row = {
            "loss": out["loss"],
            "lr": lr,
            "grad_norm": norm if ok else None,
            "tokens": int(out["tokens"]),
            "epoch": stream.epoch + stream.position / len(stream.examples),
            "skipped_updates": 0 if ok else 1,
        }
        return row, ok

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out loss; at the start and the end also pass@1/format (`eval.generate`)."""
        config, row = self.config, {}
        if self.data.held_out:
            with compute_context(config.model.compute_dtype, self.replica.weights.device):
                tokens = config.train.micro_batch_tokens
                row["eval/loss"] = mean_nll(self.replica, self.data.held_out, tokens)
        if step in (0, self.data.steps) and config.eval.generate:
            row.update(self.generation_metrics())
        for message in self.watch.observe(row):
            warn(f"evaluation at step {step}: {message}")
        return row

    def generation_metrics(self) -> dict[str, float]:
        """pass@1, format rate and length on the task's first `eval.generate` test problems."""
        config, ev = self.config, self.config.eval
        task = make_task(config.task.name, config.task.options)
        examples = task.examples("test", limit=ev.generate)
        if not examples:
            return {}
        params = SamplingParams(
            n=ev.k, max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p
        )
        engine = make_engine(
            "prefix",
            self.replica.weights,
            self.tokenizer,
            max_prompt_tokens=config.data.max_tokens,
            compute_dtype=config.model.compute_dtype,
        )
        fmt = OutputFormat(config.data.sources[0].format, config.data.special_token)
        records = sample_and_grade_shared(
            engine,
            task,
            examples,
            self.tokenizer,
            config.template.name,
            params,
            config.train.seed + 1,
            (),
            fmt,
        )
        summary = summarize(records)
        return {f"eval/{k}": summary[k] for k in ("pass@1", "format", "length", "truncated")}

    def state(self) -> dict[str, Any]:
        return {
            **self.replica.optimizer_state(self.optimizer),
            "stream": self.stream.state(),
            "data": data_hash(self.data.train),
        }

    def load(self, state: dict[str, Any]) -> None:
        if state["data"] != data_hash(self.data.train):
            raise UserError(f"--resume: the training data changed since {self.checkpoint}")
        self.replica.load_optimizer_state(self.optimizer, state, self.checkpoint)
        self.stream.load(state["stream"])
