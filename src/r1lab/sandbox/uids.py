"""A uid of its own for each worker slot, reserved across every r1lab process on the host.

Running as root, each concurrent execution switches to a uid nobody else uses: RLIMIT_NPROC
then counts exactly that execution's processes, and "no process of this uid is left" is a
true statement about that execution alone. Two r1lab processes on one host (a training run
and an evaluation) must never share one, or one's cleanup would kill the other's programs,
so a uid is held by an exclusive `flock` on a lock file for as long as this process lives
(the kernel drops the lock when the process dies, however it dies). A uid that belongs to a
user in the password database, or that any process runs as, is passed over.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path

from r1lab.sandbox.config import SandboxUnavailable

UID_BASE, UID_SPAN = 60000, 1000


def running_as(uid: int) -> list[int]:
    """Pids of the processes whose real uid is `uid` (a /proc scan)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry))
                        break
        except OSError:
            continue  # the process exited while we looked
    return found


def _lock_dir() -> Path:
    for candidate in (Path("/run/r1lab-sandbox"), Path(tempfile.gettempdir()) / "r1lab-sandbox"):
        try:
            candidate.mkdir(mode=0o700, exist_ok=True)
            return candidate
        except OSError:
            continue
    raise SandboxUnavailable("no directory for the sandbox's uid lock files (/run, /tmp)")


def _is_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        return not running_as(uid)


@dataclass
class UidLease:
    """One reserved uid; the lock file descriptor holds the reservation."""

    uid: int
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def lease(count: int) -> list[UidLease]:
    """Reserve `count` free uids from UID_BASE on, or raise SandboxUnavailable."""
    directory, leases = _lock_dir(), []
    for uid in range(UID_BASE, UID_BASE + UID_SPAN):
        if len(leases) == count:
            break
        fd = os.open(directory / f"{uid}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _is_free(uid):
            leases.append(UidLease(uid, fd))
        else:
            os.close(fd)
    if len(leases) < count:
        for held in leases:
            held.release()
        raise SandboxUnavailable(
            f"found {len(leases)} of {count} free sandbox uids "
            f"in {UID_BASE}..{UID_BASE + UID_SPAN - 1}"
        )
    return leases
