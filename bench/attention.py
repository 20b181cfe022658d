"""One GRPO policy micro-batch, forward and backward, under each attention implementation.

The shape of the zero-shot GRPO benchmark (`grpo_step.py --shots 0`): 2 prompts of 100
tokens, 8 completions each of 30 to 128 tokens, through `grpo.update.rows_logprobs` (the
prompts run once, the completions read their K/V) under bf16 autocast, for fp32 weights and
for bf16 weights. Each implementation runs in this one process, in turn, on the same batch:

- `block`: r1lab's CPU training attention (`train/attention.py`, what log-prob passes use);
- `sdpa`: PyTorch's scaled_dot_product_attention (its CPU flash kernels), as before it;
- `eager`: transformers' matmul + softmax attention, which keeps the probabilities.

Prints the best of `--repeats` timed passes after a warm-up, and the bytes autograd saved for
the backward (a deterministic memory figure: peak RSS of one process that runs all three
would mix them), and writes bench/results/attention.json.

    python bench/attention.py             # the built-in model, ~2 minutes
    python bench/attention.py --smoke     # a tiny model: seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SHAPE = {"prompts": 2, "group": 8, "prompt_len": 100, "min_len": 30, "max_len": 128}
SMOKE = {"prompts": 2, "group": 2, "prompt_len": 6, "min_len": 2, "max_len": 8}


def make_batch(shape: dict[str, int], vocab: int) -> Any:
    import torch

    from r1lab.core.types import RolloutBatch

    g = torch.Generator().manual_seed(0)
    rows = shape["prompts"] * shape["group"]
    lengths = torch.randint(shape["min_len"], shape["max_len"] + 1, (rows,), generator=g)
    lengths[0] = shape["max_len"]
    attn = (torch.arange(shape["max_len"])[None] < lengths[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(3, vocab, (shape["prompts"], shape["prompt_len"]), generator=g),
        prompt_mask=torch.ones(shape["prompts"], shape["prompt_len"], dtype=torch.long),
        rows=torch.arange(shape["prompts"]).repeat_interleave(shape["group"]),
        completion_ids=torch.randint(3, vocab, (rows, shape["max_len"]), generator=g),
        completion_attn=attn,
        completion_mask=attn.float(),
        advantages=torch.randn(rows, generator=g),
        rewards=torch.zeros(rows),
    )


def one_pass(model: Any, batch: Any) -> int:
    """Forward and backward of the micro-batch; returns the bytes saved for the backward."""
    import torch

    from r1lab.core.models import compute_context
    from r1lab.grpo.update import rows_logprobs

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), compute_context("bfloat16"):
        index = torch.arange(batch.size)
        logp, entropy = rows_logprobs(model, batch, index, 1.0, with_entropy=True)
        loss = (logp * batch.completion_mask).sum() + 0.01 * entropy.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def measure(model: Any, batch: Any, attention: str, repeats: int) -> dict[str, Any]:
    from r1lab.train import attention as block

    model.set_attn_implementation("eager" if attention == "eager" else "sdpa")
    limit = block.MAX_KV
    block.MAX_KV = limit if attention == "block" else 0  # 0: sdpa stays
    try:
        saved = one_pass(model, batch)  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            one_pass(model, batch)
            times.append(time.perf_counter() - began)
    finally:
        block.MAX_KV = limit
    return {"attention": attention, "seconds": min(times), "all_seconds": times,
            "saved_mb": saved / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="bench/results/attention.json")
    args = parser.parse_args()

    import torch

    from r1lab.core.models import load_model

    spec = "tiny:llama" if args.smoke else "builtin:smollm2-135m-instruct"
    shape = SMOKE if args.smoke else SHAPE
    results = []
    for weights in ("float32", "bfloat16"):
        model, tokenizer = load_model(spec, weights)
        model.train()
        batch = make_batch(shape, len(tokenizer))
        for attention in ("sdpa", "block", "eager"):
            row = {"weights": weights, **measure(model, batch, attention, args.repeats)}
            results.append(row)
            print(f"{weights:>8} weights, {attention:>5}: {row['seconds']:6.2f} s  "
                  f"saved for backward {row['saved_mb']:7.0f} MB")
        del model
    tokens = int(batch.completion_attn.sum()) + shape["prompts"] * shape["prompt_len"]
    report = {"shape": shape, "tokens": tokens, "threads": torch.get_num_threads(),
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
