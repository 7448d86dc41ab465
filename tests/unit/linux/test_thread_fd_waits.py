"""Blocking calls on host fds and children with other threads (leakdbt.linux.blocking
park_on_fd/park_on_children, the scheduler in leakdbt.linux.threads), without an engine:
a write into a full pipe parks its thread, goes on where it stopped when made again and
returns the whole count (or the part written when a signal ends the wait); wait4 parks
until the child ends; an O_NONBLOCK fd keeps its EAGAIN."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.linux.files import FdTable, OpenFile
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds, VirtualTime
from leakdbt.linux.threads import State
from tests.unit.linux.test_sys_fs import FakeMemory
from tests.unit.linux.test_thread_scheduler import SYS_FUTEX, SYS_TGKILL, SYS_YIELD, WAIT, Guest

SYS_READ, SYS_WRITE, SYS_WAIT4 = 0, 1, 61
PAGE = 4096


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guest]:
    monkeypatch.delenv("LEAKDBT_QUANTUM", raising=False)
    mem = FakeMemory()
    fds = FdTable()
    ids = ProcessIds(os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(),
                     os.getegid())
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path), rw=[], cwd="/"),  # type: ignore[arg-type]
               fds=fds, ids=ids, exe_path="/prog")
    VirtualTime(1).apply(k)
    yield Guest(k, mem)
    fds.close_all()


def _full_pipe() -> tuple[int, int, int]:
    """A host pipe filled to the brim: (read end, write end in blocking mode, bytes in it)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    held = 0
    try:
        while True:
            held += os.write(w, b"\xee" * PAGE)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    return r, w, held


def _drain(r: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        out += os.read(r, n - len(out))
    return out


def test_a_write_into_a_full_pipe_parks_and_finishes_where_it_stopped(guest: Guest) -> None:
    pid = guest.k.ids.pid
    r, w, held = _full_pipe()
    try:
        fd = guest.k.fds.install(OpenFile(host_fd=w, flags=os.O_WRONLY))
        data = bytes(range(256)) * 40  # 10240 bytes: two pages and a half
        buf = guest.mem.alloc(data)
        tid, _, _ = guest.clone3()
        rip = guest.cpu.regs["rip"]
        assert guest.call(SYS_WRITE, fd, buf, len(data)) == 0  # parked: the child runs
        assert guest.tid() == tid
        threads = guest.k.threads
        assert threads is not None and threads.threads[0].state is State.BLOCKED
        assert guest.call(SYS_YIELD) == 0 and guest.tid() == tid  # still full
        assert _drain(r, 2 * PAGE) == b"\xee" * 2 * PAGE  # two pages free
        assert guest.call(SYS_YIELD) == SYS_WRITE and guest.tid() == pid  # made again
        assert guest.cpu.regs["rip"] == rip - 2
        assert guest.call(SYS_WRITE, fd, buf, len(data)) == 0  # two pages went in
        assert threads.threads[0].progress == 2 * PAGE and guest.tid() == tid
        assert _drain(r, held) == b"\xee" * (held - 2 * PAGE) + data[:2 * PAGE]
        word = guest.mem.alloc(4)
        assert guest.call(SYS_FUTEX, word, WAIT, 0) == SYS_WRITE and guest.tid() == pid
        assert guest.call(SYS_WRITE, fd, buf, len(data)) == len(data)  # the whole count
        assert threads.threads[0].progress == 0
        assert os.read(r, 1 << 16) == data[2 * PAGE:]
    finally:
        os.close(r)


def test_a_signal_ends_a_parked_write_with_the_count_written(guest: Guest) -> None:
    pid = guest.k.ids.pid
    r, w, _ = _full_pipe()
    try:
        fd = guest.k.fds.install(OpenFile(host_fd=w, flags=os.O_WRONLY))
        buf = guest.mem.alloc(b"x" * 3 * PAGE)
        guest.clone3()
        assert guest.call(SYS_WRITE, fd, buf, 3 * PAGE) == 0
        _drain(r, PAGE)
        assert guest.call(SYS_YIELD) == SYS_WRITE
        assert guest.call(SYS_WRITE, fd, buf, 3 * PAGE) == 0  # one page in, parked again
        threads = guest.k.threads
        assert threads is not None
        guest.k.signals.blocked = 0
        assert guest.call(SYS_TGKILL, pid, pid, 12) == 0
        main = threads.threads[0]
        assert main.state is State.RUNNABLE and main.result == PAGE and main.progress == 0
    finally:
        os.close(r)


def test_wait4_parks_until_the_child_ends(guest: Guest) -> None:
    pid = guest.k.ids.pid
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.read(go_r, 1)
        os._exit(7)
    os.close(go_r)
    try:
        guest.k.children.add(child)
        status = guest.mem.alloc(4)
        tid, _, _ = guest.clone3()
        assert guest.call(SYS_WAIT4, child, status, 0, 0) == 0  # parked: the thread runs
        assert guest.tid() == tid
        threads = guest.k.threads
        assert threads is not None
        wait = threads.threads[0].wait
        assert wait is not None and len(wait.pidfds) == 1
        pidfd = wait.pidfds[0]
        assert guest.call(SYS_YIELD) == 0 and guest.tid() == tid  # the child runs on
        os.write(go_w, b"!")
        word = guest.mem.alloc(4)
        # Only main can run once the thread waits: the scheduler waits for the child's end.
        assert guest.call(SYS_FUTEX, word, WAIT, 0) == SYS_WAIT4 and guest.tid() == pid
        with pytest.raises(OSError):
            os.fstat(pidfd)  # the wait's pidfd was closed when it ended
        assert guest.call(SYS_WAIT4, child, status, 0, 0) == child
        assert struct.unpack("<i", guest.mem.read(status, 4))[0] == 7 << 8
    finally:
        os.close(go_w)
        if child in guest.k.children:
            os.waitpid(child, 0)


def test_a_nonblocking_fd_keeps_eagain(guest: Guest) -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        fd = guest.k.fds.install(OpenFile(host_fd=r, flags=os.O_RDONLY | os.O_NONBLOCK))
        guest.clone3()
        threads = guest.k.threads
        assert threads is not None
        buf = guest.mem.alloc(8)
        assert guest.call(SYS_READ, fd, buf, 8) == -errno.EAGAIN
        assert threads.switches == 0 and threads.threads[0].state is State.RUNNABLE
    finally:
        os.close(w)
