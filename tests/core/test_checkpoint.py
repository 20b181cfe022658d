"""Checkpoints: atomic and durable writes, readable permissions, what each one keeps, and a
clear error for a damaged one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from r1lab.core import checkpoint as ckpt
from r1lab.core.errors import UserError


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return tiny_llama


def save(run_dir: Path, step: int, tiny, keep: int = 2) -> Path:
    model, tokenizer = tiny
    return ckpt.save_checkpoint(run_dir, step, model, tokenizer, {"step": step}, keep)


def test_only_the_newest_checkpoint_keeps_its_trainer_state(tmp_path, tiny):
    """A resume starts from the newest: the optimizer state of older ones is dead weight."""
    for step in (1, 2, 3):
        save(tmp_path, step, tiny, keep=2)
    saved = ckpt.list_checkpoints(tmp_path, resumable=False)
    assert [p.name for p in saved] == ["step-000002", "step-000003"]
    assert not (saved[0] / ckpt.STATE_FILE).exists() and (saved[0] / "config.json").exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000003"]
    assert ckpt.load_state(ckpt.latest_checkpoint(tmp_path)) == {"step": 3}


def test_files_are_flushed_before_the_rename(tmp_path, tiny, monkeypatch):
    events: list[str] = []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        Path, "rename", lambda self, to: (events.append("rename"), real_rename(self, to))[1]
    )
    save(tmp_path, 1, tiny)
    rename = events.index("rename")
    assert events[:rename].count("fsync") >= 3  # weights, config, state ... then the rename
    assert "fsync" in events[rename + 1 :]  # and the directory entry of the rename


def test_checkpoints_are_readable_as_the_umask_says(tmp_path, tiny):
    old = os.umask(0o022)
    try:
        out = save(tmp_path, 1, tiny)
        final = ckpt.save_model_dir(*tiny, tmp_path / "final")
    finally:
        os.umask(old)
    for path in (out, final):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        files = [p for p in path.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        for file in files:  # the weights too: safetensors alone would make them 0600
            assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_a_damaged_trainer_state_is_a_clear_error(tmp_path, tiny):
    out = save(tmp_path, 1, tiny)
    (out / ckpt.STATE_FILE).write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(UserError, match=r"trainer_state.pt cannot be read.*damaged.*Move"):
        ckpt.load_state(out)


def test_a_finished_run_can_keep_final_only(tmp_path, tiny):
    save(tmp_path, 1, tiny)
    ckpt.prune_checkpoints(tmp_path)  # no final/ yet: nothing is deleted
    assert ckpt.list_checkpoints(tmp_path)
    ckpt.save_model_dir(*tiny, tmp_path / "final")
    ckpt.prune_checkpoints(tmp_path)
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "final").exists()


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ckpt.checkpoint_to_resume(tmp_path / "run", "auto")


def test_state_round_trips_tensors(tmp_path, tiny):
    model, tokenizer = tiny
    state = {"step": 1, "t": torch.arange(3)}
    out = ckpt.save_checkpoint(tmp_path, 1, model, tokenizer, state, 1)
    assert torch.equal(ckpt.load_state(out)["t"], torch.arange(3))
