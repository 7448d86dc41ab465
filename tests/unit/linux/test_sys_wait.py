"""wait4, waitid, pipe and pipe2 on host children and host pipes (leakdbt.linux.sys_wait),
the "#!" parsing and argument checks of execve (leakdbt.linux.sys_exec), through the
system-call dispatcher as the guest calls them."""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.errors import Deadlock, GuestError, LimitExceeded
from leakdbt.linux.blocking import block
from leakdbt.linux.childwatch import ChildWatch
from leakdbt.linux.files import FdTable, FsError
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.signals import Action, Signals
from leakdbt.linux.sys_exec import _shebang, find_program
from leakdbt.linux.syscalls import SyscallDispatcher
from tests.unit.linux.test_sys_fs import FakeMemory
from tests.unit.linux.test_unsupported import _call

PIPE, WAIT4, WAITID, PIPE2, EXECVE = 22, 61, 247, 293, 59
WNOHANG, WEXITED = 1, 4


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Kernel, FakeMemory, SyscallDispatcher]]:
    mem = FakeMemory()
    fds = FdTable()
    ids = ProcessIds(os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(),
                     os.getegid())
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path), rw=[str(tmp_path)], cwd="/"),  # type: ignore[arg-type]
               fds=fds, ids=ids, exe_path="/prog")
    yield k, mem, SyscallDispatcher(k, stderr=io.StringIO())
    fds.close_all()


def _host_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _child(status: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(status)
    return pid


def test_pipe_carries_data_and_end_of_file(env: tuple[Kernel, FakeMemory,
                                                      SyscallDispatcher]) -> None:
    k, mem, d = env
    out = mem.alloc(8)
    assert _call(d, PIPE, out) == 0
    rd, wr = struct.unpack("<2i", mem.read(out, 8))
    assert (rd, wr) == (3, 4)
    assert k.fds.get(wr).write(b"data") == 4
    k.fds.close(wr)
    assert k.fds.get(rd).read(100) == b"data"
    assert k.fds.get(rd).read(100) == b""  # every write end closed: end of file


def test_pipe2_flags(env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    k, mem, d = env
    out = mem.alloc(8)
    assert _call(d, PIPE2, out, os.O_CLOEXEC | os.O_NONBLOCK) == 0
    rd, wr = struct.unpack("<2i", mem.read(out, 8))
    assert k.fds.get_cloexec(rd) and k.fds.get_cloexec(wr)
    with pytest.raises(BlockingIOError):
        k.fds.get(rd).read(10)
    assert _call(d, PIPE2, out, os.O_APPEND) == -errno.EINVAL


def test_pipe2_to_bad_memory_leaves_nothing_open(env: tuple[Kernel, FakeMemory,
                                                            SyscallDispatcher]) -> None:
    k, _mem, d = env
    before, fds = _host_fds(), len(k.fds)
    assert _call(d, PIPE2, 0x10, 0) == -errno.EFAULT
    assert len(k.fds) == fds
    assert _host_fds() == before


def test_wait4_reports_status_and_usage(env: tuple[Kernel, FakeMemory,
                                                   SyscallDispatcher]) -> None:
    k, mem, d = env
    pid = _child(5)
    k.children.add(pid)
    status, usage = mem.alloc(4), mem.alloc(144)
    mem.write(usage, b"\xff" * 144)
    assert _call(d, WAIT4, pid, status, 0, usage) == pid
    word = struct.unpack("<i", mem.read(status, 4))[0]
    assert os.WIFEXITED(word) and os.WEXITSTATUS(word) == 5
    assert mem.read(usage, 144) != b"\xff" * 144  # struct rusage written
    assert pid not in k.children
    assert _call(d, WAIT4, pid, status, 0, 0) == -errno.ECHILD


def test_wait4_signalled_child(env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    _k, mem, d = env
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _k.children.add(pid)
    status = mem.alloc(4)
    assert _call(d, WAIT4, pid, status, 0, 0) == pid
    word = struct.unpack("<i", mem.read(status, 4))[0]
    assert os.WIFSIGNALED(word) and os.WTERMSIG(word) == signal.SIGKILL


def test_wait4_refusals(env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    _k, mem, d = env
    assert _call(d, WAIT4, 1, 0, 0, 0) == -errno.ECHILD  # not our child
    assert _call(d, WAIT4, (1 << 64) - 1, 0, 0x100, 0) == -errno.EINVAL  # unknown option


def test_waitid(env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    _k, mem, d = env
    info = mem.alloc(128)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(read_end, 1)  # until the parent has looked once
        os._exit(3)
    _k.children.add(pid)
    mem.write(info, b"\xff" * 128)
    assert _call(d, WAITID, 1, pid, info, WEXITED | WNOHANG, 0) == 0  # still running
    assert mem.read(info, 12) == bytes(12) and mem.read(info + 16, 12) == bytes(12)
    os.write(write_end, b"x")
    assert _call(d, WAITID, 1, pid, info, WEXITED, 0) == 0
    signo, _errno, code, child, _uid, status = struct.unpack_from("<iii4xiIi",
                                                                  mem.read(info, 28))
    assert (signo, code, child, status) == (signal.SIGCHLD, 1, pid, 3)  # CLD_EXITED
    os.close(read_end)
    os.close(write_end)
    assert _call(d, WAITID, 1, pid, info, 0, 0) == -errno.EINVAL  # no WEXITED & co
    assert _call(d, WAITID, 3, 5, info, WEXITED, 0) == -errno.EINVAL  # P_PIDFD


def test_sigchld_reaches_a_waiting_handler(env: tuple[Kernel, FakeMemory,
                                                      SyscallDispatcher]) -> None:
    """A wait with nothing else to wait for ends with the child's SIGCHLD (its pid in the
    siginfo), only when SIGCHLD has a handler and is not blocked; each end is reported
    once."""
    k, _mem, _d = env
    k.virtual_time = True  # nothing from outside can wake it (in host time: see below)
    sigchld = 1 << (signal.SIGCHLD - 1)
    with pytest.raises(Deadlock, match="deadlock: the only guest thread waits in pause"):
        block(k, {}, None, 0, "pause")  # no children: nothing can wake it
    pid = _child(0)
    k.children.add(pid)
    with pytest.raises(GuestError, match="deadlock"):
        block(k, {}, None, 0, "pause")  # SIGCHLD's default action ignores it
    k.signals.actions[signal.SIGCHLD] = Action(handler=0x401000)
    with pytest.raises(GuestError, match="deadlock"):
        block(k, {}, None, sigchld, "pause")  # blocked
    assert block(k, {}, None, 0, "pause") == -errno.EINTR
    (sig, info), = k.signals.pending
    assert sig == signal.SIGCHLD and struct.unpack_from("<i", info, 16)[0] == pid
    k.signals.pending.clear()
    with pytest.raises(GuestError, match="deadlock"):
        block(k, {}, None, 0, "pause")  # reported already: not again
    os.waitpid(pid, 0)
    k.child_watch.close()


def test_in_host_time_a_wait_nothing_in_the_run_can_end_waits_for_timeout(
        env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    """Another process's signal could still end it (Linux waits too): no deadlock error,
    the wait lasts until --timeout, which ends the run with its one line (status 124)."""
    k, _mem, _d = env
    k.timeout = (0.05, time.monotonic() + 0.05)
    with pytest.raises(LimitExceeded) as caught:
        block(k, {}, None, 0, "pause")
    assert str(caught.value) == "--timeout 0.05 s reached while the guest waited in pause"
    assert caught.value.exit_status == 124


def test_shebang_lines() -> None:
    assert _shebang(b"#!/bin/sh\n") == ("/bin/sh", None)
    assert _shebang(b"#! /usr/bin/env  python3 -u \nx") == ("/usr/bin/env", "python3 -u")
    assert _shebang(b"#!/bin/sh\t-e\n") == ("/bin/sh", "-e")
    with pytest.raises(FsError) as e:
        _shebang(b"#!   \n")
    assert e.value.errno == errno.ENOEXEC


def test_exec_checks(env: tuple[Kernel, FakeMemory, SyscallDispatcher],
                     tmp_path: Path) -> None:
    k, mem, d = env
    script = tmp_path / "s"
    script.write_text("#!/s\n")  # names itself: a loop
    script.chmod(0o755)
    with pytest.raises(FsError) as e:
        find_program(k, "/s", ["/s"])
    assert e.value.errno == errno.ELOOP
    argv = mem.alloc(struct.pack("<2Q", mem.cstr("x" * (32 * 4096)), 0))
    assert _call(d, EXECVE, mem.cstr("/s"), argv, 0) == -errno.E2BIG
    assert _call(d, EXECVE, mem.cstr("/missing"), 0, 0) == -errno.ENOENT
    assert _call(d, EXECVE, 0, 0, 0) == -errno.EFAULT


def test_wait_for_any_child_ignores_leakdbts_own_children(
        env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    """A host child that is not the guest's (here: one that never ends) is not waited for:
    wait4(-1) and waitid(P_ALL) with no guest children are ECHILD at once, not a hang."""
    k, mem, d = env
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(read_end, 1)
        os._exit(0)
    try:
        assert _call(d, WAIT4, (1 << 64) - 1, 0, 0, 0) == -errno.ECHILD
        assert _call(d, WAITID, 0, 0, mem.alloc(128), WEXITED, 0) == -errno.ECHILD  # P_ALL
        assert _call(d, WAIT4, pid, 0, 0, 0) == -errno.ECHILD  # not the guest's
    finally:
        os.write(write_end, b"x")
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(write_end)


def test_kill_of_a_process_group_reaches_guest_processes_only(
        env: tuple[Kernel, FakeMemory, SyscallDispatcher]) -> None:
    """kill(-pgid) signals the guest's processes in that group (found through /proc, so a
    grandchild too); a group holding none of them is out of reach; kill(-1) spares the
    caller and, with no other guest process, finds none."""
    k, _mem, d = env
    kill = 62
    # A child of this process that is not the guest's (as a test runner's helpers are).
    bystander = subprocess.Popen(["sleep", "60"])
    assert _call(d, kill, -1 & 0xFFFFFFFF, signal.SIGTERM) == -errno.ESRCH
    assert bystander.poll() is None  # untouched
    bystander.kill()
    bystander.wait()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        if os.fork() == 0:  # a grandchild in the same group
            os.write(write_end, b"g")
            time.sleep(60)
            os._exit(1)
        time.sleep(60)
        os._exit(1)
    k.children.add(pid)
    assert os.read(read_end, 1) == b"g"
    assert _call(d, kill, -pid & 0xFFFFFFFF, signal.SIGTERM) == 0
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert _call(d, kill, -999_999 & 0xFFFFFFFF, signal.SIGTERM) == -errno.EPERM
    assert _call(d, kill, 1, 70) == -errno.EINVAL
    os.close(read_end)
    os.close(write_end)


def test_a_wait_sends_the_sigchld_the_watcher_saw_but_had_not_sent() -> None:
    """The watcher thread reported a child's end (it waits in ``arrived`` for the engine);
    the guest's wait reaps the child first: the SIGCHLD is pending when the wait returns, as
    in Linux, not left for the next kick (where a later child's would merge with it)."""
    watch, signals = ChildWatch(), Signals()
    signals.actions[signal.SIGCHLD] = Action(handler=0x401000)  # caught: queued, not dropped
    watch.reported.add(4242)
    watch.arrived.append(4242)
    watch.reaped(signals, 4242, b"info")
    assert signals.pending == [(signal.SIGCHLD, b"info")] and not watch.arrived
    watch.reaped(signals, 4242, b"again")  # reported and sent: never twice
    assert signals.pending == [(signal.SIGCHLD, b"info")]
