"""Several processes, one run: what every stage reads about torch.distributed.

`torchrun --nproc-per-node N -m r1lab train RECIPE` starts N copies of r1lab, each with
`RANK`, `WORLD_SIZE`, `LOCAL_RANK` and a rendezvous address in its environment. This module
is the only place that reads them. Without torchrun the world has one process and every
function here is what one process would do (no process group, no communication), so a
single-process run takes exactly the code path it always took.

The rules the stages follow, all through this module:
- every rank holds the whole step's data (the same seeded draw, the same global batch) and
  works on its contiguous `share` of it; `gather` hands each rank's results to every rank in
  rank order, so the merged result is the single process's list, in its order;
- a normaliser is computed from the whole batch, never from a rank's share, so the summed
  gradient is the one a single process computes (`sum_over_ranks` for the statistics);
- under DDP or FSDP2 every rank must run the same number of forward/backward passes:
  `lockstep` pads a rank's list of micro-batches with zero-weight passes;
- rank 0 alone writes files; `on_main` runs a function there and hands its result, or its
  `UserError`, to every rank, so a bad input stops every rank with the same one-line error.

The process group starts on first use, with gloo for CPU tensors and, when a GPU is visible,
NCCL for CUDA tensors (one group, dispatched by the tensor's device); `R1LAB_DIST_TIMEOUT`
(seconds, default 1800) bounds how long a rank waits for the others. Reading the rank needs
no torch import, so the CLI asks it before loading anything.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from r1lab.core.errors import UserError
from r1lab.core.models import pick_device

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def world_size() -> int:
    """How many processes run this job (1 without torchrun), from torchrun's environment."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among them (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine: the GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes files and shows progress."""
    return rank() == 0


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors when a GPU is visible."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def start() -> bool:
    """Join the process group torchrun set up (once); False in a world of one."""
    import torch.distributed as dist

    if world_size() == 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        text = os.environ.get("R1LAB_DIST_TIMEOUT", "1800")
        try:
            seconds = float(text)
        except ValueError:
            message = f"R1LAB_DIST_TIMEOUT must be a number of seconds, got {text!r}"
            raise UserError(message) from None
        dist.init_process_group(backend(), timeout=timedelta(seconds=seconds))
    return True


def stop() -> None:
    """Leave the process group (at the end of a command under torchrun); a command that
    never loaded torch does not load it for this."""
    if world_size() == 1 or "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device(name: str = "auto") -> torch.device:
    """This rank's device for a config's `device` (auto, cpu, cuda, cuda:N).

    One process, one device: under torchrun, rank r on a machine takes `cuda:LOCAL_RANK`, so a
    GPU named by index, or fewer GPUs than processes on a machine, is an error.
    """
    import torch

    picked = pick_device(name)
    if world_size() == 1:
        return picked
    problems = device_problems(name, local_world_size())
    if problems:
        raise UserError(problems[0])
    if picked.type == "cuda":
        picked = torch.device("cuda", local_rank())
        torch.cuda.set_device(picked)
    start()
    return picked


def local_world_size() -> int:
    """How many of the processes run on this machine (torchrun's --nproc-per-node)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def device_problems(name: str, per_machine: int) -> list[str]:
    """What keeps `per_machine` processes on this machine from each using its own `name`
    device with a backend for it (empty: nothing)."""
    import torch
    import torch.distributed as dist

    if per_machine <= 1:
        return []
    if name.startswith("cuda:"):
        return [
            f"device {name!r}: under torchrun each rank takes cuda:LOCAL_RANK; set the device "
            "to auto or cuda (torchrun's --nproc-per-node sets how many GPUs are used)"
        ]
    if not (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
        return []  # CPU ranks: gloo, any number of processes
    if torch.cuda.device_count() < per_machine:
        return [
            f"{per_machine} processes on this machine but {torch.cuda.device_count()} GPUs: one "
            "device per rank (lower --nproc-per-node, or set the device to cpu)"
        ]
    if not dist.is_nccl_available():
        return ["this torch build has no NCCL backend for the GPUs: set the device to cpu (gloo)"]
    return []


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written what the others read next)."""
    if start():
        import torch.distributed as dist

        dist.barrier()


def gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not start():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if not start():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on rank 0 only (it writes files) and return its result on every rank.

    A `UserError` there is raised on every rank, so all stop with the same line; any other
    exception ends rank 0, and torchrun then stops the others.
    """
    if world_size() == 1:
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except UserError as err:
            error = str(err)
    result, error = broadcast((result, error))
    if error is not None:
        raise UserError(error)
    return result  # type: ignore[return-value]


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block, then the others do: a first model load converts and caches the
    built-in model once instead of in every rank at the same time."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def share(count: int, ranks: int | None = None, index: int | None = None) -> range:
    """This rank's contiguous part of `count` items; parts differ in size by at most one.

    >>> [list(share(5, 2, r)) for r in range(2)]
    [[0, 1], [2, 3, 4]]
    """
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    return range(count * index // ranks, count * (index + 1) // ranks)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (float64), the same dict on every rank."""
    if not values or not start():
        return values
    import torch
    import torch.distributed as dist

    total = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(total)
    return dict(zip(values, total.tolist(), strict=True))


def most(value: int) -> int:
    """The largest of every rank's `value`."""
    if not start():
        return value
    import torch
    import torch.distributed as dist

    box = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box)


def lockstep(parts: Sequence[T], filler: T) -> list[tuple[T, bool]]:
    """`parts` as (part, live) pairs, padded with (filler, False) to the most any rank has.

    A replicated or sharded model communicates inside every forward/backward pass, so a rank
    with fewer micro-batches runs zero-weight passes on `filler` until the others are done.
    """
    padded = [(part, True) for part in parts]
    padded += [(filler, False)] * (most(len(parts)) - len(parts))
    return padded


def gather_rows(local: torch.Tensor, count: int) -> torch.Tensor:
    """The rows each rank computed for its `share(count)`, stacked in order: [count, ...]."""
    if not start():
        return local
    import torch
    import torch.distributed as dist

    width = math.ceil(count / world_size())
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    rows = [parts[r][: len(share(count, index=r))] for r in range(world_size())]
    return torch.cat(rows)


def check_world(state: dict[str, Any], where: Any) -> None:
    """A checkpoint resumes on as many ranks as wrote it, with the same parallel mode.

    Each rank's sampling RNG and (with FSDP2) the optimizer's layout belong to the world that
    saved them, so another world size would not continue the run exactly.
    """
    saved = state.get("world_size", 1)
    if saved != world_size():
        launch = "without torchrun" if saved == 1 else f"with torchrun --nproc-per-node {saved}"
        raise UserError(
            f"--resume: {where} was written by {saved} process(es), this run has "
            f"{world_size()}; resume it {launch} (or start a new run under another name)"
        )
