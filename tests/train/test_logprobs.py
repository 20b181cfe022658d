"""train/logprobs.py: the chunked, backbone+head path equals the plain full-logits path (values,
entropy, gradients), is right under left padding, and handles logits_to_keep and bf16."""

from __future__ import annotations

import pytest
import torch
import transformers

from r1lab.train.logprobs import token_logprobs

TINY = dict(
    vocab_size=257,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
# Llama/Qwen2 are the common case; the others change lm_head output in their forward
# (softcapping, logit scales) or use absolute positions (GPT-2), which token_logprobs must
# reproduce.
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, TINY),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, TINY),
    "gemma2": (
        transformers.Gemma2Config,
        transformers.Gemma2ForCausalLM,
        {**TINY, "final_logit_softcapping": 0.5, "head_dim": 8},
    ),
    "granite": (
        transformers.GraniteConfig,
        transformers.GraniteForCausalLM,
        {**TINY, "logits_scaling": 0.25},
    ),
    "cohere": (
        transformers.CohereConfig,
        transformers.CohereForCausalLM,
        {**TINY, "logit_scale": 3.0},
    ),
    "gpt2": (
        transformers.GPT2Config,
        transformers.GPT2LMHeadModel,
        dict(vocab_size=257, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    ),
}


def tiny_model(family: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0):
    config_cls, model_cls, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).to(dtype)
    for p in model.parameters():  # bigger weights than the init: peaked, varied distributions
        p.data.normal_(0, 0.2)
    return model.eval()


def left_padded(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and mask, each sequence right-aligned (left padding with id 0)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :], mask[i, width - len(s) :] = s, 1
    return ids, mask


def prompt_completion_batch(seed: int = 0):
    """GRPO layout: [left-padded prompt | right-padded completion]; returns ids, mask, K."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 257, (n,), generator=g) for n in (5, 3, 7, 6)]
    ids_p, mask_p = left_padded(prompts)
    lengths = torch.tensor([6, 2, 9, 0])
    ids_c = torch.randint(1, 257, (4, 9), generator=g)
    mask_c = (torch.arange(9)[None, :] < lengths[:, None]).long()
    return torch.cat([ids_p, ids_c * mask_c], 1), torch.cat([mask_p, mask_c], 1), 9


def full_logits_logprobs(model, ids, mask, temperature: float = 1.0):
    """Reference: the model's own forward, [B, T-1, V] fp32 logits, log_softmax, gather."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    logp_all = torch.log_softmax(logits[:, :-1].float() / temperature, -1)  # [B, T-1, V]
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    return logp.masked_fill(~valid, 0), entropy.masked_fill(~valid, 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk_size,temperature", [(1, 1.0), (7, 0.7), (None, 1.0)])
def test_chunked_equals_full_logits(family, chunk_size, temperature):
    model = tiny_model(family)
    ids, mask, _ = prompt_completion_batch()
    with torch.no_grad():
        logp, entropy = token_logprobs(
            model, ids, mask, with_entropy=True, chunk_size=chunk_size, temperature=temperature
        )
        ref_logp, ref_entropy = full_logits_logprobs(model, ids, mask, temperature)
    assert logp.dtype == entropy.dtype == torch.float32
    assert logp.shape == entropy.shape == (4, ids.shape[1] - 1)
    assert ref_logp.std() > 0.5 and ref_entropy.std() > 0.1  # the comparison is not trivial
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_left_padding_matches_unpadded_rows(family, attn):
    model = tiny_model(family)
    model.config._attn_implementation = attn
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 257, (n,), generator=g) for n in (9, 4, 13, 2)]
    ids, mask = left_padded(seqs)
    with torch.no_grad():
        batched, _ = token_logprobs(model, ids, mask)
        for i, seq in enumerate(seqs):
            alone, _ = token_logprobs(model, seq[None], torch.ones(1, len(seq), dtype=torch.long))
            torch.testing.assert_close(batched[i, -(len(seq) - 1) :], alone[0], atol=1e-5, rtol=0)
            assert (batched[i, : -(len(seq) - 1)] == 0).all()
        # The trap this guards against: a forward without position_ids shifts positions by
        # the pad length. RoPE is shift-invariant up to rounding; absolute positions are not.
        if family == "gpt2":
            shifted = model(input_ids=ids, attention_mask=mask).logits[1, -2].log_softmax(-1)
            assert (shifted[ids[1, -1]] - batched[1, -1]).abs() > 1e-2


@pytest.mark.parametrize("checkpoint_chunks", [True, False])
def test_gradients_equal_full_logits_path(checkpoint_chunks):
    model = tiny_model()
    ids, mask, _ = prompt_completion_batch(seed=2)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=g)

    def grads(fn):
        model.zero_grad()
        logp, entropy = fn()
        ((logp * weights).sum() + 0.3 * entropy.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    chunked = grads(
        lambda: token_logprobs(
            model, ids, mask, with_entropy=True, chunk_size=5, checkpoint_chunks=checkpoint_chunks
        )
    )
    full = grads(lambda: full_logits_logprobs(model, ids, mask))
    assert chunked.keys() == full.keys()
    for name in full:
        assert full[name].abs().max() > 0, name
        torch.testing.assert_close(chunked[name], full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_logits_to_keep_is_the_last_k_slice():
    model = tiny_model()
    ids, mask, k = prompt_completion_batch(seed=4)
    with torch.no_grad():
        logp, entropy = token_logprobs(model, ids, mask, logits_to_keep=k, with_entropy=True)
        all_logp, all_entropy = token_logprobs(model, ids, mask, with_entropy=True)
    assert logp.shape == entropy.shape == (4, k)
    torch.testing.assert_close(logp, all_logp[:, -k:], atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, all_entropy[:, -k:], atol=1e-6, rtol=0)
    completion_mask = mask[:, -k:].bool()
    assert (logp[completion_mask] < 0).all() and (logp[~completion_mask] == 0).all()
    assert (logp[3] == 0).all()  # the empty completion
    for bad in (0, ids.shape[1]):
        with pytest.raises(ValueError, match="logits_to_keep"):
            token_logprobs(model, ids, mask, logits_to_keep=bad)


def test_bf16_model_gives_fp32_close_to_reference():
    model = tiny_model(dtype=torch.bfloat16)
    ids, mask, k = prompt_completion_batch(seed=5)
    logp, entropy = token_logprobs(model, ids, mask, logits_to_keep=k, with_entropy=True)
    assert logp.dtype == entropy.dtype == torch.float32
    logp.sum().backward()  # differentiable through a bf16 model
    assert model.lm_head.weight.grad is not None
    with torch.no_grad():
        ref_logp, ref_entropy = full_logits_logprobs(model, ids, mask)
    torch.testing.assert_close(logp.detach(), ref_logp[:, -k:], atol=2e-2, rtol=0)
    torch.testing.assert_close(entropy.detach(), ref_entropy[:, -k:], atol=2e-2, rtol=0)


def test_all_padding_gives_zeros_and_model_without_backbone_is_refused():
    model = tiny_model()
    ids = torch.randint(1, 257, (2, 6))
    logp, entropy = token_logprobs(model, ids, torch.zeros_like(ids), with_entropy=True)
    assert logp.shape == (2, 5) and (logp == 0).all() and (entropy == 0).all()
    with pytest.raises(TypeError, match="backbone"):
        token_logprobs(model.model, ids, torch.ones_like(ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_matches_the_autograd_chunk_path(monkeypatch, dtype):
    """The fused LM-head function (plain heads) against the checkpointed log_softmax path
    (used for heads with scaling or softcapping): same log-probs, entropy and gradients, in
    fp32 exactly and under bf16 autocast within bf16 rounding."""
    from r1lab.train import logprobs

    model = tiny_model()
    ids, mask, _ = prompt_completion_batch(seed=4)
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=g)

    def run():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logp, entropy = token_logprobs(
                model, ids, mask, with_entropy=True, chunk_size=7, temperature=0.7
            )
        ((logp * weights).sum() + 0.3 * entropy.sum()).backward()
        return (
            logp.detach(),
            entropy.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters()},
        )

    fused = run()
    monkeypatch.setattr(logprobs, "_plain_head", lambda model, head: False)
    plain = run()
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(fused[0], plain[0], **tol)
    torch.testing.assert_close(fused[1], plain[1], **tol)
    for name, grad in plain[2].items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (fused[2][name] - grad).abs().max() / scale < (
            1e-4 if dtype == torch.float32 else 5e-2
        ), name
