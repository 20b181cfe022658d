"""Attacks on the strict sandbox: each is contained, the test process is unharmed, and
nothing of the attack is left running afterwards.

Every attack runs as a real program in the real sandbox (no mocks), with short limits. Host
side, the tests watch what the program must not reach: a TCP listener on the host's loopback,
a canary file, a secret in the parent's environment, the project tree, a host process the
program knows the pid of. These tests fail (they do not skip) where strict isolation cannot
be set up: a security claim that silently stops being checked is worse than a red test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1lab.sandbox import Job, Limits, SandboxConfig, SandboxUnavailable, get_sandbox
from r1lab.sandbox.uids import running_as

PROJECT = Path(__file__).resolve().parents[2]
LIMITS = Limits(timeout=10, memory_mb=256, output_bytes=1 << 16)  # generous: CI can be busy
SHORT = Limits(timeout=1.5, memory_mb=256, output_bytes=1 << 16)  # for attacks that never end
SECRET = "r1lab-test-secret-DO-NOT-LEAK"


@pytest.fixture(scope="module")
def sandbox():
    return get_sandbox(SandboxConfig(workers=2))


@pytest.fixture(scope="module")
def listener():
    """A TCP server on the host's loopback that counts the connections it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    hits: list[object] = []

    def accept() -> None:
        while True:
            try:
                hits.append(server.accept())
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], hits
    server.close()


def attack(sandbox, source: str, limits: Limits = LIMITS):
    """Run one attack; afterwards no process of any worker slot may exist."""
    run = sandbox.run([Job(source)], limits)[0]
    layer = sandbox.layer
    for slot in range(sandbox.workers):
        if layer.cgroups is not None:
            assert layer.cgroups.members(slot) == [], "processes left in the slot's cgroup"
        if layer.as_root:
            assert running_as(layer.leases[slot].uid) == [], "processes left under the slot's uid"
    return run


def test_the_sandbox_is_strict(sandbox):
    assert sandbox.mode == "strict" and "bubblewrap" in sandbox.describe()


def test_tcp_to_the_hosts_loopback_is_blocked(sandbox, listener):
    port, hits = listener
    run = attack(sandbox, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)")
    assert run.verdict == "blocked" and "Operation not permitted" in run.stderr
    time.sleep(0.1)
    assert hits == []


def test_raw_socket_syscalls_and_dns_and_udp_are_blocked(sandbox):
    run = attack(
        sandbox,
        "import ctypes, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('inet', libc.socket(2, 1, 0), ctypes.get_errno())\n"
        "print('netlink', libc.socket(16, 3, 0), ctypes.get_errno())\n"
        "try:\n    socket.getaddrinfo('example.com', 80)\n"
        "except OSError as e:\n    print('dns', e)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))\n",
    )
    assert "inet -1 1" in run.stdout and "netlink -1 1" in run.stdout  # EPERM from seccomp
    assert "dns" in run.stdout and run.verdict == "blocked"


def test_the_network_namespace_has_no_route_out_even_for_unix_sockets(sandbox):
    server = socket.socket(socket.AF_UNIX)
    server.bind("\0r1lab-sandbox-test")
    server.listen(1)
    try:
        run = attack(
            sandbox, "import socket\nsocket.socket(socket.AF_UNIX).connect('\\0r1lab-sandbox-test')"
        )
    finally:
        server.close()
    assert run.verdict == "crashed" and "Connection refused" in run.stderr


def test_home_ssh_shadow_project_and_packages_are_not_readable(sandbox):
    home = Path.home()
    paths = [home / ".ssh", home / ".bashrc", home / ".cache", "/etc/shadow", "/etc/passwd"]
    paths += [PROJECT / "README.md", "/usr/local/etc", Path(sys.prefix) / "pyvenv.cfg"]
    run = attack(
        sandbox,
        f"import os\nprint([p for p in {list(map(str, paths))!r} if os.path.exists(p)])\n"
        "print(sorted(os.listdir('/etc')), os.listdir('/usr/local'))\n"
        "import numpy\n",
    )
    seen, listing = run.stdout.splitlines()
    assert seen == "[]"
    assert listing == "['ld.so.cache', 'localtime'] []"
    assert run.verdict == "crashed" and "No module named 'numpy'" in run.stderr


def test_the_parents_environment_is_not_inherited(sandbox, monkeypatch):
    monkeypatch.setenv("R1LAB_SECRET", SECRET)
    run = attack(
        sandbox,
        "import os\nprint(sorted(os.environ))\n"
        "print(open('/proc/self/environ').read())\n"
        "print(open('/proc/1/environ').read())\n",
    )
    assert run.stdout.splitlines()[0] == "['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']"
    assert SECRET not in run.stdout + run.stderr
    assert run.verdict == "blocked" and "Permission denied: '/proc/1/environ'" in run.stderr


def test_nothing_outside_the_private_tmp_is_writable(sandbox, tmp_path):
    targets = [PROJECT / "evil", tmp_path / "evil", "/usr/lib/evil", "/etc/evil", "/evil"]
    targets += ["/dev/shm/evil", str(Path.home() / "evil")]
    run = attack(
        sandbox,
        f"written = []\nfor p in {list(map(str, targets))!r}:\n"
        "    try:\n        open(p, 'w').write('x')\n        written.append(p)\n"
        "    except OSError as e:\n        pass\n"
        "open('/tmp/inside', 'w').write('fine')\nprint('written', written)\n",
    )
    assert run.verdict == "passed" and run.stdout.strip() == "written []"
    assert not any(Path(t).exists() for t in targets)


def test_deleting_host_files_is_impossible(sandbox, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    stdlib_json = Path(os.__file__).parent / "json"
    run = attack(
        sandbox,
        f"import os, shutil\nshutil.rmtree({str(stdlib_json)!r}, ignore_errors=True)\n"
        f"print(os.path.exists({str(stdlib_json)!r}))\nos.remove({str(canary)!r})\n",
    )
    assert run.stdout.strip() == "True"  # the standard library is read-only in there
    assert run.verdict == "crashed" and "FileNotFoundError" in run.stderr  # not even visible
    assert canary.read_text() == "alive" and (stdlib_json / "__init__.py").exists()


def test_a_fork_bomb_is_contained_and_killed(sandbox):
    start = time.monotonic()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    run = attack(sandbox, bomb, SHORT)
    assert run.verdict == "timeout" and time.monotonic() - start < SHORT.timeout + 5


def test_the_process_limit_holds(sandbox):
    run = attack(
        sandbox,
        "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n"
        "        os._exit(0)\n    n += 1\nprint(n)\n",
        Limits(timeout=10, processes=16),
    )
    assert run.verdict == "passed" and int(run.stdout) < 16


def test_a_thread_bomb_is_contained(sandbox):
    run = attack(
        sandbox,
        "import threading, time\nfor i in range(10000):\n"
        "    threading.Thread(target=time.sleep, args=(30,)).start()\n",
        SHORT,
    )
    assert run.verdict in ("blocked", "crashed", "memory", "timeout")


def test_memory_bombs_are_stopped(sandbox):
    run = attack(sandbox, "x = []\nwhile True:\n    x.append(bytearray(32 << 20))\n")
    assert run.verdict == "memory"
    assert attack(sandbox, "x = bytearray(10 ** 10)").verdict == "memory"


def test_a_process_tree_cannot_add_up_memory_past_the_limit(sandbox):
    if sandbox.layer.cgroups is None:  # documented: then only each process's memory is capped
        pytest.skip("no writable cgroups on this host: a process tree's total is not capped")
    run = attack(
        sandbox,
        "import os, time\nkids = []\nfor i in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray(100 << 20)\n        time.sleep(2)\n        os._exit(0)\n"
        "    kids.append(pid)\nprint(sum(os.waitpid(k, 0)[1] == 0 for k in kids))\n",
        Limits(timeout=10, memory_mb=128),
    )
    assert run.verdict == "memory" or int(run.stdout or 0) * 100 <= 128 + 64


@pytest.mark.parametrize("loop", ["while True:\n    pass\n", "import time\ntime.sleep(1000)\n"])
def test_infinite_loops_end_at_the_deadline(sandbox, loop):
    start = time.monotonic()
    run = attack(sandbox, loop, SHORT)
    assert run.verdict == "timeout" and "wall-clock timeout" in run.stderr
    assert time.monotonic() - start < SHORT.timeout + 5


def test_signals_cannot_reach_the_parent_or_other_host_processes(sandbox):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        run = attack(
            sandbox,
            "import os\nfor pid in (os.getppid(), 1, "
            f"{os.getpid()}, {bystander.pid}, -1):\n"
            "    try:\n        os.kill(pid, 9)\n        print(pid, 'sent')\n"
            "    except OSError as e:\n        print(pid, type(e).__name__)\n",
        )
        assert bystander.poll() is None, "a host process was killed from inside the sandbox"
    finally:
        bystander.kill()
        bystander.wait()
    lines = run.stdout.splitlines()
    assert lines[0] == "1 PermissionError" and lines[1] == "1 PermissionError"  # the reaper
    assert all(line.endswith("ProcessLookupError") for line in lines[2:4])  # invisible
    assert run.verdict == "passed"  # kill(-1) found nobody else to kill


def test_background_processes_do_not_outlive_the_run(sandbox):
    start = time.monotonic()
    run = attack(
        sandbox,
        "import os, subprocess\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '300'])\n    os._exit(0)\n"
        "subprocess.Popen(['sleep', '301'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '302'])\n"
        "print('spawned')\n",
    )
    assert run.verdict == "passed" and time.monotonic() - start < 8  # no wait for the daemons
    leftovers = subprocess.run(["pgrep", "-f", "sleep 30[012]"], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_huge_output_is_capped_and_the_program_killed(sandbox):
    run = attack(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert run.verdict == "failed" and run.stopped == "output"
    assert len(run.stdout) <= LIMITS.output_bytes
    run = attack(sandbox, "import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n")
    assert run.verdict == "failed" and len(run.stderr) < (64 << 10) + 200


def test_a_huge_file_is_refused(sandbox):
    big = "f = open('/tmp/big', 'wb')\nfor i in range(1000):\n    f.write(b'z' * (1 << 20))\n"
    run = attack(sandbox, big)
    assert run.verdict == "crashed" and "File too large" in run.stderr


@pytest.mark.parametrize(
    "source",
    [
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) != 0:\n    raise PermissionError(ctypes.get_errno())",
        "import os\nos.setuid(0)",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.ptrace(16, 1, 0, 0) != 0:\n    raise PermissionError(ctypes.get_errno())",
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0:\n"
        "    raise PermissionError(ctypes.get_errno())",
    ],
    ids=["user-namespace", "setuid-root", "ptrace", "mount"],
)
def test_privilege_and_namespace_escapes_are_blocked(sandbox, source):
    assert attack(sandbox, source).verdict == "blocked"


def test_the_program_runs_as_an_unprivileged_user_without_capabilities(sandbox):
    run = attack(
        sandbox,
        "import os\nprint(os.getuid(), os.geteuid())\n"
        "print(sorted({l.split()[1] for l in open('/proc/self/status') if l.startswith('Cap')}))\n",
    )
    uid, caps = run.stdout.splitlines()
    if sandbox.layer.as_root:
        assert int(uid.split()[0]) >= 60000
    assert caps == "['0000000000000000']"  # no capability in any set


def test_strict_mode_refuses_without_bubblewrap(monkeypatch):
    import r1lab.sandbox.isolation as isolation

    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*unsafe-subprocess"):
        isolation.StrictLayer(1)


def test_strict_mode_refuses_when_its_self_test_fails(monkeypatch):
    """A filter that lets internet sockets through fails the start-up self-test."""
    import r1lab.sandbox.isolation as isolation
    from r1lab.sandbox.seccomp import RET_ALLOW, RET_K, _ins

    monkeypatch.setattr(isolation.seccomp, "build", lambda: _ins(RET_K, RET_ALLOW))
    with pytest.raises(SandboxUnavailable, match="self-test failed.*internet socket"):
        isolation.StrictLayer(1)


def test_the_weaker_mode_warns_and_is_not_isolated(recwarn):
    from r1lab.sandbox import Sandbox, SandboxWarning

    unsafe = Sandbox("unsafe-subprocess", 1)
    try:
        assert any(issubclass(w.category, SandboxWarning) for w in recwarn)
        run = unsafe.run([Job("import os\nprint(sorted(os.environ))")], LIMITS)[0]
        assert run.verdict == "passed" and "R1LAB" not in run.stdout
        assert unsafe.run([Job("while True:\n    pass")], SHORT)[0].verdict == "timeout"
    finally:
        unsafe.close()
