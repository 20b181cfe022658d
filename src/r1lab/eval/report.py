"""Reading evaluations back: the console table and side-by-side comparisons.

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

from r1lab.core.errors import UserError
from r1lab.eval.store import SUMMARY


def label(key: str, k: int) -> str:
    """A metric's display name: `cons@k` with the evaluation's k."""
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
        table.add_row(label(key, summary["k"]), _value(key, value), _ci(summary, key))
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
    try:
        summary = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not an evaluation summary (not JSON: {err})") from err
    if not isinstance(summary, dict) or "metrics" not in summary:
        raise UserError(f"{file} is not an evaluation summary (no metrics)")
    return summary


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


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display needed)."""
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
    plt = pyplot()
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
