"""Model specs: tiny test models, the built-in tokenizer's padding, local directories, and the
errors for specs that cannot be resolved (with the built-in model suggested offline)."""

from __future__ import annotations

import pytest
import torch

from r1lab.core.errors import UserError
from r1lab.core.gguf import BUILTINS, cache_dir
from r1lab.core.models import (
    DEFAULT_MODEL,
    TINY_ARCHS,
    list_models,
    load_model,
    load_tokenizer,
    resolve_dir,
)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
def test_tiny_model_loads_and_is_deterministic(arch):
    model, tokenizer = load_model(f"tiny:{arch}")
    again, _ = load_model(f"tiny:{arch}")
    assert model.config.model_type == arch
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert not model.training
    assert same_weights(model, again)
    ids = tokenizer(["What is 2+3?", "1"], return_tensors="pt", padding=True)
    logits = model(**ids).logits
    assert logits.shape[:2] == ids.input_ids.shape
    assert torch.isfinite(logits).all()


def test_tiny_model_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny:llama")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_model_dtype_casts_weights_and_keeps_rope_buffers_fp32():
    model, _ = load_model("tiny:qwen2", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_a_bf16_reference_keeps_the_policys_rope_frequencies():
    from r1lab.grpo.update import make_reference

    model, _ = load_model("tiny:llama")
    ref = make_reference(model, "bfloat16")
    assert next(ref.parameters()).dtype == torch.bfloat16
    assert torch.equal(ref.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)


def test_tokenizer_pads_left_with_a_pad_token(tokenizer):
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    batch = tokenizer(["a", "a much longer prompt than the first"], padding=True)
    short_ids, short_mask = batch.input_ids[0], batch.attention_mask[0]
    assert short_mask[0] == 0 and short_mask[-1] == 1  # padding sits on the left
    assert short_ids[0] == tokenizer.pad_token_id


def test_tiny_model_generation_config_knows_the_pad_token(tiny_llama):
    model, tokenizer = tiny_llama
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_unknown_scheme_lists_valid_schemes():
    with pytest.raises(UserError, match=r"'foo:'.*builtin:.*tiny:"):
        load_model("foo:bar")


def test_unknown_tiny_arch_lists_valid_archs():
    with pytest.raises(UserError) as err:
        load_model("tiny:gpt9")
    assert "'gpt9'" in str(err.value)
    assert all(arch in str(err.value) for arch in TINY_ARCHS)


def test_unknown_builtin_lists_builtins(tmp_cache):
    with pytest.raises(UserError) as err:
        load_model("builtin:gpt5")
    assert "'gpt5'" in str(err.value)
    assert all(name in str(err.value) for name in BUILTINS)


def test_unknown_dtype():
    with pytest.raises(UserError, match="float8"):
        load_model("tiny:llama", dtype="float8")


@pytest.mark.parametrize("spec", ["nonexistent-model-xyz", "someorg/somemodel-xyz"])
def test_unreachable_hub_id_suggests_the_builtin_model(spec, offline):
    with pytest.raises(UserError) as err:
        load_model(spec)
    assert spec in str(err.value)
    assert DEFAULT_MODEL in str(err.value)


@pytest.mark.parametrize("relative", ["no/such/model", "./missing"])
def test_missing_local_directory_says_so(relative, tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_model(relative)
    assert "not found" in str(err.value)
    assert DEFAULT_MODEL in str(err.value)
    with pytest.raises(UserError, match="not found"):
        load_model(str(tmp_path / "absent"))


def test_directory_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_gguf_file(tmp_path, tmp_cache):
    with pytest.raises(UserError, match=r"GGUF file not found.*missing\.gguf"):
        load_model(str(tmp_path / "missing.gguf"))


def test_cache_dir_respects_r1lab_cache(tmp_cache):
    assert cache_dir() == tmp_cache


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("R1LAB_CACHE", raising=False)
    assert cache_dir().parts[-2:] == (".cache", "r1lab")


def test_list_models_lists_builtin_and_tiny(tmp_cache):
    rows = list_models()
    specs = [row["spec"] for row in rows]
    assert DEFAULT_MODEL in specs
    assert {f"tiny:{arch}" for arch in TINY_ARCHS} <= set(specs)
    builtin = next(row for row in rows if row["spec"] == DEFAULT_MODEL)
    assert "not yet" in builtin["cache"]  # the empty cache has nothing converted


def test_list_models_shows_converted_ggufs(tmp_cache):
    converted = tmp_cache / "models" / "gguf-mine-0123456789ab"
    converted.mkdir(parents=True)
    assert str(converted) in [row["spec"] for row in list_models()]


def test_saved_tiny_model_loads_back_from_its_directory(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert resolve_dir(str(tmp_path)) == str(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert type(loaded) is type(model)
    assert same_weights(loaded, model)
    assert loaded_tok.padding_side == "left"
    assert loaded_tok.pad_token_id == tokenizer.pad_token_id


def test_load_tokenizer_for_tiny_is_the_builtin_tokenizer(tokenizer):
    tiny = load_tokenizer("tiny:qwen2")
    assert tiny.get_vocab() == tokenizer.get_vocab()


def test_compute_context_bf16_autocasts_matmuls_but_fp32_does_not():
    from r1lab.core.models import compute_context

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with compute_context("bfloat16"):
        assert (a @ b).dtype == torch.bfloat16
    with compute_context("float32"):
        assert (a @ b).dtype == torch.float32


def test_compute_context_rejects_unknown_dtype():
    from r1lab.core.models import compute_context

    with pytest.raises(UserError, match="valid dtypes"):
        compute_context("float8")


def test_load_model_silences_transformers_progress_bars():
    from transformers.utils import logging as hf_logging

    from r1lab.core.models import load_model

    hf_logging.enable_progress_bar()
    load_model("tiny:llama")
    assert not hf_logging.is_progress_bar_enabled()


def test_pick_device_auto_is_the_cpu_without_a_gpu_and_a_missing_gpu_is_an_error():
    from r1lab.core.models import pick_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert pick_device("auto") == torch.device("cpu") == pick_device("cpu")
    with pytest.raises(UserError, match="no CUDA GPU"):
        pick_device("cuda:0")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU"])
def test_model_device_is_validated_at_load_time(device):
    from r1lab.grpo.config import build_config

    with pytest.raises(UserError, match="model.device"):
        build_config({"model": {"device": device}})


def test_a_hub_id_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch, tmp_cache):
    """No retries for most of a minute: one probe, one clear line, no download attempted."""
    import transformers

    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    asked = lambda *a, **k: pytest.fail("transformers asked the hub")  # noqa: E731
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", asked)
    with pytest.raises(UserError, match=r"'someorg/x'.*cannot be reached.*127\.0\.0\.1:9"):
        load_model("someorg/x")


def test_a_hub_error_is_one_line():
    """transformers' offline message runs to three lines; the user gets its first."""
    from r1lab.core.models import _hub_error

    err = OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your internet.\n")
    message = str(_hub_error("org/x", err))
    assert "\n" not in message and "We couldn't connect" in message
    assert "Check your internet" not in message


def test_offline_mode_names_itself_when_the_model_is_not_cached(offline, tmp_cache):
    with pytest.raises(UserError) as err:
        load_model("someorg/not-cached-xyz")
    assert "HF_HUB_OFFLINE is set" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:nope", "unknown built-in model 'nope'"),
        ("tiny:gpt9", "unknown tiny architecture 'gpt9'"),
        ("missing.gguf", "GGUF file not found"),
        ("./no/such/dir", "model directory not found"),
    ],
)
def test_check_spec_fails_at_once_loading_nothing(spec, message, tmp_path, monkeypatch):
    from r1lab.core.models import check_spec

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        check_spec(spec)


def test_check_spec_accepts_what_loads(tmp_path):
    from r1lab.core.models import check_spec

    (tmp_path / "config.json").write_text("{}")
    for spec in ("tiny:llama", str(tmp_path), DEFAULT_MODEL):
        check_spec(spec)
