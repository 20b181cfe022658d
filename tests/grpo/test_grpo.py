"""One GRPO step (grpo/step.py, grpo/update.py): batch layout, accumulation invariance, the
ratio/clip/KL terms, truncation masking, dynamic sampling and the reward terms, on a tiny Llama
with fabricated rollouts (so every number is known in advance)."""

from __future__ import annotations

import copy

import pytest
import torch

from r1lab.core.types import Example
from r1lab.grpo import step, update
from r1lab.grpo.config import build_config
from r1lab.rewards import REWARDS
from r1lab.rollout import make_engine
from r1lab.rollout.base import Generation

PAD = 2
# Two prompts of different lengths, four completions each (lengths 1..8; some cut at the limit).
PROMPTS = [[1, 530, 2807, 314, 9], [1, 77, 12, 4000]]
COMPLETIONS = [
    [
        ([11, 12, 13], True),
        ([21, 22, 23, 24, 25, 26, 27, 28], False),
        ([31], True),
        ([41, 42, 43, 44, 45], True),
    ],
    [
        ([51, 52, 53, 54, 55, 56, 57, 58], False),
        ([61, 62], True),
        ([71, 72, 73, 74], True),
        ([81, 82, 83, 84, 85, 86], True),
    ],
]
REWARDS_OF_GROUPS = [1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 1.0, 0.0]


def make_config(*overrides: str, raw: dict | None = None):
    base = [
        "model.spec=tiny:llama",
        "generation.max_new_tokens=8",
        "grpo.batch_size=8",
        "grpo.group_size=4",
        "grpo.micro_batch_size=8",
    ]
    return build_config(raw or {}, [*base, *overrides])


def groups() -> list[list[Generation]]:
    return [
        [Generation(list(p), list(ids), f"text {i}", done) for i, (ids, done) in enumerate(group)]
        for p, group in zip(PROMPTS, COMPLETIONS, strict=True)
    ]


def nudged(model, scale: float = 0.03, seed: int = 1):
    """A copy of `model` with every weight moved a little: pi_theta != pi_old."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def temperature(config):
    return max(config.generation.temperature, 1e-6)


def build_batch(model, ref, groups, rewards, config, pad):
    """`update.build_batch` with the sections it reads taken from a whole config."""
    return update.build_batch(model, ref, groups, rewards, config.grpo, pad, temperature(config))


def minibatch_loss(model, batch, index, config):
    max_len = config.generation.max_new_tokens
    return update.minibatch_loss(model, batch, index, config.grpo, temperature(config), max_len)


def optimize(model, optimizer, batch, config, generator):
    """`update.optimize` from a whole config; its stats as a mapping."""
    stats = update.optimize(
        model,
        optimizer,
        batch,
        config.grpo,
        generator,
        temperature(config),
        config.generation.max_new_tokens,
        config.optim.grad_clip,
    )
    return vars(stats)


def gradients(model, batch, index, config):
    model.zero_grad(set_to_none=True)
    stats = minibatch_loss(model, batch, index, config)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads, stats


def test_collate_lays_out_each_prompt_once_and_completions_right_padded():
    out = update.collate(groups(), PAD, mask_truncated=False)
    assert out["rows"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert out["prompt_ids"].shape == (2, 5) and out["completion_ids"].shape == (8, 8)
    assert out["prompt_ids"][1].tolist() == [PAD, *PROMPTS[1]]  # left padding
    assert out["prompt_mask"][1].tolist() == [0, 1, 1, 1, 1]
    assert out["completion_ids"][0].tolist() == [11, 12, 13] + [PAD] * 5  # right padding
    lengths = [len(ids) for group in COMPLETIONS for ids, _ in group]
    assert out["completion_attn"].sum(1).tolist() == lengths
    assert out["completion_mask"].sum(1).tolist() == lengths


def test_mask_truncated_zeroes_the_loss_mask_of_unfinished_completions():
    plain = update.collate(groups(), PAD, mask_truncated=False)
    masked = update.collate(groups(), PAD, mask_truncated=True)
    finished = [done for group in COMPLETIONS for _, done in group]
    for i, done in enumerate(finished):
        want = plain["completion_mask"][i] if done else torch.zeros(8)
        assert torch.equal(masked["completion_mask"][i], want)
        assert torch.equal(masked["completion_attn"][i], plain["completion_attn"][i])
    assert not all(finished)


@pytest.mark.parametrize(
    "loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
)
def test_accumulated_gradient_does_not_depend_on_micro_batch_size(policy, loss_agg):
    whole = make_config(
        f"grpo.loss_agg={loss_agg}", "grpo.mu=2", "grpo.beta=0.1", "grpo.micro_batch_size=8"
    )
    split = make_config(
        f"grpo.loss_agg={loss_agg}", "grpo.mu=2", "grpo.beta=0.1", "grpo.micro_batch_size=2"
    )
    ref = update.make_reference(policy)
    batch = build_batch(policy, ref, groups(), REWARDS_OF_GROUPS, whole, PAD)
    moved = nudged(policy)  # ratios and KL away from their trivial values
    for index in (torch.arange(8), torch.tensor([5, 2, 7, 0])):  # a whole batch, a minibatch
        g_whole, s_whole = gradients(moved, batch, index, whole)
        g_split, s_split = gradients(moved, batch, index, split)
        assert s_whole["clip_frac"] > 0 and s_whole["kl"] > 0  # every term is active
        assert g_whole.keys() == g_split.keys() and g_whole
        for name in g_whole:
            scale = float(g_whole[name].abs().max())
            assert scale > 0, name
            # fp32 summation order differs; a split-dependent scale would be off by ~2-4x
            torch.testing.assert_close(g_split[name], g_whole[name], rtol=1e-4, atol=1e-5 * scale)
        for key in ("loss", "kl", "clip_frac", "entropy"):
            # (the loss sums terms of both signs: fp32 rounding of ~1e-7 per log-prob shows)
            assert s_split[key] == pytest.approx(s_whole[key], rel=1e-5, abs=1e-6), key


def test_passes_go_longest_first_only_when_that_runs_fewer_tokens(policy):
    batch = build_batch(policy, None, groups(), REWARDS_OF_GROUPS, make_config(), PAD)
    rows = torch.arange(8)  # completion lengths 3 8 1 5 | 8 2 4 6, prompts 5 columns wide
    # by fours, sorted: (2 prompts * 5 + 4 * 8) + (2 * 5 + 4 * 4) = 68 < 2 * (5 + 4 * 8) = 74
    by_four = update.micro_batches(batch, rows, 4)
    assert [part.tolist() for part in by_four] == [[1, 4, 7, 3], [6, 0, 5, 2]]
    # by twos, sorting would split every group across passes: 80 tokens against 74
    by_two = update.micro_batches(batch, rows, 2)
    assert [part.tolist() for part in by_two] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert update.micro_batches(batch, rows[:0], 4) == []


def test_log_probs_do_not_depend_on_how_rows_are_cut_into_passes(policy):
    batch = build_batch(policy, None, groups(), REWARDS_OF_GROUPS, make_config(), PAD)
    whole = update.batch_logprobs(policy, batch, 8, 1.0)  # [8, 8]
    for micro in (4, 1):  # longest first, trimmed to each pass's columns; one row at a time
        parts = update.batch_logprobs(policy, batch, micro, 1.0)
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
    real = batch.completion_attn.bool()
    assert (whole[~real] == 0).all() and (whole[real] < 0).all()


def test_single_pass_uses_ratio_one_and_never_clips(policy):
    config = make_config("grpo.mu=1", "grpo.minibatches=1", "grpo.beta=0", "optim.lr=0.1")
    model = copy.deepcopy(policy)
    batch = build_batch(model, None, groups(), REWARDS_OF_GROUPS, config, PAD)
    assert batch.old_logp is None and batch.ref_logp is None  # nothing extra computed
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = optimize(model, optimizer, batch, config, torch.Generator().manual_seed(0))
    assert out["updates"] == 1 and out["skipped_updates"] == 0
    assert out["clip_frac"] == 0 and out["grad_norm"] > 0
    # ratio 1 everywhere: the loss is -mean(A), and advantages sum to 0 within each group
    assert out["loss"] == pytest.approx(0.0, abs=1e-6)


def test_several_updates_per_step_keep_the_rollout_logprobs_as_old(policy):
    config = make_config(
        "grpo.mu=2",
        "grpo.minibatches=2",
        "grpo.beta=0",
        "grpo.clip_low=0.01",
        "grpo.clip_high=0.01",
    )
    model = copy.deepcopy(policy)
    batch = build_batch(model, None, groups(), REWARDS_OF_GROUPS, config, PAD)
    with torch.no_grad():
        now, _ = update.rows_logprobs(model, batch, torch.arange(8), 1.0)
    torch.testing.assert_close(batch.old_logp, now)  # pi_old = the policy that sampled
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    out = optimize(model, optimizer, batch, config, torch.Generator().manual_seed(0))
    assert out["updates"] == 4  # mu x minibatches optimizer steps
    assert out["clip_frac"] > 0  # later passes see pi_theta != pi_old and clip it


def test_a_short_batch_makes_fewer_minibatches_of_the_configured_size(policy, monkeypatch):
    # batch_size 16 / 8 minibatches = 2 sequences per update; dynamic sampling delivered 12
    config = make_config("grpo.batch_size=16", "grpo.minibatches=8", "grpo.beta=0")
    model = copy.deepcopy(policy)
    three = groups() + groups()[:1]
    batch = build_batch(model, None, three, REWARDS_OF_GROUPS + [0, 1, 0, 1], config, PAD)
    seen: list[list[int]] = []
    real = update.minibatch_loss

    def counting(model, batch, index, *args):
        seen.append(index.tolist())
        return real(model, batch, index, *args)

    monkeypatch.setattr(update, "minibatch_loss", counting)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out = optimize(model, optimizer, batch, config, torch.Generator().manual_seed(0))
    assert out["updates"] == 6 and [len(index) for index in seen] == [2] * 6
    assert sorted(sum(seen, [])) == list(range(12))  # every sequence used exactly once


def test_beta_adds_a_kl_that_is_zero_at_the_reference(policy):
    config = make_config("grpo.beta=0.5", "grpo.kl=k3")
    ref = update.make_reference(policy)
    assert not any(p.requires_grad for p in ref.parameters())
    batch = build_batch(policy, ref, groups(), REWARDS_OF_GROUPS, config, PAD)
    assert batch.ref_logp is not None and batch.old_logp is None
    real = batch.completion_mask.bool()
    assert (batch.ref_logp[real] < 0).all() and (batch.ref_logp[~real] == 0).all()
    _, at_ref = gradients(copy.deepcopy(policy), batch, torch.arange(8), config)
    assert at_ref["kl"] == pytest.approx(0.0, abs=1e-7)
    _, moved = gradients(nudged(policy), batch, torch.arange(8), config)
    assert moved["kl"] > 1e-4
    # the KL term is in the loss: beta changes the loss by beta * (token-weighted) KL
    without = make_config("grpo.beta=0")
    _, no_kl = gradients(nudged(policy), batch, torch.arange(8), without)
    assert moved["loss"] > no_kl["loss"]
    assert build_batch(policy, ref, groups(), REWARDS_OF_GROUPS, without, PAD).ref_logp is None


def test_advantages_are_group_normalised_rewards(policy):
    config = make_config("grpo.beta=0")
    batch = build_batch(policy, None, groups(), REWARDS_OF_GROUPS, config, PAD)
    rewards = torch.tensor(REWARDS_OF_GROUPS).view(2, 4)
    want = (rewards - rewards.mean(1, keepdim=True)) / (
        rewards.std(1, unbiased=False, keepdim=True) + 1e-6
    )
    torch.testing.assert_close(batch.advantages, want.view(-1))
    torch.testing.assert_close(batch.rewards, torch.tensor(REWARDS_OF_GROUPS))


def test_reward_terms_add_overlong_shaping_once():
    assert [t.name for t in step.reward_terms(make_config())] == ["accuracy", "format"]
    terms = step.reward_terms(make_config("grpo.overlong_buffer=4"))
    assert [t.name for t in terms] == ["accuracy", "format", "overlong"]
    assert terms[-1].params == {"buffer": 4} and terms[-1].weight == 1.0
    raw = {"rewards": [{"name": "overlong", "weight": 0.3, "params": {"buffer": 2}}]}
    terms = step.reward_terms(make_config("grpo.overlong_buffer=4", raw=raw))
    assert [(t.name, t.weight, t.params) for t in terms] == [("overlong", 0.3, {"buffer": 2})]
    assert step.reward_terms(make_config("grpo.preset=dapo"))[-1].name == "overlong"


# ----------------------------------------------------------------------------- dynamic sampling
def signal_only_for_even(inputs) -> list[float | None]:
    """Constant reward for odd-numbered examples, a spread within each group for even ones."""
    return [float(i % 2) if int(ex.id) % 2 == 0 else 1.0 for i, ex in enumerate(inputs.examples)]


class CountingDraw:
    """A prompt source that hands out examples 0, 1, 2, ... and records each request."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.next = 0

    def __call__(self, count: int) -> list[Example]:
        self.requests.append(count)
        out = [
            Example(id=str(self.next + i), prompt=f"What is {i} + 1?", answer="1")
            for i in range(count)
        ]
        self.next += count
        return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_sampling_drops_constant_groups_and_draws_more(
    monkeypatch, tiny_llama, tokenizer, dynamic
):
    monkeypatch.setitem(REWARDS, "even_signal", signal_only_for_even)
    raw = {"rewards": [{"name": "even_signal"}]}
    config = make_config(
        "grpo.batch_size=16",
        f"grpo.dynamic_sampling={str(dynamic).lower()}",
        "grpo.max_resample=3",
        "generation.max_new_tokens=2",
        raw=raw,
    )
    model, _ = tiny_llama
    engine = make_engine("prefix", model, tokenizer)
    draw = CountingDraw()
    torch.manual_seed(0)
    out = step.rollout_step(config, engine, None, draw, tokenizer, [])
    ids = [int(ex.id) for ex in out.examples]
    assert out.zero_std_frac == 0.5  # of the first draw, 0..3: odd ones are constant
    assert len(out.groups) == 4 and len(out.rewards) == 16
    assert out.terms["even_signal"] == out.rewards
    if dynamic:
        assert ids == [0, 2, 4, 6] and draw.requests == [4, 2, 1]  # refills only what was dropped
        for k in range(4):
            group = out.rewards[4 * k : 4 * k + 4]
            assert max(group) > min(group)
    else:
        assert ids == [0, 1, 2, 3] and draw.requests == [4]


def test_dynamic_sampling_gives_up_after_max_resample(monkeypatch, tiny_llama, tokenizer):
    monkeypatch.setitem(REWARDS, "even_signal", signal_only_for_even)
    config = make_config(
        "grpo.dynamic_sampling=true",
        "grpo.max_resample=2",
        "generation.max_new_tokens=2",
        raw={"rewards": [{"name": "even_signal"}]},
    )
    model, _ = tiny_llama
    draw = CountingDraw()
    draw.next = 1  # 1, 3, 5 ...: every group is constant

    def odd_only(count: int) -> list[Example]:
        examples = [Example(id=str(2 * k + 1), prompt="Hi", answer="1") for k in range(count)]
        draw.requests.append(count)
        return examples

    out = step.rollout_step(
        config, make_engine("prefix", model, tokenizer), None, odd_only, tokenizer, []
    )
    assert out.groups == [] and out.rewards == []
    assert draw.requests == [2, 2, 2]  # the first draw and max_resample=2 refills
    assert out.zero_std_frac == 1.0


def test_step_format_metric_is_judged_in_the_runs_own_style():
    """A run in R1's readable style reports its format, not 0 for want of <think> tags."""
    from r1lab.grpo.metrics import step_row
    from r1lab.grpo.step import StepRollout
    from r1lab.grpo.update import UpdateStats
    from r1lab.rewards import RewardTerm
    from r1lab.tasks import make_task
    from r1lab.text.templates import Prompt

    text = "|special_token| 2 + 2 = 4 |special_token| The answer is \\boxed{4}."
    example = Example(id="q", prompt="What is 2 + 2?", answer="4")
    group = [Generation([1], [2, 3], text, True)] * 2
    rollout = StepRollout([example], [Prompt("Q")], [group], [1.0, 1.0], {})
    task = make_task("arith")
    r1 = [RewardTerm("format", params={"style": "r1"})]
    assert step_row(rollout, UpdateStats(), task, r1)["format"] == 1.0
    assert step_row(rollout, UpdateStats(), task, [RewardTerm("format")])["format"] == 0.0
