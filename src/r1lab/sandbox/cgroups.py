"""One memory + pids cgroup per sandbox worker slot, where the host lets us create them.

Per-process rlimits cannot cap a process *tree*: under RLIMIT_AS a program that forks twelve
children holding 200 MB each uses 2.4 GB. A cgroup caps the tree's total memory (the private
/tmp's pages included) and its task count, and says afterwards whether its OOM killer fired,
which is the `memory` verdict's evidence. It also lists every process still in it, so "nothing
is left running" is one file read.

Layout: cgroup v1 (separate `memory` and `pids` hierarchies, as on this project's machines)
or v2 (one unified hierarchy, when our own cgroup delegates both controllers). Each slot gets
`r1lab-sandbox-<pid>-<slot>` under the cgroup this process lives in: the pid keeps two r1lab
processes on one host apart, and a dead process's leftovers are removed by the next one.
When neither layout is writable (not root, a container) there is no cgroup layer and the
limits fall back to rlimits alone; `describe()` says which.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

PREFIX = "r1lab-sandbox-"
_NAME = re.compile(rf"{PREFIX}(\d+)-\d+")


def own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """This process's cgroup path per controller ("" is the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


class SlotCgroups:
    """The cgroup directories of one process's worker slots, in v1 or v2 layout.

    `root` is the cgroup file system's mount point (a directory tree in tests).
    """

    def __init__(self, kind: str, bases: dict[str, Path]) -> None:
        self.kind, self.bases = kind, bases

    @classmethod
    def detect(cls, root: str | Path = "/sys/fs/cgroup") -> SlotCgroups | None:
        """The writable layout of this host, or None (then rlimits are the only limits)."""
        root = Path(root)
        try:
            own = own_cgroups()
            if (root / "cgroup.controllers").exists():  # pure v2
                base = root / own[""].lstrip("/")
                delegated = set((base / "cgroup.subtree_control").read_text().split())
                found = cls("v2", {"v2": base}) if {"memory", "pids"} <= delegated else None
            elif (root / "memory").is_dir() and (root / "pids").is_dir():
                found = cls(
                    "v1", {c: root / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids")}
                )
            else:
                return None
            if found is not None:
                found.remove_stale()
                found.prepare(0, 64 << 20, 8)  # a probe: creating and limiting one must work
            return found
        except (OSError, KeyError, ValueError):
            return None

    def dirs(self, slot: int) -> list[Path]:
        return [base / f"{PREFIX}{os.getpid()}-{slot}" for base in self.bases.values()]

    def prepare(self, slot: int, memory_bytes: int, tasks: int) -> list[Path]:
        """Create (or reset) the slot's cgroups with these limits; their `cgroup.procs` files.

        Whoever writes its pid into each file joins the slot; children follow by themselves.
        """
        dirs = self.dirs(slot)
        for d in dirs:
            d.mkdir(exist_ok=True)
        if self.kind == "v1":
            memory, pids = dirs
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(tasks))
        else:
            (only,) = dirs
            (only / "memory.max").write_text(str(memory_bytes))
            (only / "memory.swap.max").write_text("0")
            (only / "pids.max").write_text(str(tasks))
        return [d / "cgroup.procs" for d in dirs]

    def oom_kills(self, slot: int) -> int:
        """How often the slot's OOM killer has fired since it was created."""
        events = self.dirs(slot)[0] / (
            "memory.oom_control" if self.kind == "v1" else "memory.events"
        )
        for line in events.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def members(self, slot: int) -> list[int]:
        """Pids still in the slot's cgroups: after a run, anything here is a leftover."""
        pids: set[int] = set()
        for d in self.dirs(slot):
            if d.exists():  # a slot that never ran has no cgroup yet
                pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return sorted(pids)

    def remove(self, slots: range) -> None:
        """Remove this process's slot cgroups (they must be empty: the runs are over)."""
        for slot in slots:
            for d in self.dirs(slot):
                with contextlib.suppress(OSError):
                    d.rmdir()

    def remove_stale(self) -> None:
        """Remove slot cgroups of r1lab processes that no longer exist."""
        for base in self.bases.values():
            for d in base.glob(f"{PREFIX}*"):
                match = _NAME.fullmatch(d.name)
                if match and not Path(f"/proc/{match.group(1)}").exists():
                    with contextlib.suppress(OSError):  # members left: still being killed
                        d.rmdir()
