"""The worker pool: many programs' tests at once, one worker slot per core.

Executions are child processes, so the pool is threads (each blocked in its child's
`selectors` loop, the GIL free); each thread holds a worker slot (its own uid and cgroup in
strict mode) for one execution at a time. Grading a GRPO step's 32 completions, or an
evaluation batch, is one `check` call: every test run of every program is queued at once.
Sandboxes are cached per (mode, workers) for the life of the process, so the self-test and
the uid reservations happen once per run, and so does the weaker mode's warning.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from r1lab.sandbox.config import STRICT, Limits, SandboxConfig
from r1lab.sandbox.harness import Tests, plan
from r1lab.sandbox.isolation import StrictLayer, UnsafeLayer
from r1lab.sandbox.process import Job, Run


class Sandbox:
    """A pool of `workers` slots over one isolation layer (`mode`, see `config.MODES`)."""

    def __init__(self, mode: str = STRICT, workers: int = 1) -> None:
        self.mode, self.workers = mode, workers
        self.layer = StrictLayer(workers) if mode == STRICT else UnsafeLayer(workers)
        self.slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(workers):
            self.slots.put(slot)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="r1lab-sandbox")

    def describe(self) -> str:
        return f"{self.layer.describe()}, {self.workers} workers"

    def _run_one(self, job: Job, limits: Limits) -> Run:
        slot = self.slots.get()
        try:
            return self.layer.run(job, slot, limits)
        finally:
            self.slots.put(slot)

    def run(self, jobs: Sequence[Job], limits: Limits) -> list[Run]:
        """Run every job (concurrently, up to `workers` at a time); runs in job order."""
        return list(self.executor.map(lambda job: self._run_one(job, limits), jobs))

    def check(self, programs: Sequence[tuple[str, Tests]], limits: Limits) -> list[list[str]]:
        """One verdict per test for each (program, tests) pair; all executions queued at once."""
        plans = [plan(program, tests) for program, tests in programs]
        runs = self.run([job for jobs, _ in plans for job in jobs], limits)
        out, at = [], 0
        for jobs, verdicts in plans:
            out.append(verdicts(runs[at : at + len(jobs)]))
            at += len(jobs)
        return out

    def close(self) -> None:
        self.executor.shutdown()
        self.layer.close()


_SANDBOXES: dict[tuple[str, int], Sandbox] = {}
_LOCK = threading.Lock()


def get_sandbox(config: SandboxConfig | None = None) -> Sandbox:
    """The process's sandbox for `config`'s mode and pool size, set up (and self-tested) on
    first use; raises `SandboxUnavailable` when strict isolation cannot be set up."""
    config = config or SandboxConfig()
    key = (config.mode, config.pool_size)
    with _LOCK:
        if key not in _SANDBOXES:
            _SANDBOXES[key] = Sandbox(*key)
        return _SANDBOXES[key]


@atexit.register
def _close_all() -> None:
    """Remove this process's cgroups and release its uids when it exits."""
    for sandbox in _SANDBOXES.values():
        sandbox.close()
    _SANDBOXES.clear()


def run_tests(program: str, tests: Tests, config: SandboxConfig | None = None) -> list[str]:
    """One verdict per test of `program` (see `config.VERDICTS`), in the sandbox of `config`.

    >>> run_tests("def add(a, b):\\n    return a + b", Tests(asserts=("assert add(1, 2) == 3",)))
    ['passed']
    """
    config = config or SandboxConfig()
    return get_sandbox(config).check([(program, tests)], config.limits)[0]
