"""LoRA through peft: train a low-rank adapter on frozen weights, and read it back as a model.

`model.lora: {r, alpha, dropout, target_modules}` in a training recipe makes the trainer wrap
its model with peft's LoRA: each targeted projection W gets W + (alpha / r) * B A, and only A
and B train (for SmolLM2-135M at r = 8 on every projection: 2.4M of 137M weights). What every
part of r1lab sees:

- the trainers run the peft-injected model like any Hugging Face model (`attach`, or `resume`
  from a checkpoint's adapter, trainable);
- GRPO's reference model is `base_view`: the same base weights with the adapter layers
  bypassed, which is what peft's `disable_adapter()` computes, without a second copy;
- a checkpoint holds the adapter (`adapter_config.json`, `adapter_model.safetensors`) and the
  trainer state; `final/` is a plain model directory with the adapter merged in fp32 (`merged`:
  merging into bf16 weights loses as much as the whole bf16 rounding), and the adapter beside
  it in `final/adapter/`;
- any model spec may name an adapter directory: it loads as its base with the adapter merged
  (`core.models.load_model`), so evaluation, sampling and the pipeline take either;
- the lean decode step reads each projection through `effective_weight` (W + delta).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.core.config import at_least
from r1lab.core.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_DIR = "adapter"  # final/adapter/: the adapter a LoRA run's merged final/ came from
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """The `model.lora:` section: rank, scale (alpha / r), dropout on the adapter's input,
    and which modules (by name) get an adapter."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def validate(self, key: str = "model.lora") -> None:
        at_least(f"{key}.r", self.r, 1)
        if self.alpha <= 0:
            raise UserError(f"{key}.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"{key}.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise UserError(f"{key}.target_modules: name at least one module, e.g. q_proj")


def is_peft(model: Any) -> bool:
    """True for a peft-wrapped model (a trainer's LoRA model)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def attach(model: Any, config: LoraConfig, base_spec: str) -> Any:
    """`model` (changed in place) wrapped in a fresh, trainable LoRA adapter.

    The adapter records `base_spec` as its base, so its directory loads on its own later; a
    local path is recorded absolute.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    settings = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        peft = get_peft_model(model, settings)
    except ValueError as err:
        raise UserError(f"model.lora.target_modules: {err}") from err
    peft.peft_config["default"].base_model_name_or_path = _spec_of(base_spec)
    return peft


def resume(model: Any, adapter_dir: Path) -> Any:
    """`model` with the adapter saved in `adapter_dir`, trainable (to continue a run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def _spec_of(spec: str) -> str:
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def is_adapter_dir(path: str | Path) -> bool:
    """A directory holding a peft adapter (a LoRA checkpoint, or final/adapter/)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The model spec an adapter directory was trained on."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}: the adapter does not name its base model")
    return str(base)


def load_merged(model: Any, adapter_dir: str | Path) -> Any:
    """`model` (the adapter's base, in fp32) with the adapter merged: a plain model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def merged(peft: Any) -> Any:
    """A plain model: the adapter merged into an fp32 copy of the base (`peft` is untouched)."""
    clone = copy.deepcopy(peft)
    for param in clone.parameters():  # buffers (RoPE's inv_freq) are fp32 already
        param.data = param.data.float()
    return clone.merge_and_unload()


def base_view(model: Any) -> Any:
    """The base model of a LoRA-injected `model`, sharing its weights: no second copy.

    Each adapter layer is replaced by the base layer it wraps, so the view computes exactly
    what `disable_adapter()` computes, as a plain model any code can run (GRPO's reference).
    """
    params = {id(p): p for p in model.parameters()}
    view = copy.deepcopy(model, memo=params)  # parameters are shared, not copied
    for name, module in list(view.named_modules()):
        base = getattr(module, "base_layer", None)
        if base is not None and name:
            parent, _, leaf = name.rpartition(".")
            setattr(view.get_submodule(parent) if parent else view, leaf, base)
    return view


def effective_weight(module: Any) -> Any:
    """The weight `module`'s forward applies: its own, or with an active LoRA adapter
    W + (alpha / r) * B A, summed in fp32 (read by code that bypasses the modules)."""
    weight = module.weight
    if not hasattr(module, "lora_A") or module.merged or module.disable_adapters:
        return weight
    active = [name for name in module.active_adapters if name in module.lora_A]
    if not active:
        return weight
    return weight.float() + sum(module.get_delta_weight(name).float() for name in active)
