"""Creating tasks: clone(2), clone3(2), fork(2), vfork(2).

A flag combination is first checked the way Linux checks it (``-EINVAL`` for a nonsensical
one, see kernel/fork.c copy_process), then classified.  A new *process* (no CLONE_VM, or
CLONE_VM|CLONE_VFORK as posix_spawn uses it) is made by forking the emulator on the host:
the child is a copy of everything (the engine's memory, the translator's caches, the fd
table) and goes on emulating with 0 in rax; the parent gets the child's pid, which is the
host pid (guest pids are the host's, see leakdbt.linux.process.process_ids), so wait4 and
kill need no mapping.  vfork runs as a fork whose parent waits until the child has exec'd
or ended (what vfork guarantees the parent); with CLONE_VM the child's memory writes do not
reach the parent (posix_spawn's report of a failed exec is lost: the child ends with 127).
A *thread* (the flags of glibc's pthread_create: CLONE_VM|CLONE_FS|CLONE_FILES|
CLONE_SIGHAND|CLONE_THREAD, with any of CLONE_SYSVSEM, CLONE_SETTLS, CLONE_PARENT_SETTID,
CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_DETACHED) is a new context in the
scheduler (leakdbt.linux.threads): same engine, same memory, its own registers, stack and
FS base.  This module also ends tasks and names them: exit(2) ends the calling thread (the
last one ends the process), exit_group(2) the process; gettid, set_tid_address,
set_robust_list, sched_yield, tgkill/tkill to the guest's own threads.
A kind leakdbt does not run yet (a thread without shared files or cwd, CLONE_VM without a
thread or vfork, namespaces, shared fd tables between processes) is raised as
:class:`~leakdbt.linux.kernel.Unsupported` naming the exact combination, so that the
dispatcher reports it once on stderr (fatal under ``--strict``) instead of the guest going on
silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import sys
from collections.abc import Callable
from functools import partial

from leakdbt.linux.kernel import Kernel, Unsupported, s32
from leakdbt.linux.sigdeliver import deliver_pending
from leakdbt.linux.signals import NSIG, SI_TKILL
from leakdbt.linux.sys_proc import GuestExit
from leakdbt.linux.threads import ThreadGroup, current_tid, thread_group
from leakdbt.linux.timers import HostWaker, Timers
from leakdbt.machine.memory import GuestMemoryFault

CSIGNAL = 0xFF
CLONE_FLAGS: dict[int, str] = {
    0x100: "CLONE_VM", 0x200: "CLONE_FS", 0x400: "CLONE_FILES", 0x800: "CLONE_SIGHAND",
    0x1000: "CLONE_PIDFD", 0x2000: "CLONE_PTRACE", 0x4000: "CLONE_VFORK",
    0x8000: "CLONE_PARENT", 0x10000: "CLONE_THREAD", 0x20000: "CLONE_NEWNS",
    0x40000: "CLONE_SYSVSEM", 0x80000: "CLONE_SETTLS", 0x100000: "CLONE_PARENT_SETTID",
    0x200000: "CLONE_CHILD_CLEARTID", 0x400000: "CLONE_DETACHED", 0x800000: "CLONE_UNTRACED",
    0x1000000: "CLONE_CHILD_SETTID", 0x2000000: "CLONE_NEWCGROUP", 0x4000000: "CLONE_NEWUTS",
    0x8000000: "CLONE_NEWIPC", 0x10000000: "CLONE_NEWUSER", 0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET", 0x80000000: "CLONE_IO", 0x100000000: "CLONE_CLEAR_SIGHAND",
    0x200000000: "CLONE_INTO_CGROUP",
}
CLONE_VM, CLONE_FS, CLONE_SIGHAND, CLONE_VFORK = 0x100, 0x200, 0x800, 0x4000
CLONE_THREAD, CLONE_NEWNS, CLONE_NEWUSER = 0x10000, 0x20000, 0x10000000
CLONE_CLEAR_SIGHAND = 0x100000000
CLONE_SYSVSEM, CLONE_SETTLS, CLONE_PARENT_SETTID = 0x40000, 0x80000, 0x100000
CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x200000, 0x1000000
CLONE_PTRACE, CLONE_DETACHED, CLONE_UNTRACED = 0x2000, 0x400000, 0x800000
# What a new process made by a host fork honours: the tid and TLS words, vfork's wait, and
# flags that change nothing here (no SysV semaphores to share, no tracer).
PROCESS_FLAGS = (CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID
                 | CLONE_CHILD_SETTID | CLONE_VFORK | CLONE_PTRACE | CLONE_DETACHED
                 | CLONE_UNTRACED)
CLONE_ARGS_SIZE_VER0 = 64  # struct clone_args up to and including tls
CLONE_FILES = 0x400
# A thread as pthread_create makes one: these five, and any of THREAD_OPTIONAL.
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD
THREAD_OPTIONAL = (CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID
                   | CLONE_CHILD_SETTID | CLONE_DETACHED)
ROBUST_LIST_HEAD_SIZE = 24


def clone_flag_names(flags: int, exit_signal: int | None = None) -> str:
    """``CLONE_VM|CLONE_THREAD|...|SIGCHLD``: how a flag word is reported."""
    names = [name for bit, name in CLONE_FLAGS.items() if flags & bit]
    unknown = flags & ~CSIGNAL & ~sum(CLONE_FLAGS)
    if unknown:
        names.append(f"{unknown:#x}")
    sig = flags & CSIGNAL if exit_signal is None else exit_signal
    if sig:
        try:
            names.append(signal.Signals(sig).name)
        except ValueError:
            names.append(f"signal {sig}")
    return "|".join(names) or "0"


def check_clone_flags(flags: int) -> int:
    """0 for a combination Linux accepts, else ``-EINVAL`` (kernel/fork.c copy_process)."""
    if flags & ~CSIGNAL & ~sum(CLONE_FLAGS):
        return -errno.EINVAL
    if flags & (CLONE_NEWNS | CLONE_FS) == CLONE_NEWNS | CLONE_FS:
        return -errno.EINVAL
    if flags & (CLONE_NEWUSER | CLONE_FS) == CLONE_NEWUSER | CLONE_FS:
        return -errno.EINVAL
    if flags & CLONE_THREAD and not flags & CLONE_SIGHAND:
        return -errno.EINVAL
    if flags & CLONE_SIGHAND and not flags & CLONE_VM:
        return -errno.EINVAL
    if flags & CLONE_CLEAR_SIGHAND and flags & CLONE_SIGHAND:
        return -errno.EINVAL
    return 0


def runs_as_process(flags: int, exit_signal: int) -> bool:
    """Whether a (valid) combination makes a process leakdbt runs by a host fork: SIGCHLD as
    exit signal, no thread or sharing flag except CLONE_VM together with CLONE_VFORK."""
    rest = flags & ~CSIGNAL & ~PROCESS_FLAGS
    if rest == CLONE_VM and flags & CLONE_VFORK:
        rest = 0
    return rest == 0 and exit_signal == signal.SIGCHLD


def _create(k: Kernel, call: str, flags: int, exit_signal: int | None, stack: int = 0,
            parent_tid: int = 0, child_tid: int = 0, tls: int = 0) -> int:
    """The one place every task-creating call ends: validate, then run or report."""
    bad = check_clone_flags(flags)
    if bad:
        return bad
    sig = flags & CSIGNAL if exit_signal is None else exit_signal
    if runs_as_thread(flags):
        return create_thread(k, flags, stack, parent_tid, child_tid, tls)
    if not runs_as_process(flags, sig):
        raise Unsupported(f"{call} flags {clone_flag_names(flags, exit_signal)}")
    return fork_process(k, flags, stack, parent_tid, child_tid, tls)


def threads_of(k: Kernel) -> ThreadGroup:
    """The guest's threads (made on first use), delivering signals with sigdeliver."""
    return thread_group(k, partial(deliver_pending, k))


def runs_as_thread(flags: int) -> bool:
    """Whether a (valid) combination makes a thread leakdbt runs: THREAD_FLAGS, and nothing
    but THREAD_OPTIONAL besides (the exit signal of a thread is never sent)."""
    rest = flags & ~CSIGNAL
    return rest & THREAD_FLAGS == THREAD_FLAGS and not rest & ~(THREAD_FLAGS | THREAD_OPTIONAL)


def create_thread(k: Kernel, flags: int, stack: int, parent_tid: int, child_tid: int,
                  tls: int) -> int:
    """A new thread of the guest (leakdbt.linux.threads.ThreadGroup.spawn); its tid."""
    thread = threads_of(k).spawn(stack, tls if flags & CLONE_SETTLS else None,
                                   child_tid if flags & CLONE_CHILD_CLEARTID else 0)
    for flag, address in ((CLONE_PARENT_SETTID, parent_tid), (CLONE_CHILD_SETTID, child_tid)):
        if flags & flag:
            with contextlib.suppress(GuestMemoryFault):  # Linux ignores a bad address here
                k.mem.write(address, struct.pack("<i", thread.tid))
    return thread.tid


def fork_process(k: Kernel, flags: int, stack: int = 0, parent_tid: int = 0,
                 child_tid: int = 0, tls: int = 0) -> int:
    """Fork the emulator: the child's pid in the parent, 0 in the child (which goes on
    emulating the same guest from the same instruction).

    The fork itself waits until the engine has stopped after the system call (the machine's
    ``defer``), then writes rax in both processes: a fork inside the engine's run would copy
    a run whose helper thread (the engine's ``--timeout`` timer) does not exist in the
    child, which the engine then fails to join."""
    defer = getattr(k.cpu, "defer", None)
    if defer is None:
        return _fork_now(k, flags, stack, parent_tid, child_tid, tls)

    def fork_between_runs() -> None:
        k.cpu.set_reg("rax", _fork_now(k, flags, stack, parent_tid, child_tid, tls)
                      & 0xFFFF_FFFF_FFFF_FFFF)

    defer(fork_between_runs)
    return 0  # replaced by fork_between_runs


def _fork_now(k: Kernel, flags: int, stack: int, parent_tid: int, child_tid: int,
              tls: int) -> int:
    for stream in (sys.stdout, sys.stderr):  # leakdbt's own buffered output, once only
        with contextlib.suppress(Exception):
            stream.flush()
    vfork = os.pipe2(os.O_CLOEXEC) if flags & CLONE_VFORK else None
    try:
        pid = os.fork()
    except OSError as e:
        if vfork is not None:
            os.close(vfork[0])
            os.close(vfork[1])
        return -(e.errno or errno.EAGAIN)
    if pid == 0:
        _become_child(k, flags, stack, child_tid, tls, vfork)
        return 0
    k.children.add(pid)
    if flags & CLONE_PARENT_SETTID:
        k.mem.write(parent_tid, struct.pack("<i", pid))
    if vfork is not None:  # vfork: the parent waits until the child exec's or ends
        os.close(vfork[1])
        with contextlib.suppress(OSError):
            while os.read(vfork[0], 1):
                pass
        os.close(vfork[0])
    return pid


def _become_child(k: Kernel, flags: int, stack: int, child_tid: int, tls: int,
                  vfork: tuple[int, int] | None) -> None:
    """The new process's kernel state (what copy_process gives a child): its own ids, no
    children, no pending signals and no timers (neither is inherited across fork)."""
    if k.vfork_fd >= 0:  # a vfork child forking before its exec: the parent waits for it only
        with contextlib.suppress(OSError):
            os.close(k.vfork_fd)
        k.vfork_fd = -1
    if vfork is not None:
        os.close(vfork[0])
        k.vfork_fd = vfork[1]
    k.ids.ppid, k.ids.pid = k.ids.pid, os.getpid()
    k.children = set()
    if k.threads is not None:  # only the forking thread lives on in the child
        k.threads = None
        set_quantum = getattr(k.cpu, "set_quantum", None)
        if set_quantum is not None:
            set_quantum(0, None)
    k.signals.pending.clear()
    k.timers = Timers(waker=_restart_waker(k.timers.waker))
    if flags & CLONE_CHILD_SETTID:
        k.mem.write(child_tid, struct.pack("<i", k.ids.pid))
    if flags & CLONE_CHILD_CLEARTID:
        k.tid_address = child_tid
    if flags & CLONE_SETTLS:
        k.cpu.set_reg("fs_base", tls)
    if stack:
        k.cpu.set_reg("rsp", stack)


def _restart_waker(waker: Callable[[float], None] | None) -> Callable[[float], None] | None:
    """The timer thread of the parent does not exist in the child (HostWaker.after_fork)."""
    if isinstance(waker, HostWaker):
        waker.after_fork()
    return waker


def sys_clone(k: Kernel, flags: int, stack: int, parent_tid: int, child_tid: int,
              tls: int) -> int:
    return _create(k, "clone", flags & 0xFFFF_FFFF, None, stack, parent_tid, child_tid, tls)


def sys_clone3(k: Kernel, args: int, size: int) -> int:
    if size < CLONE_ARGS_SIZE_VER0 or size > 4096:
        return -errno.EINVAL
    (flags, _pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
     tls) = struct.unpack("<8Q", k.mem.read(args, 64))
    if exit_signal > CSIGNAL or flags & CSIGNAL:
        return -errno.EINVAL
    return _create(k, "clone3", flags, exit_signal, stack + stack_size if stack else 0,
                   parent_tid, child_tid, tls)


def sys_fork(k: Kernel) -> int:
    return _create(k, "fork", signal.SIGCHLD, None)


def sys_vfork(k: Kernel) -> int:
    return _create(k, "vfork", CLONE_VM | CLONE_VFORK | signal.SIGCHLD, None)


# -- ending and naming tasks ---------------------------------------------------------------


def sys_exit(k: Kernel, status: int) -> int:
    """exit(2): the calling thread ends; the process ends with the last one."""
    threads = k.threads
    if threads is None or threads.exit_current(status & 0xFF):
        raise GuestExit(status & 0xFF)
    return 0


def sys_exit_group(k: Kernel, status: int) -> int:
    raise GuestExit(status & 0xFF)


def sys_gettid(k: Kernel) -> int:
    return current_tid(k)


def sys_set_tid_address(k: Kernel, addr: int) -> int:
    if k.threads is not None:
        k.threads.current.clear_tid = addr
    else:
        k.tid_address = addr
    return current_tid(k)


def sys_set_robust_list(k: Kernel, head: int, size: int) -> int:
    """Recorded, never walked: a thread that dies holding a robust mutex leaves it locked
    (threads here end only through exit, which releases nothing else either)."""
    if size != ROBUST_LIST_HEAD_SIZE:
        return -errno.EINVAL
    if k.threads is not None:
        k.threads.current.robust_list = (head, size)
    return 0


def sys_sched_yield(k: Kernel) -> int:
    """The next runnable thread runs (the caller goes to the back of the turn)."""
    threads = k.threads
    if threads is not None and len(threads.live()) > 1:
        threads.switch_pending = True
    return 0


def sys_tgkill(k: Kernel, tgid: int, tid: int, sig: int) -> int:
    """A signal to one of the guest's own threads (other processes: ESRCH)."""
    tgid, tid, sig = s32(tgid), s32(tid), s32(sig)
    if tid <= 0 or tgid <= 0:
        return -errno.EINVAL
    if tgid != k.ids.pid or (k.threads is None and tid != k.ids.pid):
        return -errno.ESRCH
    threads = threads_of(k)
    target = threads.find(tid)
    if target is None:
        return -errno.ESRCH
    if not 0 <= sig <= NSIG:
        return -errno.EINVAL
    if sig:
        threads.signal_thread(target, sig, SI_TKILL)
    return 0


def sys_tkill(k: Kernel, tid: int, sig: int) -> int:
    return sys_tgkill(k, k.ids.pid, tid, sig)


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    24: ("sched_yield", sys_sched_yield),
    56: ("clone", sys_clone),
    57: ("fork", sys_fork),
    58: ("vfork", sys_vfork),
    60: ("exit", sys_exit),
    186: ("gettid", sys_gettid),
    200: ("tkill", sys_tkill),
    218: ("set_tid_address", sys_set_tid_address),
    231: ("exit_group", sys_exit_group),
    234: ("tgkill", sys_tgkill),
    273: ("set_robust_list", sys_set_robust_list),
    435: ("clone3", sys_clone3),
}
