"""Where a run's metrics go besides `metrics.jsonl`: TensorBoard and Weights & Biases.

`train.report_to` (GRPO and SFT alike) lists the trackers: `jsonl` (always written, it is the
run's source of truth), `tensorboard` (event files under `RUN/tensorboard/`) and `wandb`.
Every row the run loop writes to metrics.jsonl — step rows and evaluation rows — goes to each
tracker with the same names (`reward/accuracy`, `eval/pass@1`, ...) at its `step`; only
numbers are sent. A resumed run continues where its checkpoint was: TensorBoard purges the
events after that step, and W&B resumes the same run (its id is kept in `RUN/wandb-id`).

W&B runs offline unless `WANDB_MODE` says otherwise (its files under `RUN/wandb/`; `wandb
sync` uploads them later), so a run never reaches for the network by surprise; the project is
`WANDB_PROJECT` or `r1lab`.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

from r1lab.core.errors import UserError
from r1lab.core.runfiles import JsonlWriter

TRACKERS = ("jsonl", "tensorboard", "wandb")


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def check_report_to(key: str, report_to: Sequence[str]) -> None:
    """Known trackers only, named once each."""
    unknown = [name for name in report_to if name not in TRACKERS]
    if unknown or len(set(report_to)) != len(report_to):
        raise UserError(
            f"{key} must list distinct trackers from {', '.join(TRACKERS)}, got {list(report_to)}"
        )


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row, without its step.

    >>> scalars({"step": 3, "reward": 0.5, "ok": True, "note": "x", "kl": None})
    {'reward': 0.5, 'ok': 1.0}
    """
    out = {}
    for key, value in row.items():
        if key != "step" and isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


class TensorBoard:
    """Scalars in TensorBoard event files under `run_dir/tensorboard/`."""

    def __init__(self, run_dir: Path, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "train.report_to: tensorboard needs the tensorboard package: "
                "pip install 'r1lab[track]'"
            ) from None
        # a resumed run drops the events an abandoned attempt wrote after its checkpoint
        purge = start + 1 if start else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, row: dict[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandB:
    """A W&B run (offline unless WANDB_MODE says otherwise), resumed with the training run."""

    def __init__(self, run_dir: Path, config: Any) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                "train.report_to: wandb needs the wandb package: pip install 'r1lab[track]'"
            ) from None
        id_file = run_dir / "wandb-id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "r1lab"),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=asdict(config) if is_dataclass(config) else None,
        )

    def log(self, row: dict[str, Any]) -> None:
        self.run.log(scalars(row), step=row["step"])

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_trackers(
    report_to: Sequence[str], run_dir: Path, config: Any, start: int
) -> list[Tracker]:
    """The trackers `report_to` names besides jsonl (which the run loop writes itself)."""
    check_report_to("train.report_to", report_to)
    trackers: list[Tracker] = []
    if "tensorboard" in report_to:
        trackers.append(TensorBoard(run_dir, start))
    if "wandb" in report_to:
        trackers.append(WandB(run_dir, config))
    return trackers


class Tracked:
    """metrics.jsonl and the trackers `report_to` names, written together: call it with a
    row. Used as a context manager, it closes the trackers at the end (a run that raised is
    marked failed in W&B)."""

    def __init__(
        self, metrics: JsonlWriter, report_to: Sequence[str], run_dir: Path, config: Any, start: int
    ) -> None:
        self.metrics = metrics
        self.trackers = open_trackers(report_to, run_dir, config, start)

    def __call__(self, row: dict[str, Any]) -> None:
        self.metrics.write(row)
        for tracker in self.trackers:
            tracker.log(row)

    def __enter__(self) -> Tracked:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        for tracker in self.trackers:
            tracker.close(failed=kind is not None)
