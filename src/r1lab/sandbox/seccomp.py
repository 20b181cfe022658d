"""The seccomp filter of the strict sandbox: classic BPF, assembled here, no libseccomp.

bubblewrap loads a filter given as raw `struct sock_filter[]` bytes (`--seccomp FD`), so the
filter is written out instruction by instruction rather than pulling in a C library binding
that Debian ships only for its system Python. Policy: allow by default, and deny what a test
program never needs but an escape or a kernel exploit usually does:

- sockets other than AF_UNIX (the network namespace already has no route out; this is the
  second wall, and it makes `socket(AF_INET)` fail fast with EPERM instead of hanging);
- new namespaces (`unshare`, `setns`, `clone` with CLONE_NEW* flags, and `clone3`, whose flags
  sit in memory BPF cannot read: it gets ENOSYS, so glibc falls back to `clone`). Unprivileged
  user namespaces are the classic way from "nobody" to a kernel attack surface;
- mounts, `chroot`, `ptrace` and cross-process memory access, `bpf`, `perf_event_open`,
  `userfaultfd`, `io_uring`, kernel keyrings, module loading, `kexec`, clock setting, swap,
  `reboot`, terminal input injection (`ioctl` TIOCSTI/TIOCLINUX);
- the x32 ABI (a second syscall table that would bypass the numbers above); any architecture
  but x86_64 kills the process.

The numbers are x86_64's: on another architecture `build` refuses (a filter with the wrong
numbers would be a wall with holes nobody sees).
"""

from __future__ import annotations

import platform
import struct

LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS = 1, 38
OFFSET_NR, OFFSET_ARCH = 0, 4  # struct seccomp_data: nr, arch, ip, args[6]

DENIED = {  # x86_64 syscall numbers
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "pidfd_getfd": 438, "add_key": 248, "request_key": 249, "keyctl": 250, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "unshare": 272, "setns": 308,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
    "acct": 163, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159, "iopl": 172, "ioperm": 173, "quotactl": 179, "syslog": 103, "uselib": 134,
    "vhangup": 153, "name_to_handle_at": 303, "open_by_handle_at": 304, "lookup_dcookie": 212,
    "personality": 135, "mbind": 237, "set_mempolicy": 238, "migrate_pages": 256,
    "move_pages": 279, "sysfs": 139, "ustat": 136,
}  # fmt: skip
NR_IOCTL, NR_SOCKET, NR_CLONE, NR_CLONE3 = 16, 41, 56, 435
AF_UNIX = 1
CLONE_NEW_FLAGS = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _arg(i: int) -> int:
    """Offset of the low 32 bits of syscall argument i (little endian)."""
    return 16 + 8 * i


def build() -> bytes:
    """The filter program as bytes, for `bwrap --seccomp FD`.

    >>> len(build()) // 8 > 100  # instructions of 8 bytes each
    True
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise OSError(
            f"the sandbox's seccomp filter is written for x86_64, not {platform.machine()}"
        )
    allow, kill = _ins(RET_K, RET_ALLOW), _ins(RET_K, RET_KILL_PROCESS)

    def deny(errno: int) -> bytes:
        return _ins(RET_K, RET_ERRNO | errno)

    program = [
        _ins(LD_W_ABS, OFFSET_ARCH),
        _ins(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        kill,
        _ins(LD_W_ABS, OFFSET_NR),
        _ins(JGE_K, X32_SYSCALL_BIT, 0, 1),
        deny(EPERM),
    ]
    for nr in sorted(set(DENIED.values())):
        program += [_ins(JEQ_K, nr, 0, 1), deny(EPERM)]
    program += [_ins(JEQ_K, NR_CLONE3, 0, 1), deny(ENOSYS)]
    # Each argument check below loads the argument into the accumulator only inside its own
    # branch, and every path of that branch returns, so the syscall number stays loaded for
    # the checks after it.
    program += [  # socket(family, ...): AF_UNIX only
        _ins(JEQ_K, NR_SOCKET, 0, 4),
        _ins(LD_W_ABS, _arg(0)),
        _ins(JEQ_K, AF_UNIX, 0, 1),
        allow,
        deny(EPERM),
    ]
    program += [  # clone(flags, ...): no new namespaces
        _ins(JEQ_K, NR_CLONE, 0, 4),
        _ins(LD_W_ABS, _arg(0)),
        _ins(JSET_K, CLONE_NEW_FLAGS, 0, 1),
        deny(EPERM),
        allow,
    ]
    program += [  # ioctl(fd, request, ...): no terminal input injection
        _ins(JEQ_K, NR_IOCTL, 0, 4),
        _ins(LD_W_ABS, _arg(1)),
        _ins(JEQ_K, TIOCSTI, 1, 0),
        _ins(JEQ_K, TIOCLINUX, 0, 1),
        deny(EPERM),
    ]
    return b"".join([*program, allow])
