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

from r1lab.core import advice, console
from r1lab.core.errors import UserError
from r1lab.eval.store import SUMMARY
from r1lab.train.plots import pyplot


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
    split = "" if s.get("split", "test") == "test" else f" ({s['split']} split)"
    title = f"{s['model']} on {s['task']}{split} [{s['template']}]: {summary['problems']} "
    title += f"problems, {decoding(summary)}, max {s['max_new_tokens']} new tokens"
    table = console.table("metric", "value", "95% CI")
    for key, value in summary["metrics"].items():
        table.add_row(label(key, summary["k"]), _value(key, value), _ci(summary, key))
    parts: list[Any] = [Text(title, style="bold"), table]
    parts += [Text(f"note: {note}", style="yellow") for note in summary.get("notes", [])]
    parts += [Text(f"warning: {text}", style="red") for text in summary.get("warnings", [])]
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
    """Settings (other than the model, and the sampling settings `advice.incomparable`
    names) that differ: numbers made differently may not compare."""
    keys = sorted({key for s in summaries for key in s["settings"]} - {"model", *advice.COMPARED})
    notes = []
    for key in keys:
        values = [s["settings"].get(key) for s in summaries]
        if any(v != values[0] for v in values):
            notes.append(f"{key} differs: " + ", ".join(json.dumps(v) for v in values))
    return notes


def compare_table(summaries: Sequence[dict[str, Any]], labels: Sequence[str]) -> Table:
    """Evaluations side by side: settings rows first, then each metric with its CI.

    A sampling setting that differs between the columns (`advice.incomparable`) is marked on
    its row and named under the table: such numbers were not measured alike.
    """
    mismatches = advice.incomparable(summaries)
    caption = f"not measured alike: {'; '.join(mismatches)}" if mismatches else None
    table = console.table("", *map(escape, labels), title="r1lab eval comparison")
    table.caption, table.caption_style = caption, "bold red"
    differs = {m.split()[0] for m in mismatches}
    for name, keys, get in (
        ("model", (), lambda s: s["settings"]["model"]),
        ("task", (), lambda s: s["settings"]["task"]),
        ("template", (), lambda s: s["settings"]["template"]),
        ("decoding", ("k", "temperature", "top_p"), decoding),
        ("max new tokens", ("max_new_tokens",), lambda s: str(s["settings"]["max_new_tokens"])),
        ("split", ("split",), lambda s: s["settings"].get("split", "test")),
        ("problems", ("problems",), lambda s: str(s["problems"])),
    ):
        marked = bool(differs & set(keys))
        cells = [escape(get(s)) for s in summaries]
        table.add_row(f"{name} ≠" if marked else name, *cells, style="red" if marked else None)
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


def _err(summary: dict[str, Any], key: str) -> tuple[float, float]:
    """Distances from the value to the CI ends, as matplotlib's asymmetric error bars want."""
    value = summary["metrics"][key]
    low, high = summary.get("ci95", {}).get(key) or (value, value)
    return max(0.0, value - low), max(0.0, high - value)


def plot_compare(summaries: Sequence[dict[str, Any]], labels: Sequence[str], out: Path) -> Path:
    """`compare_figure` written to `out` (a PNG)."""
    plt = pyplot()
    fig = compare_figure(summaries, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def compare_figure(summaries: Sequence[dict[str, Any]], labels: Sequence[str]) -> Any:
    """A grouped bar chart of pass@1 and cons@k per evaluation, with 95% CI error bars.

    Every bar carries its value (a 0.000 bar is a labelled line, not a gap); the settings
    the numbers were measured with are under the title, and settings that differ between the
    evaluations (`advice.incomparable`) are named in red on the figure and under each label.
    """
    plt = pyplot()
    mismatches = advice.incomparable(summaries)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.7 * len(summaries) + 2), 4.8))
    ks = {s["k"] for s in summaries}
    cons = f"cons@{ks.pop()}" if len(ks) == 1 else "cons@k"
    _bars(ax, summaries, (("pass@1", "pass@1"), ("cons@k", cons)))
    ticks = list(labels)
    if mismatches:
        ticks = [f"{name}\n{_setting_tag(s)}" for name, s in zip(labels, summaries, strict=True)]
    slanted = len(summaries) > 3
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels(ticks, rotation=15 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylim(-0.02, 1.12)  # a bar at 0 shows as a line above the frame
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    fig.suptitle(f"r1lab eval comparison: pass@1 and {cons}", fontsize=12)
    subtitle = _common_settings(summaries, mismatches)
    ax.set_title(subtitle, fontsize=9, color="firebrick" if mismatches else "dimgray")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def _bars(ax: Any, summaries: Sequence[dict[str, Any]], series: Sequence[tuple[str, str]]) -> None:
    """One bar per (evaluation, metric), side by side, each with its CI and its value."""
    width = 0.8 / len(series)
    for index, (key, name) in enumerate(series):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(summaries))]
        values = [s["metrics"][key] for s in summaries]
        errs = list(zip(*[_err(s, key) for s in summaries], strict=True))
        bars = ax.bar(xs, values, width, yerr=errs, capsize=4, label=name, edgecolor="black")
        color = bars[0].get_facecolor()
        for x, value, high in zip(xs, values, errs[1], strict=True):
            ax.hlines(value, x - width / 2, x + width / 2, colors=[color], linewidth=2.5)
            ax.text(x, value + high + 0.015, f"{value:.3f}", ha="center", va="bottom", fontsize=8)


def _setting_tag(summary: dict[str, Any]) -> str:
    """The sampling settings of one bar pair, for its tick label."""
    s = summary["settings"]
    return f"k={s['k']}, {s['max_new_tokens']} tok, T {s['temperature']:g}"


def _common_settings(summaries: Sequence[dict[str, Any]], mismatches: Sequence[str]) -> str:
    """The task and the sampling settings, in words, for the subtitle; when they differ
    between the evaluations, which ones do instead."""
    first, s = summaries[0], summaries[0]["settings"]
    task = f"{s['task']} {s.get('split', 'test')} split"
    if mismatches:
        return f"{task}\nnot measured alike: {'; '.join(mismatches)}"
    return (
        f"{task}, {first['problems']} problems, {decoding(first)}, "
        f"max {s['max_new_tokens']} new tokens"
    )
