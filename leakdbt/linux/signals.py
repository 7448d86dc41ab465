"""Signal state: dispositions, the blocked mask, pending signals, the alternate stack, and the
layouts of siginfo and of the signal frame (delivery itself: leakdbt.linux.sigdeliver).

One mechanism for every source: a signal is *sent* (queued with its siginfo) and later
*delivered* — between two engine runs, after the system call that sent it or made it
deliverable, or at once for a synchronous fault (the machine's ``on_fault``).  Delivery to a
handler builds Linux's x86-64 ``struct rt_sigframe`` (arch/x86/kernel/signal.c,
uapi/asm/sigcontext.h) on the guest's stack or alternate stack; ``rt_sigreturn`` reads it
back, including any change the handler made to the saved registers.

Without a handler, the default action is Linux's: ignore (SIGCHLD, SIGURG, SIGWINCH, SIGCONT)
or end the guest with exit status 128+signal (a :class:`GuestFault`).  The guest has one
thread, so the mask and the alternate stack are process-wide here.
"""

from __future__ import annotations

import errno
import signal
import struct
from dataclasses import dataclass, field
from typing import Protocol

from leakdbt.errors import GuestFault

NSIG = 64
SIG_DFL, SIG_IGN = 0, 1
SA_SIGINFO, SA_RESTORER, SA_ONSTACK = 4, 0x04000000, 0x08000000
SA_RESTART, SA_NODEFER, SA_RESETHAND = 0x10000000, 0x40000000, 0x80000000
SS_ONSTACK, SS_DISABLE, SS_AUTODISARM = 1, 2, 1 << 31
MINSIGSTKSZ = 2048
UNBLOCKABLE = (1 << signal.SIGKILL - 1) | (1 << signal.SIGSTOP - 1)

# si_code values (uapi/asm-generic/siginfo.h)
SI_USER, SI_KERNEL, SI_TIMER, SI_TKILL = 0, 0x80, -2, -6

IGNORED_BY_DEFAULT = frozenset({signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH,
                                signal.SIGCONT})
# Stopping signals: there is no job control to stop for, so they are ignored (documented).
STOP_BY_DEFAULT = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
SYNCHRONOUS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                         signal.SIGTRAP})

# struct sigcontext (64-bit) general registers, in order; then cs, gs, fs, ss (u16 each),
# err, trapno, oldmask, cr2, fpstate, reserved1[8].
SIGCONTEXT_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi",
                   "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "rflags")
SIGCONTEXT = struct.Struct("<18Q4H5Q64x")  # 256 bytes
STACK_T = struct.Struct("<Qi4xQ")  # ss_sp, ss_flags, ss_size: 24 bytes
UC_FLAGS = 2 | 4  # UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS (FXSAVE format, no XSAVE)
UCONTEXT_SIZE = 8 + 8 + STACK_T.size + SIGCONTEXT.size + 8  # 304
SIGINFO_SIZE = 128
FRAME_SIZE = 8 + UCONTEXT_SIZE + SIGINFO_SIZE  # pretcode, uc, info
FXSAVE_SIZE = 512
USER_CS, USER_SS = 0x33, 0x2B
# Flags a signal return may change (Linux's FIX_EFLAGS); DF, TF and RF are cleared on entry.
FIX_EFLAGS = 0x50DD5  # AC|RF|OF|DF|TF|SF|ZF|AF|PF|CF (x86 signal.c)
ENTRY_CLEARED_FLAGS = 0x400 | 0x100 | 0x10000
RED_ZONE = 128


class SignalCpu(Protocol):
    """What delivery needs of the machine besides registers: the FPU image."""

    def reg(self, name: str) -> int: ...

    def set_reg(self, name: str, value: int) -> None: ...

    def fxsave(self) -> bytes: ...

    def fxrstor(self, image: bytes) -> None: ...


@dataclass
class Action:
    """A ``struct kernel_sigaction`` (handler, flags, restorer, mask)."""

    handler: int = SIG_DFL
    flags: int = 0
    restorer: int = 0
    mask: int = 0

    LAYOUT = struct.Struct("<4Q")

    def pack(self) -> bytes:
        return self.LAYOUT.pack(self.handler, self.flags, self.restorer, self.mask)

    @classmethod
    def unpack(cls, raw: bytes) -> Action:
        return cls(*cls.LAYOUT.unpack(raw))


@dataclass
class AltStack:
    """sigaltstack(2) state."""

    sp: int = 0
    size: int = 0
    flags: int = SS_DISABLE

    def contains(self, sp: int) -> bool:
        """Linux's on_sig_stack (the stack grows down; the top byte belongs to it)."""
        return self.size > 0 and self.sp < sp <= self.sp + self.size

    def ss_flags(self, sp: int) -> int:
        """What sigaltstack(2) reports as ss_flags for a thread at ``sp``."""
        if self.size == 0 or self.flags & SS_DISABLE:
            return SS_DISABLE
        return (SS_ONSTACK if self.contains(sp) else 0) | (self.flags & SS_AUTODISARM)


def siginfo(sig: int, code: int, *fields: int, layout: str = "") -> bytes:
    """A 128-byte siginfo_t: signo, errno 0, code, then the union at offset 16."""
    return (struct.pack("<iii4x", sig, 0, code) + struct.pack("<" + layout, *fields)
            ).ljust(SIGINFO_SIZE, b"\0")


def sender_info(sig: int, code: int, pid: int, uid: int) -> bytes:
    """siginfo of kill(2)/tgkill(2): the sender's pid and uid."""
    return siginfo(sig, code, pid, uid, layout="iI")


def fault_info(fault: GuestFault) -> bytes:
    """siginfo of a synchronous fault: its si_code and si_addr."""
    return siginfo(fault.signo, fault.code, fault.fault_address, layout="Q")


@dataclass
class Signals:
    """The guest's signal state."""

    actions: dict[int, Action] = field(default_factory=dict)
    blocked: int = 0
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # (signal, siginfo)
    altstack: AltStack = field(default_factory=AltStack)
    sigreturn: bool = False  # rt_sigreturn asked for a frame to be read back
    suspended_mask: int | None = None  # rt_sigsuspend: the mask to restore after the handler
    delivered: int = 0  # handlers entered (for --stats)

    def action(self, sig: int) -> Action:
        return self.actions.get(sig) or Action()

    def is_blocked(self, sig: int) -> bool:
        return bool(self.blocked >> (sig - 1) & 1)

    def is_ignored(self, sig: int) -> bool:
        handler = self.action(sig).handler
        return handler == SIG_IGN or handler == SIG_DFL and (
            sig in IGNORED_BY_DEFAULT or sig in STOP_BY_DEFAULT)

    def send(self, sig: int, info: bytes) -> None:
        """Queue ``sig``; an ignored one is dropped, a standard one is queued only once."""
        if self.is_ignored(sig) and not self.is_blocked(sig):
            return
        if sig < signal.SIGRTMIN and any(s == sig for s, _ in self.pending):
            return
        self.pending.append((sig, info))

    def pending_mask(self) -> int:
        mask = 0
        for sig, _ in self.pending:
            mask |= 1 << (sig - 1)
        return mask

    def take(self, allowed: int) -> tuple[int, bytes] | None:
        """Dequeue the lowest pending signal in ``allowed`` (synchronous ones first)."""
        candidates = [(s not in SYNCHRONOUS, s, i) for i, (s, _) in enumerate(self.pending)
                      if allowed >> (s - 1) & 1]
        if not candidates:
            return None
        _, _, index = min(candidates)
        return self.pending.pop(index)

    def needs_attention(self) -> bool:
        """Is there work for :func:`after_syscall` (cheap: checked after every call)?"""
        return self.sigreturn or bool(self.pending)


def set_altstack(sigs: Signals, sp: int, ss_sp: int, ss_flags: int, ss_size: int) -> int:
    """sigaltstack(2)'s change: 0, or -errno (EPERM on it, EINVAL, ENOMEM)."""
    if sigs.altstack.contains(sp):
        return -errno.EPERM
    mode = ss_flags & ~SS_AUTODISARM
    if mode not in (0, SS_DISABLE, SS_ONSTACK):
        return -errno.EINVAL
    if mode == SS_DISABLE:
        sigs.altstack = AltStack()
        return 0
    if ss_size < MINSIGSTKSZ:
        return -errno.ENOMEM
    sigs.altstack = AltStack(ss_sp, ss_size, ss_flags & SS_AUTODISARM)
    return 0
