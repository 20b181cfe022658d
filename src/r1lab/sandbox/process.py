"""One execution from the outside: start it, feed it, watch the clock and the output, stop it,
and say what happened.

Standard input is a memfd (no writer thread, no deadlock on a full pipe); stdout and stderr are
pipes drained by one `selectors` loop that enforces the wall-clock deadline and the byte caps.
Whatever stops a program (deadline, output cap) kills its whole process group at once; the
isolation layer then makes sure nothing else of it survives.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

from r1lab.sandbox.layout import STDERR_BYTES

TIMEOUT, OUTPUT, MEMORY = "timeout", "output", "memory"
NOTES = {
    TIMEOUT: "[sandbox] wall-clock timeout: the process tree was killed",
    OUTPUT: "[sandbox] output limit exceeded: the process tree was killed",
    MEMORY: "[sandbox] memory limit: the cgroup's OOM killer fired",
}
BLOCKED_MARKERS = (
    "PermissionError",
    "[Errno 1]",  # EPERM: a denied system call
    "[Errno 13]",  # EACCES
    "[Errno 30]",  # EROFS: a read-only mount
    "[Errno 101]",  # ENETUNREACH
    "gaierror",  # no name resolution without a network
    "BlockingIOError",  # fork or thread creation over the process limit
)


@dataclass(frozen=True)
class Job:
    """One execution: a Python source file (run as `__main__`) and its standard input."""

    source: str
    stdin: bytes = b""


@dataclass(frozen=True)
class Run:
    """What one execution did. `stopped` says why the sandbox ended it, if it did."""

    verdict: str
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    stopped: str | None = None


def memfd(name: str, data: bytes) -> int:
    """An inheritable, rewound in-memory file holding `data` (a program's stdin, a filter)."""
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group our child leads (it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Collected:
    stdout: bytes
    stderr: bytes
    stopped: str | None
    info: bytes


def collect(
    proc: subprocess.Popen, deadline: float, stdout_cap: int, info_fd: int | None
) -> Collected:
    """Read stdout/stderr (and bwrap's info pipe) until both close, the deadline passes or a
    cap is exceeded; in the last two cases the process group is killed."""
    caps = {proc.stdout: stdout_cap, proc.stderr: STDERR_BYTES}
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    info, stopped = bytearray(), None
    with selectors.DefaultSelector() as selector:
        for stream in buffers:
            selector.register(stream, selectors.EVENT_READ)
        if info_fd is not None:
            selector.register(info_fd, selectors.EVENT_READ)
        open_streams = 2
        while open_streams and stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = TIMEOUT
                break
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if key.fileobj is info_fd:
                    info += chunk
                    if not chunk:
                        selector.unregister(info_fd)
                    continue
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffer = buffers[key.fileobj]
                buffer += chunk
                if len(buffer) > caps[key.fileobj]:
                    del buffer[caps[key.fileobj] :]
                    stopped = OUTPUT
    if stopped is not None:
        kill_group(proc)
    proc.stdout.close()
    proc.stderr.close()
    return Collected(bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr]), stopped, bytes(info))


def classify(exit_code: int, signal_number: int | None, stderr: str, stopped: str | None) -> str:
    """The verdict of a finished execution (see `config.VERDICTS`).

    The sandbox's own reasons come first; then the exit: 0 passes, SIGXCPU is a timeout,
    SIGSYS a seccomp kill; otherwise the last line of the traceback decides. "blocked" is a
    label for reports and rewards (none of the security depends on it): a hidden file is
    simply absent, so reading one is an ordinary FileNotFoundError, "crashed".

    >>> classify(1, None, "Traceback ...\\nAssertionError", None)
    'failed'
    >>> classify(1, None, "Traceback ...\\nPermissionError: [Errno 1] Not permitted", None)
    'blocked'
    >>> classify(0, None, "", "output"), classify(-1, 24, "", None)
    ('failed', 'timeout')
    """
    if stopped is not None:
        return {TIMEOUT: "timeout", OUTPUT: "failed", MEMORY: "memory"}[stopped]
    if signal_number is not None:
        return {signal.SIGXCPU: "timeout", signal.SIGSYS: "blocked"}.get(signal_number, "crashed")
    if exit_code == 0:
        return "passed"
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if "MemoryError" in last or "Cannot allocate memory" in last:
        return "memory"
    if last.startswith("AssertionError"):
        return "failed"
    if any(marker in last for marker in BLOCKED_MARKERS):
        return "blocked"
    if "Traceback" not in stderr and not stderr.startswith("bwrap: "):
        return "failed"  # sys.exit(n) or a message and a non-zero exit: it said it failed
    return "crashed"


def finish(exit_code: int, signal_number: int | None, got: Collected, seconds: float) -> Run:
    """A `Run` from the collected streams, with the sandbox's note appended to stderr."""
    stderr = got.stderr.decode("utf-8", "replace")
    verdict = classify(exit_code, signal_number, stderr, got.stopped)
    if got.stopped is not None:
        stderr += ("\n" if stderr else "") + NOTES[got.stopped]
    return Run(
        verdict=verdict,
        exit_code=None if got.stopped else exit_code,
        stdout=got.stdout.decode("utf-8", "replace"),
        stderr=stderr,
        seconds=seconds,
        stopped=got.stopped,
    )
