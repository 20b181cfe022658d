"""Fixtures the GRPO tests share."""

from __future__ import annotations

import pytest
import torch

from r1lab.core.models import tiny_model


@pytest.fixture(scope="module")
def policy(tokenizer):
    """A tiny Llama with large weights, so log-probs vary and a small nudge changes them."""
    model = tiny_model("llama", len(tokenizer), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    return model
