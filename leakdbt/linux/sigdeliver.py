"""Signal delivery: entering guest handlers through an rt_sigframe, rt_sigreturn, default
actions, and synchronous faults (see leakdbt.linux.signals for the state and layouts)."""

from __future__ import annotations

import signal
import struct
from functools import partial

from leakdbt.errors import GuestFault
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.kernel import Kernel
from leakdbt.linux.signals import (
    ENTRY_CLEARED_FLAGS,
    FIX_EFLAGS,
    FRAME_SIZE,
    FXSAVE_SIZE,
    IGNORED_BY_DEFAULT,
    RED_ZONE,
    SA_NODEFER,
    SA_ONSTACK,
    SA_RESETHAND,
    SA_RESTORER,
    SI_KERNEL,
    SI_TIMER,
    SI_TKILL,
    SI_USER,
    SIG_DFL,
    SIG_IGN,
    SIGCONTEXT,
    SIGCONTEXT_REGS,
    SS_AUTODISARM,
    SS_DISABLE,
    SS_ONSTACK,
    STACK_T,
    STOP_BY_DEFAULT,
    UC_FLAGS,
    UCONTEXT_SIZE,
    UNBLOCKABLE,
    USER_CS,
    USER_SS,
    Action,
    AltStack,
    SignalCpu,
    Signals,
    fault_info,
    set_altstack,
    siginfo,
)
from leakdbt.machine.memory import GuestMemoryFault


def kill_guest(k: Kernel, sig: int, detail: str) -> GuestFault:
    """The GuestFault that ends the guest by ``sig``'s default action."""
    rip = k.cpu.reg("rip")
    return GuestFault(sig, rip, k.modules.symbolize(rip), detail)


def _describe(sig: int, info: bytes) -> str:
    code = struct.unpack_from("<i", info, 8)[0]
    return {SI_USER: "signal sent by the guest itself", SI_TKILL: "signal sent by the guest "
            "itself", SI_TIMER: "timer expired"}.get(code, "signal")


def deliver_pending(k: Kernel) -> None:
    """Run every deliverable pending signal: enter its handler (frames nest, the last one
    runs first) or apply its default action."""
    sigs = k.signals
    while (item := sigs.take(~sigs.blocked)) is not None:
        sig, info = item
        action = sigs.action(sig)
        if action.handler == SIG_IGN:
            continue
        if action.handler == SIG_DFL:
            if sig in IGNORED_BY_DEFAULT or sig in STOP_BY_DEFAULT:
                continue
            raise kill_guest(k, sig, _describe(sig, info))
        if not enter_handler(k, sig, info, action):
            raise kill_guest(k, signal.SIGSEGV, f"no room for the frame of signal {sig}")
    if sigs.suspended_mask is not None:  # rt_sigsuspend without a handler run
        sigs.blocked, sigs.suspended_mask = sigs.suspended_mask, None


def after_syscall(k: Kernel) -> None:
    """Between engine runs after a system call: read back a signal frame (rt_sigreturn),
    fire due timers, then deliver what is deliverable."""
    sigs = k.signals
    if sigs.sigreturn:
        sigs.sigreturn = False
        if not return_from_handler(k):
            raise kill_guest(k, signal.SIGSEGV, "bad signal frame in rt_sigreturn")
    k.timers.fire_due(k)
    watch_children(k)
    HOST.drain(k.signals)
    deliver_pending(k)


def watch_children(k: Kernel) -> None:
    """Keep the child watch (leakdbt.linux.childwatch) in step with the guest's children and
    queue the SIGCHLD of every reported end.  With host time (a timer waker exists) and an
    engine that can be kicked, ends are also watched while the guest computes: the kick
    delivers their SIGCHLD at the next block boundary."""
    watch = k.child_watch
    enable_async(k)
    watch.sync(k.children)
    watch.drain(k.signals)


def enable_async(k: Kernel) -> None:
    """With host time and an engine that can be kicked, let the child watch and the host's
    signals (leakdbt.linux.hostsignals) interrupt a computing guest: their kick delivers
    at the next block boundary."""
    defer = getattr(k.cpu, "defer", None)
    if k.timers.waker is None or defer is None:
        return
    if k.child_watch.kick is None:
        k.child_watch.kick = lambda: defer(partial(after_syscall, k))
    if HOST.kick is None or getattr(HOST.kick, "kernel", None) is not k:
        kick = partial(defer, partial(after_syscall, k))
        HOST.kick = kick
        setattr(kick, "kernel", k)  # noqa: B010 - which guest the kick is for


def deliver_fault(k: Kernel, fault: GuestFault) -> bool:
    """A synchronous fault: enter the guest's handler, or return False (the guest dies).
    As in Linux (force_sig_info), a blocked or ignored fault is fatal."""
    sigs = k.signals
    action = sigs.action(fault.signo)
    if action.handler in (SIG_DFL, SIG_IGN) or sigs.is_blocked(fault.signo):
        return False
    return enter_handler(k, fault.signo, fault_info(fault), action, fault)


def enter_handler(k: Kernel, sig: int, info: bytes, action: Action,
                  fault: GuestFault | None = None) -> bool:
    """Build an rt_sigframe and point the CPU at the handler; False if the frame does not
    fit (the guest then dies of SIGSEGV, as Linux's force_sigsegv)."""
    cpu: SignalCpu = k.cpu  # type: ignore[assignment]
    sigs = k.signals
    regs = [cpu.reg(name) for name in SIGCONTEXT_REGS]
    rsp = regs[SIGCONTEXT_REGS.index("rsp")]
    alt = sigs.altstack
    stack_flags = alt.ss_flags(rsp)
    sp = rsp - RED_ZONE
    entering = False
    if action.flags & SA_ONSTACK and stack_flags & (SS_DISABLE | SS_ONSTACK) == 0:
        sp = alt.sp + alt.size
        entering = True
    fpstate = (sp - FXSAVE_SIZE) & ~63
    frame = ((fpstate - FRAME_SIZE) & ~15) - 8
    if (entering or stack_flags & SS_ONSTACK) and not alt.contains(frame):
        return False
    if not action.flags & SA_RESTORER:
        return False  # x86-64 Linux needs a restorer to return to: force_sigsegv
    mask = sigs.suspended_mask if sigs.suspended_mask is not None else sigs.blocked
    uc_stack = STACK_T.pack(alt.sp, alt.flags if alt.size else SS_DISABLE, alt.size)
    err, trapno, cr2 = ((fault.error_code, fault.trapno, fault.fault_address) if fault
                        else (0, 0, 0))
    context = SIGCONTEXT.pack(*regs, USER_CS, 0, 0, USER_SS, err, trapno, 0, cr2, fpstate)
    ucontext = struct.pack("<QQ", UC_FLAGS, 0) + uc_stack + context + struct.pack("<Q", mask)
    try:
        k.mem.write(fpstate, cpu.fxsave())
        k.mem.write(frame, struct.pack("<Q", action.restorer) + ucontext + info)
    except GuestMemoryFault:
        return False
    if entering and alt.flags & SS_AUTODISARM:
        sigs.altstack = AltStack()
    sigs.suspended_mask = None
    sigs.blocked = (mask | action.mask | (0 if action.flags & SA_NODEFER
                                          else 1 << (sig - 1))) & ~UNBLOCKABLE
    if action.flags & SA_RESETHAND:
        sigs.actions[sig] = Action()
    cpu.set_reg("rdi", sig)
    cpu.set_reg("rsi", frame + 8 + UCONTEXT_SIZE)
    cpu.set_reg("rdx", frame + 8)
    cpu.set_reg("rax", 0)
    cpu.set_reg("rsp", frame)
    cpu.set_reg("rip", action.handler)
    cpu.set_reg("rflags", regs[-1] & ~ENTRY_CLEARED_FLAGS)
    cpu.set_reg("mxcsr", 0x1F80)  # a handler starts with a fresh FPU (fpu__clear_user_states)
    sigs.delivered += 1
    return True


def return_from_handler(k: Kernel) -> bool:
    """rt_sigreturn: restore registers, mask, FPU and alternate stack from the frame at
    rsp - 8 (the handler's ``ret`` popped pretcode); False if the frame is unreadable."""
    cpu: SignalCpu = k.cpu  # type: ignore[assignment]
    uc = cpu.reg("rsp")  # the frame is at rsp - 8, its ucontext right after pretcode
    try:
        raw = k.mem.read(uc, UCONTEXT_SIZE)
        values = SIGCONTEXT.unpack_from(raw, 16 + STACK_T.size)
        fpstate = values[-1]
        fx = k.mem.read(fpstate, FXSAVE_SIZE) if fpstate else None
    except GuestMemoryFault:
        return False
    old_flags = cpu.reg("rflags")
    for name, value in zip(SIGCONTEXT_REGS, values[:18], strict=True):
        if name == "rflags":
            value = (old_flags & ~FIX_EFLAGS) | (value & FIX_EFLAGS)
        cpu.set_reg(name, value)
    mask = struct.unpack_from("<Q", raw, UCONTEXT_SIZE - 8)[0]
    k.signals.blocked = mask & ~UNBLOCKABLE
    if fx is not None:
        cpu.fxrstor(fx)
    ss_sp, ss_flags, ss_size = STACK_T.unpack_from(raw, 16)
    set_altstack(k.signals, cpu.reg("rsp"), ss_sp, ss_flags, ss_size)  # errors ignored
    return True


def default_kills(sigs: Signals, sig: int) -> bool:
    """Would ``sig`` end the guest now (default action, not blocked, not ignored)?"""
    return (sigs.action(sig).handler == SIG_DFL and not sigs.is_blocked(sig)
            and sig not in IGNORED_BY_DEFAULT and sig not in STOP_BY_DEFAULT)


def send_from_kernel(k: Kernel, sig: int, detail: str, info: bytes | None = None) -> None:
    """A signal the kernel sends for a system call (SIGPIPE on a broken pipe, see write(2)):
    with the default action the guest dies of it at once; otherwise it is queued (a handler
    runs when the call returns) and the call fails with its errno."""
    if default_kills(k.signals, sig):
        raise kill_guest(k, sig, detail)
    k.signals.send(sig, info or siginfo(sig, SI_KERNEL))
