"""The two ways a program can be run: `strict` (isolated) and `unsafe-subprocess` (not).

`StrictLayer` is what every run gets unless the user names the weaker mode. It is built from
Debian's bubblewrap and util-linux, not from namespaces, Landlock and seccomp driven from
Python: bwrap already does the delicate parts correctly (a pivot_root'ed read-only tree, new
/proc and /dev, a PID-1 reaper, death with its parent) and is the layer Flatpak ships to
millions of desktops; Landlock alone cannot hide processes or cut the network off, and a
hand-rolled namespace setup is where sandboxes grow holes. Layer by layer (`layout` has the
mount table):

- network namespace: every connection (only a down loopback exists in there);
- mount namespace, read-only binds, a private tmpfs: reading the user's home, the project,
  `/etc/shadow` or other environments; writing anywhere but the private `/tmp`;
- pid namespace, bwrap's PID 1, `--die-with-parent`: signalling host processes, and any
  process outliving its run (PID 1's death takes the whole namespace with it);
- `--clearenv`: inherited variables and secrets;
- own uid, no capabilities, `no_new_privs`: privilege, and root's exemption from the
  process limit;
- seccomp (`seccomp`): kernel attack surface (new namespaces, mounts, ptrace, bpf, ...);
- rlimits (`prlimit`): CPU time, address space, processes, file size, open files;
- a cgroup per worker (`cgroups`): a process tree's total memory and task count.

At start-up `StrictLayer` runs a self-test program inside the full sandbox that checks the
isolation it relies on (no internet socket, no caller environment, no r1lab source visible,
not root); any failure to set up is a `SandboxUnavailable` saying why and how to proceed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from r1lab.sandbox import seccomp, uids
from r1lab.sandbox.cgroups import SlotCgroups
from r1lab.sandbox.config import UNSAFE, Limits, SandboxUnavailable, SandboxWarning
from r1lab.sandbox.layout import ENV, SCRIPT, Interpreter, bwrap_args, inner_command, rlimit_args
from r1lab.sandbox.process import (
    MEMORY,
    TIMEOUT,
    Collected,
    Job,
    Run,
    collect,
    finish,
    kill_group,
    memfd,
)

JOIN_CGROUP = 'for f in $R1CG; do echo $$ > "$f" || exit 125; done; exec "$@"'
HOW_TO_PROCEED = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make setup` does it), or "
    "run model-written code WITHOUT isolation by naming the weaker mode: "
    f"sandbox: {{mode: {UNSAFE}}}"
)
SELF_TEST = """
import os, socket
extra = set(os.environ) - {{"PATH", "HOME", "TMPDIR", "LANG", "PWD"}}
assert not extra, f"inherited environment variables: {{sorted(extra)}}"
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raise SystemExit("an internet socket could be opened")
except PermissionError:
    pass
assert not os.path.exists({source!r}), "the r1lab source tree is visible"
assert {as_root} is False or os.getuid() != 0, "the program runs as root"
print("ok")
"""


def _wait(proc: subprocess.Popen, got: Collected, deadline: float) -> tuple[int, Collected]:
    """The child's exit code; a child still running at the deadline is killed (a timeout)."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic())), got
    except subprocess.TimeoutExpired:
        kill_group(proc)
        got.stopped = got.stopped or TIMEOUT
        return proc.wait(), got


class StrictLayer:
    """bubblewrap + prlimit + setpriv + seccomp + cgroups, one uid and cgroup per worker slot."""

    def __init__(self, workers: int) -> None:
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {HOW_TO_PROCEED}")
        for tool in ("/usr/bin/prlimit", "/usr/bin/setpriv", "/bin/sh"):
            if not os.access(tool, os.X_OK):
                raise SandboxUnavailable(f"{tool} (util-linux) is missing: {HOW_TO_PROCEED}")
        try:
            self.filter = seccomp.build()
        except OSError as err:
            raise SandboxUnavailable(f"{err}: {HOW_TO_PROCEED}") from err
        self.python = Interpreter.current()
        self.as_root = os.geteuid() == 0
        self.cgroups = SlotCgroups.detect() if self.as_root else None
        self.leases = uids.lease(workers) if self.as_root else []
        self.workers = workers
        # Not root, RLIMIT_NPROC counts every process of the caller's uid, its own included.
        self.own_tasks = 0 if self.as_root else len(uids.running_as(os.getuid())) + 16
        self._self_test()

    def describe(self) -> str:
        cgroups = f"cgroup {self.cgroups.kind}" if self.cgroups else "no cgroups (rlimits only)"
        identity = "own uid per worker" if self.as_root else "user namespace"
        return f"strict: bubblewrap, seccomp, rlimits, {identity}, {cgroups}"

    def _self_test(self) -> None:
        source = str(Path(__file__).resolve().parents[1])
        program = SELF_TEST.format(source=source, as_root=self.as_root)
        try:
            run = self.run(Job(program), 0, Limits(timeout=20))
        except OSError as err:
            raise SandboxUnavailable(f"bwrap could not start: {err}; {HOW_TO_PROCEED}") from err
        if run.verdict != "passed" or run.stdout.strip() != "ok":
            detail = (run.stderr.strip() or run.stdout.strip())[-400:]
            raise SandboxUnavailable(
                f"the sandbox self-test failed ({run.verdict}): {detail}; {HOW_TO_PROCEED}"
            )

    def _argv(self, slot: int, limits: Limits, fds: dict[str, int]) -> list[str]:
        uid = self.leases[slot].uid if self.as_root else None
        processes = limits.processes + self.own_tasks
        return [
            self.bwrap,
            *bwrap_args(self.python, limits, self.as_root),
            *("--seccomp", str(fds["seccomp"]), "--info-fd", str(fds["info"])),
            *("--perms", "0444", "--ro-bind-data", str(fds["source"]), SCRIPT, "--"),
            *inner_command(self.python, limits, uid, processes),
        ]

    def run(self, job: Job, slot: int, limits: Limits) -> Run:
        """Run `job` in worker slot `slot` (the caller guarantees one job per slot at a time)."""
        fds = {
            "source": memfd("source", job.source.encode()),
            "seccomp": memfd("seccomp", self.filter),
        }
        stdin = memfd("stdin", job.stdin)
        info_read, fds["info"] = os.pipe()
        argv, env, oom_before = self._argv(slot, limits, fds), {}, 0
        if self.cgroups is not None:
            memory = (limits.memory_mb + limits.tmp_mb) << 20
            procs = self.cgroups.prepare(slot, memory, limits.processes + 8)
            oom_before = self.cgroups.oom_kills(slot)
            argv, env = (
                ["/bin/sh", "-c", JOIN_CGROUP, "sh", *argv],
                {"R1CG": " ".join(map(str, procs))},
            )
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                close_fds=True, pass_fds=tuple(fds.values()), start_new_session=True,
            )  # fmt: skip
        finally:
            for fd in (stdin, *fds.values()):
                os.close(fd)
        try:
            deadline = start + limits.timeout
            got = collect(proc, deadline, limits.output_bytes, info_read)
            code, got = _wait(proc, got, deadline)
            self._await_namespace(got.info)
        finally:
            os.close(info_read)
        self._reap(slot)
        if (
            self.cgroups is not None
            and got.stopped is None
            and self.cgroups.oom_kills(slot) > oom_before
        ):
            got.stopped = MEMORY
        if code == 125 and got.stderr.startswith(b"sh: "):
            raise SandboxUnavailable(
                f"could not join the sandbox cgroup: {got.stderr.decode()[:200]}"
            )
        signal_number = code - 128 if code > 128 and code - 128 in signal.valid_signals() else None
        return finish(code, signal_number, got, time.monotonic() - start)

    @staticmethod
    def _await_namespace(info: bytes) -> None:
        """Wait until the sandbox's PID 1 is gone: its death empties the pid namespace."""
        try:
            pid = json.loads(info.decode() or "{}").get("child-pid")
        except ValueError:
            return
        if pid is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        try:
            select.select([pidfd], [], [], 2.0)
        finally:
            os.close(pidfd)

    def _reap(self, slot: int) -> None:
        """Nothing of the run may survive it: kill whatever is still in its cgroup or uid."""
        if self.cgroups is not None:
            alive = lambda: self.cgroups.members(slot)  # noqa: E731
        elif self.as_root:
            alive = lambda: uids.running_as(self.leases[slot].uid)  # noqa: E731
        else:
            return  # the pid namespace's teardown is the guarantee here
        for _ in range(400):
            left = alive()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        raise RuntimeError(f"sandbox processes survive their run in slot {slot}: {alive()}")

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.remove(range(self.workers))
        for held in self.leases:
            held.release()
        self.leases = []


class UnsafeLayer:
    """A plain child process: rlimits, a clean environment, a temporary working directory.

    NOT a sandbox: the program can reach the network, read your files, signal your processes
    and leave a background process running (one that starts its own session escapes the
    process-group kill). For machines where bubblewrap cannot run, by name only.
    """

    def __init__(self, workers: int) -> None:
        self.python = Interpreter.current()
        self.prlimit = shutil.which("prlimit")
        warnings.warn(
            f"sandbox mode {UNSAFE!r}: model-written code runs WITHOUT isolation (network, "
            "your files, your processes and your secrets are reachable)",
            SandboxWarning,
            stacklevel=3,
        )

    def describe(self) -> str:
        return f"{UNSAFE}: NO isolation" + (
            "" if self.prlimit else ", no rlimits (prlimit missing)"
        )

    def run(self, job: Job, slot: int, limits: Limits) -> Run:
        with tempfile.TemporaryDirectory(prefix="r1lab-unsafe-") as workdir:
            script = Path(workdir) / "main.py"
            script.write_text(job.source)
            argv = [self.python.executable, "-I", "-S", "-B", str(script)]
            if self.prlimit:
                argv = [self.prlimit, *rlimit_args(limits, limits.processes), "--", *argv]
            env = {**ENV, "HOME": workdir, "TMPDIR": workdir}
            stdin = memfd("stdin", job.stdin)
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                    cwd=workdir, close_fds=True, start_new_session=True,
                )  # fmt: skip
            finally:
                os.close(stdin)
            deadline = start + limits.timeout
            code, got = _wait(proc, collect(proc, deadline, limits.output_bytes, None), deadline)
            kill_group(proc)  # background processes of its group; a new session escapes this
        return finish(max(code, 0), -code if code < 0 else None, got, time.monotonic() - start)

    def close(self) -> None:
        """Nothing to release."""
