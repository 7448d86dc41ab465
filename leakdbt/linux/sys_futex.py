"""Waiting between threads: futex(2), and sleeps that let other threads run (nanosleep(2),
clock_nanosleep(2), while the guest has more than one thread).  (A read that would block
waits in leakdbt.linux.sys_fs, through leakdbt.linux.blocking.park_on_fd.)

A wait blocks the calling thread in the scheduler (leakdbt.linux.threads): the call returns
when a wake, a timeout or a signal ends it, and other threads run meanwhile.  Operations:
FUTEX_WAIT, FUTEX_WAKE, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP, FUTEX_WAIT_BITSET,
FUTEX_WAKE_BITSET, with FUTEX_PRIVATE_FLAG (private and shared are one here: one address
space) and FUTEX_CLOCK_REALTIME; relative timeouts (FUTEX_WAIT) and absolute ones
(FUTEX_WAIT_BITSET).  Priority-inheritance operations are :class:`Unsupported` (named on
stderr, -ENOSYS).
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, Unsupported, s32
from leakdbt.linux.sys_clone import threads_of
from leakdbt.linux.sys_proc import sys_clock_nanosleep as _single_clock_nanosleep
from leakdbt.linux.sys_proc import sys_nanosleep as _single_nanosleep
from leakdbt.linux.threads import BITSET_ANY, Wait

FUTEX_WAIT, FUTEX_WAKE, FUTEX_FD, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE = 0, 1, 2, 3, 4
FUTEX_WAKE_OP, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 5, 9, 10
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
PI_OPERATIONS = {6: "FUTEX_LOCK_PI", 7: "FUTEX_UNLOCK_PI", 8: "FUTEX_TRYLOCK_PI",
                 11: "FUTEX_WAIT_REQUEUE_PI", 12: "FUTEX_CMP_REQUEUE_PI",
                 13: "FUTEX_LOCK_PI2"}
NS = 1_000_000_000
TIMER_ABSTIME = 1
# clock_nanosleep's clock ids -> host clocks (sys_proc.CLOCKS; the CPU-time ones refused)
SLEEP_CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 7: time.CLOCK_BOOTTIME}


def _timespec(k: Kernel, address: int) -> int | None:
    """A struct timespec in ns; None when it is invalid (EINVAL)."""
    sec, nsec = struct.unpack("<qq", k.mem.read(address, 16))
    if sec < 0 or not 0 <= nsec < NS:
        return None
    return sec * NS + nsec


def _word(k: Kernel, address: int) -> int:
    return int(struct.unpack("<I", k.mem.read(address, 4))[0])


def _wait(k: Kernel, uaddr: int, val: int, timeout: int, bitset: int, absolute: bool,
          realtime: bool) -> int:
    if not bitset:
        return -errno.EINVAL
    deadline = None
    if timeout:
        ns = _timespec(k, timeout)
        if ns is None:
            return -errno.EINVAL
        clock = time.CLOCK_REALTIME if realtime else time.CLOCK_MONOTONIC
        deadline = (clock, ns if absolute else k.clock_ns(clock) + ns)
    if _word(k, uaddr) != val & 0xFFFF_FFFF:
        return -errno.EAGAIN
    threads_of(k).block(Wait(futex=uaddr, bitset=bitset, deadline=deadline))
    return 0  # replaced by what ends the wait


def _wake(k: Kernel, uaddr: int, count: int, bitset: int = BITSET_ANY) -> int:
    if not bitset:
        return -errno.EINVAL
    if k.threads is None:
        return 0
    return k.threads.wake(uaddr, max(count, 1), bitset)  # Linux wakes one for count <= 0


def _requeue(k: Kernel, uaddr: int, nwake: int, nrequeue: int, uaddr2: int,
             expected: int | None) -> int:
    if nwake < 0 or nrequeue < 0:
        return -errno.EINVAL
    if uaddr2 & 3:
        return -errno.EINVAL
    if expected is not None and _word(k, uaddr) != expected & 0xFFFF_FFFF:
        return -errno.EAGAIN
    if k.threads is None:
        return 0
    woken = k.threads.wake(uaddr, nwake) if nwake else 0
    return woken + k.threads.futexes.requeue(uaddr, uaddr2, nrequeue)


def _sign12(value: int) -> int:
    value &= 0xFFF
    return value - 0x1000 if value & 0x800 else value


WAKE_OPS: dict[int, Callable[[int, int], int]] = {
    0: lambda old, arg: arg,  # FUTEX_OP_SET
    1: lambda old, arg: old + arg,  # FUTEX_OP_ADD
    2: lambda old, arg: old | arg,  # FUTEX_OP_OR
    3: lambda old, arg: old & ~arg,  # FUTEX_OP_ANDN
    4: lambda old, arg: old ^ arg,  # FUTEX_OP_XOR
}
WAKE_CMPS: dict[int, Callable[[int, int], bool]] = {
    0: lambda a, b: a == b, 1: lambda a, b: a != b, 2: lambda a, b: a < b,
    3: lambda a, b: a <= b, 4: lambda a, b: a > b, 5: lambda a, b: a >= b,
}


def _wake_op(k: Kernel, uaddr: int, nwake: int, nwake2: int, uaddr2: int, encoded: int) -> int:
    """FUTEX_WAKE_OP: change the word at uaddr2, wake at uaddr, and at uaddr2 too if the
    word's old value passes the encoded comparison (futex(2))."""
    op, cmp = encoded >> 28 & 7, encoded >> 24 & 15
    oparg, cmparg = _sign12(encoded >> 12), _sign12(encoded)
    if op not in WAKE_OPS or cmp not in WAKE_CMPS:
        return -errno.ENOSYS
    if uaddr2 & 3:
        return -errno.EINVAL
    if encoded >> 31 & 1:  # FUTEX_OP_OPARG_SHIFT (bit 3 of the 4-bit op field)
        if not 0 <= oparg <= 31:
            return -errno.EINVAL
        oparg = 1 << oparg
    old = _word(k, uaddr2)
    k.mem.write(uaddr2, struct.pack("<I", WAKE_OPS[op](old, oparg) & 0xFFFF_FFFF))
    woken = _wake(k, uaddr, nwake)
    if WAKE_CMPS[cmp](s32(old), cmparg):
        woken += _wake(k, uaddr2, nwake2)
    return woken


def sys_futex(k: Kernel, uaddr: int, op: int, val: int, timeout: int, uaddr2: int,
              val3: int) -> int:
    cmd = op & 0x7F
    realtime = bool(op & FUTEX_CLOCK_REALTIME)
    if op & ~(0x7F | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME):
        return -errno.ENOSYS
    if cmd in PI_OPERATIONS:
        raise Unsupported(f"futex operation {PI_OPERATIONS[cmd]}")
    if realtime and cmd not in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        return -errno.ENOSYS
    if uaddr & 3:
        return -errno.EINVAL
    if cmd == FUTEX_WAIT:
        return _wait(k, uaddr, val, timeout, BITSET_ANY, False, realtime)
    if cmd == FUTEX_WAIT_BITSET:
        return _wait(k, uaddr, val, timeout, val3 & 0xFFFF_FFFF, True, realtime)
    if cmd == FUTEX_WAKE:
        return _wake(k, uaddr, s32(val))
    if cmd == FUTEX_WAKE_BITSET:
        return _wake(k, uaddr, s32(val), val3 & 0xFFFF_FFFF)
    if cmd == FUTEX_REQUEUE:
        return _requeue(k, uaddr, s32(val), s32(timeout), uaddr2, None)
    if cmd == FUTEX_CMP_REQUEUE:
        return _requeue(k, uaddr, s32(val), s32(timeout), uaddr2, val3)
    if cmd == FUTEX_WAKE_OP:
        return _wake_op(k, uaddr, s32(val), s32(timeout), uaddr2, val3 & 0xFFFF_FFFF)
    return -errno.ENOSYS


def _threaded(k: Kernel) -> bool:
    return k.threads is not None and len(k.threads.live()) > 1


def _sleep(k: Kernel, clock: int, deadline: int) -> int:
    threads_of(k).block(Wait(deadline=(clock, deadline), timeout_result=0))
    return 0


def sys_nanosleep(k: Kernel, req: int, rem: int) -> int:
    """With other threads, a sleep is a wait in the scheduler (they run meanwhile); alone,
    the single-threaded sleep (interrupted by the guest's timers)."""
    if not _threaded(k):
        return _single_nanosleep(k, req, rem)
    ns = _timespec(k, req)
    if ns is None:
        return -errno.EINVAL
    return _sleep(k, time.CLOCK_MONOTONIC, k.clock_ns(time.CLOCK_MONOTONIC) + ns)


def sys_clock_nanosleep(k: Kernel, clk: int, flags: int, req: int, rem: int) -> int:
    host = SLEEP_CLOCKS.get(s32(clk))
    if not _threaded(k) or host is None:
        return _single_clock_nanosleep(k, clk, flags, req, rem)
    ns = _timespec(k, req)
    if ns is None:
        return -errno.EINVAL
    return _sleep(k, host, ns if flags & TIMER_ABSTIME else k.clock_ns(host) + ns)


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    35: ("nanosleep", sys_nanosleep),
    202: ("futex", sys_futex),
    230: ("clock_nanosleep", sys_clock_nanosleep),
}
"""Each works for one thread or many (one thread: the plain handlers they call)."""
