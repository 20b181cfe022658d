"""A training run's accuracy against its steps: every checkpoint evaluated (`r1lab eval --run`).

The run's `config.yaml` (the resolved recipe every trainer writes) supplies the problems, the
prompt and the token limit, read as plain YAML so any trainer's run works; each point is an
ordinary evaluation directory under `RUN/eval/<checkpoint>/`, so finished points resume at once
and a point whose checkpoint was pruned since is kept when its settings match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from r1lab.core import console
from r1lab.core.checkpoint import list_checkpoints
from r1lab.core.config import load_yaml
from r1lab.core.errors import UserError
from r1lab.eval.protocol import Runtime
from r1lab.eval.report import label, load_summary
from r1lab.eval.run import run_eval
from r1lab.eval.store import SUMMARY, make_settings
from r1lab.rewards import RewardTerm, output_format
from r1lab.train.plots import pyplot

CURVE_PNG, CURVE_JSON = "accuracy_vs_step.png", "accuracy_vs_step.json"
_SAME_RUN_IGNORES = {"model", "limit"}


def run_points(run_dir: Path) -> tuple[dict[str, Any], list[tuple[int, str, str]]]:
    """(run config, [(step, name, model spec)]): the base model at step 0, each checkpoint,
    and `final/` when no checkpoint has its step (the paper's curve starts before training)."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml: is it a training run directory?")
    config = load_yaml(run_dir / "config.yaml")
    try:
        base, steps = config["model"]["spec"], config["train"]["steps"]
    except (KeyError, TypeError) as err:
        raise UserError(f"{run_dir / 'config.yaml'} is not an r1lab run's config ({err})") from err
    points = [(0, "step-000000", base)]
    points += [(int(p.name.split("-")[1]), p.name, str(p)) for p in list_checkpoints(run_dir)]
    final = run_dir / "final"
    if (final / "config.json").is_file() and steps not in {p[0] for p in points}:
        points.append((steps, "final", str(final)))
    if len(points) == 1:
        raise UserError(f"{run_dir} has no checkpoints yet (checkpoints/step-*/ or final/)")
    return config, points


def run_settings(config: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`make_settings` fields for a run: what the user `given` explicitly, the rest from the
    run's config (its task, template, shots, token limit and stop strings), so the curve
    measures the problems and prompt the run trained on. Task options the user gives add to
    the run's own unless the user names another task."""
    task, template = config["task"], config["template"]
    generation, ev = config.get("generation") or {}, config.get("eval") or {}
    fields = {
        "task": task["name"],
        "task_options": dict(task.get("options") or {}),
        "template": template["name"],
        "shots": template.get("shots", 0),
        "shot_style": template.get("shot_style", "brief"),
        "stop": generation.get("stop") or [],
    }
    terms = [RewardTerm(**term) for term in config.get("rewards") or [] if "name" in term]
    fmt = output_format(terms)
    fields.update(style=fmt.style, special_token=fmt.special_token)
    limit = ev.get("max_new_tokens") or generation.get("max_new_tokens")
    if limit:
        fields["max_new_tokens"] = limit
    given = {k: v for k, v in given.items() if v is not None}
    if "task" not in given:
        given["task_options"] = {**fields["task_options"], **(given.get("task_options") or {})}
    return {**fields, **given}


def evaluate_run(
    run_dir: str | Path,
    given: dict[str, Any],
    limit: int | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Evaluate the base model and every checkpoint into RUN/eval/<step>/; write the curve.

    `given`: settings the user set (`make_settings` keywords; None = from the run, see
    `run_settings`). Finished points resume at once.
    """
    run_dir = Path(run_dir)
    config, points = run_points(run_dir)
    fields = run_settings(config, given)
    task = fields.pop("task")
    summaries = {}
    for step, name, spec in points:
        settings, notes = make_settings(spec, task, **fields)
        out = run_dir / "eval" / name
        summaries[name] = (step, run_eval(settings, out, limit, runtime, notes))
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
    plt = pyplot()
    points = curve["points"]
    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, marker in (("pass@1", "o"), ("cons@k", "s")):
        name = label(key, curve["k"])
        ax.plot(steps, [p[key] for p in points], marker=marker, label=name)
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
    table = console.table(
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
