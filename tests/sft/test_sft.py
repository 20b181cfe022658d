"""SFT (sft/) on a tiny Llama: the loss covers completion tokens (+ EOS) only, packing
keeps every token once and isolates sequences, gradients do not depend on the micro-batch
split, a tiny set is overfit, the run-directory contract and exact resume, the R1 special
token, config validation, the `kind: sft` recipes and the `r1lab sft` command."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab import cli
from r1lab.core.checkpoint import STATE_FILE, latest_checkpoint
from r1lab.core.errors import UserError
from r1lab.core.models import load_tokenizer
from r1lab.core.runfiles import read_jsonl
from r1lab.grpo.config import load_config
from r1lab.sft import loop as sft_loop
from r1lab.sft import loss as sft_loss
from r1lab.sft.config import build_sft_config, load_sft_config
from r1lab.sft.data import load_rows
from r1lab.sft.encode import Encoded, add_special_token, encode_row
from r1lab.sft.loop import sft
from r1lab.sft.loss import accumulate_gradients, pack, packed_logprobs
from r1lab.text.conversations import SFTRow
from r1lab.text.templates import render
from r1lab.train.logprobs import token_logprobs
from r1lab.train.loop import TrainingStopped

ROOT = Path(__file__).resolve().parents[2]
SFT_RECIPES = [
    p
    for p in sorted((ROOT / "recipes").glob("*.yaml"))
    if yaml.safe_load(p.read_text()).get("kind") == "sft"
]
STEP_KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "epoch", "step_seconds")
TIMING = ("step_seconds",)
TOKEN = "|special_token|"


def make_config(out_dir: Path, *overrides: str, name: str = "sft"):
    base = [
        f"name={name}",
        f"train.out_dir={out_dir}",
        "model.spec=tiny:llama",
        "task.options={digits: 1, operands: 2, train_size: 24, test_size: 4}",
        "data.eval_fraction=0.25",
        "optim.lr=0.003",
        "optim.warmup_steps=0",
        "train.steps=3",
        "train.batch_size=4",
        "train.micro_batch_tokens=300",
        "train.save_every=1",
        "train.keep_checkpoints=2",
        "eval.every=2",
        "eval.size=4",
    ]
    return build_sft_config({}, [*base, *overrides])


def rows_of(run_dir: Path, key: str) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if key in r]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def model(tiny_llama):
    """A private copy of the tiny Llama (gradients and token additions stay in the test)."""
    return copy.deepcopy(tiny_llama[0])


# --------------------------------------------------------------------------- the loss mask
def test_loss_targets_are_exactly_the_completion_and_eos(tokenizer):
    row = SFTRow("r", "What is 2 + 3?", "<think> 2 + 3 = 5 </think> <answer> 5 </answer>", "t")
    (seq,) = encode_row(row, tokenizer, "r1_zero")
    prompt = render("r1_zero", row.prompt, tokenizer)
    assert list(seq.ids[: seq.start]) == tokenizer(prompt.text).input_ids
    assert seq.ids[-1] == tokenizer.eos_token_id
    target = tokenizer.decode(seq.ids[seq.start :])
    assert target == " " + row.completion + tokenizer.eos_token  # `Assistant:` + space + answer


def test_a_template_prefill_is_in_the_prompt_not_in_the_targets(tokenizer):
    row = SFTRow("r", "What is 2 + 3?", "<think> so 5 </think> <answer> 5 </answer>", "t")
    (seq,) = encode_row(row, tokenizer, "chat_think")
    prompt = render("chat_think", row.prompt, tokenizer)
    assert prompt.prefill == "<think>\n"
    assert tokenizer.decode(seq.ids[: seq.start]) == prompt.text
    assert tokenizer.decode(seq.ids[seq.start :]) == "so 5 </think> <answer> 5 </answer><|im_end|>"
    with pytest.raises(UserError, match="row 'x': the template prefills"):
        encode_row(SFTRow("x", "q", "no tags", "t"), tokenizer, "chat_think")


CONVERSATION = SFTRow(
    "c",
    "And times 4?",
    "<think> 5 * 4 = 20 </think> <answer> 20 </answer>",
    "t",
    (("What is 2 + 3?", "<think> 2 + 3 = 5 </think> <answer> 5 </answer>"),),
)


@pytest.mark.parametrize("template", ["r1_zero", "chat"])
def test_every_assistant_turn_of_a_conversation_is_a_target(tokenizer, template):
    """One sequence per assistant turn; earlier turns appear as context without reasoning."""
    first, second = encode_row(CONVERSATION, tokenizer, template)
    assert tokenizer.decode(first.ids[first.start : -1]).strip() == CONVERSATION.history[0][1]
    assert tokenizer.decode(second.ids[second.start : -1]).strip() == CONVERSATION.completion
    context = tokenizer.decode(second.ids[: second.start])
    assert "What is 2 + 3?" in context and "<answer> 5 </answer>" in context
    assert "2 + 3 = 5" not in context  # the first turn's reasoning is stripped
    (_, kept) = encode_row(CONVERSATION, tokenizer, template, history="keep")
    assert "<think> 2 + 3 = 5 </think>" in tokenizer.decode(kept.ids[: kept.start])


def test_conversations_file_rows_keep_their_turns(tmp_path):
    from r1lab.text.conversations import jsonl_rows

    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>4</think><answer>4</answer>"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    (row,) = jsonl_rows(path)
    assert row.history == (("Hi", "Hello!"),) and row.prompt == "2+2?"
    assert row.to_dict()["history"] == [["Hi", "Hello!"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [*messages, messages[0]]}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl:1: messages must alternate"):
        jsonl_rows(bad)


def test_a_template_that_drops_earlier_reasoning_refuses_keep(tokenizer, monkeypatch):
    from r1lab.sft import encode
    from r1lab.text.templates import Prompt

    monkeypatch.setattr(encode, "render", lambda *a, **k: Prompt("no thoughts here"))
    with pytest.raises(UserError, match="drops the reasoning of earlier turns"):
        encode.check_history(tokenizer, "chat", "keep")
    encode.check_history(tokenizer, "chat", "strip")  # strip asks nothing of the template


def test_packed_logprobs_score_only_targets_and_match_the_unpacked_sequences(model):
    seqs = [
        Encoded(tuple(random.Random(i).choices(range(5, 900), k=n)), s)
        for i, (n, s) in enumerate([(9, 4), (5, 1), (12, 11), (7, 3)])
    ]
    packed = packed_logprobs(model, seqs)
    assert packed.shape == (sum(s.targets for s in seqs),) == (5 + 4 + 1 + 4,)
    alone = []
    for s in seqs:  # the reference: each sequence on its own through token_logprobs
        ids = torch.tensor([s.ids])
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids))  # [1, T-1]
        alone.append(logp[0, s.start - 1 :])
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_packing_keeps_every_sequence_once_within_capacity(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 30))]
    capacity = rng.randint(10, 100)
    bins = pack(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert len(b) == 1 or sum(lengths[i] for i in b) <= capacity
    assert pack(lengths, capacity) == bins  # deterministic


# --------------------------------------------------------------------------- accumulation
def grads_after(model, seqs, micro_batch_tokens) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = accumulate_gradients(model, seqs, micro_batch_tokens)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"loss": torch.tensor(out["loss"]), "tokens": torch.tensor(out["tokens"]), **grads}


def test_gradients_do_not_depend_on_the_micro_batch_split(model):
    rng = random.Random(0)
    seqs = [
        Encoded(tuple(rng.choices(range(5, 900), k=n)), rng.randint(1, n - 1))
        for n in (8, 20, 12, 30, 9, 16, 25, 11)  # 8 sequences of unequal completion lengths
    ]
    one_pack = grads_after(model, seqs, 10_000)  # 1 micro-batch of 8
    assert len(pack([len(s.ids) for s in seqs], 10_000)) == 1
    alone = grads_after(model, seqs, 1)  # 8 micro-batches of 1
    assert len(pack([len(s.ids) for s in seqs], 1)) == 8
    halves = grads_after(model, seqs, 70)  # a few packs of several
    assert 2 <= len(pack([len(s.ids) for s in seqs], 70)) < 8
    assert one_pack["tokens"] == sum(s.targets for s in seqs)
    for other in (alone, halves):
        assert other.keys() == one_pack.keys()
        for key in one_pack:
            torch.testing.assert_close(other[key], one_pack[key], atol=1e-6, rtol=1e-4)
    assert one_pack["model.embed_tokens.weight"].abs().sum() > 0


# --------------------------------------------------------------------------- learning
def test_overfits_four_examples(tmp_path):
    rows = [
        {
            "prompt": f"What is {a} + {b}?",
            "completion": f"<think> {a}+{b} </think> <answer> {a + b} </answer>",
        }
        for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]
    ]
    path = tmp_path / "four.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_config(
        tmp_path,
        f"data.sources=[{{kind: jsonl, path: {path}}}]",
        "data.eval_fraction=0",
        "optim.lr=0.01",
        "optim.schedule=constant",
        "train.steps=12",
        "train.save_every=0",
        "eval.every=0",
    )
    run_dir = sft(config, progress=False)
    losses = [r["loss"] for r in rows_of(run_dir, "loss")]
    assert len(losses) == 12 and all(r["tokens"] > 0 for r in rows_of(run_dir, "loss"))
    assert losses[-1] < 0.3 * losses[0], losses
    assert not rows_of(run_dir, "eval/loss")  # nothing held out: no eval loss


# --------------------------------------------------------------------------- the run directory
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config(out)
    return config, sft(config, progress=False)


def test_run_dir_holds_config_data_metrics_checkpoints_and_final(finished):
    config, run_dir = finished
    assert run_dir == Path(config.train.out_dir) / "sft"
    assert load_sft_config(run_dir / "config.yaml") == config  # complete and reloadable
    data = read_jsonl(run_dir / "data.jsonl")
    assert {d["split"] for d in data} == {"train", "eval"} and len(data) == 24
    steps = rows_of(run_dir, "loss")
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        assert all(row.get(k) is not None for k in STEP_KEYS), row
        assert row["lr"] > 0 and row["grad_norm"] > 0 and row["tokens"] > 0
    assert [r["step"] for r in rows_of(run_dir, "eval/loss")] == [0, 2, 3]  # start, every 2, end
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]  # keep_checkpoints=2 pruned step 1
    state = torch.load(run_dir / "checkpoints" / names[-1] / STATE_FILE, weights_only=False)
    assert state["step"] == 3 and {"optimizer", "stream", "rng", "data"} <= state.keys()
    assert same_weights(weights(run_dir / "final"), weights(run_dir / "checkpoints" / names[-1]))


def test_rerun_needs_resume_and_a_finished_resume_returns_at_once(finished):
    config, run_dir = finished
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="--resume"):
        sft(config, progress=False)
    final = weights(run_dir / "final")
    shutil.rmtree(run_dir / "final")
    assert sft(config, resume=True, progress=False) == run_dir
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert same_weights(weights(run_dir / "final"), final)


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        sft(make_config(tmp_path), resume=True, progress=False)


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_one(tmp_path, monkeypatch):
    # ~18 train rows, 5 per step: the stream crosses an epoch boundary (a reshuffle);
    # warmup + cosine, several micro-batches per step, evaluation every 2 steps.
    overrides = (
        "train.steps=5",
        "train.batch_size=5",
        "train.save_every=2",
        "optim.warmup_steps=1",
        "optim.schedule=cosine",
    )
    whole = sft(make_config(tmp_path, *overrides, name="whole"), progress=False)
    config = make_config(tmp_path, *overrides, name="cut")
    calls = {"n": 0}

    def dies_at_step_4(job, step):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(job, step)

    real_step = sft_loop.SFTJob.step
    with monkeypatch.context() as patch:
        patch.setattr(sft_loop.SFTJob, "step", dies_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            sft(config, progress=False)
    cut = tmp_path / "cut"
    assert latest_checkpoint(cut).name == "step-000002"  # step 3 ran but was not saved
    assert 3 in [r["step"] for r in read_jsonl(cut / "metrics.jsonl")]
    sft(config, resume=True, progress=False)

    def comparable(run_dir):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(run_dir / "metrics.jsonl")
        ]

    assert comparable(cut) == comparable(whole)
    assert max(r["epoch"] for r in rows_of(whole, "epoch")) > 1  # it did cross an epoch
    assert same_weights(weights(whole / "final"), weights(cut / "final"))


def test_non_finite_loss_skips_updates_then_stops_with_checkpoints_intact(tmp_path, monkeypatch):
    calls = {"n": 0}

    def poisoned(model, seqs):
        calls["n"] += 1
        out = real(model, seqs)
        return out * float("nan") if calls["n"] > 1 else out  # step 1 fine (1 micro-batch)

    real = sft_loss.packed_logprobs
    config = make_config(
        tmp_path,
        "train.steps=6",
        "train.max_bad_steps=2",
        "train.micro_batch_tokens=100000",
        "eval.every=0",
        "data.eval_fraction=0",
    )
    monkeypatch.setattr(sft_loss, "packed_logprobs", poisoned)
    monkeypatch.setattr(sft_loop, "check_packing", lambda model: None)
    with pytest.raises(TrainingStopped, match="non-finite for 2 steps"):
        sft(config, progress=False)
    rows = rows_of(tmp_path / "sft", "loss")
    assert [r["skipped_updates"] for r in rows] == [0, 1, 1]
    assert rows[1]["grad_norm"] is None
    ckpt = tmp_path / "sft" / "checkpoints"
    assert same_weights(weights(ckpt / "step-000002"), weights(ckpt / "step-000001"))
    assert not (tmp_path / "sft" / "final").exists()


# --------------------------------------------------------------------------- the R1 format
def test_add_special_token_makes_one_kept_token_and_grows_the_embeddings(model):
    tok = load_tokenizer()  # a fresh one: the session fixture must not change
    size = len(tok)
    assert add_special_token(model, tok, TOKEN)
    assert len(tok) == size + 1 and model.get_input_embeddings().weight.shape[0] == size + 1
    ids = tok(f"a{TOKEN}\nb", add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids(TOKEN) in ids and tok.tokenize(TOKEN) == [TOKEN]
    assert tok.decode(ids, skip_special_tokens=True) == f"a{TOKEN}\nb"  # samples keep it
    assert not add_special_token(model, tok, TOKEN)  # already there: nothing changes
    assert len(tok) == size + 1


def test_an_r1_format_run_adds_the_token_and_resumes_with_it(tmp_path):
    overrides = ("data.sources=[{kind: task, format: r1}]", "eval.every=0")
    run_dir = sft(make_config(tmp_path, *overrides, "train.steps=2"), progress=False)
    data = read_jsonl(run_dir / "data.jsonl")
    assert all(d["completion"].count(TOKEN) == 2 for d in data)
    saved = AutoTokenizer.from_pretrained(run_dir / "final")
    token_id = saved.convert_tokens_to_ids(TOKEN)
    assert saved.tokenize(TOKEN) == [TOKEN] and token_id == len(saved) - 1
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert final.get_input_embeddings().weight.shape[0] == len(saved)
    longer = make_config(tmp_path, *overrides, "train.steps=3")
    sft(longer, resume=True, progress=False)  # the checkpoint already has the token
    assert [r["step"] for r in rows_of(run_dir, "loss")] == [1, 2, 3]
    assert AutoTokenizer.from_pretrained(run_dir / "final").convert_tokens_to_ids(TOKEN) == token_id


def test_generation_eval_reports_pass_at_1_and_format_at_start_and_end(tmp_path):
    config = make_config(
        tmp_path, "train.steps=2", "eval.generate=2", "eval.max_new_tokens=4", "eval.every=1"
    )
    run_dir = sft(config, progress=False)
    rows = rows_of(run_dir, "eval/pass@1")
    assert [r["step"] for r in rows] == [0, 2]  # not at step 1: generation only at the ends
    assert all(0 <= r["eval/format"] <= 1 and 0 < r["eval/length"] <= 4 for r in rows)
    assert [r["step"] for r in rows_of(run_dir, "eval/loss")] == [0, 1, 2]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.sources=[{kind: web}]", r"data.sources.0.kind: unknown value 'web'"),
        ("data.sources=[{kind: jsonl}]", r"data.sources.0.path: a `jsonl` source needs"),
        ("data.sources=[{kind: task, format: xml}]", r"data.sources.0.format: unknown value"),
        ("data.sources=[{kind: task, limit: 0}]", r"data.sources.0.limit must be >= 1"),
        ("data.sources=[]", r"data.sources: at least one source"),
        ("data.sources=[{kind: task, colour: red}]", r"unknown config key 'data.sources.0.colour'"),
        ("data.eval_fraction=1", r"data.eval_fraction must be in \[0, 1\)"),
        ("data.special_token=' |x| '", r"data.special_token must be non-empty"),
        ("train.batch_size=0", r"train.batch_size must be >= 1"),
        ("train.epochs=0", r"train.epochs must be > 0"),
        ("train.steps=0", r"train.steps must be >= 1"),
        ("train.micro_batch_tokens=0", r"train.micro_batch_tokens must be >= 1"),
        ("template.shots=2", r"template.shots must be 0 for SFT"),
        ("template.name=nope", r"unknown template 'nope'"),
        ("task.options={colour: red}", r"unknown option 'colour' for task 'arith'"),
        ("optim.lr=0", r"optim.lr must be > 0"),
        ("eval.top_p=0", r"eval.top_p must be in \(0, 1\]"),
        ("grpo.beta=0.1", r"unknown config key 'grpo'"),
        ("kind=grpo", r"`kind: grpo` recipe: run it with `r1lab train`"),
    ],
)
def test_config_mistakes_are_errors_that_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        build_sft_config({}, [override])


def test_steps_and_epochs_together_are_an_error():
    with pytest.raises(UserError, match="train.steps or train.epochs, not both"):
        build_sft_config({}, ["train.steps=5", "train.epochs=1"])


def test_recipe_kinds_keep_the_commands_apart(tmp_path):
    grpo_file = ROOT / "recipes" / "r1_zero_arith.yaml"
    with pytest.raises(UserError, match="an SFT recipe starts with `kind: sft`"):
        load_sft_config(grpo_file)
    with pytest.raises(UserError, match="run it with `r1lab sft`"):
        load_config(SFT_RECIPES[0])
    assert build_sft_config({}).kind == "sft"  # in code, kind defaults to sft


def test_epochs_set_the_number_of_steps(tmp_path):
    config = make_config(
        tmp_path, "train.steps=null", "train.epochs=2", "train.save_every=0", "eval.every=0"
    )
    run_dir = sft(config, progress=False)
    train_rows = sum(d["split"] == "train" for d in read_jsonl(run_dir / "data.jsonl"))
    assert len(rows_of(run_dir, "loss")) == -(-2 * train_rows // 4)  # ceil, batch_size 4
    assert build_sft_config({}).train.steps is None  # neither set: one epoch


# --------------------------------------------------------------------------- recipes and CLI
def test_there_is_an_sft_recipe():
    assert any(p.name == "r1_cold_start.yaml" for p in SFT_RECIPES)


@pytest.mark.parametrize("path", SFT_RECIPES, ids=lambda p: p.name)
def test_sft_recipe_loads_and_its_data_resolves(path):
    config = load_sft_config(path)
    rows = load_rows(config)
    assert rows and all(r.prompt and r.completion for r in rows)


def test_sft_command_trains_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    recipe = tmp_path / "tiny.yaml"
    config = make_config(tmp_path, "name=cli", "train.steps=1", "train.save_every=0")
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    assert cli.main(["sft", str(recipe), "--quiet", "--set", "train.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "done" in out and "eval loss" in out
    assert [r["step"] for r in rows_of(tmp_path / "cli", "loss")] == [1, 2]
    assert cli.main(["sft", str(recipe), "--quiet"]) == 2  # exists: needs --resume
    assert "--resume" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["sft", str(ROOT / "recipes" / "r1_zero_arith.yaml")]) == 2
