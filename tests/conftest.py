"""Shared fixtures: the built-in tokenizer and a tiny random model, loaded once per session.

The hub is unreachable here, so tests run in offline mode: a hub lookup then fails at once
instead of retrying for a minute. Set before transformers/huggingface_hub are imported,
because huggingface_hub reads the variable at import time.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Unit tests run tiny models, where a second intra-op thread only adds synchronisation; and when
# another process shares the two cores, oversubscribed threads make tiny ops 100x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    """The built-in model's tokenizer (left padding, pad token set). Do not mutate it."""
    from r1lab.core.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) for `tiny:llama`: a random 2-layer Llama with the built-in tokenizer."""
    from r1lab.core.models import load_model

    return load_model("tiny:llama")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty `R1LAB_CACHE`, so a test never sees (or writes to) the real model cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("R1LAB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode, also in the already-imported huggingface_hub constants."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def vllm_engine():
    """(engine, model, tokenizer): one vLLM engine on the built-in model (fp32) for the whole
    session, since each start costs ~30-60 s; skipped where vLLM is not installed. A test that
    loads other weights into it loads the model's back."""
    pytest.importorskip("vllm")
    from r1lab.core.models import load_model
    from r1lab.rollout import make_engine

    model, tokenizer = load_model("builtin:smollm2-135m-instruct", "float32")
    engine = make_engine("vllm", model, tokenizer, compute_dtype="float32", kv_cache_gb=0.5)
    yield engine, model, tokenizer
    engine.close()
