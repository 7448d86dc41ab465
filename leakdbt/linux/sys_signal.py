"""Signal and timer system calls: rt_sigaction(2), rt_sigprocmask(2), rt_sigpending(2),
rt_sigsuspend(2), pause(2), rt_sigtimedwait(2), rt_sigreturn(2), sigaltstack(2), kill(2),
tgkill(2), tkill(2), alarm(2), setitimer(2), getitimer(2), timer_create(2), timer_settime(2),
timer_gettime(2), timer_getoverrun(2), timer_delete(2).

Handlers only change state and queue signals; delivery happens right after the call
(:func:`leakdbt.linux.signals.after_syscall`, which the dispatcher schedules).
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import time
from collections.abc import Callable

from leakdbt.errors import GuestError
from leakdbt.linux.blocking import (
    block,
    claim_own,
    interrupting,
    park_for_signal,
    parkable,
    sigchld_interrupts,
)
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.kernel import Kernel, Unsupported, s32, sleep_until
from leakdbt.linux.sigdeliver import enable_async
from leakdbt.linux.signals import (
    NSIG,
    SI_USER,
    STACK_T,
    UNBLOCKABLE,
    Action,
    sender_info,
    set_altstack,
)
from leakdbt.linux.timers import (
    ITIMER_CLOCKS,
    ITIMER_SIGNALS,
    SIGEV_NONE,
    SIGEV_SIGNAL,
    Timer,
)

SIGSET_SIZE = 8
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
SIGEV_THREAD_ID = 4
TIMER_ABSTIME = 1
NS = 1_000_000_000
# clockid -> host clock (timer_create(2)); the CPU-time clocks are the host process's.
POSIX_CLOCKS = {0: 0, 1: 1, 2: 2, 3: 3, 7: 7, 8: 0, 9: 7}


def _valid(sig: int) -> bool:
    return 1 <= sig <= NSIG


def sys_rt_sigaction(k: Kernel, sig: int, act: int, oact: int, size: int) -> int:
    sig = s32(sig)
    if not _valid(sig) or size != SIGSET_SIZE:
        return -errno.EINVAL
    if act and sig in (signal.SIGKILL, signal.SIGSTOP):
        return -errno.EINVAL
    sigs = k.signals
    old = sigs.action(sig)
    if act:
        new = Action.unpack(k.mem.read(act, Action.LAYOUT.size))
        new.mask &= ~UNBLOCKABLE
        sigs.actions[sig] = new
        enable_async(k)
        HOST.set(sig, new.handler)  # another process's kill meets the same disposition
        if sigs.is_ignored(sig):  # POSIX: setting SIG_IGN discards what is pending
            sigs.pending = [(s, i) for s, i in sigs.pending if s != sig]
    if oact:
        k.mem.write(oact, old.pack())
    return 0


def sys_rt_sigprocmask(k: Kernel, how: int, new: int, old: int, size: int) -> int:
    if size != SIGSET_SIZE:
        return -errno.EINVAL
    sigs = k.signals
    previous = sigs.blocked
    if new:
        mask = struct.unpack("<Q", k.mem.read(new, 8))[0] & ~UNBLOCKABLE
        if how == SIG_BLOCK:
            sigs.blocked |= mask
        elif how == SIG_UNBLOCK:
            sigs.blocked &= ~mask
        elif how == SIG_SETMASK:
            sigs.blocked = mask
        else:
            return -errno.EINVAL
    if old:
        k.mem.write(old, struct.pack("<Q", previous))
    return 0


def sys_rt_sigpending(k: Kernel, out: int, size: int) -> int:
    if size > SIGSET_SIZE:
        return -errno.EINVAL
    k.mem.write(out, struct.pack("<Q", k.signals.pending_mask() & k.signals.blocked)[:size])
    return 0


def _deliverable(k: Kernel, mask: int) -> bool:
    return any(not mask >> (s - 1) & 1 for s, _ in k.signals.pending)


def _wait_for_signal(k: Kernel, mask: int, what: str) -> None:
    """Block until a signal outside ``mask`` is pending: a timer's, or a child's SIGCHLD
    (leakdbt.linux.blocking); with neither possible the guest is deadlocked (GuestError)."""
    block(k, {}, None, mask, what)


def _park(k: Kernel, mask: int) -> bool:
    """With other threads and no timer or child's SIGCHLD to end it (blocking.parkable):
    park the caller until a signal outside ``mask`` is sent to it (its call returns EINTR then, the
    handler runs under ``mask``); True when parked."""
    claim_own(k, mask)
    if not parkable(k, mask) or interrupting(k, mask):
        return False
    park_for_signal(k, mask)
    return True


def sys_rt_sigsuspend(k: Kernel, mask: int, size: int) -> int:
    """rt_sigsuspend(2); with other threads it parks its own (the others run)."""
    if size != SIGSET_SIZE:
        return -errno.EINVAL
    sigs = k.signals
    new = struct.unpack("<Q", k.mem.read(mask, 8))[0] & ~UNBLOCKABLE
    if _park(k, new):
        return -errno.EINTR  # its result when a signal wakes it
    _wait_for_signal(k, new, "sigsuspend")
    sigs.suspended_mask, sigs.blocked = sigs.blocked, new  # restored after the handler
    return -errno.EINTR


def sys_pause(k: Kernel) -> int:
    """pause(2); with other threads it parks its own (the others run)."""
    if _park(k, k.signals.blocked):
        return -errno.EINTR  # its result when a signal wakes it
    _wait_for_signal(k, k.signals.blocked, "pause")
    return -errno.EINTR


def sys_rt_sigtimedwait(k: Kernel, set_addr: int, info: int, timeout: int, size: int) -> int:
    if size != SIGSET_SIZE:
        return -errno.EINVAL
    wanted = struct.unpack("<Q", k.mem.read(set_addr, 8))[0] & ~UNBLOCKABLE
    until = None
    if timeout:
        sec, nsec = struct.unpack("<qq", k.mem.read(timeout, 16))
        if sec < 0 or not 0 <= nsec < NS:
            return -errno.EINVAL
        clock = ITIMER_CLOCKS[0]
        until = (clock, k.clock_ns(clock) + sec * NS + nsec)
    while True:
        taken = k.signals.take(wanted)
        if taken is not None:
            if info:
                k.mem.write(info, taken[1])
            return taken[0]
        if _deliverable(k, k.signals.blocked):
            return -errno.EINTR
        if until is not None and k.clock_ns(until[0]) >= until[1]:
            return -errno.EAGAIN
        if not k.timers.wait(k, until) and until is None:
            raise GuestError("deadlock: the only guest thread waits in sigtimedwait for a "
                             "signal that nothing can send")


def sys_rt_sigreturn(k: Kernel) -> int:
    k.signals.sigreturn = True  # the frame is read back right after this call
    return 0


def sys_sigaltstack(k: Kernel, new: int, old: int) -> int:
    sigs = k.signals
    sp = k.cpu.reg("rsp")
    previous = STACK_T.pack(sigs.altstack.sp, sigs.altstack.ss_flags(sp), sigs.altstack.size)
    if new:
        result = set_altstack(sigs, sp, *STACK_T.unpack(k.mem.read(new, STACK_T.size)))
        if result:
            return result
    if old:
        k.mem.write(old, previous)
    return 0


def _send_self(k: Kernel, sig: int, code: int) -> int:
    if sig == 0:
        return 0
    if not _valid(sig):
        return -errno.EINVAL
    k.signals.send(sig, sender_info(sig, code, k.ids.pid, k.ids.uid))
    return 0


def _host_kill(pid: int, sig: int) -> int:
    try:
        os.kill(pid, sig)
    except OSError as e:
        return -(e.errno or errno.ESRCH)
    return 0


def guest_processes(k: Kernel) -> dict[int, int]:
    """pid -> process group of every host process descending from the guest's children
    (theirs too...: all guest processes, since guest pids are host pids), from /proc.  Only
    through the guest's own children (Kernel.children): another child of the emulator
    process (a test runner's helper, a worker pool's) is not the guest's to signal."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry)] = (int(fields[1]), int(fields[2]))  # ppid, pgrp
    found: dict[int, int] = {}
    for pid, (_ppid, pgrp) in parents.items():
        at, seen = pid, 0
        while at in parents and seen < 4096:
            if parents[at][0] == k.ids.pid:
                if at in k.children:
                    found[pid] = pgrp
                break
            at, seen = parents[at][0], seen + 1
    return found


def sys_kill(k: Kernel, pid: int, sig: int) -> int:
    """kill(2) to the guest itself, a child, or a process group (0: its own, -1: every
    process it may signal): only guest processes are reached — other processes of the
    host, in the group or not, are out of the guest's reach (EPERM when none is left)."""
    target, signo = s32(pid), s32(sig)
    if not 0 <= signo <= NSIG:
        return -errno.EINVAL
    if target > 0:
        if target in k.children:  # a guest child is a host process (sys_clone)
            return _host_kill(target, signo)
        if target != k.ids.pid:
            return -errno.EPERM
        return _send_self(k, signo, SI_USER)
    group = None if target == -1 else os.getpgrp() if target == 0 else -target
    others = [p for p, g in guest_processes(k).items() if group is None or g == group]
    me = group is not None and os.getpgrp() == group  # kill(-1) spares the caller (Linux)
    if not others and not me:
        return -errno.ESRCH if group is None else -errno.EPERM
    results = [_host_kill(p, signo) for p in others]
    if me:
        results.append(_send_self(k, signo, SI_USER))
    return 0 if any(r == 0 for r in results) else results[0]



def sys_rt_sigqueueinfo(k: Kernel, pid: int, sig: int, info: int) -> int:
    """rt_sigqueueinfo(2) (sigqueue(3)) to the guest itself, with the caller's siginfo; to
    another process the siginfo cannot travel (a host signal carries none): named, EPERM."""
    signo = s32(sig)
    if not _valid(signo):
        return -errno.EINVAL
    raw = bytearray(k.mem.read(info, 128))
    if s32(pid) != k.ids.pid:
        raise Unsupported("rt_sigqueueinfo to another process", errno.EPERM)
    struct.pack_into("<i", raw, 0, signo)  # the kernel sets si_signo from sig
    k.signals.send(signo, bytes(raw))
    return 0


def sys_rt_tgsigqueueinfo(k: Kernel, tgid: int, tid: int, sig: int, info: int) -> int:
    """rt_tgsigqueueinfo(2) to the guest's own (main) thread."""
    if s32(tid) != k.ids.pid:
        raise Unsupported("rt_tgsigqueueinfo to another thread or process", errno.EPERM)
    return sys_rt_sigqueueinfo(k, tgid, sig, info)



# -- interval timers --------------------------------------------------------------------------


def _itimer(k: Kernel, which: int) -> Timer:
    timer = k.timers.itimers.get(which)
    if timer is None:
        timer = k.timers.itimers[which] = Timer(ITIMER_CLOCKS[which], ITIMER_SIGNALS[which])
    return timer


def _pack_timeval_pair(interval: int, value: int) -> bytes:
    return struct.pack("<qqqq", interval // NS, interval % NS // 1000, value // NS,
                       value % NS // 1000)


def sys_getitimer(k: Kernel, which: int, cur: int) -> int:
    if which not in ITIMER_CLOCKS:
        return -errno.EINVAL
    timer = _itimer(k, which)
    k.mem.write(cur, _pack_timeval_pair(timer.interval, k.timers.remaining(k, timer)))
    return 0


def sys_setitimer(k: Kernel, which: int, new: int, old: int) -> int:
    if which not in ITIMER_CLOCKS:
        return -errno.EINVAL
    timer = _itimer(k, which)
    previous = _pack_timeval_pair(timer.interval, k.timers.remaining(k, timer))
    if new:
        isec, iusec, vsec, vusec = struct.unpack("<qqqq", k.mem.read(new, 32))
        if min(isec, vsec) < 0 or not (0 <= iusec < 10**6 and 0 <= vusec < 10**6):
            return -errno.EINVAL
        value = vsec * NS + vusec * 1000
        deadline = k.clock_ns(timer.clock) + value if value else 0
        k.timers.arm(k, timer, deadline, isec * NS + iusec * 1000)
    if old:
        k.mem.write(old, previous)
    return 0


def sys_alarm(k: Kernel, seconds: int) -> int:
    timer = _itimer(k, 0)
    left = k.timers.remaining(k, timer)
    seconds &= 0xFFFFFFFF
    k.timers.arm(k, timer, k.clock_ns(timer.clock) + seconds * NS if seconds else 0, 0)
    secs, usec = left // NS, left % NS // 1000
    return secs + 1 if usec >= 500_000 or (not secs and usec) else secs


def sys_timer_create(k: Kernel, clock: int, sevp: int, timerid: int) -> int:
    host = POSIX_CLOCKS.get(s32(clock))
    if host is None:
        return -errno.EINVAL
    new_id = min(set(range(len(k.timers.posix) + 1)) - set(k.timers.posix))
    timer = Timer(host, signal.SIGALRM, posix_id=new_id, value=new_id)
    if sevp:
        value, signo, notify, tid = struct.unpack("<QiiI", k.mem.read(sevp, 20))
        if notify == SIGEV_THREAD_ID and tid != k.ids.pid:
            return -errno.EINVAL
        if notify not in (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID):
            raise Unsupported(f"timer notification {notify}")
        if notify != SIGEV_NONE and not _valid(signo):
            return -errno.EINVAL
        timer.value, timer.signo = value, signo
        timer.notify = SIGEV_NONE if notify == SIGEV_NONE else SIGEV_SIGNAL
    k.mem.write(timerid, struct.pack("<i", new_id))
    k.timers.posix[new_id] = timer
    return 0


def _posix_timer(k: Kernel, timer_id: int) -> Timer | None:
    return k.timers.posix.get(s32(timer_id))


def _pack_itimerspec(k: Kernel, timer: Timer) -> bytes:
    left = k.timers.remaining(k, timer)
    return struct.pack("<qqqq", timer.interval // NS, timer.interval % NS, left // NS, left % NS)


def sys_timer_settime(k: Kernel, timer_id: int, flags: int, new: int, old: int) -> int:
    timer = _posix_timer(k, timer_id)
    if timer is None:
        return -errno.EINVAL
    isec, insec, vsec, vnsec = struct.unpack("<qqqq", k.mem.read(new, 32))
    if min(isec, vsec) < 0 or not (0 <= insec < NS and 0 <= vnsec < NS):
        return -errno.EINVAL
    if old:
        k.mem.write(old, _pack_itimerspec(k, timer))
    value = vsec * NS + vnsec
    if value and not flags & TIMER_ABSTIME:
        value += k.clock_ns(timer.clock)
    k.timers.arm(k, timer, value, isec * NS + insec)
    return 0


def sys_timer_gettime(k: Kernel, timer_id: int, cur: int) -> int:
    timer = _posix_timer(k, timer_id)
    if timer is None:
        return -errno.EINVAL
    k.mem.write(cur, _pack_itimerspec(k, timer))
    return 0


def sys_timer_getoverrun(k: Kernel, timer_id: int) -> int:
    timer = _posix_timer(k, timer_id)
    return -errno.EINVAL if timer is None else timer.overrun


def sys_timer_delete(k: Kernel, timer_id: int) -> int:
    timer = _posix_timer(k, timer_id)
    if timer is None:
        return -errno.EINVAL
    k.timers.arm(k, timer, 0, 0)
    del k.timers.posix[s32(timer_id)]
    return 0


def interruptible_sleep(k: Kernel, clock: int, duration: int) -> int:
    """Sleep ``duration`` ns on ``clock``; the time left (> 0) if a signal the guest handles
    (a timer's, a child's SIGCHLD) or one that kills it arrived first: the call then fails
    with EINTR.  With nothing that could send one, a plain host sleep."""
    if not k.timers.active and not (k.children and sigchld_interrupts(k, k.signals.blocked)) \
            and not interrupting(k, k.signals.blocked):
        sleep_until(clock, time.clock_gettime_ns(clock) + duration)
        return 0
    deadline = k.clock_ns(clock) + duration
    if block(k, {}, (clock, deadline), k.signals.blocked, "nanosleep") == -errno.EINTR:
        return max(1, deadline - k.clock_ns(clock))
    return 0


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    13: ("rt_sigaction", sys_rt_sigaction),
    14: ("rt_sigprocmask", sys_rt_sigprocmask),
    15: ("rt_sigreturn", sys_rt_sigreturn),
    34: ("pause", sys_pause),
    36: ("getitimer", sys_getitimer),
    37: ("alarm", sys_alarm),
    38: ("setitimer", sys_setitimer),
    62: ("kill", sys_kill),
    127: ("rt_sigpending", sys_rt_sigpending),
    128: ("rt_sigtimedwait", sys_rt_sigtimedwait),
    129: ("rt_sigqueueinfo", sys_rt_sigqueueinfo),
    130: ("rt_sigsuspend", sys_rt_sigsuspend),
    131: ("sigaltstack", sys_sigaltstack),
    222: ("timer_create", sys_timer_create),
    223: ("timer_settime", sys_timer_settime),
    224: ("timer_gettime", sys_timer_gettime),
    225: ("timer_getoverrun", sys_timer_getoverrun),
    226: ("timer_delete", sys_timer_delete),
    297: ("rt_tgsigqueueinfo", sys_rt_tgsigqueueinfo),
}
