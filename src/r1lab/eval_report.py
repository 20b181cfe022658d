"""Reading evaluations back: the console table, side-by-side comparisons, and run curves.

Everything here works from `summary.json` files, so a table or a plot can be rebuilt at any
time without the model, and two evaluations made months apart compare on equal terms: their
settings travel with their numbers and differences are pointed out, not hidden.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from r1lab.errors import UserError
from r1lab.eval_store import SUMMARY
from r1lab.evaluate import run_eval

CURVE_PNG, CURVE_JSON = "accuracy_vs_step.png", "accuracy_vs_step.json"
_SAME_RUN_IGNORES = {"model", "limit"}


def _label(key: str, k: int) -> str:
    return f"cons@{k}" if key == "cons@k" else key


def _value(key: str, value: float) -> str:
    return f"{value:.1f}" if key == "length" else f"{value:.3f}"


def _ci(summary: dict[str, Any], key: str) -> str:
    low_high = summary.get("ci95", {}).get(key)
    return f"[{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""


def decoding(summary: dict[str, Any]) -> str:
    """How the samples were drawn, in words; greedy decoding is spelled out, never implied."""
    s = summary["settings"]
    if summary.get("greedy"):
        return "GREEDY (temperature 0, k=1)"
    return f"k={s['k']}, temperature {s['temperature']:g}, top-p {s['top_p']:g}"


def summary_table(summary: dict[str, Any]) -> Group:
    """One evaluation: a settings line, then metric, value, 95% bootstrap CI over problems.

    The settings line sits above the table rather than in its title, so a long model path
    does not fold the narrow table's title over several lines.
    """
    s = summary["settings"]
    title = f"{s['model']} on {s['task']} [{s['template']}]: {summary['problems']} problems, "
    title += decoding(summary)
    table = Table("metric", "value", "95% CI")
    for key, value in summary["metrics"].items():
        table.add_row(_label(key, summary["k"]), _value(key, value), _ci(summary, key))
    parts: list[Any] = [Text(title, style="bold"), table]
    parts += [Text(f"note: {note}", style="yellow") for note in summary.get("notes", [])]
    return Group(*parts)


def load_summary(path: str | Path) -> dict[str, Any]:
    """The summary of an eval directory (or a summary.json path), with a clear error if none."""
    path = Path(path)
    file = path / SUMMARY if path.is_dir() else path
    if not file.is_file():
        raise UserError(
            f"no {SUMMARY} in {path}: is it an `r1lab eval` output directory? (an interrupted "
            "evaluation writes it once it is re-run to completion)"
        )
    return json.loads(file.read_text())


def labels_for(dirs: Sequence[str | Path]) -> list[str]:
    """Short column labels: directory names, or full paths when two names collide."""
    names = [Path(d).resolve().name for d in dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in dirs]


def compare_notes(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Settings (other than the model) that differ: numbers made differently may not compare."""
    keys = sorted({key for s in summaries for key in s["settings"]} - {"model"})
    notes = []
    for key in keys:
        values = [s["settings"].get(key) for s in summaries]
        if any(v != values[0] for v in values):
            notes.append(f"{key} differs: " + ", ".join(json.dumps(v) for v in values))
    return notes


def compare_table(summaries: Sequence[dict[str, Any]], labels: Sequence[str]) -> Table:
    """Evaluations side by side: settings rows first, then each metric with its CI."""
    table = Table("", *map(escape, labels), title="r1lab eval comparison")
    for name, get in (
        ("model", lambda s: s["settings"]["model"]),
        ("task", lambda s: s["settings"]["task"]),
        ("template", lambda s: s["settings"]["template"]),
        ("decoding", decoding),
        ("problems", lambda s: str(s["problems"])),
    ):
        table.add_row(name, *[escape(get(s)) for s in summaries])
    keys: list[str] = []
    for summary in summaries:
        keys += [key for key in summary["metrics"] if key not in keys]
    for key in keys:
        cells = []
        for summary in summaries:
            value = summary["metrics"].get(key)
            cells.append("-" if value is None else f"{_value(key, value)} {_ci(summary, key)}")
        table.add_row(key, *cells)
    return table


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(summary: dict[str, Any], key: str) -> tuple[float, float]:
    """Distances from the value to the CI ends, as matplotlib's asymmetric error bars want."""
    value = summary["metrics"][key]
    low, high = summary.get("ci95", {}).get(key) or (value, value)
    return max(0.0, value - low), max(0.0, high - value)


def plot_compare(summaries: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> Path:
    """A grouped bar chart of pass@1 and cons@k per evaluation, with 95% CI error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(summaries) + 2), 4.2))
    width = 0.38
    for offset, key, name in ((-width / 2, "pass@1", "pass@1"), (width / 2, "cons@k", "cons@k")):
        xs = [i + offset for i in range(len(summaries))]
        values = [s["metrics"][key] for s in summaries]
        errs = list(zip(*[_err(s, key) for s in summaries], strict=True))
        ax.bar(xs, values, width, yerr=errs, capsize=4, label=name)
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels(labels, rotation=15 if len(summaries) > 3 else 0, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title("r1lab eval comparison")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --- every checkpoint of a training run -----------------------------------------------------


def run_points(run_dir: Path) -> tuple[Any, list[tuple[int, str, str]]]:
    """(run config, [(step, name, model spec)]): the base model at step 0, each checkpoint,
    and `final/` when no checkpoint has its step (the paper's curve starts before training)."""
    from r1lab.checkpoint import list_checkpoints
    from r1lab.config import load_config

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml: is it a training run directory?")
    config = load_config(run_dir / "config.yaml")
    points = [(0, "step-000000", config.model.spec)]
    points += [(int(p.name.split("-")[1]), p.name, str(p)) for p in list_checkpoints(run_dir)]
    final = run_dir / "final"
    if (final / "config.json").is_file() and config.train.steps not in {p[0] for p in points}:
        points.append((config.train.steps, "final", str(final)))
    if len(points) == 1:
        raise UserError(f"{run_dir} has no checkpoints yet (checkpoints/step-*/ or final/)")
    return config, points


def evaluate_run(
    run_dir: str | Path,
    task: str | None = None,
    task_options: dict[str, Any] | None = None,
    template: str | None = None,
    shots: int | None = None,
    shot_style: str | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Evaluate the base model and every checkpoint into RUN/eval/<step>/; write the curve.

    Unset task, template, shots, shot style, max_new_tokens and stop come from the run's
    config, so the curve measures the problems and prompt the run trained on. Finished points
    resume at once.
    """
    run_dir = Path(run_dir)
    config, points = run_points(run_dir)
    if task is None:
        task, task_options = config.task.name, {**config.task.options, **(task_options or {})}
    settings = dict(
        task_options=task_options,
        template=template or config.template.name,
        shots=config.template.shots if shots is None else shots,
        shot_style=shot_style or config.template.shot_style,
        max_new_tokens=max_new_tokens
        or config.eval.max_new_tokens
        or config.generation.max_new_tokens,
        stop=config.generation.stop if stop is None else stop,
    )
    summaries = {
        name: (step, run_eval(spec, task, out_dir=run_dir / "eval" / name, **settings, **sampling))
        for step, name, spec in points
    }
    _add_pruned(run_dir / "eval", summaries)
    curve = curve_of(run_dir, summaries)
    (run_dir / "eval" / CURVE_JSON).write_text(json.dumps(curve, indent=2) + "\n")
    plot_curve(curve, run_dir / "eval" / CURVE_PNG)
    return curve


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in _SAME_RUN_IGNORES)


def _add_pruned(eval_dir: Path, summaries: dict[str, tuple[int, dict[str, Any]]]) -> None:
    """Keep earlier points whose checkpoint was pruned since, if made with the same settings."""
    reference = next(iter(summaries.values()))[1]["settings"]
    for path in sorted(eval_dir.glob("step-*/" + SUMMARY)):
        name = path.parent.name
        if name in summaries or not name.split("-")[1].isdigit():
            continue
        summary = load_summary(path)
        if _same_settings(summary["settings"], reference):
            summaries[name] = (int(name.split("-")[1]), summary)


def curve_of(run_dir: Path, summaries: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The accuracy-vs-step record written next to the plot."""
    points = []
    for name, (step, summary) in sorted(summaries.items(), key=lambda item: item[1][0]):
        m = summary["metrics"]
        points.append(
            {
                "step": step,
                "checkpoint": name,
                "model": summary["settings"]["model"],
                "pass@1": m["pass@1"],
                "pass@1_ci": summary["ci95"]["pass@1"],
                "cons@k": m["cons@k"],
                "cons@k_ci": summary["ci95"]["cons@k"],
                "format": m["format"],
                "length": m["length"],
                "problems": summary["problems"],
                "out_dir": summary.get("out_dir"),
            }
        )
    first = next(iter(summaries.values()))[1]
    return {"run": str(run_dir), "settings": first["settings"], "k": first["k"], "points": points}


def plot_curve(curve: dict[str, Any], out: Path) -> Path:
    """pass@1 (with its 95% CI band) and cons@k against the training step."""
    plt = _pyplot()
    points = curve["points"]
    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, marker in (("pass@1", "o"), ("cons@k", "s")):
        label = _label(key, curve["k"])
        ax.plot(steps, [p[key] for p in points], marker=marker, label=label)
        lows, highs = zip(*[p[f"{key}_ci"] for p in points], strict=True)
        ax.fill_between(steps, lows, highs, alpha=0.15)
    s = curve["settings"]
    ax.set_title(f"{s['task']} [{s['template']}]: accuracy during training")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def curve_table(curve: dict[str, Any]) -> Table:
    """The curve as a console table: one row per evaluated checkpoint."""
    k = curve["k"]
    table = Table(
        "step",
        "checkpoint",
        "pass@1",
        "95% CI",
        f"cons@{k}",
        "95% CI",
        "format",
        "length",
        title=escape(f"{curve['run']}: accuracy vs step"),
    )
    for p in curve["points"]:
        table.add_row(
            str(p["step"]),
            p["checkpoint"],
            f"{p['pass@1']:.3f}",
            f"[{p['pass@1_ci'][0]:.3f}, {p['pass@1_ci'][1]:.3f}]",
            f"{p['cons@k']:.3f}",
            f"[{p['cons@k_ci'][0]:.3f}, {p['cons@k_ci'][1]:.3f}]",
            f"{p['format']:.3f}",
            f"{p['length']:.1f}",
        )
    return table
