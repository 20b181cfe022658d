"""Rollout engines: the shared-prefix engine decodes exactly what `transformers.generate` does
(greedy), ends rows on EOS and stop strings, marks truncation, groups results [P][n] in prompt
order, is reproducible under a seed, and `sample_next` draws from the right distribution."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.core.models import tiny_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.rollout.prefix import inverse_cdf, sample_next
from r1lab.text.templates import Prompt

QUESTIONS = ["What is 3 + 4?", "Hi", "Compute 12 * 7 - 5, then add 19 to it, and say why."]


@pytest.fixture(scope="module")
def peaked(tokenizer):
    """A tiny Llama with the real tokenizer and large weights: confident, varied argmaxes
    (the default init is nearly uniform, where greedy ties would make comparisons luck)."""
    model = tiny_model("llama", len(tokenizer), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def engines(model, tokenizer):
    return {
        name: make_engine(name, model, tokenizer, max_prompt_tokens=64) for name in ("hf", "prefix")
    }


def prompts(questions=QUESTIONS):
    return [Prompt(q) for q in questions]


def greedy(max_new_tokens=10, n=1, stop=()):
    return SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop))


@pytest.mark.parametrize("n", [1, 3])
def test_prefix_greedy_equals_hf_generate_greedy(peaked, tokenizer, n):
    hf, prefix = engines(peaked, tokenizer).values()
    want = hf.generate(prompts(), greedy(n=n))
    got = prefix.generate(prompts(), greedy(n=n))
    assert len(got) == len(QUESTIONS) and all(len(group) == n for group in got)
    lengths = {len(tokenizer(q).input_ids) for q in QUESTIONS}
    assert len(lengths) == len(QUESTIONS)  # prompts really differ in length: left padding
    for q, w_group, g_group in zip(QUESTIONS, want, got, strict=True):
        for w, g in zip(w_group, g_group, strict=True):
            assert g.prompt_ids == w.prompt_ids == tokenizer(q).input_ids
            assert g.completion_ids == w.completion_ids
            assert g.text == w.text and g.finished == w.finished
        assert len({tuple(g.completion_ids) for g in g_group}) == 1  # greedy: n equal copies
    firsts = {tuple(group[0].completion_ids) for group in got}
    assert len(firsts) == len(QUESTIONS)  # different prompts, different answers: not trivial


def test_eos_ends_a_row_and_is_kept(peaked, tokenizer):
    [[free]] = make_engine("prefix", peaked, tokenizer).generate(prompts(QUESTIONS[:1]), greedy())
    assert len(free.completion_ids) == 10 and not free.finished
    eos = free.completion_ids[3]
    cut = free.completion_ids.index(eos) + 1  # the first time greedy emits that token
    peaked.generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
    try:
        for name, engine in engines(peaked, tokenizer).items():
            [[gen], [other]] = engine.generate(prompts(QUESTIONS[:2]), greedy())
            assert gen.completion_ids == free.completion_ids[:cut], name
            assert gen.completion_ids[-1] == eos and gen.finished, name
            assert gen.text == tokenizer.decode(gen.completion_ids, skip_special_tokens=True)
            assert other.finished == (eos in other.completion_ids), name  # rows end separately
    finally:
        peaked.generation_config.eos_token_id = tokenizer.eos_token_id


def test_stop_string_ends_a_row(peaked, tokenizer):
    engine = make_engine("prefix", peaked, tokenizer)
    [[free]] = engine.generate(prompts(QUESTIONS[:1]), greedy())
    ids = free.completion_ids
    # a stop string that first completes at token 4: the text of tokens 3..4
    stop = tokenizer.decode(ids[3:5]).strip()
    assert stop
    cut = next(i + 1 for i in range(len(ids)) if stop in tokenizer.decode(ids[: i + 1]))
    assert cut < len(ids)
    [[gen]] = engine.generate(prompts(QUESTIONS[:1]), greedy(stop=[stop]))
    assert gen.completion_ids == ids[:cut] and gen.finished
    assert stop in gen.text
    [[hf_gen]] = make_engine("hf", peaked, tokenizer).generate(
        prompts(QUESTIONS[:1]), greedy(stop=[stop])
    )
    assert hf_gen.completion_ids == gen.completion_ids and hf_gen.finished


def test_length_limit_truncates_without_finishing(peaked, tokenizer):
    for name, engine in engines(peaked, tokenizer).items():
        groups = engine.generate(prompts(), greedy(max_new_tokens=4, n=2))
        for group in groups:
            for gen in group:
                assert len(gen.completion_ids) == 4 and not gen.finished, name


def test_sampling_groups_by_prompt_in_order_and_seed_reproduces(peaked, tokenizer):
    engine = make_engine("prefix", peaked, tokenizer)
    params = SamplingParams(n=4, max_new_tokens=6, temperature=1.0)
    # the same question twice, at positions 0 and 2: groups follow the prompt order
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]
    torch.manual_seed(5)
    first = engine.generate(prompts(questions), params)
    torch.manual_seed(5)
    second = engine.generate(prompts(questions), params)
    third = engine.generate(prompts(questions), params)  # RNG moved on: other samples
    ids = [[g.completion_ids for g in group] for group in first]
    assert ids == [[g.completion_ids for g in group] for group in second]
    assert ids != [[g.completion_ids for g in group] for group in third]
    assert [len(group) for group in first] == [4, 4, 4]
    for q, group in zip(questions, first, strict=True):
        assert all(g.prompt_ids == tokenizer(q).input_ids for g in group)
    assert len({tuple(x) for x in ids[0]}) > 1  # the samples of a group differ


# ----------------------------------------------------------------------------- sample_next
LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 1.5]])


def draw(params: SamplingParams, rows: int = 6000, seed: int = 0) -> torch.Tensor:
    """Empirical distribution over the 6-token vocabulary of `rows` draws."""
    torch.manual_seed(seed)
    tokens = sample_next(LOGITS.expand(rows, -1).clone(), params)
    return torch.bincount(tokens, minlength=LOGITS.shape[1]).float() / rows


def chi_square(freq: torch.Tensor, probs: torch.Tensor, rows: int = 6000) -> float:
    """Pearson's statistic over the tokens the reference gives mass to."""
    keep = probs > 0
    expected = probs[keep] * rows
    return float(((freq[keep] * rows - expected) ** 2 / expected).sum())


def test_greedy_top_k_1_and_tiny_top_p_are_argmax():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    argmax = logits.argmax(-1)
    torch.manual_seed(0)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=0.0)), argmax)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=1.0, top_k=1)), argmax)
    assert torch.equal(sample_next(logits, SamplingParams(temperature=1.5, top_p=1e-6)), argmax)


def test_masked_tokens_are_never_drawn_at_either_end_of_the_uniform_range():
    probs = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0, 0.0]] * 2)  # top-k/top-p zeroed the rest
    uniform = torch.tensor([0.0, 1.0 - 2.0**-53], dtype=torch.float64)  # torch.rand's extremes
    assert inverse_cdf(probs, uniform).tolist() == [1, 3]


# 99.9% quantile of chi-square with 5 dof is 20.5: a right sampler fails this 1 time in 1000,
# a wrong one (e.g. temperature ignored, top-k/p mask off by one) fails by hundreds.
CHI2_LIMIT = 20.5


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sampling_matches_softmax_at_temperature(temperature):
    probs = torch.softmax(LOGITS[0] / temperature, -1)
    freq = draw(SamplingParams(temperature=temperature))
    assert chi_square(freq, probs) < CHI2_LIMIT
    if temperature != 1.0:  # the temperature really changed the distribution
        assert chi_square(freq, torch.softmax(LOGITS[0], -1)) > 10 * CHI2_LIMIT


def test_top_k_and_top_p_renormalise_over_the_kept_tokens():
    base = torch.softmax(LOGITS[0], -1)  # sorted: token 0 (.42), 5 (.25), 1 (.15), 2 (.09), ...
    top2 = torch.zeros(6)
    top2[[0, 5]] = base[[0, 5]] / base[[0, 5]].sum()
    freq = draw(SamplingParams(temperature=1.0, top_k=2))
    assert freq[[1, 2, 3, 4]].sum() == 0 and chi_square(freq, top2) < CHI2_LIMIT
    # top_p=0.7: tokens 0 and 5 reach 0.674 < 0.7, so token 1 is needed too, and no more
    assert math.isclose(float(base[[0, 5]].sum()), 0.6743, abs_tol=1e-3)
    top3 = torch.zeros(6)
    top3[[0, 5, 1]] = base[[0, 5, 1]] / base[[0, 5, 1]].sum()
    freq = draw(SamplingParams(temperature=1.0, top_p=0.7))
    assert freq[[2, 3, 4]].sum() == 0 and chi_square(freq, top3) < CHI2_LIMIT


@pytest.mark.parametrize("engine_name", ["prefix", "hf"])
def test_seeded_prompts_sample_the_same_alone_or_batched(peaked, tokenizer, engine_name):
    engine = make_engine(engine_name, peaked, tokenizer)
    params = SamplingParams(n=3, max_new_tokens=6, temperature=1.0, seeds=(11, 22, 33))
    batched = engine.generate(prompts(), params)
    alone = [
        engine.generate(prompts([q]), SamplingParams(n=3, max_new_tokens=6, seeds=(seed,)))[0]
        for q, seed in zip(QUESTIONS, (11, 22, 33), strict=True)
    ]
    assert [[g.completion_ids for g in grp] for grp in batched] == [
        [g.completion_ids for g in grp] for grp in alone
    ]
    assert len({tuple(g.completion_ids) for g in batched[0]}) > 1  # really sampled
