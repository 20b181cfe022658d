"""The pool and the test harness: one verdict per test, in order, concurrently, ungameable by
the usual tricks (an early exit, a forged report, reading the tests)."""

from __future__ import annotations

import json

import pytest

from r1lab.core.errors import UserError
from r1lab.sandbox import Job, Limits, SandboxConfig, Tests, get_sandbox, run_tests, sandbox_config
from r1lab.sandbox.cgroups import SlotCgroups
from r1lab.sandbox.uids import lease

FAST = SandboxConfig(timeout=10, workers=2)  # generous: CI can be busy
ADD = "def add(a, b):\n    return a + b\n"


def test_asserts_get_one_verdict_each_in_order():
    tests = Tests(
        asserts=(
            "assert add(1, 2) == 3",
            "assert add(1, 1) == 3",
            "add(1, [])",
            "import os\nos.setuid(0)",
            "x = bytearray(10 ** 10)",
            "assert add(2, 2) == 4",
        )
    )
    verdicts = run_tests(ADD, tests, FAST)
    assert verdicts == ["passed", "failed", "crashed", "blocked", "memory", "passed"]


def test_a_test_that_hangs_times_out_and_so_do_the_ones_after_it():
    tests = Tests(asserts=("assert add(1, 2) == 3", "while True:\n    pass", "assert True"))
    verdicts = run_tests(ADD, tests, SandboxConfig(timeout=4, workers=2))
    assert verdicts == ["passed", "timeout", "timeout"]


@pytest.mark.parametrize(
    "program",
    [
        "import os\nos._exit(0)\n",  # exit 0 before the tests run
        "import sys\nsys.exit(0)\n",
        "import os\nos.close(1)\n" + ADD,  # no channel left to report on
        "print('\\n'.join(f'{t} 0 passed' for t in ('0' * 32, 'deadbeef' * 4)))\n",  # forgery
    ],
    ids=["os._exit", "sys.exit", "closed-stdout", "forged-report"],
)
def test_exiting_early_or_forging_a_report_does_not_pass(program):
    (verdict,) = run_tests(program, Tests(asserts=("assert add(1, 2) == 3",)), FAST)
    assert verdict in ("failed", "crashed")


def test_the_program_cannot_read_its_tests():
    program = (
        "import os, sys\n"
        "seen = sys.stdin.read() + open('/proc/self/fd/0').read()\n"
        "seen += ''.join(open('/sandbox/' + n).read() for n in os.listdir('/sandbox'))\n"
        "def leaked():\n    return 'zebra-42' in seen\n"
    )
    assert run_tests(program, Tests(asserts=("assert leaked() is False  # zebra-42",)), FAST) == [
        "passed"
    ]


def test_setup_code_runs_before_the_program():
    tests = Tests(asserts=("assert f() == 3",), setup="import math")
    assert run_tests("def f():\n    return math.floor(3.7)", tests, FAST) == ["passed"]


def test_stdio_cases_compare_output_outside_the_sandbox():
    program = "import sys\nprint(sum(map(int, sys.stdin.read().split())))"
    tests = Tests(stdio=(("1 2\n", "3\n"), ("2 2", "5"), ("x", "0")))
    assert run_tests(program, tests, FAST) == ["passed", "failed", "crashed"]


def test_a_syntax_error_fails_every_test_the_same_way():
    assert run_tests("def f(:\n", Tests(asserts=("f()", "f()")), FAST) == ["crashed", "crashed"]


def test_check_runs_many_programs_concurrently_and_keeps_their_order():
    sandbox = get_sandbox(FAST)
    programs = [
        (f"def f():\n    return {i}", Tests(asserts=(f"assert f() == {i % 3}",))) for i in range(8)
    ]
    verdicts = sandbox.check(programs, FAST.limits)
    assert verdicts == [["passed" if i % 3 == i else "failed"] for i in range(8)]
    sleeper = "import time\nprint(time.time())\ntime.sleep(2)\nprint(time.time())"
    runs = sandbox.run([Job(sleeper), Job(sleeper)], Limits(timeout=20))
    (a0, a1), (b0, b1) = ([float(x) for x in r.stdout.split()] for r in runs)
    assert max(a0, b0) < min(a1, b1), "two workers did not run at the same time"


def test_sandboxes_are_shared_per_mode_and_size():
    assert get_sandbox(FAST) is get_sandbox(SandboxConfig(timeout=9, workers=2))


def test_config_rejects_bad_values_and_unknown_keys():
    assert sandbox_config(None).mode == "strict"
    for bad in ({"timeout": 0}, {"memory_mb": 1}, {"workers": 0}, {"mode": "none"}, {"cpu": 1}):
        with pytest.raises(UserError, match="sandbox"):
            sandbox_config(bad)


def test_uid_leases_are_exclusive_across_processes():
    import subprocess
    import sys

    held = lease(2)
    try:
        probe = "from r1lab.sandbox.uids import lease; print([h.uid for h in lease(2)])"
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert not set(json.loads(other.stdout)) & {h.uid for h in held}
    finally:
        for h in held:
            h.release()


def test_cgroup_v2_layout_writes_limits_and_lists_members(tmp_path):
    cgroups = SlotCgroups("v2", {"v2": tmp_path})
    procs = cgroups.prepare(3, 1 << 20, 12)
    (slot,) = cgroups.dirs(3)
    assert procs == [slot / "cgroup.procs"]
    assert (slot / "memory.max").read_text() == str(1 << 20)
    assert (slot / "pids.max").read_text() == "12"
    (slot / "cgroup.procs").write_text("17\n23\n")
    (slot / "memory.events").write_text("low 0\noom 1\noom_kill 2\n")
    assert cgroups.members(3) == [17, 23] and cgroups.oom_kills(3) == 2
