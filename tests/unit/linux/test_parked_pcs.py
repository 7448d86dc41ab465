"""Where parked threads resume (ThreadGroup.parked_pcs, registered on the CPU's
``parked_pcs``): what the dispatcher checks before it rewrites an entry jump, so that no
thread resumes in the middle of one (leakdbt.dbt.dispatch.Dispatcher._switch)."""

from __future__ import annotations

import os

from leakdbt.linux.files import OpenFile
from leakdbt.linux.threads import State
from tests.unit.linux.test_thread_scheduler import SYS_EXIT, SYS_FUTEX, SYS_YIELD, WAIT, Guest
from tests.unit.linux.test_thread_scheduler import guest as guest  # noqa: F401  (fixture)


def _parked(g: Guest) -> list[int]:
    return [pc for source in g.cpu.parked_pcs for pc in source()]


def test_every_thread_but_the_running_one_is_listed_at_its_saved_rip(guest: Guest) -> None:
    assert guest.cpu.parked_pcs == []  # no thread group yet: nothing parked
    guest.cpu.regs["rip"] = 0x401000
    guest.clone3()
    threads = guest.k.threads
    assert threads is not None and len(guest.cpu.parked_pcs) == 1
    assert _parked(guest) == [0x401000]  # the child starts where the parent's clone3 was
    guest.cpu.regs["rip"] = 0x402345
    guest.call(SYS_YIELD)  # the child runs: main is parked at its yield
    assert _parked(guest) == [0x402345]
    guest.cpu.regs["rip"] = 0x403000
    guest.call(SYS_EXIT, 0)  # the child ends: main runs, nothing is parked
    assert threads.threads[1].state is State.EXITED
    assert _parked(guest) == []


def test_a_thread_that_may_make_its_read_again_is_listed_at_both_addresses(
        guest: Guest) -> None:
    """Blocked in a read of an empty pipe: it resumes after the syscall instruction (a
    signal's -EINTR) or at it (the read is made again)."""
    r, w = os.pipe()
    try:
        fd = guest.k.fds.install(OpenFile(host_fd=r, flags=os.O_RDONLY))
        buf = guest.mem.alloc(16)
        guest.clone3()
        guest.cpu.regs["rip"] = 0x404002
        guest.call(0, fd, buf, 16)  # main blocks: the child runs
        assert sorted(_parked(guest)) == [0x404000, 0x404002]
        os.write(w, b"data")
        guest.cpu.regs["rip"] = 0x405000
        guest.call(SYS_FUTEX, guest.mem.alloc(4), WAIT, 0)  # the child waits: main reads
        assert guest.cpu.regs["rip"] == 0x404000
        assert _parked(guest) == [0x405000]
    finally:
        os.close(w)
