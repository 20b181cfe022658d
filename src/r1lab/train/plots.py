"""Figures of a run: the R1-Zero story (reward, accuracy, thinking length, reflection) as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_jsonl


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: Path) -> list[Path]:
    """Write reward.png, length.png and reflection.png under `run_dir/plots`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"{run_dir} has no metrics.jsonl: is it a run directory?")
    rows = read_jsonl(metrics)
    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    figures = {
        "reward.png": (
            "reward and accuracy",
            [
                ("reward", "reward (train)"),
                ("accuracy", "accuracy (train)"),
                ("format", "format (train)"),
                ("eval/pass@1", "pass@1 (held-out)"),
            ],
        ),
        "length.png": (
            "mean response length (tokens)",
            [
                ("completion_len_mean", "train completions"),
                ("eval/length", "held-out"),
            ],
        ),
        "reflection.png": (
            "reflection words per completion ('wait', 're-check', ...)",
            [
                ("reflection_words", "mean count"),
                ("reflection_frac", "share with any"),
            ],
        ),
    }
    written = []
    for name, (title, series) in figures.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for key, label in series:
            steps, values = _series(rows, key)
            if steps:
                marker = "o" if key.startswith("eval/") else None
                ax.plot(steps, values, label=label, marker=marker)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
