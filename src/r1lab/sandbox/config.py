"""What a sandbox run may use, how strictly it is isolated, and the verdicts it gives.

One record, `SandboxConfig`, is what a user writes under a code task's `sandbox:` option
(`{mode: strict, timeout: 2, workers: 2}`): the isolation mode, the pool size and the
`Limits` of every execution, checked when the task is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from r1lab.core.config import choice, from_dict
from r1lab.core.errors import UserError

VERDICTS = ("passed", "failed", "timeout", "memory", "crashed", "blocked")
"""One per test: it passed; it ran and was wrong (assertion, wrong output, non-zero exit, too
much output); it ran out of wall or CPU time; it ran out of memory; it died of an exception or
a signal; it was stopped by the sandbox (a denied system call or a refused permission)."""

STRICT, UNSAFE = "strict", "unsafe-subprocess"
MODES = (STRICT, UNSAFE)
"""`strict`: bubblewrap namespaces, a per-worker uid, seccomp, rlimits and cgroups; refuses to
run when any of it cannot be set up. `unsafe-subprocess`: a plain child process with rlimits,
a clean environment and a temporary working directory, NOT isolated: network, your files and
your processes are reachable. Only ever by name, with a warning each run."""


class SandboxUnavailable(UserError):
    """The strict isolation layer cannot be set up on this host (the message says why)."""


class SandboxWarning(UserWarning):
    """Model-written code runs without isolation (`unsafe-subprocess`)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution (one program run against its tests).

    `timeout` is wall-clock seconds; the CPU limit is derived from it (ceil + 1 s), so a busy
    loop dies by SIGXCPU even if the wall clock were fooled. `memory_mb` is the address space
    of each process and, where cgroups exist, the whole process tree's memory (plus the
    private /tmp, `tmp_mb`, whose pages count too). `processes` counts threads as well.
    `output_bytes` caps stdout (stderr gets 64 KiB): more kills the program.
    """

    timeout: float = 5.0
    memory_mb: int = 512
    processes: int = 64
    file_size_mb: int = 16
    open_files: int = 256
    output_bytes: int = 1 << 20
    tmp_mb: int = 64

    @property
    def cpu_seconds(self) -> int:
        return int(-(-self.timeout // 1)) + 1

    def check(self, where: str = "sandbox") -> None:
        if not 0 < self.timeout <= 3600:
            raise UserError(f"{where}.timeout must be in (0, 3600] seconds, got {self.timeout}")
        lows = {"memory_mb": 32, "processes": 1, "file_size_mb": 1, "open_files": 16}
        lows |= {"output_bytes": 1024, "tmp_mb": 1}
        for name, low in lows.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{where}.{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class SandboxConfig(Limits):
    """The `sandbox:` option of a code task: mode, pool size (default: one worker per core
    this process may run on) and the limits of each execution."""

    mode: str = STRICT
    workers: int | None = None

    @property
    def limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})

    @property
    def pool_size(self) -> int:
        return self.workers or len(os.sched_getaffinity(0)) or 1

    def check(self, where: str = "sandbox") -> None:
        super().check(where)
        choice(f"{where}.mode", self.mode, MODES)
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise UserError(f"{where}.workers must be an integer >= 1, got {self.workers!r}")


def sandbox_config(options: Any, where: str = "sandbox") -> SandboxConfig:
    """A checked `SandboxConfig` from a task's `sandbox:` mapping (None: the defaults).

    >>> sandbox_config({"timeout": 2, "workers": 1}).limits.cpu_seconds
    3
    >>> sandbox_config({"mode": "off"})
    Traceback (most recent call last):
    ...
    r1lab.core.errors.UserError: sandbox.mode: unknown value 'off'; valid: strict, unsafe-subprocess
    """
    config = from_dict(SandboxConfig, options or {}, where)
    config.check(where)
    return config
