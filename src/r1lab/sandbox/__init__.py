"""Run untrusted, model-written Python against tests: isolated, limited, one verdict per test.

    from r1lab.sandbox import SandboxConfig, Tests, get_sandbox, run_tests
    run_tests("def f(x):\\n    return x + 1", Tests(asserts=("assert f(1) == 2",)))  # ['passed']
    sandbox = get_sandbox(SandboxConfig(timeout=2))
    sandbox.check([(program, tests), ...], limits)  # all executions across the pool at once

Modes (`config.MODES`): `strict` (the default: bubblewrap namespaces, a uid per worker,
seccomp, rlimits, cgroups; `isolation` says what each layer stops) refuses with
`SandboxUnavailable` when it cannot be set up; `unsafe-subprocess` runs without isolation,
only when named, with a `SandboxWarning`. No torch, no r1lab package above `core`.
"""

from r1lab.sandbox.config import (
    MODES,
    VERDICTS,
    Limits,
    SandboxConfig,
    SandboxUnavailable,
    SandboxWarning,
    sandbox_config,
)
from r1lab.sandbox.harness import Tests, same_output
from r1lab.sandbox.pool import Sandbox, get_sandbox, run_tests
from r1lab.sandbox.process import Job, Run

__all__ = [
    "MODES",
    "VERDICTS",
    "Job",
    "Limits",
    "Run",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "SandboxWarning",
    "Tests",
    "get_sandbox",
    "run_tests",
    "same_output",
    "sandbox_config",
]
