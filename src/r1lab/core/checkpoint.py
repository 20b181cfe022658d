"""Atomic, durable checkpoints: a Hugging Face model directory plus the trainer state.

Layout of `checkpoints/step-000040/`: the model (`config.json`, `model.safetensors`; a LoRA
run saves its adapter instead, `core/lora.py`), the tokenizer, and `trainer_state.pt`
(optimizer, RNG, data position, counters). Everything is
written to a temporary sibling directory, flushed to disk (`fsync`), then renamed into place
and the rename flushed too: a crash mid-save leaves the previous checkpoint intact, and a
power loss cannot leave a renamed but empty file that `--resume` would pick up.

Only the newest checkpoint keeps its trainer state: a resume always starts from the newest, so
an older checkpoint keeps just its model (for `r1lab eval --run`), a third of the disk.
Directories are readable as the user's umask says, so colleagues can load the models.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from r1lab.core.errors import UserError
from r1lab.core.lora import ADAPTER_CONFIG, ADAPTER_DIR, is_peft, merged
from r1lab.core.runfiles import check_out_dir, fsync_dir, fsync_tree, umask

STATE_FILE = "trainer_state.pt"


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_model_dir(
    model: Any,
    tokenizer: Any,
    out: Path,
    extra: dict[str, Any] | None = None,
    adapter: Any = None,
) -> Path:
    """Write a loadable HF directory at `out` atomically; `extra` goes into trainer_state.pt,
    and a LoRA model `adapter` (whose merge `model` is) into `out/adapter/`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _save(model, tmp)
        tokenizer.save_pretrained(tmp)
        if adapter is not None:
            _save(adapter, tmp / ADAPTER_DIR)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        _readable(tmp)
        fsync_tree(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            tmp.rename(out)
            fsync_dir(out.parent)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
            fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _readable(root: Path) -> None:
    """Give `root` and everything below it the permissions the umask gives new files and
    directories: `mkdtemp` makes `root` private (0700) and safetensors writes its weights
    file 0600, which a colleague could not load."""
    mask = umask()
    for path in (root, *root.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _save(model: Any, out: Path) -> None:
    if is_peft(model):  # the adapter alone (the embeddings are never trained: don't check)
        model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(out, safe_serialization=True)


def save_final(model: Any, tokenizer: Any, out: Path) -> Path:
    """A run's `final/`: always a plain model directory. A LoRA model is saved merged (in
    fp32, `core.lora.merged`), with the adapter it came from in `final/adapter/`."""
    if is_peft(model):
        return save_model_dir(merged(model), tokenizer, out, adapter=model)
    return save_model_dir(model, tokenizer, out)


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
    """Save step `step`; keep the newest `keep` checkpoints, only the newest with its state."""
    out = save_model_dir(model, tokenizer, step_dir(run_dir, step), extra=state)
    found = list_checkpoints(run_dir, resumable=False)
    for old in found[:-keep]:
        shutil.rmtree(old)
    for old in found[-keep:-1]:
        (old / STATE_FILE).unlink(missing_ok=True)
    return out


def list_checkpoints(run_dir: Path, resumable: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first: with their trainer state (`resumable`), or every
    saved model. Temporary and half-written directories are never listed."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    markers = (STATE_FILE,) if resumable else ("config.json", ADAPTER_CONFIG)
    found = [
        p
        for p in root.glob("step-*")
        if p.name[5:].isdigit() and any((p / marker).exists() for marker in markers)
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, or a clear error when the file cannot be read."""
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # truncated, overwritten, not a torch file: all unreadable
        raise UserError(
            f"--resume: {path} cannot be read ({type(err).__name__}: {err}); the checkpoint is "
            f"damaged. Move {checkpoint} aside to resume from the one before it, or start the "
            "run again under another name"
        ) from err


def prune_checkpoints(run_dir: Path) -> None:
    """Delete `checkpoints/` of a finished run that keeps `final/` only."""
    root = Path(run_dir) / "checkpoints"
    if root.exists() and (Path(run_dir) / "final" / "config.json").exists():
        shutil.rmtree(root)


def checkpoint_to_resume(run_dir: Path, resume: bool | str) -> Path | None:
    """The checkpoint to continue from, shared by every trainer.

    `resume=True` requires a checkpoint; `"auto"` resumes when one exists and starts fresh
    otherwise; `False` refuses to write over an existing run.
    """
    check_out_dir(run_dir, "run directory")
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume is True and checkpoint is None:
        raise UserError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise UserError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another "
            "name with --set name=..."
        )
    return checkpoint

