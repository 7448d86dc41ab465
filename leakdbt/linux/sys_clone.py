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
A kind leakdbt does not run yet (threads, namespaces, shared fd tables) is raised as
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
import threading
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, Unsupported
from leakdbt.linux.timers import HostWaker, Timers

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
    if not runs_as_process(flags, sig):
        raise Unsupported(f"{call} flags {clone_flag_names(flags, exit_signal)}")
    return fork_process(k, flags, stack, parent_tid, child_tid, tls)


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
    """The timer thread of the parent does not exist in the child: forget it (and a lock it
    may have held at the fork), keeping the same object, which the session closes at exit."""
    if isinstance(waker, HostWaker):
        waker._thread = None  # noqa: SLF001 - a fork-time reset of HostWaker's own state
        waker._lock = threading.Lock()  # noqa: SLF001
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


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    56: ("clone", sys_clone),
    57: ("fork", sys_fork),
    58: ("vfork", sys_vfork),
    435: ("clone3", sys_clone3),
}
