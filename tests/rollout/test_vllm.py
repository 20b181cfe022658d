"""The vLLM engine on the built-in model: the other engines' records, per-prompt seeds, stop
strings, sampling log-probs that match the trainer's at the sampling temperature, and weights
synced in place: after an optimizer step its greedy output is the policy's own.

Marked `vllm` (`pytest -m vllm` runs just these); one engine serves the session
(`vllm_engine` in conftest.py), and every test leaves the built-in weights in it.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace

import pytest
import torch

from r1lab.core.errors import UserError
from r1lab.core.types import RolloutBatch
from r1lab.grpo.update import batch_logprobs, collate
from r1lab.rollout import SamplingParams, make_engine
from r1lab.rollout.hf import encode_prompts
from r1lab.tasks import make_task
from r1lab.text.templates import pick_shots, render

QUESTIONS = ["What is 23 + 41?", "What is 90 - 17?", "What is 8 + 65?"]


def prompts(tokenizer, shots: int = 2):
    task = make_task("arith", {"digits": 2, "ops": "+-"})
    examples = pick_shots(task, task.examples("train", limit=shots), shots, "brief")
    return [render("r1_zero", q, tokenizer, examples) for q in QUESTIONS]


def sampling(**fields) -> SamplingParams:
    return SamplingParams(**{"n": 3, "max_new_tokens": 16, "temperature": 1.0, **fields})


def ids(groups):
    return [[g.completion_ids for g in group] for group in groups]


def test_without_vllm_the_engine_names_the_install_command(monkeypatch, tiny_llama):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[vllm\]"'):
        make_engine("vllm", *tiny_llama)


@pytest.mark.vllm
def test_records_are_the_other_engines_with_a_log_prob_per_token(vllm_engine):
    engine, _, tokenizer = vllm_engine
    asked = prompts(tokenizer)
    out = engine.generate(asked, sampling(seeds=(1, 2, 3), logprobs=True))
    assert [len(group) for group in out] == [3, 3, 3]
    for group, prompt_ids in zip(out, encode_prompts(tokenizer, asked, 512), strict=True):
        for g in group:
            assert g.prompt_ids == prompt_ids
            assert 0 < len(g.completion_ids) <= 16 and len(g.logprobs) == len(g.completion_ids)
            assert all(lp <= 0 for lp in g.logprobs)
            assert g.text == tokenizer.decode(g.completion_ids, skip_special_tokens=True)
            ended = g.completion_ids[-1] in engine.eos_ids
            assert g.finished == ended and (ended or len(g.completion_ids) == 16)
        assert len({tuple(g.completion_ids) for g in group}) > 1  # G different samples
    assert all(g.logprobs is None for g in engine.generate(asked, sampling())[0])
    greedy = engine.generate(asked[:1], sampling(temperature=0))[0]  # vLLM wants n=1 greedy
    assert len(greedy) == 3 and len({tuple(g.completion_ids) for g in greedy}) == 1


@pytest.mark.vllm
def test_each_prompt_samples_under_its_own_seed_whatever_shares_the_batch(vllm_engine):
    engine, _, tokenizer = vllm_engine
    asked = prompts(tokenizer)
    together = ids(engine.generate(asked, sampling(seeds=(7, 8, 9))))
    alone = ids(engine.generate(asked[1:2], sampling(seeds=(8,))))
    assert alone[0] == together[1]
    assert ids(engine.generate(asked[1:2], sampling(seeds=(10,))))[0] != together[1]
    runs = []
    for _ in range(2):  # unseeded: seeds drawn from torch's generator, so a run reproduces
        torch.manual_seed(0)
        runs.append(ids(engine.generate(asked, sampling())))
    assert runs[0] == runs[1]


@pytest.mark.vllm
def test_more_prompts_than_one_prefill_step_holds_keep_their_seeds(vllm_engine):
    engine, _, tokenizer = vllm_engine
    many = prompts(tokenizer, shots=8) * 12  # ~36 x 700 prompt tokens: several prefill steps
    short = sampling(n=2, max_new_tokens=2)
    together = ids(engine.generate(many, replace(short, seeds=tuple(range(len(many))))))
    assert ids(engine.generate(many[-1:], replace(short, seeds=(len(many) - 1,)))) == together[-1:]


@pytest.mark.vllm
def test_a_stop_string_ends_the_completion_at_the_token_that_completes_it(vllm_engine):
    engine, _, tokenizer = vllm_engine
    out = engine.generate(prompts(tokenizer), sampling(max_new_tokens=48, stop=("</answer>",),
                                                       seeds=(4, 5, 6)))
    stopped = [g for group in out for g in group if g.completion_ids[-1] not in engine.eos_ids
               and g.finished]
    assert stopped  # the worked examples make the model close its answer
    for g in stopped:
        assert g.text.rstrip().endswith("</answer>")
        assert "</answer>" not in tokenizer.decode(g.completion_ids[:-1], skip_special_tokens=True)


@pytest.mark.vllm
def test_sampling_log_probs_are_the_trainers_at_the_sampling_temperature(vllm_engine):
    engine, model, tokenizer = vllm_engine
    out = engine.generate(prompts(tokenizer), sampling(temperature=0.7, seeds=(1, 2, 3),
                                                       logprobs=True))
    tensors = collate(out, tokenizer.pad_token_id, mask_truncated=False)
    batch = RolloutBatch(**tensors, advantages=torch.zeros(9), rewards=torch.zeros(9))
    valid = batch.completion_attn.bool()
    for temperature, agree in ((0.7, True), (1.0, False)):
        trainer = batch_logprobs(model, batch, 9, temperature)  # [B, Tc]
        gap = (trainer - batch.engine_logp)[valid].abs().max().item()
        assert (gap < 1e-3) == agree, (temperature, gap)


@pytest.mark.vllm
def test_after_an_optimizer_step_the_engines_greedy_output_is_the_policys_own(vllm_engine):
    engine, model, tokenizer = vllm_engine
    asked, greedy = prompts(tokenizer, shots=0), sampling(n=1, max_new_tokens=24, temperature=0)
    before = ids(engine.generate(asked, greedy))
    policy = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    text = tokenizer(["<think> 23 + 41 = 64 </think> <answer> 64 </answer>"], return_tensors="pt")
    policy(**text, labels=text.input_ids).loss.backward()
    optimizer.step()
    try:
        engine.sync_weights(policy)
        after = ids(engine.generate(asked, greedy))
        own = ids(make_engine("hf", policy, tokenizer).generate(asked, greedy))
    finally:
        engine.sync_weights(model)
    assert after == own and after != before
    assert ids(engine.generate(asked, greedy)) == before  # and back
