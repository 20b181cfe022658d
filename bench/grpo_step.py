"""One GRPO step: r1lab against TRL's GRPOTrainer, same settings, same machine, one invocation.

Both sides train the same model on the same prompts (built-in arithmetic, R1-Zero template with
two worked shots) with the same math: G samples per prompt, group-normalised advantages, the
clipped surrogate (epsilon 0.2) with token-mean aggregation (TRL's default `dapo` loss), a k3 KL
to a frozen reference (beta 0.04), one optimizer step per generation batch (mu = 1), accuracy +
format rewards (r1lab's reward functions, called from TRL through its reward-function API).
Each side runs in its own subprocess so peak RSS is its own. The first step of each side is
warm-up and is not counted.

    pip install -e ".[bench]"                 # TRL, only for this script
    python bench/grpo_step.py                 # 4 prompts x 8 samples, 128 new tokens, fp32 + bf16
    python bench/grpo_step.py --smoke         # tiny model, a few tokens: seconds (CI)
    python bench/grpo_step.py --variant micro=16,fp32-weights --variant micro=8,ckpt,offload,release
                                              # several r1lab configurations against one TRL run
    python bench/grpo_step.py --sides r1lab --dtypes float32 --variant micro=16 \
        --variant micro=16,engine=vllm        # rollouts on vLLM against the prefix engine
    python bench/grpo_step.py --shots 0       # zero-shot prompts: the R1-Zero template alone

Prints seconds per step, generation tokens/s, generated tokens per step (a step's time depends
on how long the sampled completions are) and peak RSS for each side (with vLLM: of the trainer
and vLLM's processes together, sampled), the ratios, and writes bench/results/grpo_step.json.
It also prints each step's compute floor on this machine: the matmul FLOPs the step cannot
avoid (every prompt token and every sampled token once through sampling, the reference pass and
the policy's forward and backward: 10 N FLOPs per token for N matmul weights, 8 N without a
reference; attention left out) divided by a matmul rate measured here at the step's dtype, and
the step as a multiple.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULTS = {"model": "builtin:smollm2-135m-instruct", "prompts": 4, "group": 8,
            "max_new_tokens": 128, "steps": 3, "beta": 0.04, "lr": 1e-6, "shots": 2}
SMOKE = {"model": "tiny:llama", "prompts": 2, "group": 4, "max_new_tokens": 8, "steps": 2}
TASK = {"name": "arith", "options": {"digits": 2, "operands": 2, "ops": "+-"}}
REWARDS = [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.25}]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class TreeRSS:
    """The largest resident memory of this process and its descendants together, sampled
    every half second: vLLM's engine runs in processes of its own, which RUSAGE_SELF misses."""

    def __init__(self) -> None:
        import threading

        self.peak_mb, self._done = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(0.5):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a process that just ended
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mb


def prompts_and_examples(settings: dict[str, Any], tokenizer: Any) -> tuple[list, list]:
    """The rendered prompt texts and their Examples, identical for both sides."""
    from r1lab.tasks import make_task
    from r1lab.text.templates import pick_shots, render

    task = make_task(TASK["name"], TASK["options"])
    count = settings["prompts"] * settings["steps"]
    train = task.examples("train", limit=count + 2)
    shots = pick_shots(task, train, settings["shots"], "brief")
    examples = train[2 : 2 + count]
    return [render("r1_zero", ex.prompt, tokenizer, shots).text for ex in examples], examples


# --------------------------------------------------------------------------- r1lab side
def run_r1lab(settings: dict[str, Any], dtype: str, out: Path) -> dict[str, Any]:
    from r1lab.core.runfiles import read_jsonl
    from r1lab.grpo.config import build_config
    from r1lab.grpo.loop import train

    raw = {
        "name": "bench_r1lab",
        "model": {"spec": settings["model"], "compute_dtype": dtype,
                  "dtype": "float32" if settings["weights"] == "float32" else dtype},
        "task": TASK,
        "template": {"name": "r1_zero", "shots": settings["shots"], "shot_style": "brief"},
        "rewards": REWARDS,
        "generation": {"max_new_tokens": settings["max_new_tokens"], "temperature": 1.0,
                       "engine": settings["engine"]},
        "grpo": {"preset": "grpo", "batch_size": settings["prompts"] * settings["group"],
                 "group_size": settings["group"],
                 "beta": settings["beta"], "loss_agg": "token-mean", "clip_low": 0.2,
                 "clip_high": 0.2, "micro_batch_size": settings["micro"],
                 "activation_checkpointing": settings["checkpointing"],
                 "offload_reference": settings["offload"],
                 "release_memory": settings["release"]},
        "optim": {"lr": settings["lr"], "warmup_steps": 0},
        "eval": {"every": 0, "size": 0},
        "train": {"steps": settings["steps"], "save_every": 0, "out_dir": str(out)},
    }
    run_dir = train(build_config(raw), progress=False)
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_seconds" in r][1:]
    parts = ("generate", "logprobs", "policy", "optimizer", "sync")
    return {
        "step_seconds": [r["step_seconds"] for r in rows],
        "gen_tokens_per_s": [r["gen_tokens_per_s"] for r in rows],
        "tokens_per_step": sum(r["completion_len_mean"] for r in rows) / len(rows)
        * settings["prompts"] * settings["group"],
        "breakdown": {p: sum(r[f"time/{p}"] for r in rows) / len(rows) for p in parts},
    }


# --------------------------------------------------------------------------- TRL side
class _Timer:
    """Times TRL's generation (counting its tokens) and its whole generate-and-score phase
    (generation, rewards, reference/old log-probs); the rest of a step is the policy's
    forward/backward and the optimizer."""

    def __init__(self, trainer: Any) -> None:
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.scoring: list[float] = []
        generate, score = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(prompts: list) -> Any:
            began = time.perf_counter()
            result = generate(prompts)
            self.seconds.append(time.perf_counter() - began)
            self.tokens.append(sum(len(ids) for ids in result[1]))
            return result

        def timed_score(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            result = score(*args, **kwargs)
            self.scoring.append(time.perf_counter() - began)
            return result

        trainer._generate = timed_generate
        trainer._generate_and_score_completions = timed_score


def run_trl(settings: dict[str, Any], dtype: str, out: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.core.models import load_model, resolve_dir
    from r1lab.rewards import RewardInputs, RewardTerm, compute_rewards
    from r1lab.tasks import make_task

    model, tokenizer = load_model(settings["model"], "float32")
    if settings["model"].startswith("tiny:"):  # TRL loads the reference itself: give it a path
        path = str(out / "tiny_model")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    else:
        path = resolve_dir(settings["model"])
    del model
    prompts, examples = prompts_and_examples(settings, tokenizer)
    by_id = {ex.id: ex for ex in examples}
    task = make_task(TASK["name"], TASK["options"])
    terms = [RewardTerm(r["name"], r["weight"]) for r in REWARDS]

    def reward(completions: list[str], example_id: list[str], **_: Any) -> list[float]:
        inputs = RewardInputs(list(completions), [by_id[i] for i in example_id], task=task)
        return compute_rewards(terms, inputs)[0]

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            step_times.append(time.perf_counter() - self.began)

    per_step = settings["prompts"] * settings["group"]
    micro = min(8, per_step)
    config = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=dtype == "bfloat16", report_to=[],
        per_device_train_batch_size=micro, gradient_accumulation_steps=per_step // micro,
        num_generations=settings["group"], max_completion_length=settings["max_new_tokens"],
        temperature=1.0, beta=settings["beta"], learning_rate=settings["lr"],
        max_steps=settings["steps"], save_strategy="no", logging_strategy="no", seed=0,
        disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32},
    )
    dataset = Dataset.from_dict({"prompt": prompts, "example_id": [ex.id for ex in examples]})
    trainer = GRPOTrainer(model=path, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    timer = _Timer(trainer)
    trainer.train()
    counted = len(step_times) - 1
    generate = sum(timer.seconds[1:]) / counted
    scoring = sum(timer.scoring[1:]) / counted
    return {
        "step_seconds": step_times[1:],
        "tokens_per_step": sum(timer.tokens[1:]) / counted,
        "gen_tokens_per_s": [t / s for t, s in zip(timer.tokens[1:], timer.seconds[1:],
                                                   strict=True)],
        "breakdown": {"generate": generate, "logprobs": scoring - generate,
                      "policy+optimizer": sum(step_times[1:]) / counted - scoring},
    }


# --------------------------------------------------------------------------- driver
def child(side: str, settings: dict[str, Any], dtype: str, result_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    tree = TreeRSS()
    with tempfile.TemporaryDirectory() as tmp:
        runner = run_trl if side == "trl" else run_r1lab
        result = runner(settings, dtype, Path(tmp))
    tree_peak = tree.stop()
    steps = result["step_seconds"]
    label = side
    if side == "r1lab":
        notes = [f"micro {settings['micro']}"]
        if settings["checkpointing"]:
            notes.append("ckpt")
        if settings["offload"]:
            notes.append("ref offload")
        if settings["release"]:
            notes.append("release")
        if settings["weights"] == "float32" and dtype != "float32":
            notes.append("fp32 weights")
        if settings["engine"] != "prefix":
            notes.append(settings["engine"])
        label += f" ({', '.join(notes)})"
    result.update(side=side, label=label, dtype=dtype, engine=settings.get("engine", "prefix"),
                  seconds_per_step=sum(steps) / len(steps),
                  tokens_per_s=sum(result["gen_tokens_per_s"]) / len(result["gen_tokens_per_s"]),
                  peak_rss_mb=max(peak_rss_mb(), tree_peak))
    result_path.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, help="steps per side (the first is warm-up)")
    parser.add_argument("--shots", type=int, help="worked examples in every prompt (default 2; "
                        "0: the R1-Zero template alone, the paper's zero-shot prompt)")
    parser.add_argument("--sides", default="trl,r1lab",
                        help="which sides to run; '' with --merge only combines earlier results")
    parser.add_argument("--variant", action="append", default=[],
                        help="an r1lab configuration to run (repeatable), e.g. 'micro=8,ckpt' "
                        "or 'micro=16,fp32-weights,dtype=bfloat16' (micro: sequences per "
                        "micro-batch, default 16; ckpt: activation checkpointing; offload: the "
                        "reference's weights in a memory-mapped file; release: freed memory "
                        "back to the OS between phases; fp32-weights: "
                        "autocast over fp32 weights instead of weights in the compute dtype; "
                        "engine=vllm: rollouts on vLLM, compared with the same variant on the "
                        "prefix engine when that runs too); default: micro=16")
    parser.add_argument("--out", default="bench/results/grpo_step.json")
    parser.add_argument("--plot", help="also write the time-breakdown chart here (PNG)")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="earlier result JSONs whose sides are added to this report")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "DTYPE", "RESULT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, dtype, result = args.child
        child(side, json.loads(args.settings), dtype, Path(result))
        return
    settings = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    if args.steps:
        settings["steps"] = args.steps
    if args.shots is not None:
        settings["shots"] = args.shots
    variants = [parse_variant(v) for v in args.variant or ["micro=16"]]
    runs = [(side, variant) for side in filter(None, args.sides.split(","))
            for variant in (variants if side == "r1lab" else [{}])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            for i, (side, variant) in enumerate(runs):
                if variant.get("only_dtype", dtype) != dtype:
                    continue
                path = Path(tmp) / f"{side}_{dtype}_{i}.json"
                cmd = [sys.executable, __file__, "--child", side, dtype, str(path),
                       "--settings", json.dumps({**settings, **variant})]
                subprocess.run(cmd, check=True)
                results.append(json.loads(path.read_text()))
    for earlier in args.merge:  # e.g. TRL measured in one run, r1lab in the next
        results += json.loads(Path(earlier).read_text())["results"]
    add_floors(results, settings)
    report = {"settings": settings, "machine": machine(), "results": results,
              "ratios": ratios(results)}
    for r in results:
        label = r.get("label", r["side"])
        print(f"{label:>32} {r['dtype']:>9}: {r['seconds_per_step']:7.2f} s/step  "
              f"{r['tokens_per_s']:7.1f} gen tok/s  {r.get('tokens_per_step', 0):6.0f} tokens/step"
              f"  peak RSS {r['peak_rss_mb']:7.0f} MB")
    for r in results:
        if "floor_seconds" in r:
            print(f"{r.get('label', r['side']):>32} {r['dtype']:>9}: compute floor "
                  f"{r['floor_seconds']:.2f} s/step ({r['prompt_tokens']:.0f} prompt + "
                  f"{r['tokens_per_step']:.0f} sampled tokens at "
                  f"{r['matmul_gflops']:.0f} GFLOP/s): the step is {r['floor_multiple']:.1f}x it")
    for key, ratio in report["ratios"].items():
        print(f"{key}: time {ratio['time']:.2f}x (per generated token "
              f"{ratio['time_per_token']:.2f}x), peak RSS {ratio['rss']:.2f}x, "
              f"generation speed {ratio['gen_speed']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_breakdown(results, Path(args.plot))


PARTS = {"generation": ("generate",), "reference/old log-probs + rewards": ("logprobs",),
         "policy forward/backward + optimizer": ("policy+optimizer", "policy", "optimizer",
                                                 "sync")}


def plot_breakdown(results: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars: where one step's seconds go, for each side and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.get('label', r['side'])} {r['dtype']}" for r in results]
    fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(results) + 1.8))
    left = [0.0] * len(results)
    for part, keys in PARTS.items():
        widths = [sum(r["breakdown"].get(k, 0.0) for k in keys) for r in results]
        ax.barh(labels, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    rest = [max(0.0, r["seconds_per_step"] - done) for r, done in zip(results, left, strict=True)]
    # a side that timed only its generation leaves the rest of its step unattributed
    if max(rest) > 0.01 * max(left):  # (more than the rounding of the parts' sum)
        ax.barh(labels, rest, left=left, label="not broken down", color="lightgrey")
    ax.set_xlabel("seconds per GRPO step")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def parse_variant(text: str) -> dict[str, Any]:
    """'micro=8,ckpt,fp32-weights' -> the r1lab settings it overrides ('dtype=bfloat16': run
    this variant at that dtype only)."""
    out: dict[str, Any] = {"micro": 16, "checkpointing": False, "offload": False,
                           "release": False, "weights": "compute", "engine": "prefix"}
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token.startswith("micro="):
            out["micro"] = int(token.split("=", 1)[1])
        elif token == "ckpt":
            out["checkpointing"] = True
        elif token == "offload":
            out["offload"] = True
        elif token == "release":
            out["release"] = True
        elif token == "fp32-weights":
            out["weights"] = "float32"
        elif token.startswith("dtype="):
            out["only_dtype"] = token.split("=", 1)[1]
        elif token.startswith("engine="):
            out["engine"] = token.split("=", 1)[1]
        else:
            raise SystemExit(f"unknown variant token {token!r}: use micro=N, ckpt, offload, "
                             "release, fp32-weights, dtype=D, engine=E")
    return out


def per_token(result: dict[str, Any]) -> float:
    """Seconds of a step per generated token: a step's time grows with how long its sampled
    completions ran, which differs from side to side even on the same prompts."""
    return result["seconds_per_step"] / max(result.get("tokens_per_step", 0.0), 1.0)


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each r1lab run over TRL at its dtype and over TRL's default fp32, and each run on
    another engine over the same configuration on the prefix engine (lower is better for time,
    time per generated token and RSS)."""
    trl = {r["dtype"]: r for r in results if r["side"] == "trl"}
    prefix = {(r["label"], r["dtype"]): r for r in results if r["side"] == "r1lab"}
    out = {}
    for ours in results:
        if ours["side"] != "r1lab":
            continue
        engine = ours.get("engine", "prefix")
        base = prefix.get((ours["label"].replace(f", {engine})", ")"), ours["dtype"]))
        if engine != "prefix" and base is not None:
            out[f"{ours['label']} {ours['dtype']} vs {base['label']}"] = compare(ours, base)
        for dtype in dict.fromkeys((ours["dtype"], "float32")):
            theirs = trl.get(dtype)
            if theirs is None:
                continue
            out[f"{ours.get('label', 'r1lab')} {ours['dtype']} vs TRL {dtype}"] = compare(
                ours, theirs
            )
    return out


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    return {"time": ours["seconds_per_step"] / theirs["seconds_per_step"],
            "time_per_token": per_token(ours) / per_token(theirs),
            "rss": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
            "gen_speed": ours["tokens_per_s"] / theirs["tokens_per_s"]}


def matmul_gflops(dtype: str, calls: int = 30) -> float:
    """This machine's matmul rate at `dtype` through `F.linear` (the op the model's layers
    call) on a decoder-sized product ([512, 576] by a [1536, 576] weight: SmolLM2-135M's
    hidden and MLP widths), best of `calls` after a warm-up."""
    import torch
    import torch.nn.functional as F

    kind = getattr(torch, dtype)
    x, w = torch.randn(512, 576, dtype=kind), torch.randn(1536, 576, dtype=kind)
    for _ in range(3):
        F.linear(x, w)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2 * 512 * 576 * 1536 / best / 1e9


def add_floors(results: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Each result's compute floor (see the module docstring) and its step as a multiple."""
    from r1lab.core.models import load_model

    model, tokenizer = load_model(settings["model"], "float32")
    weights = sum(p.numel() for p in model.parameters())  # a tied head counted once: its matmul
    prompts, _ = prompts_and_examples({**settings, "steps": 1}, tokenizer)
    prompt_tokens = sum(len(tokenizer(p).input_ids) for p in prompts)
    per_token = (10 if settings["beta"] > 0 else 8) * weights
    rates = {dtype: matmul_gflops(dtype) for dtype in {r["dtype"] for r in results}}
    for r in results:
        floor = per_token * (prompt_tokens + r.get("tokens_per_step", 0.0))
        r.update(prompt_tokens=prompt_tokens, matmul_gflops=rates[r["dtype"]],
                 floor_seconds=floor / (rates[r["dtype"]] * 1e9))
        r["floor_multiple"] = r["seconds_per_step"] / r["floor_seconds"]


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    main()
