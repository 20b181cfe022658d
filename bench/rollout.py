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

from r1lab.models import load_model
from r1lab.rollout import SamplingParams, make_engine
from r1lab.tasks import make_task
from r1lab.templates import pick_shots, render


def measure(engine_name: str, model, tokenizer, prompts, params, seed: int) -> dict:
    engine = make_engine(engine_name, model, tokenizer)
    torch.manual_seed(seed)
    start = time.perf_counter()
    groups = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(g.completion_ids) for group in groups for g in group)
    return {"engine": engine_name, "seconds": seconds, "valid_tokens": tokens,
            "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny model, few tokens")
    parser.add_argument("--out", default="bench/results/rollout.json")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.prompts, args.samples, args.max_new_tokens = "tiny:llama", 2, 2, 8

    model, tokenizer = load_model(args.model, args.dtype)
    task = make_task("arith", {"digits": 2})
    train = task.examples("train", limit=args.prompts + 2)
    shots = pick_shots(task, train, 2, "brief")
    prompts = [render("r1_zero", ex.prompt, tokenizer, shots) for ex in train[2:]]
    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature)
    results = [measure(name, model, tokenizer, prompts, params, args.seed)
               for name in ("hf", "prefix")]
    ratio = results[1]["tokens_per_s"] / results[0]["tokens_per_s"]
    report = {
        "settings": vars(args),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": results,
        "ratio_prefix_vs_generate": ratio,
    }
    for row in results:
        print(f"{row['engine']:>7}: {row['valid_tokens']:6d} valid tokens in "
              f"{row['seconds']:7.1f} s = {row['tokens_per_s']:7.1f} tok/s")
    print(f"prefix / generate: {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
