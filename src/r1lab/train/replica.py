"""The model a trainer updates, as this rank holds it: whole (one process), replicated (DDP) or
sharded (FSDP2), with or without a LoRA adapter.

Why a wrapper: DDP all-reduces gradients, and FSDP2 gathers weights and reduce-scatters
gradients, from hooks on the module they wrap, and those hooks fire only when that module's
`forward` runs. r1lab's log-prob code calls the backbone (`get_decoder()`) and the LM head
itself, so with `DDP(model)` the gradients would silently never be averaged (and FSDP2 would
fail on half-sharded weights). So the module DDP/FSDP2 wrap is `_Root`, whose forward runs a
log-prob function on the model: every training pass is `replica(fn, *args)`.

A trainer's step, the same in one process or many:

    for part, live in replica.lockstep(parts, filler):       # equal pass counts on all ranks
        with replica.training_pass(last=...):                 # gradient sync on the last only
            loss = ... replica(prefix_logprobs, ...) ...       # normalised by the whole batch
            (loss * replica.loss_scale).backward()           # DDP/FSDP2 average: scale back
    norm = replica.clip(grad_clip)                             # the global norm
    optimizer.step(); replica.sync()                           # FSDP2: refresh the full copy

`replica.weights` is a plain, whole model with the current weights, for what runs without
gradients (rollouts, old log-probs, evaluation); under FSDP2 it is a full copy refreshed after
each update. `replica.saved` is what a checkpoint holds: the LoRA adapter, or the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from r1lab.core import advice
from r1lab.core.console import warn
from r1lab.core.lora import attach, resume
from r1lab.core.models import ModelConfig, load_model
from r1lab.train import dist

T = TypeVar("T")


class _Root(nn.Module):
    """The module DDP/FSDP2 wrap: its forward runs `fn(model, ...)`, so their hooks see it."""

    def __init__(self, model: nn.Module, clone_views: bool = False) -> None:
        super().__init__()
        self.model = model
        self.clone_views = clone_views  # FSDP2: an in-place op on a returned view loses a hook

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = fn(self.model, *args, **kwargs)
        if not self.clone_views:
            return out
        return torch.utils._pytree.tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) and t._is_view() else t, out
        )


class Replica:
    """`model` (a Hugging Face causal LM, LoRA layers injected when `adapter` is its peft
    wrapper) spread over the ranks by `parallel` ("ddp" or "fsdp"); None, or a world of
    one, keeps it whole and local: every method is then what one process does."""

    def __init__(self, model: Any, parallel: str | None = None, adapter: Any = None) -> None:
        self.model = model
        self.adapter = adapter
        self.mode = parallel if parallel and dist.world_size() > 1 else "local"
        self.world = 1 if self.mode == "local" else dist.world_size()
        self.root: nn.Module = _Root(model, clone_views=self.mode == "fsdp")
        self._copy = None
        self._dropout = [  # LoRA's dropout: r1lab runs models in eval mode otherwise
            m
            for name, m in model.named_modules()
            if ".lora_dropout." in name and isinstance(m, nn.Dropout) and m.p > 0
        ]
        if self.mode == "ddp":
            self.root = _ddp(self.root, model)
        elif self.mode == "fsdp":
            self._copy = copy.deepcopy(model).eval().requires_grad_(False)
            _fsdp(self.root, model)

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(model, *args, **kwargs)` through the wrapper: a pass whose gradients sync."""
        return self.root(fn, *args, **kwargs)

    @property
    def weights(self) -> Any:
        """A plain model holding the current, whole weights (for passes without gradients)."""
        return self._copy if self._copy is not None else self.model

    @property
    def saved(self) -> Any:
        """What a checkpoint saves: the LoRA adapter (its peft model), else the whole model."""
        return self.adapter if self.adapter is not None else self.weights

    @property
    def loss_scale(self) -> float:
        """DDP and FSDP2 average gradients over the ranks; a loss normalised by the whole
        batch is scaled up by the world size first, so the average is the sum."""
        return float(self.world)

    @contextmanager
    def training_pass(self, last: bool = True) -> Iterator[None]:
        """One forward/backward; gradients sync across ranks on the `last` of a step's
        passes only (accumulation), and LoRA dropout is on for it."""
        if self.mode == "ddp" and not last:
            context: Any = self.root.no_sync()
        else:
            context = nullcontext()
        if self.mode == "fsdp":
            self.root.set_requires_gradient_sync(last)
        for module in self._dropout:
            module.train()
        try:
            with context:
                yield
        finally:
            for module in self._dropout:
                module.eval()

    def share(self, count: int) -> range:
        """This rank's contiguous part of `count` items (all of them, locally)."""
        return range(count) if self.mode == "local" else dist.share(count)

    def part(self, items: Any) -> Any:
        """This rank's contiguous slice of `items` (a sequence or a tensor)."""
        mine = self.share(len(items))
        return items[mine.start : mine.stop]

    def lockstep(self, parts: Sequence[T], filler: T) -> list[tuple[T, bool]]:
        """`parts` padded with zero-weight `filler` passes to the count every rank runs."""
        if self.mode == "local":
            return [(part, True) for part in parts]
        return dist.lockstep(parts, filler)

    def total(self, values: dict[str, float]) -> dict[str, float]:
        """Statistics summed over the ranks."""
        return values if self.mode == "local" else dist.sum_over_ranks(values)

    def gather_rows(self, local: torch.Tensor, count: int) -> torch.Tensor:
        """Each rank's rows of its `share(count)`, stacked: [count, ...] on every rank."""
        return local if self.mode == "local" else dist.gather_rows(local, count)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def clip(self, max_norm: float) -> float:
        """Clip the gradients' global norm to `max_norm`; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(self.trainable(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def sync(self) -> None:
        """After an optimizer step: FSDP2 gathers the new shards into the whole copy."""
        if self._copy is None:
            return
        for whole, part in zip(self._copy.parameters(), self.model.parameters(), strict=True):
            whole.copy_(part.full_tensor())

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's part of a checkpoint (a collective under FSDP2: the full state
        lands on rank 0), with the parallel mode it belongs to."""
        if self.mode != "fsdp":
            return {"optimizer": optimizer.state_dict(), "parallel": self.mode}
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(self.root, optimizer, options=options)
        return {"optimizer": state, "parallel": self.mode}

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: dict[str, Any], where: Any
    ) -> None:
        """Restore `optimizer_state`; a checkpoint of another parallel mode is refused."""
        saved = state.get("parallel", "local")
        if saved != self.mode:
            from r1lab.core.errors import UserError

            raise UserError(
                f"--resume: {where} was trained with parallel mode {saved!r}, this run uses "
                f"{self.mode!r}; set model.parallel to {saved} (or start a new run)"
            )
        if self.mode != "fsdp":
            optimizer.load_state_dict(state["optimizer"])
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.root, optimizer, state["optimizer"], options=options)


def _ddp(root: nn.Module, model: Any) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(root, device_ids=ids)


def _fsdp(root: nn.Module, model: Any) -> None:
    """Shard each decoder layer as its own unit, the rest (embedding = tied head, final norm)
    as the root's: gathered for a layer's pass (or the whole pass), resharded after it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)


def load_trainable(config: ModelConfig, checkpoint: Path | None) -> tuple[Any, Any, Any]:
    """(model, LoRA adapter or None, tokenizer) of a trainer on this rank's device.

    A full fine-tune resumes from the checkpoint's weights; a LoRA run loads its base again
    and the checkpoint's adapter (or a fresh one) on top, trainable.
    """
    spec = str(checkpoint) if checkpoint is not None and config.lora is None else config.spec
    with dist.main_first():  # the first load of a built-in model converts it once
        model, tokenizer = load_model(spec, config.dtype)
    adapter = None
    if config.lora is not None:
        if checkpoint is not None:
            adapter = resume(model, checkpoint)
        else:
            adapter = attach(model, config.lora, config.spec)
        model = adapter.get_base_model()
    model.to(dist.device(config.device))
    slow = advice.slow_bf16(config.compute_dtype, next(model.parameters()).device.type,
                            cpu_flags())
    if slow:
        warn(slow)
    return model, adapter, tokenizer


def cpu_flags() -> str:
    """This machine's CPU flags (/proc/cpuinfo, Linux); "" where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1] for line in info if line.startswith("flags")), "")
    except OSError:
        return ""
