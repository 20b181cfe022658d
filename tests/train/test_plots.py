"""`r1lab plot` (train/plots.py): the figures of a GRPO and of an SFT run, checked through
their matplotlib objects: what each panel draws, its title, its axes, and no warnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from r1lab.train.plots import HEALTH, plot_run, run_figures


def write_run(path: Path, rows: list[dict], config: str) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "config.yaml").write_text(config)
    return path


def grpo_rows(steps: int = 20) -> list[dict]:
    rows = [{"step": 0, "eval/pass@1": 0.1, "eval/length": 30.0}]
    for s in range(1, steps + 1):
        rows.append(
            {
                "step": s,
                "reward": 0.1 + s / 40,
                "accuracy": s / 40,
                "format": 1.0,
                "reward/accuracy": s / 40,
                "reward/format": 1.0,
                "completion_len_mean": 30.0 + s % 3,
                "completion_len_max": 40 + s % 5,
                "truncated_frac": 0.05,
                "reflection_words": 0.0,
                "reflection_frac": 0.0,
                "kl": 0.001 * s,
                "clip_frac": 0.0,
                "entropy": 1.0 - s / 40,
                "grad_norm": 1.5,
                "zero_std_frac": 0.5,
            }
        )
    return [*rows, {"step": steps, "eval/pass@1": 0.4, "eval/length": 31.0}]


@pytest.fixture
def figures(tmp_path):
    config = "name: r1_zero_arith\ngeneration: {max_new_tokens: 48}\n"
    run = write_run(tmp_path / "zero", grpo_rows(), config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib warning reaches the user
        found = run_figures(run)
    yield found
    for fig in found.values():
        plt.close(fig)


def lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_a_grpo_run_gets_rewards_health_length_and_reflection(figures):
    assert set(figures) == {"reward.png", "health.png", "length.png", "reflection.png"}


def test_every_title_names_the_run(figures):
    for fig in figures.values():
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        assert title.startswith("r1_zero_arith:")


def test_health_has_a_panel_for_each_vital_sign(figures):
    axes = figures["health.png"].axes
    assert [ax.get_title() for ax in axes] == [title for _, title, _ in HEALTH]
    kl = axes[0]
    assert len(kl.get_lines()) == 2  # raw points and their moving mean
    assert kl.get_lines()[0].get_alpha() < 1  # the raw points are the faint ones
    zero_std = axes[5]
    assert zero_std.get_ylim()[0] < 0 < 1 < zero_std.get_ylim()[1]


def test_reward_terms_have_their_own_panel(figures):
    left, right = figures["reward.png"].axes
    assert {"reward (train)", "pass@1 (held-out)"} <= set(lines(left))
    assert {"accuracy", "format"} <= set(lines(right))


def test_length_shows_mean_max_and_the_limit(figures):
    (ax,) = figures["length.png"].axes
    drawn = lines(ax)
    assert {"mean (train)", "longest (train)", "limit (48 tokens)"} <= set(drawn)
    assert list(drawn["limit (48 tokens)"].get_ydata()) == [48, 48]


def test_reflection_without_any_starts_at_zero_and_says_so(figures):
    (ax,) = figures["reflection.png"].axes
    low, high = ax.get_ylim()
    assert low <= 0 and high >= 1
    assert any("no reflection words" in text.get_text() for text in ax.texts)


def test_an_sft_run_gets_its_loss_curves_without_warnings(tmp_path):
    rows = [{"step": 0, "eval/loss": 2.0}]
    rows += [{"step": s, "loss": 2.0 / s, "lr": 1e-5} for s in range(1, 11)]
    rows += [{"step": 10, "eval/loss": 0.4}]
    run = write_run(tmp_path / "cold", rows, "kind: sft\nname: cold_start\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "No artists with labels found" would be an error
        written = plot_run(run)
    assert [p.name for p in written] == ["loss.png"]
    figures = run_figures(run)
    (ax,) = figures["loss.png"].axes
    assert {"train", "held-out"} <= set(lines(ax))
    assert figures["loss.png"]._suptitle.get_text().startswith("cold_start:")
    plt.close(figures["loss.png"])


def test_plot_writes_pngs(tmp_path):
    run = write_run(tmp_path / "zero", grpo_rows(3), "name: z\n")
    written = plot_run(run)
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in written)
