"""The strict sandbox's command line: the file system it sees and who it runs as.

Per execution: `bwrap [namespaces, mounts] -- prlimit [rlimits] -- setpriv [uid switch] --
python -I -S -B /sandbox/main.py`, all Debian binaries, no setuid helper or C code of ours.

- File system: a fresh root with `/usr` read-only (with `/usr/local` hidden: it may hold
  credentials such as an npmrc), the bare interpreter, its standard library and libpython
  bound read-only where they live (site-packages hidden), `ld.so.cache` and `localtime` as
  the only files of `/etc`, a new `/proc`, a minimal `/dev`, and a private size-limited tmpfs
  `/tmp` as the one writable place. Nothing of the user's home, the project, other Python
  environments or `/etc/shadow` exists in there.
- Identity: as root, bwrap keeps only the capabilities `setpriv` needs, and `setpriv` switches
  to a uid of this worker's own (`uids.lease`) with every capability set cleared and
  `no_new_privs`. A real uid switch matters: the kernel does not enforce RLIMIT_NPROC for
  uid 0, whatever its capabilities or user namespace, so only a non-root uid makes the process
  limit (and so the fork-bomb defence) real, and an escape from the namespaces lands as an
  unprivileged user. Not root, bwrap maps the caller into a user namespace instead, and
  forbids nested ones (`--disable-userns`).
- `-I -S -B`: isolated mode (no environment variables, no user site), no `site` import (no
  `.pth` hooks run), no bytecode written.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass

from r1lab.sandbox.config import Limits

SCRIPT = "/sandbox/main.py"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
HIDDEN = ("/usr/local", "/usr/lib/python3/dist-packages")
STDERR_BYTES = 64 << 10


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs the programs: its real executable, what it needs read-only,
    and the package directories hidden from it (nothing outside the standard library)."""

    executable: str
    binds: tuple[str, ...]
    hidden: tuple[str, ...]

    @classmethod
    def current(cls) -> Interpreter:
        """This process's base interpreter (a virtual environment's python resolved)."""
        executable = os.path.realpath(sys.executable)
        stdlib = os.path.dirname(os.path.realpath(os.__file__))
        binds = [executable, stdlib]
        library = os.path.join(
            sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
        )
        if sysconfig.get_config_var("Py_ENABLE_SHARED") and os.path.isfile(library):
            binds.append(os.path.realpath(library))
        hidden = [os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages")]
        return cls(executable, tuple(binds), tuple(p for p in hidden if os.path.isdir(p)))


def _parents(path: str, made: set[str]) -> list[str]:
    """`--dir` arguments for the missing parents of a bind target, each 0755.

    Privileged bwrap creates missing parents 0700, which the unprivileged uid cannot
    traverse (a pyenv interpreter under /root would not start).
    """
    args: list[str] = []
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        directory = "/" + "/".join(parts[:i])
        if directory not in made and not directory.startswith("/usr/"):
            args += ["--perms", "0755", "--dir", directory]
            made.add(directory)
    return args


def bwrap_args(python: Interpreter, limits: Limits, as_root: bool) -> list[str]:
    """bwrap's options: namespaces, environment, mounts, capabilities (no program yet)."""
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in ENV.items():
        args += ["--setenv", key, value]
    args += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/lib", "/lib64", "/bin", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--dir", "/etc"]
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(name):
            args += ["--ro-bind", name, name]
    made = {"/", "/usr", "/etc"}
    for path in python.binds:
        args += [*_parents(path, made), "--ro-bind", path, path]
    for path in (*HIDDEN, *python.hidden):
        if os.path.isdir(path):
            args += ["--tmpfs", path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(limits.tmp_mb << 20), "--perms", "1777", "--tmpfs", "/tmp"]
    args += ["--chdir", "/tmp"]
    if as_root:
        args += ["--cap-drop", "ALL"]
        args += [
            arg for cap in ("SETUID", "SETGID", "SETPCAP") for arg in ("--cap-add", f"CAP_{cap}")
        ]
    else:
        args += ["--unshare-user", "--disable-userns"]
    return args


def rlimit_args(limits: Limits, processes: int) -> list[str]:
    """`prlimit` options for one execution (`processes`: the RLIMIT_NPROC to set)."""
    cpu = limits.cpu_seconds
    return [
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={limits.memory_mb << 20}",
        f"--nproc={processes}",
        f"--fsize={limits.file_size_mb << 20}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--memlock=0",
        "--msgqueue=0",
    ]


def inner_command(
    python: Interpreter, limits: Limits, uid: int | None, processes: int
) -> list[str]:
    """What bwrap runs inside: rlimits, then (as root) the uid switch, then the program."""
    command = ["/usr/bin/prlimit", *rlimit_args(limits, processes), "--"]
    if uid is not None:
        command += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        command += ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
        command += ["--no-new-privs", "--"]
    return [*command, python.executable, "-I", "-S", "-B", SCRIPT]
