"""Threads without an engine: clone/clone3 with pthread_create's flags, the futex table and
operations, the scheduler's turns (round-robin, blocking, quantum, timeouts, deadlock),
thread exit with CHILD_CLEARTID, tgkill to a thread, sched_yield — driven through the
system-call dispatcher with a fake CPU whose "context" is a copy of its registers."""

from __future__ import annotations

import errno
import io
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leakdbt.errors import GuestError, UnsupportedSyscall
from leakdbt.linux.files import FdTable
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds, VirtualTime
from leakdbt.linux.syscalls import SyscallDispatcher
from leakdbt.linux.threads import FutexTable, State, Thread, Wait, quantum_from_env
from tests.unit.linux.test_sys_fs import FakeMemory

PTHREAD = 0x3D0F00  # glibc 2.36 pthread_create's clone flags
CLONE_PIDFD, CLONE_FILES, CLONE_VFORK = 0x1000, 0x400, 0x4000
SYS_CLONE, SYS_CLONE3, SYS_FUTEX, SYS_EXIT, SYS_EXIT_GROUP = 56, 435, 202, 60, 231
SYS_GETTID, SYS_TGKILL, SYS_YIELD, SYS_ROBUST, SYS_NANOSLEEP = 186, 234, 24, 273, 35
WAIT, WAKE, REQUEUE, CMP_REQUEUE, WAKE_OP, WAIT_BITSET, WAKE_BITSET = 0, 1, 3, 4, 5, 9, 10
PRIVATE, CLOCK_REALTIME = 128, 256


class FakeCpu:
    """Registers in a dict; contexts are copies of it; deferred work runs on ``drain``."""

    def __init__(self) -> None:
        self.regs: dict[str, int] = {"rip": 0x401000, "rflags": 0x202, "rsp": 0x7000,
                                     "fs_base": 0x1111}
        self.exited = False
        self.deferred: list[Callable[[], None]] = []
        self.quantum: tuple[int, object] | None = None
        self.restarts = 0
        self.thread_listeners: list[Callable[[int], None]] = []
        self.parked_pcs: list[Callable[[], list[int]]] = []

    def reg(self, name: str) -> int:
        return self.regs.get(name, 0)

    def set_reg(self, name: str, value: int) -> None:
        self.regs[name] = value & (1 << 64) - 1

    def stop(self) -> None:
        pass

    def defer(self, work: Callable[[], None]) -> None:
        self.deferred.append(work)

    def drain(self) -> None:
        while self.deferred:
            self.deferred.pop(0)()

    def save_context(self) -> object:
        return dict(self.regs)

    def context_pc(self, context: object) -> int:
        assert isinstance(context, dict)
        return int(context["rip"])

    def restore_context(self, context: object) -> None:
        assert isinstance(context, dict)
        self.regs = dict(context)

    def set_quantum(self, quantum: int, handler: object) -> None:
        self.quantum = (quantum, handler)

    def restart_quantum(self) -> None:
        self.restarts += 1

    def instruction_counter(self) -> None:
        return None


class Guest:
    """A kernel, its dispatcher and one fake CPU that persists across calls."""

    def __init__(self, k: Kernel, mem: FakeMemory) -> None:
        self.k, self.mem, self.cpu = k, mem, FakeCpu()
        k.cpu = self.cpu
        self.err = io.StringIO()
        self.d = SyscallDispatcher(k, stderr=self.err)

    def call(self, nr: int, *args: int, drain: bool = True) -> int:
        """Make system call ``nr`` from the running thread, run the deferred work (a switch)
        unless ``drain`` is off, and return rax: the call's result, or after a switch what
        the thread that runs now sees (the result of the call it was switched out in)."""
        self.cpu.regs["rax"] = nr
        for reg, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            self.cpu.regs[reg] = value
        self.d(self.cpu)
        if drain:
            self.cpu.drain()
        result = self.cpu.regs["rax"]
        return result - (1 << 64) if result >> 63 else result

    def tid(self) -> int:
        return self.call(SYS_GETTID)

    def word(self, address: int) -> int:
        return int(struct.unpack("<I", self.mem.read(address, 4))[0])

    def set_word(self, address: int, value: int) -> None:
        self.mem.write(address, struct.pack("<I", value))

    def clone3(self, stack: int = 0x9000, size: int = 0x1000, tls: int = 0x5555,
               flags: int = PTHREAD) -> tuple[int, int, int]:
        """A pthread_create-like clone3: (tid, its CHILD_CLEARTID word, PARENT_SETTID word)."""
        ctid, ptid = self.mem.alloc(4), self.mem.alloc(4)
        args = self.mem.alloc(struct.pack("<11Q", flags, 0, ctid, ptid, 0, stack, size, tls,
                                          0, 0, 0))
        return self.call(SYS_CLONE3, args, 88), ctid, ptid


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


# -- creating threads -------------------------------------------------------------------------


def test_clone3_makes_a_thread_with_its_own_stack_and_tls(guest: Guest) -> None:
    pid = guest.k.ids.pid
    guest.cpu.regs["r12"] = 42
    tid, ctid, ptid = guest.clone3(stack=0x9000, size=0x1000, tls=0x5555)
    assert tid == pid + 1 and guest.word(ptid) == tid
    assert guest.cpu.regs["rax"] == tid and guest.cpu.regs["fs_base"] == 0x1111  # the parent
    assert guest.cpu.quantum is not None and guest.cpu.quantum[0] == 100_000
    assert guest.call(SYS_YIELD) == 0  # the child runs now: rax 0, its stack and TLS
    regs = guest.cpu.regs
    assert (regs["rax"], regs["rsp"], regs["fs_base"], regs["r12"]) == (0, 0xA000, 0x5555, 42)
    assert regs["rcx"] == 0x401002  # after the syscall instruction, as in the parent
    assert guest.tid() == tid
    assert guest.call(SYS_YIELD) == 0  # back in the parent: its own yield returned 0
    assert guest.tid() == pid


def test_legacy_clone_takes_the_stack_top_and_child_settid(guest: Guest) -> None:
    ptid, ctid = guest.mem.alloc(4), guest.mem.alloc(4)
    flags = PTHREAD | 0x1000000  # | CLONE_CHILD_SETTID
    tid = guest.call(SYS_CLONE, flags, 0xB000, ptid, ctid, 0x7777)
    assert guest.word(ptid) == guest.word(ctid) == tid
    guest.call(SYS_YIELD)
    assert (guest.cpu.regs["rsp"], guest.cpu.regs["fs_base"]) == (0xB000, 0x7777)


@pytest.mark.parametrize(("flags", "names"), [
    (PTHREAD & ~CLONE_FILES, "CLONE_VM|CLONE_FS|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|"
     "CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID"),
    (PTHREAD | CLONE_PIDFD, "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_PIDFD|"
     "CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID"),
    (0x100 | 0x200 | 0x400 | 0x800, "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND"),
])
def test_unsupported_thread_like_flags_are_named(guest: Guest, flags: int, names: str) -> None:
    assert guest.call(SYS_CLONE, flags, 0x9000, 0, 0, 0) == -errno.ENOSYS
    assert guest.err.getvalue() == (f"leakdbt: unsupported clone flags {names} (clone, 56) "
                                    "returns -ENOSYS\n")
    assert guest.k.threads is None
    strict = SyscallDispatcher(guest.k, strict=True, stderr=io.StringIO())
    guest.d = strict
    with pytest.raises(UnsupportedSyscall, match="unsupported clone flags"):
        guest.call(SYS_CLONE, flags, 0x9000, 0, 0, 0)


# -- futex waits and wakes --------------------------------------------------------------------


def test_wait_blocks_until_a_wake_and_exit_clears_the_tid(guest: Guest) -> None:
    pid = guest.k.ids.pid
    word = guest.mem.alloc(4)
    tid, ctid, _ = guest.clone3()
    guest.set_word(ctid, tid)
    assert guest.call(SYS_FUTEX, word, WAIT | PRIVATE, 1) == -errno.EAGAIN  # *word is 0
    guest.set_word(word, 1)
    assert guest.call(SYS_FUTEX, word, WAIT | PRIVATE, 1, drain=False) == 0  # not yet
    guest.cpu.drain()  # the switch: the child runs
    assert guest.tid() == tid
    threads = guest.k.threads
    assert threads is not None and threads.futexes.waiters(word)
    assert guest.call(SYS_FUTEX, word, WAKE | PRIVATE, 5) == 1
    assert guest.call(SYS_FUTEX, word, WAKE | PRIVATE, 5) == 0
    assert guest.call(SYS_YIELD) == 0  # the parent runs: its wait returned 0
    assert guest.tid() == pid
    assert guest.call(SYS_FUTEX, ctid, WAIT, tid) == 0  # it joins; the child runs on
    assert guest.tid() == tid
    assert guest.call(SYS_EXIT, 3) == 0  # the parent runs: woken by the exit
    assert guest.word(ctid) == 0 and guest.tid() == pid
    assert [t.state for t in threads.threads] == [State.RUNNABLE, State.EXITED]
    guest.call(SYS_EXIT, 9)  # the last thread's exit ends the process
    assert guest.k.exit_status == 9 and guest.cpu.exited


def test_round_robin_order_and_preemption(guest: Guest) -> None:
    pid = guest.k.ids.pid
    tids = [guest.clone3()[0] for _ in range(3)]
    assert guest.cpu.quantum is not None
    preempt = guest.cpu.quantum[1]
    seen = []
    switched: list[int] = []
    guest.cpu.thread_listeners.append(switched.append)
    for _ in range(8):
        seen.append(guest.tid())
        preempt()  # type: ignore[operator]
    assert seen == [pid, *tids, pid, *tids]
    assert switched == [1, 2, 3, 0, 1, 2, 3, 0]
    threads = guest.k.threads
    assert threads is not None and threads.switches == 8


def test_wait_with_a_relative_timeout_times_out_on_the_virtual_clock(guest: Guest) -> None:
    word = guest.mem.alloc(4)
    ts = guest.mem.alloc(struct.pack("<qq", 2, 500))
    before = guest.k.clock_ns(time.CLOCK_MONOTONIC)
    assert guest.call(SYS_FUTEX, word, WAIT, 0, ts) == -errno.ETIMEDOUT
    assert guest.k.clock_ns(time.CLOCK_MONOTONIC) - before >= 2 * 10**9 + 500


def test_wait_bitset_timeout_is_absolute_on_the_chosen_clock(guest: Guest) -> None:
    word = guest.mem.alloc(4)
    now = guest.k.clock_ns(time.CLOCK_REALTIME)
    deadline = now + 3 * 10**9
    ts = guest.mem.alloc(struct.pack("<qq", deadline // 10**9, deadline % 10**9))
    assert guest.call(SYS_FUTEX, word, WAIT_BITSET | CLOCK_REALTIME, 0, ts, 0, 1) \
        == -errno.ETIMEDOUT
    assert guest.k.clock_ns(time.CLOCK_REALTIME) >= deadline
    past = guest.mem.alloc(struct.pack("<qq", 0, 0))
    assert guest.call(SYS_FUTEX, word, WAIT_BITSET, 0, past, 0, 1) == -errno.ETIMEDOUT


def test_a_timed_waiter_wakes_while_another_thread_runs(guest: Guest) -> None:
    pid = guest.k.ids.pid
    word = guest.mem.alloc(4)
    tid, _, _ = guest.clone3()
    ts = guest.mem.alloc(struct.pack("<qq", 0, 1000))
    guest.call(SYS_FUTEX, word, WAIT, 0, ts)
    assert guest.tid() == tid
    guest.k.clock_ns(time.CLOCK_MONOTONIC)  # virtual time passes as clocks are read
    guest.k.wait_until(time.CLOCK_MONOTONIC, guest.k.clock_ns(time.CLOCK_MONOTONIC) + 5000)
    assert guest.call(SYS_YIELD) == -errno.ETIMEDOUT
    assert guest.tid() == pid


def test_bitset_wakes_only_matching_waiters(guest: Guest) -> None:
    word = guest.mem.alloc(4)
    tids = [guest.clone3()[0] for _ in range(2)]
    threads = guest.k.threads
    assert threads is not None
    # main waits with bitset 1, then each child with bitsets 2 and 4
    guest.call(SYS_FUTEX, word, WAIT_BITSET, 0, 0, 0, 1)
    guest.call(SYS_FUTEX, word, WAIT_BITSET, 0, 0, 0, 2)
    assert guest.tid() == tids[1]
    assert guest.call(SYS_FUTEX, word, WAKE_BITSET, 10, 0, 0, 0) == -errno.EINVAL
    assert guest.call(SYS_FUTEX, word, WAKE_BITSET, 10, 0, 0, 4) == 0
    assert guest.call(SYS_FUTEX, word, WAKE_BITSET, 10, 0, 0, 2) == 1
    assert [t.tid for t in threads.futexes.waiters(word)] == [guest.k.ids.pid]
    assert guest.call(SYS_FUTEX, word, WAIT_BITSET, 0, 0, 0, 0) == -errno.EINVAL


def test_cmp_requeue_and_requeue(guest: Guest) -> None:
    a, b = guest.mem.alloc(4), guest.mem.alloc(4)
    tids = [guest.clone3()[0] for _ in range(3)]
    for _ in range(3):  # main, then the first two children wait on a; the third runs
        guest.call(SYS_FUTEX, a, WAIT, 0)
    assert guest.tid() == tids[2]
    threads = guest.k.threads
    assert threads is not None
    guest.set_word(a, 5)
    assert guest.call(SYS_FUTEX, a, CMP_REQUEUE, 1, 1, b, 4) == -errno.EAGAIN
    assert guest.call(SYS_FUTEX, a, CMP_REQUEUE, 1, 1, b, 5) == 2
    assert [t.tid for t in threads.futexes.waiters(b)] == [tids[0]]
    assert [t.tid for t in threads.futexes.waiters(a)] == [tids[1]]
    assert guest.call(SYS_FUTEX, a, REQUEUE, 0, 9, b) == 1
    assert [t.tid for t in threads.futexes.waiters(b)] == [tids[0], tids[1]]
    assert guest.call(SYS_FUTEX, a, REQUEUE, (1 << 32) - 1, 0, b) == -errno.EINVAL
    assert threads.current.tid == tids[2]
    assert [t.state for t in threads.threads] == [State.RUNNABLE, State.BLOCKED,
                                                  State.BLOCKED, State.RUNNABLE]


def test_wake_op_changes_the_word_and_wakes_by_its_old_value(guest: Guest) -> None:
    a, b = guest.mem.alloc(4), guest.mem.alloc(4)
    tid, _, _ = guest.clone3()
    guest.call(SYS_FUTEX, b, WAIT, 0)  # main waits on b
    assert guest.tid() == tid
    guest.set_word(b, 0)
    # FUTEX_OP(FUTEX_OP_ADD, 3, FUTEX_OP_CMP_GT, 0): old 0 is not > 0: nobody on b wakes
    encoded = (1 << 28) | (4 << 24) | (3 << 12) | 0
    assert guest.call(SYS_FUTEX, a, WAKE_OP, 1, 1, b, encoded) == 0
    assert guest.word(b) == 3
    # FUTEX_OP(FUTEX_OP_OR | OPARG_SHIFT, 4, FUTEX_OP_CMP_EQ, 3): old 3 == 3: main wakes
    encoded = (1 << 31) | (2 << 28) | (0 << 24) | (4 << 12) | 3
    assert guest.call(SYS_FUTEX, a, WAKE_OP, 1, 1, b, encoded) == 1
    assert guest.word(b) == 3 | 16
    assert guest.call(SYS_FUTEX, a, WAKE_OP, 1, 1, b, 7 << 24) == -errno.ENOSYS


def test_bad_futex_calls(guest: Guest) -> None:
    word = guest.mem.alloc(8)
    assert guest.call(SYS_FUTEX, word + 1, WAKE, 1) == -errno.EINVAL
    assert guest.call(SYS_FUTEX, 0x10, WAIT, 0) == -errno.EFAULT
    assert guest.call(SYS_FUTEX, word, WAKE | CLOCK_REALTIME, 1) == -errno.ENOSYS
    bad = guest.mem.alloc(struct.pack("<qq", 0, 10**9))
    assert guest.call(SYS_FUTEX, word, WAIT, 0, bad) == -errno.EINVAL
    assert guest.call(SYS_FUTEX, word, 6, 0) == -errno.ENOSYS  # FUTEX_LOCK_PI
    assert guest.err.getvalue() == ("leakdbt: unsupported futex operation FUTEX_LOCK_PI "
                                    "(futex, 202) returns -ENOSYS\n")


# -- the end of waiting: deadlock, signals, sleeps -------------------------------------------


def test_a_lone_thread_waiting_forever_is_a_deadlock(guest: Guest) -> None:
    word = guest.mem.alloc(4)
    with pytest.raises(GuestError, match=r"^deadlock: the only guest thread waits on futex "
                       rf"{word:#x} with no timeout"):
        guest.call(SYS_FUTEX, word, WAIT, 0)


def test_all_threads_waiting_forever_is_a_deadlock(guest: Guest) -> None:
    word = guest.mem.alloc(4)
    tid, ctid, _ = guest.clone3()
    guest.call(SYS_FUTEX, word, WAIT, 0)
    with pytest.raises(GuestError, match=rf"^deadlock: all 2 guest threads wait with no "
                       rf"timeout.*thread {tid} on futex {word:#x}"):
        guest.call(SYS_FUTEX, word, WAIT, 0)


def test_tgkill_interrupts_a_waiting_thread(guest: Guest) -> None:
    pid = guest.k.ids.pid
    word = guest.mem.alloc(4)
    tid, _, _ = guest.clone3()
    guest.call(SYS_FUTEX, word, WAIT, 0)
    assert guest.tid() == tid
    assert guest.call(SYS_TGKILL, pid, tid + 50, 10) == -errno.ESRCH
    assert guest.call(SYS_TGKILL, pid + 7, pid, 10) == -errno.ESRCH
    assert guest.call(SYS_TGKILL, pid, pid, 0) == 0
    guest.k.signals.blocked = 0
    threads = guest.k.threads
    assert threads is not None
    threads.threads[0].blocked = 1 << 9  # main blocks SIGUSR1: its wait goes on
    assert guest.call(SYS_TGKILL, pid, pid, 10) == 0
    assert threads.threads[0].state is State.BLOCKED
    threads.threads[0].blocked = 0
    assert guest.call(SYS_TGKILL, pid, pid, 12) == 0  # SIGUSR2 ends main's wait
    assert threads.threads[0].state is State.RUNNABLE
    assert threads.threads[0].pending and not guest.k.signals.pending


def test_sleep_lets_other_threads_run(guest: Guest) -> None:
    pid = guest.k.ids.pid
    tid, _, _ = guest.clone3()
    ts = guest.mem.alloc(struct.pack("<qq", 1, 0))
    guest.call(SYS_NANOSLEEP, ts, 0)
    assert guest.tid() == tid
    assert guest.call(SYS_NANOSLEEP, ts, 0) == 0  # both sleep: main's deadline is first
    assert guest.tid() == pid


def test_robust_list_and_exit_group(guest: Guest) -> None:
    assert guest.call(SYS_ROBUST, 0x1234, 24) == 0
    assert guest.call(SYS_ROBUST, 0x1234, 16) == -errno.EINVAL
    guest.clone3()
    guest.call(SYS_EXIT_GROUP, 4)
    assert guest.k.exit_status == 4 and guest.cpu.exited


# -- the futex table and the quantum setting -------------------------------------------------


def test_futex_table_is_first_come_first_woken() -> None:
    table = FutexTable()
    threads = [Thread(tid) for tid in range(4)]
    for t, bits in zip(threads, (1, 2, 1, 3), strict=True):
        t.wait = Wait(futex=0x100, bitset=bits)
        table.add(t, 0x100)
    assert [t.tid for t in table.take(0x100, 2, bitset=1)] == [0, 2]
    assert table.requeue(0x100, 0x200, 1) == 1
    assert [t.tid for t in table.waiters(0x200)] == [1]
    assert threads[1].wait is not None and threads[1].wait.futex == 0x200
    table.remove(threads[3])
    assert table.queues == {0x200: [threads[1]]}


@pytest.mark.parametrize(("text", "ok"), [("", 100_000), ("5000", 5000), ("0x1000", 4096),
                                          ("999", None), ("many", None), ("-1", None)])
def test_quantum_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str,
                                      ok: int | None) -> None:
    from leakdbt.errors import UsageError

    monkeypatch.setenv("LEAKDBT_QUANTUM", text)
    if ok is None:
        with pytest.raises(UsageError, match="LEAKDBT_QUANTUM"):
            quantum_from_env()
    else:
        assert quantum_from_env() == ok


def test_a_read_that_would_block_waits_and_is_made_again(guest: Guest) -> None:
    """A thread reading an empty pipe lets the others run; once the pipe holds data (and the
    others wait), it makes its read again: back at the syscall instruction, rax = read."""
    from leakdbt.linux.files import OpenFile

    pid = guest.k.ids.pid
    r, w = os.pipe()
    try:
        fd = guest.k.fds.install(OpenFile(host_fd=r, flags=os.O_RDONLY))
        buf = guest.mem.alloc(16)
        tid, _, _ = guest.clone3()
        rip = guest.cpu.regs["rip"]
        assert guest.call(0, fd, buf, 16) == 0  # the child runs: its clone3 result
        assert guest.tid() == tid
        threads = guest.k.threads
        assert threads is not None and threads.threads[0].state is State.BLOCKED
        assert guest.call(SYS_YIELD) == 0  # nothing to read yet: the child runs on
        assert guest.tid() == tid
        os.write(w, b"data")
        word = guest.mem.alloc(4)
        assert guest.call(SYS_FUTEX, word, WAIT, 0) == 0  # the child waits: main runs
        assert guest.tid() == pid
        guest.cpu.regs["rax"] = 0  # (tid() changed rax): the read's registers again
        assert guest.cpu.regs["rip"] == rip - 2 and guest.cpu.regs["rdi"] == fd
        assert guest.call(0, fd, buf, 16) == 4 and guest.mem.read(buf, 4) == b"data"
    finally:
        os.close(w)
