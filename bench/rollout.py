"""Rollout throughput: r1lab's `prefix` engine (and vLLM) against plain `transformers.generate`.

Every engine gets the same prompts, sampling settings and dtype in one invocation; the script
prints valid (non-padding) generated tokens per second for each and its ratio to `generate`,
and writes the numbers as JSON. GRPO's shape (few prompts, G samples each) is the default.
Each engine first decodes a few tokens of one prompt (warm-up, not counted); vLLM's start-up
(its processes, ~30-60 s on a CPU) is reported apart, as `start_seconds`.

    python bench/rollout.py                      # 4 prompts x 8 samples, 128 new tokens
    python bench/rollout.py --engines hf,prefix,vllm --dtypes float32    # with vLLM
    python bench/rollout.py --smoke              # seconds-scale settings for CI
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from r1lab.core.models import load_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.tasks import make_task
from r1lab.text.templates import pick_shots, render


def measure(engine_name: str, model, tokenizer, prompts, params, seed: int, dtype: str) -> dict:
    """Valid tokens/s of one engine; matmuls in `dtype` for every engine.

    `generate` gets a copy of the model cast to `dtype` (how people run it in bf16); the prefix
    engine keeps fp32 weights and computes in `dtype`, as the trainer does; vLLM holds its own
    copy in `dtype`. vLLM samples each prompt under a seed drawn from torch's generator, and
    reports no log-probs here (GRPO asks for them: `bench/grpo_step.py` measures that).
    """
    began = time.perf_counter()
    if engine_name == "hf":
        engine = make_engine("hf", model.to(getattr(torch, dtype)), tokenizer)
    else:
        engine = make_engine(engine_name, model, tokenizer, compute_dtype=dtype)
    started = time.perf_counter() - began
    engine.generate(prompts[:1], replace(params, n=1, max_new_tokens=4))  # warm-up
    torch.manual_seed(seed)
    start = time.perf_counter()
    groups = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(g.completion_ids) for group in groups for g in group)
    model.to(torch.float32)
    if hasattr(engine, "close"):
        engine.close()
    return {"engine": engine_name, "dtype": dtype, "seconds": seconds, "valid_tokens": tokens,
            "tokens_per_s": tokens / seconds, "start_seconds": started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="compute dtypes, each measured for every engine")
    parser.add_argument("--engines", default="hf,prefix",
                        help="engines to measure, `hf` (transformers.generate, the baseline) "
                        "first; add `vllm` where it is installed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, few tokens")
    parser.add_argument("--out", default="bench/results/rollout.json")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.prompts, args.samples, args.max_new_tokens = "tiny:llama", 2, 2, 8

    model, tokenizer = load_model(args.model, "float32")
    task = make_task("arith", {"digits": 2})
    train = task.examples("train", limit=args.prompts + 2)
    shots = pick_shots(task, train, 2, "brief")
    prompts = [render("r1_zero", ex.prompt, tokenizer, shots) for ex in train[2:]]
    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature)
    names = args.engines.split(",")
    if names[0] != "hf":
        raise SystemExit("--engines must start with hf: the baseline the others are divided by")
    results, ratios = [], {}
    for dtype in args.dtypes.split(","):
        rows = [measure(name, model, tokenizer, prompts, params, args.seed, dtype)
                for name in names]
        ratios[dtype] = {r["engine"]: r["tokens_per_s"] / rows[0]["tokens_per_s"]
                         for r in rows[1:]}
        results += rows
    report = {
        "settings": vars(args),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": results,
        "ratios_vs_generate": ratios,
    }
    for row in results:
        print(f"{row['engine']:>7} {row['dtype']:>9}: {row['valid_tokens']:6d} valid tokens in "
              f"{row['seconds']:7.1f} s = {row['tokens_per_s']:7.1f} tok/s")
    for dtype, by_engine in ratios.items():
        for name, ratio in by_engine.items():
            print(f"{name} / generate ({dtype}): {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
