"""poll, ppoll, select, pselect6, epoll_*, eventfd2, socketpair and dup3 through the
system-call dispatcher (leakdbt.linux.sys_poll), on host pipes, sockets and files: readiness,
timeouts, EINTR from a timer and from a child's end, and the refused epoll case."""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.linux.files import FdTable
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.signals import Action
from leakdbt.linux.sys_signal import _itimer
from leakdbt.linux.syscalls import SyscallDispatcher
from tests.unit.linux.test_sys_fs import FakeMemory
from tests.unit.linux.test_unsupported import _call

POLL, SELECT, PSELECT6, PPOLL, PIPE2, DUP3, OPEN = 7, 23, 270, 271, 293, 292, 2
EPOLL_CREATE1, EPOLL_CTL, EPOLL_WAIT, EPOLL_PWAIT, EVENTFD2, SOCKETPAIR = 291, 233, 232, 281, \
    290, 53
SENDTO, RECVFROM, SHUTDOWN, READ, WRITE, CLOSE, DUP = 44, 45, 48, 0, 1, 3, 32
POLLIN, POLLOUT, POLLHUP, POLLNVAL = 1, 4, 0x10, 0x20
EPOLLIN, EPOLLET = 1, 1 << 31


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Kernel, FakeMemory, SyscallDispatcher, io.StringIO]]:
    mem = FakeMemory()
    fds = FdTable()
    ids = ProcessIds(os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(),
                     os.getegid())
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path), rw=[str(tmp_path)], cwd="/"),  # type: ignore[arg-type]
               fds=fds, ids=ids, exe_path="/prog")
    err = io.StringIO()
    yield k, mem, SyscallDispatcher(k, stderr=err), err
    fds.close_all()
    k.child_watch.close()


Env = tuple[Kernel, FakeMemory, SyscallDispatcher, io.StringIO]


def _pipe(mem: FakeMemory, d: SyscallDispatcher) -> tuple[int, int]:
    out = mem.alloc(8)
    assert _call(d, PIPE2, out, 0) == 0
    rd, wr = struct.unpack("<2i", mem.read(out, 8))
    return rd, wr


def _poll(mem: FakeMemory, d: SyscallDispatcher, entries: list[tuple[int, int]],
          timeout: int) -> tuple[int, list[int]]:
    addr = mem.alloc(b"".join(struct.pack("<ihh", fd, ev, 0x7777) for fd, ev in entries))
    n = _call(d, POLL, addr, len(entries), timeout & 0xFFFFFFFF)
    raw = mem.read(addr, 8 * len(entries))
    return n, [struct.unpack_from("<ihh", raw, 8 * i)[2] for i in range(len(entries))]


def _poll_direct(k: Kernel, mem: FakeMemory, fd: int) -> int:
    """poll({fd, POLLIN}, 1, -1) by its handler (the dispatcher would then deliver)."""
    from leakdbt.linux.sys_poll import sys_poll

    return sys_poll(k, mem.alloc(struct.pack("<ihh", fd, POLLIN, 0)), 1, 0xFFFFFFFF)


def _write(mem: FakeMemory, d: SyscallDispatcher, fd: int, data: bytes) -> int:
    return _call(d, WRITE, fd, mem.alloc(data), len(data))


def test_poll_on_a_pipe(env: Env) -> None:
    _k, mem, d, _ = env
    rd, wr = _pipe(mem, d)
    assert _poll(mem, d, [(rd, POLLIN), (wr, POLLOUT), (-1, POLLIN)], 0) == (1, [0, POLLOUT, 0])
    assert _write(mem, d, wr, b"x") == 1
    assert _poll(mem, d, [(rd, POLLIN)], -1) == (1, [POLLIN])  # ready: no wait
    assert _poll(mem, d, [(99, POLLIN), (rd, POLLIN)], -1) == (2, [POLLNVAL, POLLIN])
    assert _call(d, CLOSE, wr) == 0
    n, (revents,) = _poll(mem, d, [(rd, 0)], -1)  # POLLHUP is always reported
    assert n == 1 and revents == POLLHUP
    assert _call(d, POLL, mem.alloc(8), 1 << 20, 0) == -errno.EINVAL


def test_poll_timeout_passes_and_a_timer_interrupts(env: Env) -> None:
    k, mem, d, _ = env
    rd, _wr = _pipe(mem, d)
    assert _poll(mem, d, [(rd, POLLIN)], 20) == (0, [0])  # times out, nothing ready
    k.signals.actions[signal.SIGALRM] = Action(handler=0x401000)
    timer = _itimer(k, 0)
    k.timers.arm(k, timer, k.clock_ns(timer.clock) + 10_000_000, 0)
    assert _poll_direct(k, mem, rd) == -errno.EINTR  # no wait forever
    assert [s for s, _ in k.signals.pending] == [signal.SIGALRM]


def test_ppoll_mask_and_time_left(env: Env) -> None:
    k, mem, d, _ = env
    rd, wr = _pipe(mem, d)
    _write(mem, d, wr, b"y")
    fds = mem.alloc(struct.pack("<ihh", rd, POLLIN, 0))
    tmo = mem.alloc(struct.pack("<qq", 5, 0))
    mask = mem.alloc(struct.pack("<Q", 1 << (signal.SIGUSR1 - 1)))
    k.signals.blocked = 0
    assert _call(d, PPOLL, fds, 1, tmo, mask, 8) == 1
    sec, nsec = struct.unpack("<qq", mem.read(tmo, 16))
    assert 0 < sec * 10**9 + nsec <= 5 * 10**9  # the time left, written back
    assert k.signals.blocked == 0  # the temporary mask is gone again
    assert _call(d, PPOLL, fds, 1, tmo, mask, 7) == -errno.EINVAL
    bad = mem.alloc(struct.pack("<qq", 0, 10**9))
    assert _call(d, PPOLL, fds, 1, bad, 0, 0) == -errno.EINVAL


def test_select_and_pselect6(env: Env) -> None:
    k, mem, d, _ = env
    rd, wr = _pipe(mem, d)
    rset = mem.alloc(struct.pack("<Q", 1 << rd))
    wset = mem.alloc(struct.pack("<Q", 1 << wr))
    tv = mem.alloc(struct.pack("<qq", 0, 0))
    assert _call(d, SELECT, wr + 1, rset, wset, 0, tv) == 1
    assert mem.read(rset, 8) == bytes(8) and mem.read(wset, 8) == struct.pack("<Q", 1 << wr)
    _write(mem, d, wr, b"z")
    mem.write(rset, struct.pack("<Q", 1 << rd))
    assert _call(d, SELECT, rd + 1, rset, 0, 0, 0) == 1
    assert mem.read(rset, 8) == struct.pack("<Q", 1 << rd)
    mem.write(rset, struct.pack("<Q", 1 << 40))
    assert _call(d, SELECT, 41, rset, 0, 0, 0) == -errno.EBADF
    assert _call(d, SELECT, -1 & 0xFFFFFFFF, 0, 0, 0, 0) == -errno.EINVAL
    mem.write(rset, struct.pack("<Q", 1 << rd))
    sig = mem.alloc(struct.pack("<QQ", mem.alloc(struct.pack("<Q", 0)), 8))
    ts = mem.alloc(struct.pack("<qq", 1, 0))
    assert _call(d, PSELECT6, rd + 1, rset, 0, 0, ts, sig) == 1
    assert k.signals.blocked == 0


def test_epoll_level_and_edge_triggered(env: Env) -> None:
    _k, mem, d, err = env
    rd, wr = _pipe(mem, d)
    ep = _call(d, EPOLL_CREATE1, os.O_CLOEXEC)
    assert ep > 0
    ev = mem.alloc(struct.pack("<IQ", EPOLLIN, 0xDEADBEEF12345678))
    assert _call(d, EPOLL_CTL, ep, 1, rd, ev) == 0
    assert _call(d, EPOLL_CTL, ep, 1, rd, ev) == -errno.EEXIST
    out = mem.alloc(12 * 4)
    assert _call(d, EPOLL_WAIT, ep, out, 4, 0) == 0
    _write(mem, d, wr, b"ab")
    for _ in range(2):  # level-triggered: reported while data is there
        assert _call(d, EPOLL_WAIT, ep, out, 4, -1 & 0xFFFFFFFF) == 1
        assert struct.unpack("<IQ", mem.read(out, 12)) == (EPOLLIN, 0xDEADBEEF12345678)
    mem.write(ev, struct.pack("<IQ", EPOLLIN | EPOLLET, 7))
    assert _call(d, EPOLL_CTL, ep, 3, rd, ev) == 0  # MOD
    assert _call(d, EPOLL_WAIT, ep, out, 4, 0) == 1
    assert _call(d, EPOLL_WAIT, ep, out, 4, 0) == 0  # edge-triggered: once per change
    mask = mem.alloc(struct.pack("<Q", 0))
    assert _call(d, EPOLL_PWAIT, ep, out, 4, 10, mask, 8) == 0  # the timeout passes
    assert _call(d, EPOLL_WAIT, ep, out, 0, 0) == -errno.EINVAL
    assert _call(d, EPOLL_WAIT, rd, out, 4, 0) == -errno.EINVAL  # not an epoll fd
    assert _call(d, EPOLL_CTL, ep, 1, ep, ev) == -errno.EINVAL  # itself
    dup = _call(d, DUP, rd)
    assert _call(d, EPOLL_CTL, ep, 1, dup, ev) == -errno.EPERM
    assert "unsupported epoll_ctl ADD of a second fd sharing an open file" in err.getvalue()
    assert _call(d, EPOLL_CTL, ep, 2, rd, 0) == 0  # DEL
    assert _call(d, EPOLL_CTL, ep, 2, rd, 0) == -errno.ENOENT


def test_eventfd_and_socketpair(env: Env) -> None:
    _k, mem, d, _ = env
    efd = _call(d, EVENTFD2, 3, os.O_NONBLOCK)
    assert efd > 0
    buf = mem.alloc(8)
    assert _call(d, READ, efd, buf, 8) == 8 and struct.unpack("<Q", mem.read(buf, 8)) == (3,)
    assert _call(d, READ, efd, buf, 8) == -errno.EAGAIN
    assert _write(mem, d, efd, struct.pack("<Q", 2)) == 8
    assert _poll(mem, d, [(efd, POLLIN)], 0) == (1, [POLLIN])
    assert _call(d, EVENTFD2, 0, 0x10) == -errno.EINVAL
    sv = mem.alloc(8)
    assert _call(d, SOCKETPAIR, 1, 1 | os.O_CLOEXEC, 0, sv) == 0
    a, b = struct.unpack("<2i", mem.read(sv, 8))
    assert _write(mem, d, a, b"ping") == 4
    assert _call(d, RECVFROM, b, buf, 8, 0, 0, 0) == 4 and mem.read(buf, 4) == b"ping"
    assert _call(d, SENDTO, b, mem.alloc(b"pong"), 4, 0, 0, 0) == 4
    assert _call(d, READ, a, buf, 8) == 4 and mem.read(buf, 4) == b"pong"
    assert _call(d, SENDTO, b, buf, 4, 0, mem.alloc(16), 16) == -errno.EACCES
    assert _call(d, SHUTDOWN, b, 1) == 0
    assert _call(d, READ, a, buf, 8) == 0  # end of file after the peer's shutdown
    assert _call(d, SOCKETPAIR, 2, 1, 0, sv) == -errno.EOPNOTSUPP  # AF_INET
    assert _call(d, RECVFROM, efd, buf, 8, 0, 0, 0) == -errno.ENOTSOCK


def test_dup3(env: Env) -> None:
    k, mem, d, _ = env
    rd, _wr = _pipe(mem, d)
    assert _call(d, DUP3, rd, rd, 0) == -errno.EINVAL
    assert _call(d, DUP3, rd, 20, 1) == -errno.EINVAL  # flags other than O_CLOEXEC
    assert _call(d, DUP3, rd, 20, os.O_CLOEXEC) == 20
    assert k.fds.get_cloexec(20) and k.fds.get(20) is k.fds.get(rd)


def test_a_child_s_end_interrupts_poll(env: Env) -> None:
    """SIGCHLD with a handler: the child's end ends a poll that would wait forever."""
    k, mem, d, _ = env
    rd, _wr = _pipe(mem, d)
    k.signals.actions[signal.SIGCHLD] = Action(handler=0x401000)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.01)
        os._exit(0)
    k.children.add(pid)
    assert _poll_direct(k, mem, rd) == -errno.EINTR
    (sig, info), = k.signals.pending
    assert sig == signal.SIGCHLD and struct.unpack_from("<i", info, 16)[0] == pid
    os.waitpid(pid, 0)


def test_epoll_pwait2_sigqueueinfo_and_their_refusals(env: Env) -> None:
    """epoll_pwait2's timespec timeout; rt_sigqueueinfo to the guest itself keeps the
    caller's siginfo; to another process, and unknown send flags, are named once on
    stderr."""
    k, mem, d, err = env
    rd, _wr = _pipe(mem, d)
    ep = _call(d, EPOLL_CREATE1, 0)
    assert _call(d, EPOLL_CTL, ep, 1, rd, mem.alloc(struct.pack("<IQ", EPOLLIN, 1))) == 0
    out = mem.alloc(12)
    assert _call(d, 441, ep, out, 1, mem.alloc(struct.pack("<qq", 0, 5_000_000)), 0, 0) == 0
    assert _call(d, 441, ep, out, 1, mem.alloc(struct.pack("<qq", -1, 0)), 0, 0) == \
        -errno.EINVAL
    from leakdbt.linux.sys_signal import sys_rt_sigqueueinfo

    info = mem.alloc(struct.pack("<iii4xiIQ", 0, 0, -1, 4242, 7, 0xABCD).ljust(128, b"\0"))
    k.signals.blocked = 1 << (signal.SIGUSR1 - 1)  # kept pending: nothing to deliver
    assert sys_rt_sigqueueinfo(k, k.ids.pid, signal.SIGUSR1, info) == 0
    (sig, raw), = k.signals.pending
    assert sig == signal.SIGUSR1 and struct.unpack_from("<iii4xiI", raw) == (
        signal.SIGUSR1, 0, -1, 4242, 7)
    k.signals.pending.clear()
    assert _call(d, 129, 1, signal.SIGUSR1, info) == -errno.EPERM
    assert _call(d, 297, k.ids.pid, k.ids.pid + 1, signal.SIGUSR1, info) == -errno.EPERM
    sv = mem.alloc(8)
    assert _call(d, SOCKETPAIR, 1, 1, 0, sv) == 0
    a, _b = struct.unpack("<2i", mem.read(sv, 8))
    assert _call(d, SENDTO, a, mem.alloc(b"x"), 1, 0x8000, 0, 0) == -errno.EINVAL
    assert _call(d, SENDTO, a, mem.alloc(b"x"), 1, 0x8000, 0, 0) == -errno.EINVAL
    lines = err.getvalue().splitlines()
    assert "leakdbt: unsupported rt_sigqueueinfo to another process (rt_sigqueueinfo, 129) " \
        "returns -EPERM" in lines
    assert any(line.startswith("leakdbt: unsupported rt_tgsigqueueinfo to another thread")
               for line in lines)
    assert lines.count("leakdbt: unsupported sendto flags 0x8000 (sendto, 44) returns "
                       "-EINVAL") == 1  # once
