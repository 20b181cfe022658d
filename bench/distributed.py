"""Beyond one process, measured on this machine, both sides of each row in one invocation.

(a) Distribution overhead: the same GRPO run (same recipe, global batch and seed, hence the
    same samples) as one process with 2 threads and as two torchrun ranks with 1 thread each
    (gloo, DDP). Throughput ratio = one process's seconds per step / two ranks' (target >= 0.9).
(b) LoRA against full fine-tuning: the same GRPO run with every weight trained and with a LoRA
    adapter (r 16 on the 7 projections; the reference is the base with the adapter off), each
    in its own process: peak RSS and seconds per step.

Every run is r1lab's own trainer (`grpo.loop.train`) in a subprocess started by this script;
the first step of each is warm-up and not counted.

    python bench/distributed.py                # built-in model; (a) and (b)
    python bench/distributed.py --parts lora   # (b) only
    python bench/distributed.py --smoke        # tiny model, a few tokens: seconds (CI)

Prints both tables and writes bench/results/distributed.json (with the load average before
and after: other processes on the machine slow both sides alike, not their ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULTS = {"model": "builtin:smollm2-135m-instruct", "prompts": 4, "group": 8,
            "max_new_tokens": 64, "steps": 3, "micro": 8}
SMOKE = {"model": "tiny:llama", "prompts": 2, "group": 2, "max_new_tokens": 4, "steps": 2,
         "micro": 2}
# (b): both sides with the lean memory settings, so activations do not hide what LoRA saves
LEAN = {"micro": 4, "checkpointing": True, "release": True}
LORA = {"r": 16, "alpha": 32}


def recipe(settings: dict[str, Any], out: str) -> dict[str, Any]:
    """The GRPO recipe every side runs (R1-Zero's prompt and rewards, bf16 compute)."""
    model = {"spec": settings["model"], "compute_dtype": "bfloat16"}
    if settings.get("lora"):
        model["lora"] = LORA
    return {
        "name": settings["name"],
        "model": model,
        "task": {"name": "arith", "options": {"digits": 2, "operands": 2, "ops": "+-"}},
        "template": {"name": "r1_zero", "shots": 2, "shot_style": "brief"},
        "rewards": [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.25}],
        "generation": {"max_new_tokens": settings["max_new_tokens"], "temperature": 1.0},
        "grpo": {"batch_size": settings["prompts"] * settings["group"],
                 "group_size": settings["group"], "beta": 0.04,
                 "micro_batch_size": settings["micro"],
                 "activation_checkpointing": settings.get("checkpointing", False),
                 "release_memory": settings.get("release", False)},
        "optim": {"lr": 1e-6},
        "eval": {"every": 0, "size": 0},
        "train": {"steps": settings["steps"], "save_every": 0, "out_dir": out},
    }


def worker(settings: dict[str, Any], out: Path) -> None:
    """One process (or one torchrun rank) of one side: train, then report."""
    import torch

    torch.set_num_threads(settings["threads"])
    from r1lab.core.runfiles import read_jsonl
    from r1lab.grpo.config import build_config
    from r1lab.grpo.loop import train
    from r1lab.train import dist

    run_dir = train(build_config(recipe(settings, str(out))), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    report: dict[str, Any] = {"peak_rss_mb": peak}
    if dist.is_main():
        rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_seconds" in r][1:]
        report["step_seconds"] = [r["step_seconds"] for r in rows]
        report["tokens_per_step"] = [
            r["completion_len_mean"] * settings["prompts"] * settings["group"] for r in rows
        ]
        samples = read_jsonl(run_dir / "samples.jsonl")
        report["samples"] = [(r["id"], r["completion"]) for r in samples]
    (out / f"report-{dist.rank()}.json").write_text(json.dumps(report))


def side(
    settings: dict[str, Any], tmp: Path, label: str, ranks: int, threads: int
) -> dict[str, Any]:
    """Run one side in fresh processes; its seconds per step, tokens and peak RSS."""
    name = f"side{len(list(tmp.iterdir()))}"
    out = tmp / name
    out.mkdir()
    settings = {**settings, "name": name, "threads": threads}
    args = [str(HERE), "--worker", json.dumps(settings), "--out", str(out)]
    command = [sys.executable, *args]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(ranks), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{label} failed:\n{done.stderr[-4000:]}")
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("report-*.json"))]
    main = reports[0]
    seconds = sum(main["step_seconds"]) / len(main["step_seconds"])
    return {"side": label, "ranks": ranks, "threads_per_rank": threads,
            "seconds_per_step": seconds, "step_seconds": main["step_seconds"],
            "tokens_per_step": sum(main["tokens_per_step"]) / len(main["tokens_per_step"]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
            "samples": main["samples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds (CI)")
    parser.add_argument("--parts", default="ddp,lora", help="ddp, lora or both (comma-separated)")
    parser.add_argument("--steps", type=int, help="steps per side, the first not counted")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "distributed.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker), Path(args.out))
        return
    settings = dict(SMOKE if args.smoke else DEFAULTS)
    if args.steps:
        settings["steps"] = args.steps
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"settings": settings, "machine": platform.processor() or
                              platform.machine(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if "ddp" in parts:
            one = side(settings, Path(tmp), "1 process x 2 threads", 1, 2)
            two = side(settings, Path(tmp), "2 ranks x 1 thread (DDP)", 2, 1)
            report["ddp"] = {"sides": [one, two], "same_samples": one["samples"] == two["samples"],
                             "throughput_ratio": one["seconds_per_step"] / two["seconds_per_step"]}
        if "lora" in parts:
            lean = {**settings, **LEAN}
            full = side(lean, Path(tmp), "full fine-tune", 1, 2)
            adapter = side({**lean, "lora": True}, Path(tmp), f"LoRA r={LORA['r']}", 1, 2)
            report["lora"] = {"sides": [full, adapter],
                              "rss_ratio": adapter["peak_rss_mb"] / full["peak_rss_mb"],
                              "time_ratio": adapter["seconds_per_step"] / full["seconds_per_step"]}
    report["load_after"] = os.getloadavg()
    show(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for part in ("ddp", "lora"):
        for s in report.get(part, {}).get("sides", []):
            s.pop("samples")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def show(report: dict[str, Any]) -> None:
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    for part in ("ddp", "lora"):
        if part not in report:
            continue
        print(f"{'side':32} {'s/step':>8} {'tokens/step':>12} {'peak RSS MB':>12}")
        for s in report[part]["sides"]:
            print(f"{s['side']:32} {s['seconds_per_step']:8.2f} {s['tokens_per_step']:12.0f} "
                  f"{s['peak_rss_mb']:12.0f}")
        found = {k: v for k, v in report[part].items() if k != "sides"}
        print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in found.items()))


if __name__ == "__main__":
    main()
