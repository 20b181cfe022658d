"""Config: defaults, YAML + `--set` overrides, presets, and the errors a user sees for typos,
wrong types and inconsistent values. Every recipe in recipes/ must load and validate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from r1lab import rewards
from r1lab.core.config import dump_config
from r1lab.core.errors import UserError
from r1lab.grpo.config import (
    Config,
    GRPOConfig,
    build_config,
    check_references,
    load_config,
)
from r1lab.tasks import make_task
from r1lab.text import templates

ALL_RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def recipe_kind(path: Path) -> str:
    return yaml.safe_load(path.read_text()).get("kind", "grpo")


# GRPO recipes are checked in depth here; every recipe of every kind loads in test_recipes.py.
RECIPES = [path for path in ALL_RECIPES if recipe_kind(path) == "grpo"]


def one_line(err: pytest.ExceptionInfo) -> str:
    return " ".join(str(err.value).split())


def test_defaults_load_and_validate():
    config = load_config(None)
    assert isinstance(config, Config)
    assert [r.name for r in config.rewards] == ["accuracy", "format"]
    assert config.grpo.batch_size % config.grpo.group_size == 0
    assert config.grpo.prompts_per_step == config.grpo.batch_size // config.grpo.group_size
    config.validate()  # idempotent


def test_yaml_file_and_overrides_of_every_scalar_type(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "grpo": {"group_size": 4, "batch_size": 16}}))
    config = load_config(
        path,
        [
            "grpo.group_size=8",  # int, overriding the file
            "optim.lr=2.5e-5",  # float
            "grpo.dynamic_sampling=true",  # bool
            'generation.stop=["</answer>", "\\n\\n"]',  # list
            "rewards.0.weight=2",  # list index; int into a float field
            "task.options.digits=3",  # into a free-form mapping
            "name=other",
        ],
    )
    assert config.name == "other"
    assert config.grpo.group_size == 8 and config.grpo.batch_size == 16
    assert config.optim.lr == pytest.approx(2.5e-5)
    assert config.grpo.dynamic_sampling is True
    assert config.generation.stop == ["</answer>", "\n\n"]
    assert config.rewards[0].weight == 2.0 and isinstance(config.rewards[0].weight, float)
    assert config.task.options == {"digits": 3}


def test_float_written_without_a_dot_is_a_float():
    # YAML 1.1 (PyYAML) reads `3e-6` as a string; users write it that way all the time.
    config = build_config({"optim": {"lr": "3e-6"}}, ["grpo.beta=1e-3"])
    assert config.optim.lr == pytest.approx(3e-6)
    assert config.grpo.beta == pytest.approx(1e-3)
    with pytest.raises(UserError, match="optim.lr"):
        build_config({}, ["optim.lr=fast"])


def test_overrides_do_not_mutate_the_callers_mapping():
    raw = {"grpo": {"preset": "dapo"}}
    build_config(raw, ["grpo.group_size=4", "grpo.batch_size=8"])
    assert raw == {"grpo": {"preset": "dapo"}}


def test_empty_yaml_section_means_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("grpo:\neval:\n")
    config = load_config(path, ["grpo.group_size=4", "grpo.batch_size=8"])
    assert config.grpo.group_size == 4
    assert config.eval.k == 1


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("grup=1", "grup", "grpo"),
        ("grpo.grup_size=4", "grpo.grup_size", "group_size"),
        ("generation.max_tokens=4", "generation.max_tokens", "max_new_tokens"),
        ("rewards.0.wieght=1", "rewards.0.wieght", "weight"),
    ],
)
def test_unknown_key_names_the_key_and_lists_valid_ones(override, key, valid):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = one_line(err)
    assert repr(key) in message
    assert valid in message


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("grpo:\n  grup_size: 4\n")
    with pytest.raises(UserError, match=r"'grpo\.grup_size'.*group_size"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("grpo.group_size=four", "grpo.group_size must be of type int"),
        ("grpo.group_size=4.5", "grpo.group_size must be of type int"),
        ("grpo.dynamic_sampling=maybe", "grpo.dynamic_sampling must be true or false"),
        ("generation.stop=</answer>", "generation.stop must be a list"),
        ("task.options=[1]", "task.options must be a mapping"),
        ("grpo=3", "grpo must be a mapping"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(override, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_batch_size_must_be_a_multiple_of_group_size():
    with pytest.raises(UserError) as err:
        load_config(None, ["grpo.batch_size=10", "grpo.group_size=4"])
    message = one_line(err)
    assert "grpo.batch_size (10)" in message and "grpo.group_size (4)" in message
    assert "multiple" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("generation.max_new_tokens=-1", "generation.max_new_tokens"),
        ("generation.max_new_tokens=0", "generation.max_new_tokens"),
        ("generation.top_p=0", "generation.top_p"),
        ("generation.temperature=-0.5", "generation.temperature"),
        ("grpo.group_size=1", "grpo.group_size"),
        ("grpo.beta=-0.1", "grpo.beta"),
        ("grpo.kl=k4", "grpo.kl"),
        ("grpo.loss_agg=mean", "grpo.loss_agg"),
        ("optim.lr=0", "optim.lr"),
        ("eval.k=0", "eval.k"),
        ("eval.max_new_tokens=-3", "eval.max_new_tokens"),
        ("train.steps=0", "train.steps"),
        ("model.dtype=float8", "model.dtype"),
        ("grpo.is_correction=tokens", "grpo.is_correction"),
        ("grpo.is_cap=0.5", "grpo.is_cap"),
    ],
)
def test_out_of_range_values_are_errors(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError) as err:
        load_config(None, ["grpo.preset=dapo_v2"])
    message = one_line(err)
    assert "grpo.preset" in message and "'dapo_v2'" in message
    assert all(name in message for name in ("grpo", "dr_grpo", "dapo"))


def test_dapo_preset_fills_its_values():
    config = load_config(None, ["grpo.preset=dapo"])
    assert config.grpo.clip_high == pytest.approx(0.28)
    assert config.grpo.clip_low == pytest.approx(0.2)
    assert config.grpo.loss_agg == "token-mean"
    assert config.grpo.dynamic_sampling is True
    assert config.grpo.beta == 0.0


def test_explicit_key_overrides_the_preset(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("grpo: {preset: dapo, clip_high: 0.3}\n")
    config = load_config(path, ["grpo.dynamic_sampling=false"])
    assert config.grpo.clip_high == pytest.approx(0.3)
    assert config.grpo.dynamic_sampling is False
    assert config.grpo.loss_agg == "token-mean"  # the rest of the preset still applies


def test_dr_grpo_preset():
    config = load_config(None, ["grpo.preset=dr_grpo"])
    assert config.grpo.advantage_scale == "none"
    assert config.grpo.loss_agg == "seq-mean-token-sum-norm"


@pytest.mark.parametrize(
    ("preset", "policy_loss", "clip", "loss_agg"),
    [("gspo", "gspo", (3e-4, 4e-4), "seq-mean-token-mean"),
     ("cispo", "cispo", (1.0, 0.28), "token-mean")],
)
def test_loss_variant_presets_pick_their_policy_loss(preset, policy_loss, clip, loss_agg):
    g = load_config(None, [f"grpo.preset={preset}"]).grpo
    assert (g.policy_loss, (g.clip_low, g.clip_high), g.loss_agg) == (policy_loss, clip, loss_agg)


def test_an_explicit_is_correction_needs_an_engine_that_reports_log_probs():
    with pytest.raises(UserError) as err:
        load_config(None, ["grpo.is_correction=token"])  # the prefix engine
    assert "engine 'prefix' samples from the trainer's" in one_line(err)
    config = load_config(None, ["grpo.is_correction=sequence", "generation.engine=vllm"])
    assert config.grpo.is_correction == "sequence"
    assert load_config(None, ["grpo.is_correction=none"]).grpo.is_correction == "none"


def test_plain_grpo_keeps_dataclass_defaults():
    defaults = GRPOConfig()
    assert load_config(None).grpo == defaults


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["grpo.group_size"])
    with pytest.raises(UserError, match="index"):
        load_config(None, ["rewards.7.weight=1"])
    with pytest.raises(UserError, match="not a section"):
        build_config({"name": "run"}, ["name.x=1"])


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match="nope.yaml"):
        load_config(missing)


def test_directory_instead_of_a_file(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        load_config(tmp_path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grpo: {group_size: 4\n")
    with pytest.raises(UserError, match=r"broken\.yaml.*invalid YAML"):
        load_config(path)


def test_top_level_list_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"list\.yaml.*mapping"):
        load_config(path)


def test_empty_rewards_is_an_error():
    with pytest.raises(UserError, match="at least one reward"):
        build_config({"rewards": []})


def test_reward_without_a_name_is_an_error():
    with pytest.raises(UserError, match="rewards.0"):
        build_config({"rewards": [{"weight": 1.0}]})


# --- references into the registries are checked at load time ------------------------------


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("rewards.0.name=acuracy", ["'acuracy'", "accuracy", "format"]),
        ("rewards.1.params={strict: true}", ["'strict'", "format", "allow_trailing"]),
        ("template.name=r1zero", ["'r1zero'", "r1_zero", "chat_think"]),
        ("task.name=arithmetic", ["'arithmetic'", "arith", "countdown"]),
        ("task.options.digit=2", ["'digit'", "digits"]),
        ("task.name=jsonl", ["'path'", "prompt_field"]),
        ("rewards.0.name=format", ["listed twice"]),
        ("generation.engine=vlm", ["'vlm'", "hf", "prefix", "vllm"]),
        ("grpo.policy_loss=gpso", ["'gpso'", "clip", "cispo", "gspo"]),
    ],
)
def test_unknown_registry_names_fail_at_load_time(override, needles):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = one_line(err)
    for needle in needles:
        assert needle in message


def test_task_spec_with_a_path_is_accepted(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    assert load_config(None, [f"task.name=jsonl:{data}"]).task.name == f"jsonl:{data}"


def test_config_load_does_not_build_the_task(monkeypatch):
    # Building a dataset task reads its data (a hub download); a config load must not.
    import r1lab.tasks.base

    def boom(*args, **kwargs):
        raise AssertionError("make_task called during config load")

    monkeypatch.setattr(r1lab.tasks.base, "make_task", boom)
    monkeypatch.setattr("r1lab.tasks.make_task", boom)
    load_config(None, ["task.name=countdown", "task.options.numbers=3"])


def test_reward_by_import_path_is_checked(monkeypatch, tmp_path):
    (tmp_path / "my_rewards.py").write_text(
        "def short(inputs, limit=10):\n    return [1.0 for _ in inputs.completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {"rewards": [{"name": "my_rewards:short", "params": {"limit": 5}}]}
    assert build_config(raw).rewards[0].params == {"limit": 5}
    raw["rewards"][0]["params"] = {"limt": 5}
    with pytest.raises(UserError, match="'limt'.*limit"):
        build_config(raw)


def test_check_references_accepts_the_defaults():
    check_references(load_config(None))


def test_dump_and_reload_round_trips(tmp_path):
    config = load_config(None, ["grpo.preset=dapo", "generation.stop=['</answer>']"])
    dump_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config


# --- every shipped recipe -----------------------------------------------------------------


def test_there_are_recipes():
    assert RECIPES, "recipes/*.yaml is empty"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_its_references_resolve(path):
    config = load_config(path)
    config.validate()
    task = make_task(config.task.name, config.task.options)
    assert task.examples("train", limit=2), f"{path.name}: the task has no train examples"
    rewards.check_terms(config.rewards)
    templates.check_template(config.template.name)


def test_kind_names_the_command_that_runs_a_recipe():
    assert build_config({"kind": "grpo"}) == build_config({})
    with pytest.raises(UserError, match="`kind: sft` recipe: run it with `r1lab sft`"):
        build_config({"kind": "sft"})


def test_recipes_have_distinct_run_names():
    # runs/<name>/ is the run directory: two recipes with one name would resume each other.
    names = [yaml.safe_load(path.read_text()).get("name") for path in ALL_RECIPES]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_keys_are_all_known_fields(path):
    # Redundant with load_config, but names the offending key plainly if a field is removed.
    raw = yaml.safe_load(path.read_text())
    sections = {f.name for f in dataclasses.fields(Config)}
    assert set(raw) <= sections


def test_vllm_with_lora_names_both_keys():
    with pytest.raises(UserError, match="generation.engine vllm .* model.lora"):
        build_config({"generation": {"engine": "vllm"}, "model": {"lora": {"r": 8}}})
