"""Supervised fine-tuning: R1's cold start (and the SFT of rejection sampling and distillation).

Each step:
  1. draw `batch_size` sequences `[rendered prompt | completion | EOS]` from a seeded stream
     (a fresh shuffle every epoch; its position is saved with every checkpoint);
  2. pack them, padding-free, into micro-batches of at most `micro_batch_tokens` tokens: one
     row per micro-batch, position ids restarting at each sequence, so attention stays inside
     its own sequence (transformers builds the block-diagonal mask from the position ids);
  3. forward/backward each micro-batch: the loss is the negative log-likelihood of the
     completion tokens (+ EOS) only, summed and divided by the completion tokens of the *whole
     step*, so the gradient is the same however the step is split into micro-batches;
  4. clip the gradient norm and take an AdamW step at the scheduled learning rate;
  5. every `eval.every` steps the loss on the held-out split (optionally pass@1/format on
     the task's test split at the start and the end); checkpoints, `final/` and
     `metrics.jsonl` follow the GRPO run-directory contract (train/run.py), so `--resume`
     continues exactly: data position, RNG, optimizer state and LR schedule.

Log-probs come from `logprobs.hidden_logprobs`: only completion positions go through the LM
head, a chunk at a time, so no [B, T, V] logits are ever materialised.

Where this departs from the paper: DeepSeek collected thousands of cold-start CoTs by few-shot
prompting and human post-processing of R1-Zero outputs; here they are the tasks' procedural
worked solutions (sft_data.py), or an earlier run's samples cleaned by rules (correct answer,
strict format) instead of by people.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1lab.checkpoint import (
    checkpoint_to_resume,
    load_state,
    rng_state,
    save_checkpoint,
    save_model_dir,
    set_rng_state,
)
from r1lab.config import dump_config
from r1lab.errors import UserError
from r1lab.logprobs import hidden_logprobs
from r1lab.models import compute_context, load_model, pick_device
from r1lab.sft_config import SFTConfig
from r1lab.sft_data import SFTRow, load_rows, split_rows, write_rows
from r1lab.tracking import JsonlWriter, ProgressDisplay
from r1lab.train.common import PromptStream, build_optimizer, lr_at, set_seed
from r1lab.train.run import TrainingStopped


@dataclass(frozen=True)
class Encoded:
    """One training sequence: `ids[start:]` (completion + EOS) are the loss targets."""

    ids: tuple[int, ...]
    start: int

    @property
    def targets(self) -> int:
        return len(self.ids) - self.start


# --------------------------------------------------------------------------- tokenizing
def add_special_token(model: Any, tokenizer: Any, token: str) -> bool:
    """Make `token` one vocabulary entry (and the embeddings one row longer) if it is new.

    It is added as an atomic, *non-skipped* token: `decode(..., skip_special_tokens=True)`
    (what the rollout engines do) keeps it, so samples and rewards still see the delimiter of
    R1's `|special_token|reasoning|special_token|summary` format.
    """
    from tokenizers import AddedToken

    if token in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
    model.resize_token_embeddings(len(tokenizer))
    return True


def strip_prefill(completion: str, prefill: str, row_id: str) -> str:
    """The completion after the text the template already wrote (e.g. `<think>\\n`)."""
    if not prefill or completion.startswith(prefill):
        return completion[len(prefill) :]
    body, core = completion.lstrip(), prefill.strip()
    if core and body.startswith(core):
        return body[len(core) :].lstrip()
    raise UserError(
        f"row {row_id!r}: the template prefills {prefill!r} but the completion starts with "
        f"{completion[:24]!r}; choose a template without a prefill for this data"
    )


def encode_row(row: SFTRow, tokenizer: Any, template: str) -> Encoded:
    """`[prompt | completion | EOS]` token ids, the prompt rendered as at generation time.

    Prompt and completion are tokenized separately, as the rollout engine sees them. A
    completion following a prompt that ends without whitespace (the R1-Zero template's
    `Assistant:`) starts with one space, as the worked shots in prompts do.
    """
    from r1lab.templates import render

    prompt = render(template, row.prompt, tokenizer)
    completion = strip_prefill(row.completion, prompt.prefill, row.id)
    if prompt.text and not prompt.text[-1].isspace() and not completion[:1].isspace():
        completion = " " + completion
    prompt_ids = tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    if not prompt_ids:
        raise UserError(f"row {row.id!r}: the rendered prompt has no tokens")
    return Encoded(tuple(prompt_ids + completion_ids + [tokenizer.eos_token_id]), len(prompt_ids))


def encode_rows(
    rows: Sequence[SFTRow], tokenizer: Any, template: str, max_tokens: int
) -> tuple[list[Encoded], int]:
    """Encoded rows within `max_tokens`, and how many longer ones were dropped."""
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token: SFT teaches the model where to stop")
    encoded = [encode_row(row, tokenizer, template) for row in rows]
    kept = [s for s in encoded if len(s.ids) <= max_tokens]
    return kept, len(encoded) - len(kept)


def data_hash(seqs: Sequence[Encoded]) -> str:
    """Fingerprint of the training sequences: a resume must see the same data."""
    digest = hashlib.sha256()
    for s in seqs:
        digest.update(repr((s.start, s.ids)).encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- the loss
def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into micro-batches of at most `capacity` tokens (first-fit decreasing).

    Every index appears exactly once; a sequence longer than `capacity` gets its own batch.

    >>> pack([5, 3, 4, 2], 7)
    [[0, 3], [2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def packed_logprobs(model: Any, seqs: Sequence[Encoded]) -> torch.Tensor:
    """Log-probs of every loss target of `seqs`, run as one packed row: [n_targets].

    input_ids/position_ids [1, N]: sequences back to back, positions restarting at 0, no
    attention mask, so the model attends within each sequence only. Hidden state t predicts
    token t+1; a target is never a sequence's first token (the prompt comes first), so no
    prediction crosses a boundary.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([t for s in seqs for t in s.ids], device=device)[None]  # [1, N]
    positions = torch.cat([torch.arange(len(s.ids), device=device) for s in seqs])[None]
    starts = torch.tensor([s.start for s in seqs for _ in s.ids], device=device)  # [N]
    target = positions >= starts  # [1, N] bool: the completion (+ EOS) tokens
    hidden = model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False)[0]
    logp, _ = hidden_logprobs(model, hidden[:, :-1], ids[:, 1:], target[:, 1:])  # [1, N-1]
    return logp[target[:, 1:]]  # [n_targets]


def accumulate_gradients(
    model: Any, seqs: Sequence[Encoded], micro_batch_tokens: int
) -> dict[str, float]:
    """Backward the step's mean token NLL over packed micro-batches; grads accumulate.

    Each micro-batch's summed NLL is divided by the *step's* target count, so the gradients
    add up to those of one big batch, whatever `micro_batch_tokens` is.
    """
    tokens = sum(s.targets for s in seqs)
    loss_sum = 0.0
    for index in pack([len(s.ids) for s in seqs], micro_batch_tokens):
        loss = -packed_logprobs(model, [seqs[i] for i in index]).sum() / tokens
        loss.backward()
        loss_sum += float(loss.detach())
    return {"loss": loss_sum, "tokens": float(tokens)}


@torch.no_grad()
def mean_nll(model: Any, seqs: Sequence[Encoded], micro_batch_tokens: int) -> float:
    """Mean NLL per target token of `seqs` (the held-out loss), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        total = sum(
            float(-packed_logprobs(model, [seqs[i] for i in index]).sum())
            for index in pack([len(s.ids) for s in seqs], micro_batch_tokens)
        )
    finally:
        model.train(was_training)
    return total / max(1, sum(s.targets for s in seqs))


@torch.no_grad()
def check_packing(model: Any) -> None:
    """Fail early when a model's attention ignores packed position ids (cross-talk)."""
    a, b = Encoded(tuple(range(1, 8)), 1), Encoded(tuple(range(3, 9)), 1)
    was_training = model.training
    model.eval()
    try:
        together = packed_logprobs(model, [a, b])
        apart = torch.cat([packed_logprobs(model, [a]), packed_logprobs(model, [b])])
    finally:
        model.train(was_training)
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if not torch.allclose(together, apart, atol=tolerance):
        attention = getattr(model.config, "_attn_implementation", None)
        raise UserError(
            f"{type(model).__name__} ({attention} attention) lets "
            "packed sequences attend to each other; SFT packs sequences and needs an attention "
            "that reads position ids (sdpa, eager, flash_attention_2)"
        )


# --------------------------------------------------------------------------- evaluation
def generation_metrics(config: SFTConfig, model: Any, tokenizer: Any) -> dict[str, float]:
    """pass@1, format rate and length on the task's first `eval.generate` test problems."""
    from r1lab.evaluate import sample_and_grade, summarize
    from r1lab.rollout import SamplingParams, make_engine
    from r1lab.tasks import make_task

    task = make_task(config.task.name, config.task.options)
    examples = task.examples("test", limit=config.eval.generate)
    if not examples:
        return {}
    ev = config.eval
    params = SamplingParams(
        n=1, max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p
    )
    engine = make_engine(
        "prefix",
        model,
        tokenizer,
        max_prompt_tokens=config.data.max_tokens,
        compute_dtype=config.model.compute_dtype,
    )
    with torch.random.fork_rng():  # the training RNG stays where it was
        torch.manual_seed(config.train.seed + 1)
        records = sample_and_grade(engine, task, examples, tokenizer, config.template.name, params)
    summary = summarize(records)
    return {f"eval/{k}": summary[k] for k in ("pass@1", "format", "length")}


def evaluate(
    config: SFTConfig, model: Any, tokenizer: Any, held_out: Sequence[Encoded], generate: bool
) -> dict[str, float]:
    row: dict[str, float] = {}
    if held_out:
        with compute_context(config.model.compute_dtype, model.device):
            row["eval/loss"] = mean_nll(model, held_out, config.train.micro_batch_tokens)
    if generate and config.eval.generate:
        row.update(generation_metrics(config, model, tokenizer))
    return row


class SFTProgress(ProgressDisplay):
    def update(self, step: int, metrics: dict[str, Any]) -> None:
        stats = (
            f"loss {metrics.get('loss') or float('nan'):.4f}  lr {metrics.get('lr', 0):.2e}  "
            f"{metrics.get('step_seconds', 0):.1f}s/step"
        )
        self.progress.update(self.task, completed=step, stats=stats)


# --------------------------------------------------------------------------- the run
@dataclass
class Data:
    train: list[Encoded]
    held_out: list[Encoded]
    steps: int  # total optimizer steps


def prepare_data(config: SFTConfig, run_dir: Path, model: Any, tokenizer: Any, log: Any) -> Data:
    """Load, split and encode the rows; add the special token when the data uses it."""
    train_rows, held_rows = split_rows(load_rows(config), config.data.eval_fraction)
    token = config.data.special_token
    uses_token = any(token in r.completion or token in r.prompt for r in (*train_rows, *held_rows))
    if uses_token and add_special_token(model, tokenizer, token):
        log(f"added {token!r} to the tokenizer (vocabulary {len(tokenizer)})")
    write_rows(run_dir / "data.jsonl", train_rows, held_rows)
    name, limit = config.template.name, config.data.max_tokens
    train, dropped = encode_rows(train_rows, tokenizer, name, limit)
    held_out, _ = encode_rows(held_rows, tokenizer, name, limit)
    if dropped:
        log(f"dropped {dropped} training rows longer than data.max_tokens={limit}")
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
    display = SFTProgress(1, enabled=progress)
    model, tokenizer = load_model(str(checkpoint or config.model.spec), config.model.dtype)
    model.to(pick_device(config.model.device))
    data = prepare_data(config, run_dir, model, tokenizer, display.log)
    check_packing(model)
    optimizer = build_optimizer(model, config.optim)
    stream = PromptStream(data.train, config.train.seed)
    metrics = JsonlWriter(run_dir / "metrics.jsonl")
    start, bad_steps = 0, 0
    if checkpoint is not None:
        state = load_state(checkpoint)
        if state["data"] != data_hash(data.train):
            raise UserError(f"--resume: the training data changed since {checkpoint}")
        start, bad_steps = state["step"], state["bad_steps"]
        optimizer.load_state_dict(state["optimizer"])
        stream.load(state["stream"])
        set_rng_state(state["rng"])
        metrics.truncate_after(start)
    else:
        metrics.clear()  # a fresh start where an abandoned attempt left rows
    dump_config(config, run_dir / "config.yaml")  # its to_dict() is all dump_config needs
    if start == 0:
        metrics.write({"step": 0, **evaluate(config, model, tokenizer, data.held_out, True)})
    model.train()
    display.progress.update(display.task, total=data.steps, completed=start)
    with display:
        for step in range(start + 1, data.steps + 1):
            began = time.perf_counter()
            row, ok = train_step(config, model, optimizer, stream, step, data.steps)
            bad_steps = 0 if ok else bad_steps + 1
            row["step_seconds"] = time.perf_counter() - began
            metrics.write(row)
            display.update(step, row)
            if bad_steps >= config.train.max_bad_steps:
                raise TrainingStopped(
                    f"the loss was non-finite for {bad_steps} steps in a row (last: step {step}); "
                    f"the last checkpoint in {run_dir / 'checkpoints'} is intact. Lower optim.lr."
                )
            last = step == data.steps
            if last or (config.eval.every and step % config.eval.every == 0):
                metrics.write(
                    {"step": step, **evaluate(config, model, tokenizer, data.held_out, last)}
                )
            if last or (config.train.save_every and step % config.train.save_every == 0):
                state = {"step": step, "bad_steps": bad_steps, "optimizer": optimizer.state_dict()}
                state.update(stream=stream.state(), rng=rng_state(), data=data_hash(data.train))
                keep = config.train.keep_checkpoints
                save_checkpoint(run_dir, step, model, tokenizer, state, keep)
    if start < data.steps or not (run_dir / "final").exists():  # also: died before final/
        save_model_dir(model, tokenizer, run_dir / "final")
    return run_dir


def train_step(
    config: SFTConfig,
    model: Any,
    optimizer: torch.optim.Optimizer,
    stream: PromptStream,
    step: int,
    total: int,
) -> tuple[dict[str, Any], bool]:
    """One optimizer step; returns the metrics row and whether the update was taken."""
    lr = lr_at(step, total, config.optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    seqs = stream.take(config.train.batch_size)
    optimizer.zero_grad(set_to_none=True)
    with compute_context(config.model.compute_dtype, model.device):
        out = accumulate_gradients(model, seqs, config.train.micro_batch_tokens)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    ok = bool(torch.isfinite(norm)) and math.isfinite(out["loss"])
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    row = {
        "step": step,
        "loss": out["loss"],
        "lr": lr,
        "grad_norm": float(norm) if ok else None,
        "tokens": int(out["tokens"]),
        "epoch": stream.epoch + stream.position / len(stream.examples),
        "skipped_updates": 0 if ok else 1,
    }
    return row, ok
