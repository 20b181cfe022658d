"""LoRA through peft (core/lora.py): the reference view is the base model exactly, the lean
decoder reads the adapted weights, a LoRA run trains only the adapter, resumes exactly, and
leaves a plain merged final/ (with its adapter beside it) that every model consumer loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from r1lab.core import lora
from r1lab.core.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints
from r1lab.core.errors import UserError
from r1lab.core.models import load_model, tiny_model
from r1lab.grpo.config import build_config
from r1lab.grpo.loop import train
from r1lab.rollout import SamplingParams, make_engine
from r1lab.sample.config import build_sample_config
from r1lab.sft.config import build_sft_config
from r1lab.text.templates import Prompt
from r1lab.train.logprobs import token_logprobs

SMALL = lora.LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "up_proj"])


def adapted(tokenizer, seed: int = 1):
    """(peft model, the untouched base) for a tiny Llama whose adapter is not a no-op (peft
    starts B at zero) and whose weights are large enough for confident greedy decoding."""
    base = tiny_model("llama", len(tokenizer), seed=seed)
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    plain = AutoModelForCausalLM.from_config(base.config)
    plain.load_state_dict(base.state_dict())
    peft = lora.attach(base, SMALL, "tiny:llama")
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(7))
    return peft.eval(), plain.eval()


def batch(tokenizer):
    return tokenizer(["What is 3 + 4?", "Hi there"], return_tensors="pt", padding=True)


def test_base_view_is_the_base_model_and_what_disable_adapter_computes(tokenizer):
    peft, plain = adapted(tokenizer)
    view = lora.base_view(peft.get_base_model())
    ids = batch(tokenizer)
    want = token_logprobs(plain, ids.input_ids, ids.attention_mask)[0]
    with torch.no_grad():
        got = token_logprobs(view, ids.input_ids, ids.attention_mask)[0]
        with peft.disable_adapter():
            disabled = token_logprobs(peft.get_base_model(), ids.input_ids, ids.attention_mask)[0]
        adapted_logp = token_logprobs(peft.get_base_model(), ids.input_ids, ids.attention_mask)[0]
    assert torch.equal(got, want) and torch.equal(disabled, want)
    assert not torch.allclose(adapted_logp, want, atol=1e-3)  # the adapter does change things
    shared = {p.data_ptr() for p in peft.parameters()}
    assert all(p.data_ptr() in shared for p in view.parameters())  # no second copy


def test_effective_weight_is_what_an_adapted_projection_applies(tokenizer):
    peft, _ = adapted(tokenizer)
    layer = peft.get_base_model().model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ lora.effective_weight(layer).T, atol=1e-5)
    untouched = peft.get_base_model().model.layers[0].self_attn.o_proj
    assert lora.effective_weight(untouched) is untouched.weight


def test_lean_decoder_on_an_adapted_model_decodes_what_the_model_does(tokenizer):
    model = adapted(tokenizer)[0].get_base_model()
    prompts = [Prompt("What is 3 + 4?"), Prompt("Compute 12 * 7 - 5, then add 19.")]
    greedy = SamplingParams(n=2, max_new_tokens=10, temperature=0.0)
    want = make_engine("hf", model, tokenizer, max_prompt_tokens=64).generate(prompts, greedy)
    engine = make_engine("prefix", model, tokenizer, max_prompt_tokens=64)
    assert engine.decoder is not None  # the lean path, not the modules
    got = engine.generate(prompts, greedy)
    assert [[g.completion_ids for g in group] for group in got] == [
        [g.completion_ids for g in group] for group in want
    ]


def spread(inputs) -> list[float | None]:
    """A reward the random tiny model earns unevenly (accuracy and format are all 0 for it)."""
    return [len(text) % 5 / 4 for text in inputs.completions]


def grpo_config(out: Path, *overrides: str, name: str = "lora"):
    raw = {"rewards": [{"name": "accuracy"}, {"name": "test_lora:spread"}]}
    return build_config(
        raw,
        [
            f"name={name}",
            f"train.out_dir={out}",
            "model.spec=tiny:llama",
            "model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}",
            "task.options={digits: 1, operands: 2, train_size: 40, test_size: 4}",
            "generation.max_new_tokens=8",
            "grpo.batch_size=8",
            "grpo.group_size=4",
            "grpo.micro_batch_size=4",
            "grpo.beta=0.05",
            "optim.lr=0.05",
            "train.steps=3",
            "train.save_every=1",
            "train.keep_checkpoints=3",
            "eval.size=2",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return train(grpo_config(out), progress=False)


def test_a_lora_run_saves_adapters_and_a_plain_merged_final_with_its_adapter(lora_run):
    checkpoint = latest_checkpoint(lora_run)
    assert lora.is_adapter_dir(checkpoint) and (checkpoint / STATE_FILE).is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter only
    assert len(list_checkpoints(lora_run, resumable=False)) == 3
    final = lora_run / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)  # a plain model directory
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert lora.is_adapter_dir(final / lora.ADAPTER_DIR)
    base = load_model("tiny:llama")[0].state_dict()
    weights = merged.state_dict()
    changed = {k for k in base if not torch.equal(base[k], weights[k])}
    assert changed and all(any(t in k for t in ("q_proj", "v_proj", "up_proj")) for k in changed)


def test_a_lora_checkpoint_loads_as_its_merged_model_like_final(lora_run, tokenizer):
    from_checkpoint = load_model(str(latest_checkpoint(lora_run)))[0]
    from_final = load_model(str(lora_run / "final"))[0]
    ids = batch(tokenizer)
    with torch.no_grad():
        a = token_logprobs(from_checkpoint, ids.input_ids, ids.attention_mask)[0]
        b = token_logprobs(from_final, ids.input_ids, ids.attention_mask)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_a_lora_run_resumes_exactly(lora_run, tmp_path, monkeypatch):
    from r1lab.grpo import loop

    real = loop.rollout_step
    calls = {"n": 0}

    def dies_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "rollout_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(grpo_config(tmp_path), progress=False)
    monkeypatch.setattr(loop, "rollout_step", real)
    resumed = train(grpo_config(tmp_path), resume=True, progress=False)
    for name in ("metrics.jsonl", "samples.jsonl"):
        drop = ("step_seconds", "gen_tokens_per_s", "time/")
        rows = [
            [{k: v for k, v in r.items() if not k.startswith(drop)} for r in _rows(d / name)]
            for d in (resumed, lora_run)
        ]
        assert rows[0] == rows[1]
    a = AutoModelForCausalLM.from_pretrained(resumed / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(lora_run / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rows(path: Path) -> list[dict]:
    from r1lab.core.runfiles import read_jsonl

    return read_jsonl(path)


def test_lora_sft_trains_only_the_adapter(tmp_path):
    from r1lab.sft.loop import sft

    config = build_sft_config(
        {},
        [
            f"train.out_dir={tmp_path}",
            "model.spec=tiny:llama",
            "model.lora={r: 4, alpha: 8}",
            "task.options={digits: 1, operands: 2, train_size: 12, test_size: 2}",
            "optim.lr=0.01",
            "train.steps=2",
            "train.batch_size=4",
            "eval.size=2",
        ],
    )
    run_dir = sft(config, progress=False)
    state = torch.load(latest_checkpoint(run_dir) / STATE_FILE, weights_only=False)
    sizes = [moments["exp_avg"].numel() for moments in state["optimizer"]["state"].values()]
    assert sizes and max(sizes) <= 4 * 128  # adapter matrices only, never the 49k-row embedding
    assert (run_dir / "final" / "config.json").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.parallel=fsdp"], "FSDP2 with LoRA is not supported"),
        (["grpo.offload_reference=true"], "grpo.offload_reference needs a reference copy"),
        (["grpo.ref_reset_every=10"], "grpo.ref_reset_every needs a reference copy"),
        (["model.lora.r=0"], "model.lora.r must be >= 1"),
        (["model.lora.dropout=1.5"], r"model.lora.dropout must be in \[0, 1\)"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules"),
    ],
)
def test_lora_settings_that_cannot_work_are_config_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        grpo_config(tmp_path, *overrides)


def test_a_lora_section_in_a_sample_recipe_is_an_error():
    with pytest.raises(UserError, match="sampling trains nothing"):
        build_sample_config({"model": {"lora": {"r": 4}}})


def test_lora_sft_on_data_that_needs_a_new_token_is_an_error(tmp_path):
    from r1lab.sft.loop import sft

    config = build_sft_config(
        {},
        [
            f"train.out_dir={tmp_path}",
            "model.spec=tiny:llama",
            "model.lora={r: 4}",
            "data.sources=[{kind: task, format: r1}]",
            "task.options={digits: 1, operands: 2, train_size: 8, test_size: 2}",
            "train.steps=1",
        ],
    )
    with pytest.raises(UserError, match="grows the embeddings"):
        sft(config, progress=False)


def test_unknown_lora_target_modules_name_themselves(tmp_path):
    config = grpo_config(tmp_path, "model.lora.target_modules=[no_such_proj]")
    with pytest.raises(UserError, match="model.lora.target_modules"):
        train(config, progress=False)


@pytest.mark.smoke
def test_peft_loads_the_builtin_model_and_its_disabled_adapter_is_the_base():
    model, tokenizer = load_model()
    plain = load_model()[0]
    peft = lora.attach(model, lora.LoraConfig(r=8), "builtin:smollm2-135m-instruct")
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    ids = batch(tokenizer)
    with torch.no_grad():
        want = plain(**ids).logits
        with peft.disable_adapter():
            disabled = peft(**ids).logits
        view = lora.base_view(peft.get_base_model())(**ids).logits
        on = peft(**ids).logits
    assert torch.equal(disabled, want) and torch.equal(view, want)
    assert not torch.allclose(on, want, atol=1e-3)
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert trainable == 2_442_240  # r=8 on the 7 projections of 30 layers: 1.8% of 137M
