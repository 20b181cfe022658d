"""Figures of a run (`r1lab plot RUN`), as PNGs under `RUN/plots/`.

A GRPO run gets what an RL practitioner looks at first:
- `reward.png`: total reward, accuracy and format on the training samples, held-out pass@1,
  and each reward term (`reward/<term>`) on its own panel;
- `health.png`: the update's vital signs, one panel each: KL to the reference, token entropy,
  clip fraction, gradient norm, truncated share, and the share of groups with equal rewards
  (`zero_std_frac`: at 1.0 no group carries a gradient);
- `length.png`: mean and longest completion against the generation limit (`config.yaml`);
- `reflection.png`: reflection words ("wait", "re-check", ...) per completion.
An SFT run gets `loss.png`: training loss and held-out loss (plus pass@1 when sampled).

Noisy per-step series are drawn twice: the raw points faint, a moving average over them
(its window in the legend); evaluation rows are markers. Every title starts with the run's
name. A figure or panel with nothing logged says so instead of drawing empty axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1lab.core.config import load_yaml
from r1lab.core.errors import UserError
from r1lab.core.runfiles import read_jsonl

DPI = 150
HEALTH = (
    ("kl", "KL to the reference", "per token"),
    ("entropy", "token entropy", "nats"),
    ("clip_frac", "clip fraction", "share of tokens"),
    ("grad_norm", "gradient norm", "before clipping"),
    ("truncated_frac", "truncated at the limit", "share of samples"),
    ("zero_std_frac", "groups with equal rewards", "share of groups (1: no gradient)"),
)
_FRACTIONS = {"truncated_frac", "zero_std_frac", "accuracy", "format", "eval/pass@1"}


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that logged it (None and missing skipped)."""
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def window(n: int) -> int:
    """The moving-average window for `n` points: an odd number near a tenth of them (so the
    mean is centred), 1 (none) below 8 points.

    >>> window(5), window(20), window(30), window(400)
    (1, 3, 3, 25)
    """
    return 1 if n < 8 else min(25, max(3, round(n / 10) | 1))


def smooth(values: Sequence[float], width: int) -> list[float]:
    """Centred moving average over `width` points (fewer at the ends), so the smoothed line
    does not lag behind the raw points.

    >>> smooth([0, 3, 6, 9], 3)
    [1.5, 3.0, 6.0, 7.5]
    """
    before, after = (width - 1) // 2, width // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - before) : i + after + 1]
        out.append(sum(part) / len(part))
    return out


def draw(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    key: str,
    label: str | None = None,
    raw: bool = False,
    **style: Any,
) -> bool:
    """One series on `ax`: eval rows as markers, step rows raw (faint) + smoothed (`window`),
    or as they are with `raw`; False when the run logged nothing for it."""
    steps, values = series(rows, key)
    if not steps:
        return False
    if key.startswith("eval/"):
        ax.plot(steps, values, marker="o", label=label, **style)
        return True
    width = 1 if raw else window(len(values))
    if width == 1:
        ax.plot(steps, values, marker=".", label=label, **style)
        return True
    (faint,) = ax.plot(steps, values, marker=".", alpha=0.3, linewidth=0.8, **style)
    ax.plot(steps, smooth(values, width), color=faint.get_color(), label=label)
    return True


def smoothing_note(rows: Sequence[dict[str, Any]]) -> str:
    """How the step series are drawn, for a figure's title ("" when they are not smoothed)."""
    width = window(sum(1 for r in rows if not any(k.startswith("eval/") for k in r)))
    if width == 1:
        return ""
    return f"  (faint: each step; line: centred mean over {width} steps)"


def finish(ax: Any, title: str, ylabel: str = "", drawn: bool = True) -> None:
    """Title, labels, grid and a legend when something was drawn; a note when nothing was."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def from_zero(ax: Any, values: Sequence[float]) -> None:
    """A y axis from 0 (a hair below, so a series at 0 shows above the frame) to just over
    the largest value (1 when there is none)."""
    top = max(values, default=0.0) * 1.05 or 1.0
    ax.set_ylim(-0.03 * top, top)


def reward_figure(plt: Any, rows: list[dict[str, Any]], name: str) -> Any:
    """Reward, accuracy, format and held-out pass@1; each reward term beside them."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = [
        draw(left, rows, "reward", "reward (train)"),
        draw(left, rows, "accuracy", "accuracy (train)"),
        draw(left, rows, "format", "format (train)"),
        draw(left, rows, "eval/pass@1", "pass@1 (held-out)", color="black"),
    ]
    finish(left, "reward and accuracy", drawn=any(drawn))
    terms = sorted({k for r in rows for k in r if k.startswith("reward/")})
    found = [draw(right, rows, key, key.split("/", 1)[1]) for key in terms]
    finish(right, "reward terms (mean over the samples each applies to)", drawn=any(found))
    fig.suptitle(f"{name}: rewards{smoothing_note(rows)}", fontsize=12)
    return fig


def health_figure(plt: Any, rows: list[dict[str, Any]], name: str) -> Any:
    """The GRPO update's vital signs, one panel each (`HEALTH`)."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4))
    for ax, (key, title, unit) in zip(axes.flat, HEALTH, strict=True):
        drawn = draw(ax, rows, key)
        values = series(rows, key)[1]
        from_zero(ax, [1.0] if key in _FRACTIONS else values)
        if drawn and not any(values):
            ax.text(0.5, 0.6, "0 at every step", ha="center", transform=ax.transAxes,
                    color="gray")
        finish(ax, title, unit, drawn)
    fig.suptitle(f"{name}: GRPO health{smoothing_note(rows)}", fontsize=12)
    return fig


def length_figure(
    plt: Any, rows: list[dict[str, Any]], name: str, limit: int | None
) -> Any:
    """Mean and longest completion per step against the generation limit."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = [
        draw(ax, rows, "completion_len_mean", "mean (train)"),
        draw(ax, rows, "completion_len_max", "longest (train)", raw=True, linestyle=":"),
        draw(ax, rows, "eval/length", "mean (held-out)", color="black"),
    ]
    if limit and any(drawn):
        ax.axhline(limit, color="firebrick", linestyle="--", label=f"limit ({limit} tokens)")
        ax.set_ylim(0, limit * 1.08)
    finish(ax, f"{name}: response length{smoothing_note(rows)}", "tokens", any(drawn))
    return fig


def reflection_figure(plt: Any, rows: list[dict[str, Any]], name: str) -> Any:
    """Reflection words per completion, on an axis that starts at 0 (none is a result)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = [
        draw(ax, rows, "reflection_words", "words per completion"),
        draw(ax, rows, "reflection_frac", "share of completions with any"),
    ]
    values = [v for key in ("reflection_words", "reflection_frac") for v in series(rows, key)[1]]
    from_zero(ax, [1.0, *values])
    if drawn and not any(values):
        ax.text(0.5, 0.6, "no reflection words in any completion", ha="center",
                transform=ax.transAxes, color="gray")
    finish(ax, f"{name}: reflection ('wait', 're-check', ...)", drawn=any(drawn))
    return fig


def loss_figure(plt: Any, rows: list[dict[str, Any]], name: str) -> Any:
    """SFT: training and held-out loss; held-out pass@1 and format beside them when sampled."""
    sampled = any(r.get("eval/pass@1") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if sampled else 1, figsize=(11 if sampled else 7.5, 4.2))
    ax = axes[0] if sampled else axes
    drawn = [
        draw(ax, rows, "loss", "train"),
        draw(ax, rows, "eval/loss", "held-out", color="black"),
    ]
    finish(ax, "loss (completion tokens)", "nats per token", any(drawn))
    if sampled:
        right = axes[1]
        draw(right, rows, "eval/pass@1", "pass@1 (held-out)")
        draw(right, rows, "eval/format", "format (held-out)")
        from_zero(right, [1.0])
        finish(right, "sampled evaluation")
    fig.suptitle(f"{name}: supervised fine-tuning{smoothing_note(rows)}", fontsize=12)
    return fig


def run_figures(run_dir: Path) -> dict[str, Any]:
    """{file name: matplotlib figure} for a run directory (see the module docstring)."""
    plt = pyplot()
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"{run_dir} has no metrics.jsonl: is it a run directory?")
    rows = read_jsonl(metrics)
    config = _config(Path(run_dir))
    name = str(config.get("name") or Path(run_dir).resolve().name)
    if not any("reward" in r for r in rows):
        return {"loss.png": loss_figure(plt, rows, name)}
    limit = (config.get("generation") or {}).get("max_new_tokens")
    return {
        "reward.png": reward_figure(plt, rows, name),
        "health.png": health_figure(plt, rows, name),
        "length.png": length_figure(plt, rows, name, limit),
        "reflection.png": reflection_figure(plt, rows, name),
    }


def plot_run(run_dir: Path) -> list[Path]:
    """Write the run's figures under `run_dir/plots/`; returns their paths."""
    plt = pyplot()
    out = Path(run_dir) / "plots"
    written = []
    for file, fig in run_figures(run_dir).items():
        out.mkdir(exist_ok=True)
        fig.tight_layout()
        fig.savefig(out / file, dpi=DPI)
        plt.close(fig)
        written.append(out / file)
    return written


def _config(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as plain YAML ({} when absent or unreadable: plots still draw)."""
    try:
        config = load_yaml(run_dir / "config.yaml")
    except UserError:
        return {}
    return config if isinstance(config, dict) else {}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
