"""prefix_logprobs (each prompt run once, its KV cache shared by the completions that continue
it) equals token_logprobs on the `[prompt | completion]` rows and the unpadded single
sequences, in values, entropy and gradients, under left-padded prompts, right-padded
completions, repeated prompts (G > 1) and arbitrary row subsets."""

from __future__ import annotations

import pytest
import torch
import transformers

from r1lab.train.logprobs import prefix_logprobs, token_logprobs

VOCAB = 257
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}


def tiny_model(family: str = "llama", seed: int = 0):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**TINY))
    for p in model.parameters():  # peaked, varied distributions: the comparison is not trivial
        p.data.normal_(0, 0.2)
    return model.eval()


def make_case(prompt_lens, completion_lens, rows, seed=0):
    """Left-padded prompts [U, Tp], right-padded completions [B, Tc], and the raw sequences."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in prompt_lens]
    completions = [torch.randint(3, VOCAB, (n,), generator=g) for n in completion_lens]
    tp, tc = max(prompt_lens), max(max(completion_lens), 1)
    prompt_ids = torch.zeros(len(prompts), tp, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, p in enumerate(prompts):
        prompt_ids[i, tp - len(p) :], prompt_mask[i, tp - len(p) :] = p, 1
    completion_ids = torch.zeros(len(completions), tc, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, c in enumerate(completions):
        completion_ids[i, : len(c)], completion_mask[i, : len(c)] = c, 1
    rows = torch.tensor(rows, dtype=torch.long)
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        rows=rows,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        prompts=prompts,
        completions=completions,
    )


def joined_rows(case):
    """The same batch as `[left-padded prompt | right-padded completion]` rows."""
    rows = case["rows"]
    ids = torch.cat([case["prompt_ids"][rows], case["completion_ids"]], 1)
    mask = torch.cat([case["prompt_mask"][rows], case["completion_mask"]], 1)
    return ids, mask


def run_prefix(model, case, **kw):
    return prefix_logprobs(
        model,
        case["prompt_ids"],
        case["prompt_mask"],
        case["rows"],
        case["completion_ids"],
        case["completion_mask"],
        **kw,
    )


# prompts of different lengths (left padding), completions of different lengths (right
# padding, one empty), G = 3 samples per prompt, and a subset that repeats a prompt out of order
CASES = {
    "groups": ([5, 2, 7], [4, 1, 6, 3, 6, 0, 2, 5, 5], [0, 0, 0, 1, 1, 1, 2, 2, 2]),
    "subset": ([6, 3], [3, 5, 2], [1, 1, 0]),
    "one_prompt": ([4], [2, 7], [0, 0]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_prefix_equals_joined_rows_and_unpadded_sequences(family, name):
    model = tiny_model(family)
    case = make_case(*CASES[name], seed=len(name))
    ids, mask = joined_rows(case)
    tc = case["completion_ids"].shape[1]
    with torch.no_grad():
        logp, entropy = run_prefix(model, case, with_entropy=True, chunk_size=5, temperature=0.7)
        ref_logp, ref_entropy = token_logprobs(
            model, ids, mask, logits_to_keep=tc, with_entropy=True, temperature=0.7
        )
    assert logp.shape == entropy.shape == case["completion_ids"].shape
    assert ref_logp.std() > 0.5  # peaked model: equal values are not an accident
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)
    for i, completion in enumerate(case["completions"]):
        n = len(completion)
        assert (logp[i, n:] == 0).all() and (entropy[i, n:] == 0).all()  # padded targets
        if n == 0:
            continue
        seq = torch.cat([case["prompts"][int(case["rows"][i])], completion])[None]
        with torch.no_grad():
            alone, _ = token_logprobs(
                model, seq, torch.ones_like(seq), logits_to_keep=n, temperature=0.7
            )
        torch.testing.assert_close(logp[i, :n], alone[0], atol=1e-5, rtol=0)
        assert (logp[i, :n] < 0).all()


@pytest.mark.parametrize("checkpoint_layers", [False, True])
@pytest.mark.parametrize("name", ["groups", "subset"])
def test_prefix_gradients_equal_joined_rows_gradients(name, checkpoint_layers):
    model = tiny_model().train()  # layers checkpoint only in training mode (no dropout here)
    case = make_case(*CASES[name], seed=7)
    ids, mask = joined_rows(case)
    tc = case["completion_ids"].shape[1]
    weights = torch.randn(case["completion_ids"].shape, generator=torch.Generator().manual_seed(1))
    calls = []
    model.get_decoder().layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))

    def grads(fn):
        model.zero_grad()
        logp, entropy = fn()
        ((logp * weights).sum() + 0.3 * entropy.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    shared = grads(
        lambda: run_prefix(
            model, case, with_entropy=True, chunk_size=4, checkpoint_layers=checkpoint_layers
        )
    )
    # prompts and completions, each replayed in the backward pass when checkpointing
    assert len(calls) == (4 if checkpoint_layers else 2)
    joined = grads(
        lambda: token_logprobs(model, ids, mask, logits_to_keep=tc, with_entropy=True, chunk_size=4)
    )
    assert shared.keys() == joined.keys()
    for key in joined:
        assert joined[key].abs().max() > 0, key
        torch.testing.assert_close(shared[key], joined[key], atol=1e-5, rtol=1e-4, msg=key)


def test_prefix_of_a_repeated_prompt_is_computed_once_per_distinct_prompt():
    """Rows [1, 1, 0] in one call equal three separate single-prompt calls."""
    model = tiny_model()
    case = make_case(*CASES["subset"], seed=3)
    with torch.no_grad():
        together, _ = run_prefix(model, case)
        for i, u in enumerate(case["rows"].tolist()):
            p_len = len(case["prompts"][u])
            single, _ = prefix_logprobs(
                model,
                case["prompt_ids"][u : u + 1, -p_len:],
                case["prompt_mask"][u : u + 1, -p_len:],
                torch.zeros(1, dtype=torch.long),
                case["completion_ids"][i : i + 1],
                case["completion_mask"][i : i + 1],
            )
            torch.testing.assert_close(together[i], single[0], atol=1e-5, rtol=0)


def test_layer_checkpointing_is_undone_after_the_call():
    model = tiny_model()
    case = make_case(*CASES["groups"], seed=2)
    run_prefix(model, case, checkpoint_layers=True)[0].sum().backward()
    layers = model.get_decoder().layers
    assert not any(layer.gradient_checkpointing for layer in layers)
    assert not any("_can_checkpoint_with_cache" in layer.__dict__ for layer in layers)
