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
from leakdbt.linux import sys_fs, sys_mem, sys_proc, sys_xattr
from leakdbt.linux.kernel import Kernel, Registers
from leakdbt.linux.sys_proc import GuestExit
from leakdbt.linux.syscall_names import SYSCALL_NAMES
from leakdbt.machine.memory import GuestMemoryFault

ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


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
    for module in (sys_fs, sys_mem, sys_proc, sys_xattr):
        for nr, (name, handler) in module.HANDLERS.items():
            if nr in table:
                raise RuntimeError(f"system call {nr} ({name}) registered twice")
            table[nr] = Syscall(nr, name, handler, _arity(handler))
    return table


class GuestCpu(Registers, Protocol):
    """What the dispatcher needs of the machine."""

    exited: bool

    def stop(self) -> None: ...


class SyscallDispatcher:
    """Called by the machine on every ``syscall`` instruction."""

    def __init__(self, kernel: Kernel, *, strict: bool = False,
                 stderr: TextIO | None = None) -> None:
        self.kernel = kernel
        self.strict = strict
        self.table = build_table()
        self.counts: Counter[str] = Counter()
        self._reported: set[int] = set()
        self._stderr = stderr or sys.stderr

    def __call__(self, machine: GuestCpu) -> None:
        nr = machine.reg("rax")
        entry = self.table.get(nr)
        if entry is None:
            name = SYSCALL_NAMES.get(nr, f"#{nr}")
            self.counts[name] += 1
            if self.strict:
                raise UnsupportedSyscall(f"unsupported system call {name} ({nr}) (--strict)")
            if nr not in self._reported:
                self._reported.add(nr)
                self._stderr.write(f"leakdbt: unsupported system call {name} ({nr}) "
                                   "returns -ENOSYS\n")
                self._stderr.flush()
            result = -errno.ENOSYS
        else:
            self.counts[entry.name] += 1
            args = [machine.reg(r) for r in ARG_REGS[:entry.nargs]]
            try:
                result = entry.handler(self.kernel, *args)
            except GuestMemoryFault:
                result = -errno.EFAULT
            except GuestExit as e:
                self.kernel.exit_status = e.status
                machine.exited = True
                machine.stop()
                return
        rip = machine.reg("rip")
        machine.set_reg("r11", machine.reg("rflags"))
        machine.set_reg("rcx", rip)
        machine.set_reg("rax", result)
