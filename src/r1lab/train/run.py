"""A GRPO run: the loop around `grpo` steps, and the run directory it leaves behind.

`runs/<name>/` holds `config.yaml` (fully resolved), `metrics.jsonl` (one row per step plus
evaluation rows), `samples.jsonl`, `checkpoints/step-XXXXXX/` (atomic, HF format + trainer
state) and `final/`. `resume` continues from the newest checkpoint and, on the CPU with the
same seed, reproduces the rows an uninterrupted run would have written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
from r1lab.config import Config, dump_config
from r1lab.errors import UserError
from r1lab.evaluate import sample_and_grade, summarize
from r1lab.memory import DiskBackedWeights, between_phases, configure_allocator, supported
from r1lab.models import compute_context, load_model, pick_device
from r1lab.rewards import count_reflections, format_ok
from r1lab.rollout import SamplingParams, make_engine
from r1lab.tasks import make_task
from r1lab.tasks.base import Task
from r1lab.templates import pick_shots
from r1lab.tracking import JsonlWriter, ProgressDisplay
from r1lab.train.common import PromptStream, build_optimizer, lr_at, set_seed
from r1lab.train.grpo import (
    build_batch,
    make_reference,
    optimize,
    reward_terms,
    rollout_step,
)
from r1lab.types import Example


class TrainingStopped(UserError):
    """The run cannot usefully go on (e.g. the loss kept going non-finite)."""


def run_dir_of(config: Config) -> Path:
    return Path(config.train.out_dir) / config.name


def evaluate_policy(
    config: Config,
    engine: Any,
    task: Task,
    tokenizer: Any,
    examples: Sequence[Example],
    shots: Sequence[Example],
) -> dict[str, float]:
    """Held-out pass@1 over k samples, under a fixed seed that leaves the training RNG alone."""
    if not examples:
        return {}
    ev = config.eval
    params = SamplingParams(
        n=ev.k,
        max_new_tokens=ev.max_new_tokens or config.generation.max_new_tokens,
        temperature=ev.temperature,
        top_p=ev.top_p,
        stop=tuple(config.generation.stop),
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed + 1)
        records = sample_and_grade(
            engine, task, examples, tokenizer, config.template.name, params, shots
        )
    summary = summarize(records)
    return {f"eval/{k}": v for k, v in summary.items()}


def _step_metrics(
    config: Config, task: Task, out: dict[str, Any], opt: dict[str, float]
) -> dict[str, Any]:
    """The per-step row of metrics.jsonl (the run-directory contract)."""
    prefill = out["prompts"][0].prefill if out["prompts"] else ""
    gens = [
        (ex, gen) for ex, grp in zip(out["examples"], out["groups"], strict=True) for gen in grp
    ]
    n = max(1, len(gens))
    lengths = [len(g.completion_ids) for _, g in gens] or [0]
    texts = [prefill + g.text for _, g in gens]
    rewards = out["rewards"] or [0.0]
    graded = [task.score(t, ex) for t, (ex, _) in zip(texts, gens, strict=True) if ex.checkable]
    row: dict[str, Any] = {
        "reward": sum(rewards) / len(rewards),
        "accuracy": sum(graded) / len(graded) if graded else None,  # general prompts: no rule
        "format": sum(format_ok(t) for t in texts) / n,
    }
    for name in [t.name for t in reward_terms(config)]:  # every term, even with no groups
        present = [v for v in out["terms"].get(name, []) if v is not None]
        row[f"reward/{name}"] = sum(present) / len(present) if present else None
    row.update(
        completion_len_mean=sum(lengths) / len(lengths),
        completion_len_max=max(lengths),
        truncated_frac=sum(not g.finished for _, g in gens) / n,
        reflection_words=sum(count_reflections(t) for t in texts) / n,
        reflection_frac=sum(count_reflections(t) > 0 for t in texts) / n,
        kl=opt.get("kl", 0.0),
        clip_frac=opt.get("clip_frac", 0.0),
        entropy=opt.get("entropy"),
        grad_norm=opt.get("grad_norm"),
        loss=opt.get("loss"),
        zero_std_frac=out["zero_std_frac"],
        skipped_updates=opt.get("skipped_updates", 0.0),
        gen_tokens_per_s=out["sampled_tokens"] / max(out["gen_seconds"], 1e-9),
    )
    # where the step's time went (seconds): generation, old/ref log-probs, the policy's
    # forward/backward, clipping + optimizer update, and refreshing the engine's weights
    row["time/generate"] = out["gen_seconds"]
    for part in ("logprobs", "policy", "optimizer", "sync"):
        row[f"time/{part}"] = opt.get(f"time/{part}", 0.0)
    return row


def _sample_rows(step: int, out: dict[str, Any]) -> list[dict[str, Any]]:
    rows, i = [], 0
    for ex, prompt, group in zip(out["examples"], out["prompts"], out["groups"], strict=True):
        for gen in group:
            terms = {name: values[i] for name, values in out["terms"].items()}
            rows.append(
                {
                    "step": step,
                    "id": ex.id,
                    "prompt": prompt.text,
                    "answer": ex.answer,
                    "completion": gen.text,
                    "reward": out["rewards"][i],
                    "rewards": terms,
                }
            )
            i += 1
    return rows


def train(config: Config, resume: bool | str = False, progress: bool = True) -> Path:
    """Run GRPO for `config`; returns the run directory.

    `resume=True` requires a checkpoint; `resume="auto"` resumes when one exists and starts
    fresh otherwise (what `r1lab zero` does, so re-running the demo continues or no-ops).
    """
    run_dir = run_dir_of(config)
    checkpoint = checkpoint_to_resume(run_dir, resume)
    set_seed(config.train.seed)
    task = make_task(config.task.name, config.task.options)
    train_examples = task.examples("train")
    # pass@1 is over problems a rule can check: general prompts are left out of evaluation.
    test_examples = [ex for ex in task.examples("test") if ex.checkable][: config.eval.size]
    shots = pick_shots(task, train_examples, config.template.shots, config.template.shot_style)
    state = load_state(checkpoint) if checkpoint else None
    model, tokenizer = load_model(str(checkpoint or config.model.spec), config.model.dtype)
    model.to(pick_device(config.model.device))
    ref, offloaded = None, None
    if config.grpo.beta > 0:
        # pi_ref is the initial policy, or the policy at the last reset (saved with the state).
        initial = model if state is None else load_model(config.model.spec, config.model.dtype)[0]
        ref = make_reference(initial.to(model.device), config.model.compute_dtype)
        if state is not None and "ref" in state:
            ref.load_state_dict(state["ref"])
        if config.grpo.offload_reference:
            if not supported() or model.device.type != "cpu":
                raise UserError(
                    "grpo.offload_reference maps the reference's weights to a file in CPU "
                    "memory: it needs Linux and a CPU run; set it false"
                )
            offloaded = DiskBackedWeights(ref, run_dir)
    configure_allocator(release=config.grpo.release_memory)
    optimizer = build_optimizer(model, config.optim)
    stream = PromptStream(train_examples, config.train.seed)
    generator = torch.Generator().manual_seed(config.train.seed)
    engine = make_engine(
        config.generation.engine,
        model,
        tokenizer,
        max_prompt_tokens=config.generation.max_prompt_tokens,
        compute_dtype=config.model.compute_dtype,
        keep_weights=False,
    )
    metrics = JsonlWriter(run_dir / "metrics.jsonl")
    samples = JsonlWriter(run_dir / "samples.jsonl")
    start, bad_steps, ref_reset = 0, 0, False
    if state is not None:
        start, bad_steps = state["step"], state["bad_steps"]
        ref_reset = "ref" in state
        optimizer.load_state_dict(state["optimizer"])
        stream.load(state["stream"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        metrics.truncate_after(start)
        samples.truncate_after(start)
        if start >= config.train.steps:
            if not (run_dir / "final").exists():  # stopped between the last save and final/
                save_model_dir(model, tokenizer, run_dir / "final")
            return run_dir
    else:
        # A fresh start (`resume="auto"` after a crash before the first checkpoint): rows of
        # the abandoned attempt would otherwise be followed by a second step 0, 1, ...
        metrics.clear()
        samples.clear()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.yaml")
    if start == 0 and test_examples:
        metrics.write(
            {"step": 0, **evaluate_policy(config, engine, task, tokenizer, test_examples, shots)}
        )
    model.train()
    with ProgressDisplay(config.train.steps, start, enabled=progress) as display:
        for step in range(start + 1, config.train.steps + 1):
            began = time.perf_counter()
            lr = lr_at(step, config.train.steps, config.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = rollout_step(config, engine, task, stream.take, tokenizer, shots)
            between_phases()  # the generation's caches
            opt: dict[str, float] = {"updates": 0.0, "skipped_updates": 0.0}
            if out["groups"]:
                with compute_context(config.model.compute_dtype, model.device):
                    began_batch = time.perf_counter()
                    batch = build_batch(
                        model, ref, out["groups"], out["rewards"], config, tokenizer.pad_token_id
                    )
                    logprob_seconds = time.perf_counter() - began_batch
                    if offloaded is not None:
                        offloaded.release()
                    between_phases()
                    opt = optimize(model, optimizer, batch, config, generator)
                    opt["time/logprobs"] = logprob_seconds
            began_sync = time.perf_counter()
            engine.sync_weights(model)
            opt["time/sync"] = time.perf_counter() - began_sync
            bad_steps = bad_steps + 1 if opt["skipped_updates"] and not opt["updates"] else 0
            if (
                ref is not None
                and config.grpo.ref_reset_every
                and step % config.grpo.ref_reset_every == 0
            ):
                ref.load_state_dict(model.state_dict())
                ref_reset = True
                if offloaded is not None:
                    offloaded.release()
            row = {
                "step": step,
                **_step_metrics(config, task, out, opt),
                "lr": lr,
                "step_seconds": time.perf_counter() - began,
            }
            metrics.write(row)
            if config.train.sample_every and step % config.train.sample_every == 0:
                for sample in _sample_rows(step, out):
                    samples.write(sample)
            if bad_steps >= config.train.max_bad_steps:
                raise TrainingStopped(
                    f"the loss was non-finite for {bad_steps} steps in a row (last: step {step}); "
                    f"updates were skipped and the last checkpoint in {run_dir / 'checkpoints'} "
                    "is intact. Lower optim.lr or check the rewards."
                )
            is_last = step == config.train.steps
            if test_examples and (is_last or (config.eval.every and step % config.eval.every == 0)):
                metrics.write(
                    {
                        "step": step,
                        **evaluate_policy(config, engine, task, tokenizer, test_examples, shots),
                    }
                )
            display.update(step, row)
            if is_last or (config.train.save_every and step % config.train.save_every == 0):
                state = {
                    "step": step,
                    "bad_steps": bad_steps,
                    "optimizer": optimizer.state_dict(),
                    "stream": stream.state(),
                    "generator": generator.get_state(),
                    "rng": rng_state(),
                }
                if ref_reset and ref is not None:
                    state["ref"] = ref.state_dict()
                save_checkpoint(
                    run_dir, step, model, tokenizer, state, config.train.keep_checkpoints
                )
    save_model_dir(model, tokenizer, run_dir / "final")
    return run_dir
