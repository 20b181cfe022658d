"""One rank of a distributed test launch: `torchrun --nproc-per-node 2 dist_worker.py LAUNCH OUT`.

Runs the cases of `dist_cases.LAUNCHES[LAUNCH]` in order into OUT (rank 0 writes the run
directories, as r1lab does), and checks `train.dist.lockstep` with unequal part counts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from dist_cases import LAUNCHES  # noqa: E402

from r1lab.train import dist  # noqa: E402


def check_lockstep() -> None:
    parts = list(range(dist.rank() + 1))  # rank 0 has one part, rank 1 two
    padded = dist.lockstep(parts, -1)
    assert len(padded) == dist.world_size(), padded
    assert [live for _, live in padded].count(True) == len(parts), padded


def main(launch: str, out: Path) -> None:
    torch.set_num_threads(1)
    dist.start()
    check_lockstep()
    for case in LAUNCHES[launch]:
        case(out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
