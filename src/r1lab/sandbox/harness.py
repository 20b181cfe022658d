"""Tests of a program, and how their runs become one verdict per test.

Two shapes, the two that code datasets use:

- **asserts** (HumanEval, MBPP): statements run after the program in its namespace, each
  failing by raising. All of a program's asserts run in one execution under a small harness
  that reports each test's verdict on stdout, tagged with a random per-run token; a test that
  never reports (the program exited early, was killed at the deadline, ran out of memory)
  takes the verdict of the run. The program, its tests and the token arrive on stdin, which
  the harness reads and replaces with /dev/null before any program code runs, so the tests
  cannot be read from a file and `os._exit(0)` or `sys.exit(0)` before the tests is a fail,
  not a pass. What a harness in the program's own interpreter cannot stop (neither can any
  HumanEval or MBPP runner) is a program that deliberately inspects its caller's frames to
  find the expected values or the token; stdin/stdout tests have no such gap.
- **stdio** (APPS, LiveCodeBench, Codeforces): the program runs once per case with the case's
  input on stdin; its stdout is compared with the expected output *outside* the sandbox,
  line by line with trailing whitespace ignored.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from r1lab.sandbox.config import VERDICTS
from r1lab.sandbox.process import Job, Run

HARNESS = r"""
import errno, json, os, socket, sys, traceback

BLOCKED = (errno.EPERM, errno.EACCES, errno.EROFS, errno.ENETUNREACH)


def verdict(error):
    if isinstance(error, (AssertionError, SystemExit)):
        return "failed"
    if isinstance(error, MemoryError):
        return "memory"
    if isinstance(error, (socket.gaierror, BlockingIOError)):
        return "blocked"
    if isinstance(error, OSError) and error.errno in BLOCKED:
        return "blocked"
    return "crashed"


def main():
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    token, tests = job["token"], job["tests"]

    def report(i, result):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os.write(1, f"\n{token} {i} {result}\n".encode())

    namespace = {"__name__": "__solution__"}
    try:
        exec(compile(job["program"], "solution.py", "exec"), namespace)
    except BaseException as error:
        traceback.print_exc()
        for i in range(len(tests)):
            report(i, verdict(error))
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}.py", "exec"), namespace)
        except BaseException as error:
            traceback.print_exc()
            report(i, verdict(error))
        else:
            report(i, "passed")


main()
"""


@dataclass(frozen=True)
class Tests:
    """A program's tests: assert statements (with `setup` code run before the program, e.g.
    imports the tests need) and/or (input, expected output) pairs."""

    __test__ = False  # not a pytest test class, despite the name

    asserts: tuple[str, ...] = ()
    stdio: tuple[tuple[str, str], ...] = ()
    setup: str = ""

    def __len__(self) -> int:
        return len(self.asserts) + len(self.stdio)


def same_output(got: str, expected: str) -> bool:
    """Equal line by line, trailing whitespace and trailing blank lines ignored.

    >>> same_output("3 \\n4\\n\\n", "3\\n4"), same_output("3 4", "3\\n4")
    (True, False)
    """

    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return lines(got) == lines(expected)


def _reported(run: Run, token: str, count: int) -> list[str]:
    """Per-test verdicts from the harness's tagged lines; the run's verdict for the rest."""
    found: dict[int, str] = {}
    for line in run.stdout.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == token and parts[1].isdigit() and parts[2] in VERDICTS:
            found.setdefault(int(parts[1]), parts[2])
    fallback = "failed" if run.verdict == "passed" else run.verdict  # exited before reporting
    return [found.get(i, fallback) for i in range(count)]


def _stdio_verdict(run: Run, expected: str) -> str:
    if run.verdict != "passed":
        return run.verdict
    return "passed" if same_output(run.stdout, expected) else "failed"


def plan(program: str, tests: Tests) -> tuple[list[Job], Callable[[Sequence[Run]], list[str]]]:
    """The executions that test `program`, and how their runs become one verdict per test
    (asserts first, then stdio cases, in order)."""
    jobs: list[Job] = []
    token = secrets.token_hex(16)
    if tests.asserts:
        source = f"{tests.setup}\n{program}" if tests.setup else program
        payload = {"token": token, "program": source, "tests": list(tests.asserts)}
        jobs.append(Job(HARNESS, json.dumps(payload).encode()))
    jobs += [Job(program, given.encode()) for given, _ in tests.stdio]

    def verdicts(runs: Sequence[Run]) -> list[str]:
        out: list[str] = []
        rest = list(runs)
        if tests.asserts:
            out += _reported(rest.pop(0), token, len(tests.asserts))
        return out + [
            _stdio_verdict(r, want) for r, (_, want) in zip(rest, tests.stdio, strict=True)
        ]

    return jobs, verdicts
