"""Rollout throughput: r1lab's `prefix` engine against plain `transformers.generate`.

Both engines get the same prompts, sampling settings and dtype in one invocation; the script
prints valid (non-padding) generated tokens per second for each and the ratio, and writes the
numbers as JSON. GRPO's shape (few prompts, G samples each) is the default.

    python bench/rollout.py                      # 4 prompts x 8 samples, 128 new tokens
    python bench/rollout.py --smoke              # seconds-scale settings for CI
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from r1lab.core.models import load_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.tasks import make_task
from r1lab.text.templates import pick_shots, render


def measure(engine_name: str, model, tokenizer, prompts, params, seed: int, dtype: str) -> dict:
    """Valid tokens/s of one engine; matmuls in `dtype` for both engines.

    `generate` gets a copy of the model cast to `dtype` (how people run it in bf16); the prefix
    engine keeps fp32 weights and computes in `dtype`, as the trainer does.
    """
    if engine_name == "hf":
        engine = make_engine("hf", model.to(getattr(torch, dtype)), tokenizer)
    else:
        engine = make_engine(engine_name, model, tokenizer, compute_dtype=dtype)
    torch.manual_seed(seed)
    start = time.perf_counter()
    groups = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(g.completion_ids) for group in groups for g in group)
    model.to(torch.float32)
    return {"engine": engine_name, "dtype": dtype, "seconds": seconds, "valid_tokens": tokens,
            "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="compute dtypes, each measured for both engines")
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
    results, ratios = [], {}
    for dtype in args.dtypes.split(","):
        pair = [measure(name, model, tokenizer, prompts, params, args.seed, dtype)
                for name in ("hf", "prefix")]
        ratios[dtype] = pair[1]["tokens_per_s"] / pair[0]["tokens_per_s"]
        results += pair
    report = {
        "settings": vars(args),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": results,
        "ratio_prefix_vs_generate": ratios,
    }
    for row in results:
        print(f"{row['engine']:>7} {row['dtype']:>9}: {row['valid_tokens']:6d} valid tokens in "
              f"{row['seconds']:7.1f} s = {row['tokens_per_s']:7.1f} tok/s")
    for dtype, ratio in ratios.items():
        print(f"prefix / generate ({dtype}): {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
