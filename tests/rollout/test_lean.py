"""The lean decode step computes the model's own forward: same logits as `transformers` for
left-padded prompts shared by n rows, rows leaving the batch, Qwen2's q/k/v biases, refreshed
weights after an update, and bf16 compute within bf16 tolerance."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from r1lab.core.errors import UserError
from r1lab.core.models import tiny_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.rollout.hf import left_pad
from r1lab.rollout.lean import KVBuffer, LeanDecoder, cpu_kernels_available, supports
from r1lab.text.templates import Prompt

PROMPTS = [[5, 9, 2, 7, 11, 3], [4, 8], [12, 6, 6, 1]]


def peaked(arch: str) -> torch.nn.Module:
    """Large random weights: confident, varied argmaxes, so comparisons are not ties."""
    model = tiny_model(arch, 64, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return model.eval()


def reference_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """Next-token logits [A, V] of each unpadded row through the plain forward."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([r])).logits[:, -1] for r in rows])


def prefill(model) -> tuple[DynamicCache, torch.Tensor]:
    """The model's own cache of the left-padded PROMPTS, and their attention mask."""
    ids, mask = left_pad(PROMPTS, 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
        )
    return cache, mask


def lean_steps(model, n, continuations, dtype=torch.float32, cpu_kernels=None):
    """Prefill PROMPTS, then feed each row its continuation token by token; logits per step."""
    cache, mask = prefill(model)
    kv = KVBuffer(cache, mask, n, max_new_tokens=len(continuations[0]), dtype=dtype)
    decoder = LeanDecoder(model, dtype, cpu_kernels=cpu_kernels)
    position = mask.sum(-1).repeat_interleave(n)
    out = []
    for t in range(len(continuations[0])):
        tokens = torch.tensor([c[t] for c in continuations])
        out.append(decoder.step(tokens, position + t, kv))
    return out


KERNELS = [
    pytest.param(True, id="cpu-kernels"),  # oneDNN prepacked linears, flash attention
    pytest.param(False, id="plain-ops"),  # what runs on other devices
]


@pytest.mark.parametrize("cpu_kernels", KERNELS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_logits_equal_the_model_forward_for_shared_left_padded_prompts(arch, cpu_kernels):
    model = peaked(arch)
    assert supports(model)
    if cpu_kernels and not cpu_kernels_available(model):
        pytest.skip("this torch build lacks the CPU kernels")
    n = 2
    gen = torch.Generator().manual_seed(0)
    continuations = torch.randint(1, 64, (len(PROMPTS) * n, 4), generator=gen).tolist()
    steps = lean_steps(model, n, continuations, cpu_kernels=cpu_kernels)
    for t, logits in enumerate(steps):
        rows = [PROMPTS[i // n] + continuations[i][: t + 1] for i in range(len(continuations))]
        torch.testing.assert_close(logits, reference_logits(model, rows), rtol=1e-4, atol=1e-4)


def test_rows_leave_the_batch_without_changing_the_others():
    model = peaked("llama")
    cache, mask = prefill(model)
    kv = KVBuffer(cache, mask, 2, max_new_tokens=3, dtype=torch.float32)
    decoder = LeanDecoder(model)
    position = mask.sum(-1).repeat_interleave(2)  # rows 0..5, prompts 0,0,1,1,2,2
    decoder.step(torch.tensor([1, 2, 3, 4, 5, 6]), position, kv)
    keep = torch.tensor([1, 4])  # rows 1 (prompt 0) and 4 (prompt 2) go on
    kv.select(keep)
    logits = decoder.step(torch.tensor([7, 8]), position[keep] + 1, kv)
    want = reference_logits(model, [PROMPTS[0] + [2, 7], PROMPTS[2] + [5, 8]])
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpu_kernels", KERNELS)
def test_bf16_compute_stays_within_bf16_tolerance(cpu_kernels):
    model = peaked("llama")
    if cpu_kernels and not cpu_kernels_available(model):
        pytest.skip("this torch build lacks the CPU kernels")
    continuations = [[3, 4]] * len(PROMPTS)
    fp32 = lean_steps(model, 1, continuations)[-1]
    bf16 = lean_steps(model, 1, continuations, torch.bfloat16, cpu_kernels=cpu_kernels)[-1]
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() >= 2 / 3


def test_sync_weights_refreshes_the_fused_copies():
    model = peaked("qwen2")
    params = SamplingParams(n=2, max_new_tokens=6, temperature=0)
    lean = make_engine("prefix", model, _Tok(), lean=True)
    plain = make_engine("prefix", model, _Tok(), lean=False)
    prompts = [Prompt("a"), Prompt("b")]
    before = lean.generate(prompts, params)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    lean.sync_weights(model)
    after = lean.generate(prompts, params)
    assert ids(after) == ids(plain.generate(prompts, params))
    assert ids(after) != ids(before)


def test_unsupported_models_use_the_plain_path_or_say_why():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mlp_bias=True,
    )
    model = LlamaForCausalLM(config)
    assert not supports(model)
    assert make_engine("prefix", model, _Tok()).decoder is None
    with pytest.raises(UserError, match="lean decode step does not support"):
        make_engine("prefix", model, _Tok(), lean=True)


def ids(groups):
    return [[g.completion_ids for g in group] for group in groups]


class _Tok:
    """A two-prompt tokenizer stub: prompt text -> fixed ids, ids -> text."""

    pad_token_id = 0
    eos_token_id = 63

    def __call__(self, text, add_special_tokens=True):
        return type("Enc", (), {"input_ids": PROMPTS[0] if text == "a" else PROMPTS[1]})

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(map(str, tokens))
