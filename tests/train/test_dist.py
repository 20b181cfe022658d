"""Two gloo processes under torchrun against one process: the same rollouts and rewards, the
same losses, gradient norms and weights (to floating-point tolerance), the same evaluation
rows, and a killed two-rank run that resumes into the uninterrupted one (DDP and FSDP2).

Two torchrun launches (`dist_worker.py`, cases in `dist_cases.py`) run every two-rank case;
the one-process references run here. Both sides use one thread per process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_cases import LORA, eval_run, grpo_run, sft_run
from transformers import AutoModelForCausalLM

from r1lab.core.checkpoint import latest_checkpoint, load_state
from r1lab.core.errors import UserError
from r1lab.core.models import load_model, load_tokenizer
from r1lab.core.runfiles import read_jsonl
from r1lab.train import dist

HERE = Path(__file__).resolve().parent
TIMING = ("step_seconds", "gen_tokens_per_s")


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGS` from this folder, one thread a rank."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")])
    env["R1LAB_DIST_TIMEOUT"] = "300"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", *args]
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Every two-rank case: the runs, then fresh launches resume the killed ones (the GRPO
    one as a user would: `torchrun -m r1lab train RUN/config.yaml --resume`)."""
    out = tmp_path_factory.mktemp("two_ranks")
    load_tokenizer()  # the built-in tokenizer's cache exists before two processes read it
    torchrun("dist_worker.py", "first", str(out))
    recipe = out / "grpo_killed" / "config.yaml"
    cli = torchrun("-m", "r1lab", "train", str(recipe), "--resume", "--quiet")
    assert cli.stdout.count("done") == 1  # rank 0 alone reports
    torchrun("dist_worker.py", "resume", str(out))
    return out


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """The same runs in this one process."""
    out = tmp_path_factory.mktemp("one_rank")
    grpo_run(out, "grpo")
    sft_run(out, "sft")
    eval_run(out, "eval")
    grpo_run(out, "lora", *LORA)
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(run_dir / "final").state_dict()


def close_rows(a: Path, b: Path, tolerance: float) -> None:
    """metrics.jsonl rows with the same keys and values (floats to a relative tolerance)."""
    rows_a, rows_b = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert len(rows_a) == len(rows_b)
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if key in TIMING or key.startswith("time/"):
                continue
            if isinstance(x[key], float) and isinstance(y[key], float):
                assert math.isclose(x[key], y[key], rel_tol=tolerance, abs_tol=1e-6), (key, x, y)
            else:
                assert x[key] == y[key], (key, x, y)


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.mark.parametrize("name, reference", [("grpo", "grpo"), ("fsdp", "grpo"), ("lora", "lora")])
def test_grpo_on_two_ranks_samples_and_scores_what_one_process_does(two, one, name, reference):
    assert read_jsonl(two / name / "samples.jsonl") == read_jsonl(one / reference / "samples.jsonl")


@pytest.mark.parametrize("name, reference", [("grpo", "grpo"), ("fsdp", "grpo"), ("lora", "lora")])
def test_grpo_on_two_ranks_matches_one_process_in_loss_grad_norm_and_weights(
    two, one, name, reference
):
    close_rows(two / name, one / reference, 1e-4)
    assert max_weight_difference(two / name, one / reference) < 1e-4  # lr 0.01: 1% of a step
    trained, base = weights(two / name), load_model("tiny:llama")[0].state_dict()
    assert max(float((trained[k] - base[k]).abs().max()) for k in base) > 1e-3  # it trained


@pytest.mark.parametrize("name", ["sft", "fsdp_sft"])
def test_sft_on_two_ranks_matches_one_process_in_loss_grad_norm_and_weights(two, one, name):
    close_rows(two / name, one / "sft", 1e-4)
    assert max_weight_difference(two / name, one / "sft") < 1e-5  # lr 0.003


def test_eval_on_two_ranks_writes_the_results_of_one_process(two, one):
    assert (two / "eval" / "results.jsonl").read_text() == (
        one / "eval" / "results.jsonl"
    ).read_text()
    summary = json.loads((two / "eval" / "summary.json").read_text())
    assert summary["metrics"] == json.loads((one / "eval" / "summary.json").read_text())["metrics"]


@pytest.mark.parametrize(
    "killed, whole", [("grpo_killed", "grpo"), ("sft_killed", "sft"), ("fsdp_killed", "fsdp")]
)
def test_a_killed_two_rank_run_resumes_into_the_uninterrupted_one(two, killed, whole):
    close_rows(two / killed, two / whole, 0.0)
    assert read_jsonl(two / killed / "metrics.jsonl")[-1]["step"] == 2
    assert max_weight_difference(two / killed, two / whole) == 0.0


def test_a_two_rank_checkpoint_keeps_each_ranks_rng_and_its_world_size(two):
    state = load_state(latest_checkpoint(two / "grpo"))
    assert state["world_size"] == 2 and state["parallel"] == "ddp"
    assert len(state["rng"]) == 2


def test_resuming_on_another_number_of_ranks_is_an_error(two, tmp_path):
    shutil.copytree(two / "grpo", tmp_path / "grpo")
    with pytest.raises(UserError, match="written by 2 process.*torchrun --nproc-per-node 2"):
        grpo_run(tmp_path, "grpo", "train.steps=3", resume=True)


# --------------------------------------------------------------------------- a world of one
def test_without_torchrun_every_helper_is_what_one_process_does():
    assert (dist.world_size(), dist.rank(), dist.is_main()) == (1, 0, True)
    assert dist.gather({"a": 1}) == [{"a": 1}]
    assert dist.on_main(lambda x: x + 1, 1) == 2
    assert dist.lockstep([3, 4], 0) == [(3, True), (4, True)]
    assert dist.sum_over_ranks({"loss": 1.5}) == {"loss": 1.5}
    rows = torch.arange(6.0).view(3, 2)
    assert torch.equal(dist.gather_rows(rows, 3), rows)
    assert list(dist.share(7)) == list(range(7))


def test_shares_cover_every_item_once_in_order():
    for count in range(9):
        for ranks in (1, 2, 3, 4):
            parts = [list(dist.share(count, ranks, r)) for r in range(ranks)]
            assert sum(parts, []) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_bad_timeout_setting_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("R1LAB_DIST_TIMEOUT", "soon")
    with pytest.raises(UserError, match="R1LAB_DIST_TIMEOUT must be a number of seconds"):
        dist.start()
