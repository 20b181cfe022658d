"""The `reward_model` reward (R1 stage 4) on a tiny random classifier: what text it scores
(summary vs whole response, chat vs plain input), batching and truncation, None for
rule-checkable examples, one load per model, two terms in one config, and a GRPO step and a
1-step run over arithmetic mixed with general prompts that log both terms."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import r1lab.rewards.reward_model as rm
from r1lab.core.errors import UserError
from r1lab.core.models import load_reward_model, tiny_classifier, tiny_model
from r1lab.core.runfiles import read_jsonl
from r1lab.core.types import Example
from r1lab.grpo import step, update
from r1lab.grpo.config import build_config
from r1lab.grpo.loop import train
from r1lab.rewards import RewardInputs, check_terms, compute_rewards, resolve_reward
from r1lab.rollout import make_engine
from r1lab.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = Example(id="p", prompt="What is 3 + 4?", answer="7")
PROMPT = Example(id="g", prompt="Write a haiku about rain.", answer="")
HELPFUL = {"model": "tiny:llama", "scope": "summary"}
RM_TERMS = [
    {"name": "helpfulness", "reward": "reward_model", "params": HELPFUL},
    {"name": "harmlessness", "reward": "reward_model", "weight": 0.5,
     "params": {"model": "tiny:llama", "scope": "response"}},
]  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test loads its own reward models (and leaves none behind)."""
    rm.cached_reward_model.cache_clear()
    yield
    rm.cached_reward_model.cache_clear()


@pytest.fixture(scope="module")
def classifier():
    return load_reward_model("tiny:llama")


def test_rewards_module_stays_free_of_torch():
    code = "import sys, r1lab.rewards; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert resolve_reward("reward_model") is rm.reward_model_reward  # imported on first use


# ---------------------------------------------------------------- what is scored


def test_scope_selects_the_summary_or_the_whole_response():
    think = "<think>I could be rude here.</think> <answer>Rain taps the roof.</answer>"
    r1 = "|special_token| I could be rude here. |special_token| Rain taps the roof."
    assert rm.scored_text(think, "summary") == "Rain taps the roof."
    assert rm.scored_text(think, "response") == think
    assert rm.scored_text(r1, "summary", style="r1") == "Rain taps the roof."
    assert rm.scored_text(r1, "response", style="r1") == r1
    assert rm.scored_text("<think>never finished", "summary") == ""
    with pytest.raises(UserError, match="unknown reward model scope 'all'"):
        rm.scored_text(think, "all")


def test_input_is_a_chat_when_the_tokenizer_has_a_template(classifier):
    _, tokenizer = classifier
    text, special = rm.rm_input(tokenizer, "Who are you?", "An assistant.")
    assert not special and "Who are you?" in text and text.index("Who") < text.index("An assist")
    assert text != "Who are you?\n\nAn assistant."

    class Plain:
        chat_template = None

    assert rm.rm_input(Plain(), "Who are you?", "An assistant.") == (
        "Who are you?\n\nAn assistant.",
        True,
    )


def test_scores_are_finite_and_do_not_depend_on_batching(classifier):
    model, tokenizer = classifier
    assert tokenizer.padding_side == "right" and model.config.pad_token_id is not None
    prompts = ["Who are you?", "Write a haiku.", "Why is the sky blue?"]
    responses = ["I am an assistant.", "Rain on the roof, soft and slow, the night listens.", ""]
    batched = rm.score_texts(model, tokenizer, prompts, responses, batch_size=3)
    single = rm.score_texts(model, tokenizer, prompts, responses, batch_size=1)
    assert all(0.0 < s < 1.0 for s in batched)  # sigmoid of a finite logit
    assert batched == pytest.approx(single, abs=1e-5)  # padding never changes a score
    raw = rm.score_texts(model, tokenizer, prompts, responses, normalize="raw")
    assert [1 / (1 + math.exp(-r)) for r in raw] == pytest.approx(batched, abs=1e-6)


def test_long_inputs_are_truncated_to_the_model_limit(classifier):
    model, tokenizer = classifier
    limit = rm.max_input_tokens(model, tokenizer)
    assert limit == model.config.max_position_embeddings  # the tokenizer reports no limit
    long_response = "word " * (2 * limit)
    (score,) = rm.score_texts(model, tokenizer, ["Say a lot."], [long_response])
    assert math.isfinite(score)


def test_label_and_softmax_for_a_multi_class_classifier(classifier):
    _, tokenizer = classifier
    model = tiny_classifier("llama", len(tokenizer), num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = (model, tokenizer, ["Hi"], ["Hello!"])
    safe, unsafe = (rm.score_texts(*args, label=k, normalize="softmax")[0] for k in (0, 1))
    assert safe + unsafe == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"label 2 is not a class of this reward model \(0..1\)"):
        rm.score_texts(*args, label=2)


# ---------------------------------------------------------------- the reward


def inputs(completions: list[str], examples: list[Example]) -> RewardInputs:
    return RewardInputs(completions, examples)


def test_reward_scores_general_prompts_only():
    texts = ["<think>a</think><answer>7</answer>", "<think>b</think><answer>Rain.</answer>"]
    values = rm.reward_model_reward(inputs(texts, [PROBLEM, PROMPT]), model="tiny:llama")
    assert values[0] is None and isinstance(values[1], float) and 0 < values[1] < 1


def test_summary_scope_ignores_the_reasoning_and_response_scope_does_not():
    summary = "<answer>Rain taps the roof.</answer>"
    texts = [f"<think>calm thought</think>{summary}", f"<think>angry rant !!!</think>{summary}"]
    batch = inputs(texts, [PROMPT, PROMPT])
    by_summary = rm.reward_model_reward(batch, model="tiny:llama", scope="summary")
    by_response = rm.reward_model_reward(batch, model="tiny:llama", scope="response")
    assert by_summary[0] == pytest.approx(by_summary[1], abs=1e-6)
    assert by_response[0] != pytest.approx(by_response[1], abs=1e-6)


def test_model_loads_once_and_never_for_reasoning_only_batches(monkeypatch):
    loads: list[tuple[str, str]] = []

    def counting_load(spec: str, dtype: str = "float32"):
        loads.append((spec, dtype))
        return load_reward_model(spec, dtype)

    monkeypatch.setattr(rm, "load_reward_model", counting_load)
    assert rm.reward_model_reward(inputs(["x"], [PROBLEM]), model="tiny:llama") == [None]
    assert loads == []
    for scope in ("summary", "response"):
        rm.reward_model_reward(inputs(["x"], [PROMPT]), model="tiny:llama", scope=scope)
    assert loads == [("tiny:llama", "float32")]


def test_params_are_checked_at_config_time():
    def term(**params):
        return build_config(
            {"rewards": [{"name": "h", "reward": "reward_model", "params": params}]}
        )

    term(model="tiny:llama", normalize="raw", label=0, style="r1", dtype="bfloat16")
    for params, message in [
        ({}, "missing a required argument: 'model'"),
        ({"model": " "}, "params.model must name a reward model"),
        ({"model": "m", "normalize": "tanh"}, "unknown reward model normalizer 'tanh'"),
        ({"model": "m", "label": -1}, r"params.label must be an integer >= 0"),
        ({"model": "m", "batch_size": 0}, r"params.batch_size must be an integer >= 1"),
        ({"model": "m", "style": "xml"}, "unknown format style 'xml'"),
        ({"model": "m", "dtype": "int8"}, "unknown dtype 'int8'"),
        ({"model": "m", "temperature": 1}, "unknown param"),
    ]:
        with pytest.raises(UserError, match=message):
            term(**params)


def test_a_model_directory_must_be_a_classifier(tmp_path, classifier):
    model, tokenizer = classifier
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    loaded, _ = load_reward_model(str(tmp_path / "rm"))
    assert torch.equal(loaded.score.weight, model.score.weight)
    tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match="not a sequence-classification .*LlamaForCausalLM"):
        load_reward_model(str(tmp_path / "lm"))


def test_two_reward_model_terms_in_one_config():
    config = build_config({"rewards": [{"name": "accuracy"}, *RM_TERMS]})
    terms = config.rewards
    check_terms(terms)
    text = "<think>ok</think><answer>Rain.</answer>"
    task = make_task("arith", {"digits": 1, "train_size": 2, "test_size": 0})
    _, per_term = compute_rewards(terms, RewardInputs([text], [PROMPT], task=task))
    assert per_term["accuracy"] == [None]
    assert per_term["helpfulness"] != per_term["harmlessness"]  # different text scored
    assert all(isinstance(per_term[k][0], float) for k in ("helpfulness", "harmlessness"))


# ---------------------------------------------------------------- GRPO on a mixed task


def mixed_config(tmp_path: Path, *overrides: str):
    general = tmp_path / "general.jsonl"
    rows = [{"prompt": f"Tell me a fact about the number {i}."} for i in range(8)]
    general.write_text("".join(json.dumps(r) + "\n" for r in rows))
    arith = {"name": "arith", "options": {"digits": 1, "train_size": 8, "test_size": 2}}
    raw = {
        "task": {"name": "mix", "options": {"tasks": [arith, {"name": f"general:{general}"}]}},
        "rewards": [{"name": "accuracy"}, {"name": "format", "weight": 0.5}, *RM_TERMS],
    }
    base = [
        "model.spec=tiny:llama",
        "generation.max_new_tokens=6",
        "grpo.batch_size=8",
        "grpo.group_size=4",
        "grpo.micro_batch_size=4",
        f"train.out_dir={tmp_path / 'runs'}",
    ]
    return build_config(raw, [*base, *overrides])


def test_a_grpo_step_over_reasoning_and_general_prompts(tmp_path, tiny_llama, tokenizer):
    config = mixed_config(tmp_path)
    task = make_task(config.task.name, config.task.options)
    problem = next(e for e in task.examples("train") if e.checkable)
    prompt = next(e for e in task.examples("train") if not e.checkable)
    model, _ = tiny_llama
    torch.manual_seed(0)
    out = step.rollout_step(
        config, make_engine("prefix", model, tokenizer), task, lambda n: [problem, prompt],
        tokenizer, [],
    )  # fmt: skip
    terms = out.terms
    for name in ("helpfulness", "harmlessness"):
        assert terms[name][:4] == [None] * 4  # the arithmetic group: rules score it
        assert all(isinstance(v, float) and math.isfinite(v) for v in terms[name][4:])
    assert terms["accuracy"][4:] == [None] * 4 and None not in terms["accuracy"][:4]
    batch = update.build_batch(model, None, out.groups, out.rewards, config.grpo, 2, 1.0)
    policy = tiny_model("llama", len(tokenizer))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    max_len, clip = config.generation.max_new_tokens, config.optim.grad_clip
    stats = update.optimize(policy, optimizer, batch, config.grpo, generator, 1.0, max_len, clip)
    assert stats.updates == 1.0 and math.isfinite(stats.loss)


def test_a_run_over_a_mixed_task_logs_both_reward_model_terms(tmp_path):
    config = mixed_config(
        tmp_path, "train.steps=1", "eval.size=2", "train.save_every=0", "grpo.batch_size=16"
    )
    run_dir = train(config, progress=False)
    (row,) = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward" in r]
    assert {"reward/helpfulness", "reward/harmlessness", "reward/accuracy"} <= set(row)
    samples = read_jsonl(run_dir / "samples.jsonl")
    general = [s for s in samples if s["answer"] == ""]
    assert general, "the step drew no general prompt: change the seed or the mix"
    assert all(isinstance(s["rewards"]["helpfulness"], float) for s in general)
    assert all(s["rewards"]["helpfulness"] is None for s in samples if s["answer"])
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/problems" in r]
    assert evals and all(r["eval/problems"] <= 2 for r in evals)  # arithmetic problems only
