"""System-call dispatch: number -> handler, argument marshalling from registers, -errno results.

Follows the x86-64 Linux calling convention (syscall(2)): number in rax, arguments in rdi, rsi,
rdx, r10, r8, r9; result in rax; the kernel clobbers rcx (return address) and r11 (rflags).
"""

from __future__ import annotations

import errno
import inspect
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from leakdbt.errors import UnsupportedSyscall
from leakdbt.linux import (
    sigdeliver,
    sys_clone,
    sys_copy,
    sys_exec,
    sys_fs,
    sys_futex,
    sys_ids,
    sys_mem,
    sys_poll,
    sys_proc,
    sys_signal,
    sys_sockname,
    sys_wait,
    sys_xattr,
)
from leakdbt.linux.kernel import Kernel, Registers, Unsupported
from leakdbt.linux.sys_proc import GuestExit
from leakdbt.linux.syscall_names import SYSCALL_NAMES
from leakdbt.machine.memory import GuestMemoryFault

ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# Calls that may make a child: afterwards (and after the fork itself, which is deferred too)
# the child watch takes the new child in (sigdeliver.watch_children), in parent and child.
FORKS = frozenset({56, 57, 58, 435})


@dataclass(frozen=True)
class Syscall:
    """One table entry: the handler and how many argument registers it takes."""

    number: int
    name: str
    handler: Callable[..., int]
    nargs: int


def _arity(handler: Callable[..., int]) -> int:
    params = list(inspect.signature(handler).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 6
    return len(params)


def build_table() -> dict[int, Syscall]:
    """Merge the per-area handler tables; a number claimed twice is a programming error."""
    table: dict[int, Syscall] = {}
    for module in (sys_clone, sys_copy, sys_exec, sys_fs, sys_futex, sys_ids, sys_mem, sys_poll,
                   sys_proc, sys_signal, sys_sockname, sys_wait, sys_xattr):
        for nr, (name, handler) in module.HANDLERS.items():
            if nr in table:
                raise RuntimeError(f"system call {nr} ({name}) registered twice")
            table[nr] = Syscall(nr, name, handler, _arity(handler))
    return table


class GuestCpu(Registers, Protocol):
    """What the dispatcher needs of the machine."""

    exited: bool

    def stop(self) -> None: ...

    def defer(self, work: Callable[[], None]) -> None: ...


class SyscallDispatcher:
    """Called by the machine on every ``syscall`` instruction."""

    def __init__(self, kernel: Kernel, *, strict: bool = False,
                 stderr: TextIO | None = None) -> None:
        self.kernel = kernel
        self.strict = strict
        self.table = build_table()
        self.counts: Counter[str] = Counter()
        self._reported: set[str] = set()
        self._stderr = stderr or sys.stderr

    def __call__(self, machine: GuestCpu) -> None:
        nr = machine.reg("rax")
        entry = self.table.get(nr)
        if entry is None:
            name = SYSCALL_NAMES.get(nr, f"#{nr}")
            self.counts[name] += 1
            result = self.unsupported(f"system call {name} ({nr})", errno.ENOSYS)
        else:
            self.counts[entry.name] += 1
            args = [machine.reg(r) for r in ARG_REGS[:entry.nargs]]
            try:
                result = entry.handler(self.kernel, *args)
            except GuestMemoryFault:
                result = -errno.EFAULT
            except Unsupported as e:
                result = self.unsupported(f"{e.what} ({entry.name}, {nr})", e.err)
            except GuestExit as e:
                self.kernel.exit_status = e.status
                machine.exited = True
                machine.stop()
                return
        rip = machine.reg("rip")  # the engine reports the syscall instruction's own address
        machine.set_reg("r11", machine.reg("rflags"))
        machine.set_reg("rcx", rip + 2)  # the return address, as the CPU's syscall sets it
        machine.set_reg("rax", result)
        kernel = self.kernel
        if kernel.signals.needs_attention() or kernel.timers.active or (
                nr in FORKS and result >= 0):
            machine.defer(self._after_syscall)  # runs once the syscall instruction is done
        threads = kernel.threads
        if threads is not None and threads.switch_pending:
            machine.defer(threads.switch)  # the caller blocked, yielded or ended

    def _after_syscall(self) -> None:
        sigdeliver.after_syscall(self.kernel)

    def unsupported(self, what: str, err: int) -> int:
        """Name ``what`` on stderr the first time (fatal under ``--strict``); ``-err``."""
        if self.strict:
            raise UnsupportedSyscall(f"unsupported {what} (--strict)")
        if what not in self._reported:
            self._reported.add(what)
            self._stderr.write(f"leakdbt: unsupported {what} returns "
                               f"-{errno.errorcode.get(err, str(err))}\n")
            self._stderr.flush()
        return -err
