"""The guest's view of Linux: process state shared by all system-call handlers.

System-call handlers are plain functions ``handler(k: Kernel, *args: int) -> int``: they take the
raw 64-bit argument registers (unsigned; use :func:`s32`/:func:`s64` to sign-extend) and return
the result or ``-errno``.  Each syscall module exports a ``HANDLERS`` table
``{number: (name, handler)}``; :mod:`leakdbt.linux.syscalls` merges them.  Marshalling lives in
the handlers; state lives here and in the objects it points to (Miasm's split).
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from leakdbt.errors import LimitExceeded
from leakdbt.linux.childwatch import ChildWatch
from leakdbt.linux.signals import Signals
from leakdbt.linux.timers import Timers

if TYPE_CHECKING:
    from leakdbt.linux.files import FdTable
    from leakdbt.linux.fs import FileSystem
    from leakdbt.linux.threads import ThreadGroup
    from leakdbt.loader.modules import ModuleMap
    from leakdbt.machine.memory import AddressSpace


class Registers(Protocol):
    """The guest CPU's registers, by lower-case name (``rax``, ``fs_base``...)."""

    def reg(self, name: str) -> int: ...

    def set_reg(self, name: str, value: int) -> None: ...


def s32(value: int) -> int:
    """Sign-extend the low 32 bits (fd and int arguments arrive as 64-bit registers)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def s64(value: int) -> int:
    """Interpret a 64-bit register as a signed integer."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >> 63 else value


EFAULT = -errno.EFAULT


class Unsupported(Exception):
    """A request leakdbt does not implement (a clone flag combination, an exec...): the
    dispatcher names ``what`` once on stderr and fails the call with ``-err`` (fatal under
    ``--strict``), so that nothing unsupported passes silently."""

    def __init__(self, what: str, err: int = errno.ENOSYS) -> None:
        super().__init__(what)
        self.what = what
        self.err = err


@dataclass
class ProcessIds:
    """Identity the guest sees (at start the host's own, so that output matches native runs;
    the guest's set*id calls change this view only, never the host's ids: leakdbt.linux.sys_ids).
    ``suid``/``sgid`` of -1 mean "the effective id" (Linux's saved ids at exec); ``groups``
    None means the host's supplementary groups."""

    pid: int
    ppid: int
    uid: int
    gid: int
    euid: int
    egid: int
    suid: int = -1
    sgid: int = -1
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.suid == -1:
            self.suid = self.euid
        if self.sgid == -1:
            self.sgid = self.egid


@dataclass
class Kernel:
    """Everything a system-call handler may touch.

    ``mem`` is the machine's address space (guest memory, and mmap/brk/mprotect); ``modules``
    tells which ELF file lies where (for ``symbol+offset`` locations).
    """

    mem: AddressSpace
    fs: FileSystem
    fds: FdTable
    ids: ProcessIds
    exe_path: str  # guest path of the main program (for /proc/self/exe and AT_EXECFN)
    modules: ModuleMap = field(default_factory=lambda: _module_map())
    cpu: Registers = None  # type: ignore[assignment]  # set by the launcher
    exit_status: int | None = None
    tid_address: int = 0
    signals: Signals = field(default_factory=Signals)
    timers: Timers = field(default_factory=Timers)
    fs_base: int = 0
    gs_base: int = 0
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    children: set[int] = field(default_factory=set)  # pids of forked children (sys_clone)
    child_watch: ChildWatch = field(default_factory=ChildWatch)  # their ends -> SIGCHLD
    vfork_fd: int = -1  # a vfork child: host pipe end whose closing releases the parent
    threads: ThreadGroup | None = None  # the guest's threads, from its first clone or wait
    entropy: Callable[[int], bytes] = os.urandom  # getrandom(2), AT_RANDOM
    clock_ns: Callable[[int], int] = time.clock_gettime_ns  # host clock id -> now
    wait_until: Callable[[int, int], None] = field(
        default=lambda clock, ns: sleep_until(clock, ns))  # block until clock reads ns
    virtual_time: bool = False  # clocks and entropy of VirtualTime (leakdbt check)
    # --timeout: (its seconds, the time.monotonic() at which it ends the run); host waits
    # (blocking.py, the threads' scheduler) end there too, not only the engine's runs.
    timeout: tuple[float, float] | None = None

    def timeout_left(self, what: str) -> float | None:
        """Seconds until --timeout ends the run (None: no --timeout); past it, the
        :class:`~leakdbt.errors.LimitExceeded` that ends the run, saying the guest was
        waiting in ``what``."""
        if self.timeout is None:
            return None
        seconds, at = self.timeout
        left = at - time.monotonic()
        if left <= 0:
            raise LimitExceeded(f"--timeout {seconds:g} s reached while the guest waited in "
                                f"{what}")
        return left


def sleep_until(clock: int, deadline_ns: int) -> None:
    """Sleep on the host until ``clock`` (a host clock id) reads ``deadline_ns``."""
    while (left := deadline_ns - time.clock_gettime_ns(clock)) > 0:
        time.sleep(left / 1e9)


class VirtualTime:
    """Deterministic entropy and clocks, for runs that must repeat exactly (``leakdbt
    check``): entropy from a seeded generator; every clock starts at the same instant and
    advances one microsecond per reading."""

    EPOCH_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._ticks = 0

    def entropy(self, count: int) -> bytes:
        return self._random.randbytes(count)

    def clock_ns(self, clock: int) -> int:
        self._ticks += 1
        base = self.EPOCH_NS if clock == time.CLOCK_REALTIME else 10**12
        return base + self._ticks * 1000

    def wait_until(self, clock: int, ns: int) -> None:
        """Waiting passes no host time: the clocks jump to ``ns``."""
        base = self.EPOCH_NS if clock == time.CLOCK_REALTIME else 10**12
        self._ticks = max(self._ticks, -(-(ns - base) // 1000))

    def apply(self, kernel: Kernel) -> None:
        kernel.entropy = self.entropy
        kernel.clock_ns = self.clock_ns
        kernel.wait_until = self.wait_until
        kernel.virtual_time = True


def _module_map() -> ModuleMap:
    from leakdbt.loader.modules import ModuleMap

    return ModuleMap()
