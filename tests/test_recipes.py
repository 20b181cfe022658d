"""Every recipe in recipes/ loads and validates with the loader of its `kind`.

The loaders are named per kind; a kind whose module does not exist yet is skipped with a
reason, so the test covers each new kind as soon as its loader lands, and a recipe of a kind
nobody knows fails.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
LOADERS = {
    "grpo": "r1lab.grpo.config:load_config",
    "sft": "r1lab.sft.config:load_sft_config",
    "sample": "r1lab.sample.config:load_sample_config",
    "distill": "r1lab.distill:load_distill_config",
    "pipeline": "r1lab.pipeline.config:load_pipeline",
}


def loader(kind: str) -> Callable[..., Any] | None:
    """The `(path, overrides)` loader of a recipe kind, or None while its module is missing."""
    module, _, name = LOADERS[kind].partition(":")
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), name)


def test_there_are_recipes_for_r1_stages_2_and_4():
    names = {path.stem for path in RECIPES}
    assert {"r1_zero_arith", "r1_cold_start", "r1_reasoning_rl", "r1_all_scenario"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name data files relative to the repository
    kind = yaml.safe_load(path.read_text()).get("kind", "grpo")
    assert kind in LOADERS, f"{path.name}: unknown kind {kind!r}; known: {', '.join(LOADERS)}"
    load = loader(kind)
    if load is None:
        pytest.skip(f"the loader of `kind: {kind}` ({LOADERS[kind]}) does not exist yet")
    assert load(path, []) is not None


def test_the_all_scenario_recipe_scores_general_prompts_with_two_reward_model_terms(monkeypatch):
    from r1lab.grpo.config import load_config
    from r1lab.tasks import make_task

    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "recipes" / "r1_all_scenario.yaml")
    terms = {r.name: r for r in config.rewards}
    scopes = {terms[n].params["scope"] for n in ("helpfulness", "harmlessness")}
    assert {terms[n].reward_name for n in ("helpfulness", "harmlessness")} == {"reward_model"}
    assert scopes == {"summary", "response"}
    train = make_task(config.task.name, config.task.options).examples("train", limit=40)
    assert any(e.checkable for e in train) and any(not e.checkable for e in train)


def test_the_reasoning_rl_recipe_adds_language_consistency_and_no_shots():
    from r1lab.grpo.config import load_config

    config = load_config(ROOT / "recipes" / "r1_reasoning_rl.yaml")
    assert [r.name for r in config.rewards] == ["accuracy", "format", "language_consistency"]
    assert config.template.shots == 0
    zero = load_config(ROOT / "recipes" / "r1_zero_arith.yaml")
    assert (config.task, config.template.name) == (zero.task, zero.template.name)
