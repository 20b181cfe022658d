"""Atomic checkpoints: a Hugging Face model directory plus the trainer state to resume from.

Layout of `checkpoints/step-000040/`: the model (`config.json`, `model.safetensors`), the
tokenizer, and `trainer_state.pt` (optimizer, RNG, data position, counters). Everything is
written to a temporary sibling directory and renamed into place, so a crash mid-save leaves the
previous checkpoint intact and never a half-written one that `--resume` would pick up.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from r1lab.core.errors import UserError

STATE_FILE = "trainer_state.pt"


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_model_dir(
    model: Any, tokenizer: Any, out: Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write a loadable HF directory at `out` atomically; `extra` goes into trainer_state.pt."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, so a resumed run samples the same tokens."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any], keep: int
) -> Path:
    """Save step `step` and prune all but the newest `keep` checkpoints."""
    out = save_model_dir(model, tokenizer, step_dir(run_dir, step), extra=state)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return out


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary and half-written ones are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, weights_only=False)


def checkpoint_to_resume(run_dir: Path, resume: bool | str) -> Path | None:
    """The checkpoint to continue from, shared by every trainer.

    `resume=True` requires a checkpoint; `"auto"` resumes when one exists and starts fresh
    otherwise; `False` refuses to write over an existing run.
    """
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume is True and checkpoint is None:
        raise UserError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise UserError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another "
            "name with --set name=..."
        )
    return checkpoint
