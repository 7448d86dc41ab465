"""Creating tasks and running programs: clone(2), clone3(2), fork(2), vfork(2), execve(2),
execveat(2), wait4(2), waitid(2).

A flag combination is first checked the way Linux checks it (``-EINVAL`` for a nonsensical
one, see kernel/fork.c copy_process), then classified; a kind leakdbt does not run yet is
raised as :class:`~leakdbt.linux.kernel.Unsupported` naming the exact combination, so that
the dispatcher reports it once on stderr (fatal under ``--strict``) instead of the guest
going on silently.
"""

from __future__ import annotations

import errno
import signal
import struct
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, Unsupported

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


def _create(k: Kernel, call: str, flags: int, exit_signal: int | None) -> int:
    """The one place every task-creating call ends: validate, then run or report."""
    bad = check_clone_flags(flags)
    if bad:
        return bad
    raise Unsupported(f"{call} flags {clone_flag_names(flags, exit_signal)}")


def sys_clone(k: Kernel, flags: int, stack: int, parent_tid: int, child_tid: int,
              tls: int) -> int:
    return _create(k, "clone", flags & 0xFFFF_FFFF, None)


def sys_clone3(k: Kernel, args: int, size: int) -> int:
    if size < CLONE_ARGS_SIZE_VER0 or size > 4096:
        return -errno.EINVAL
    flags, _pidfd, _ctid, _ptid, exit_signal = struct.unpack("<5Q", k.mem.read(args, 40))
    if exit_signal > CSIGNAL or flags & CSIGNAL:
        return -errno.EINVAL
    return _create(k, "clone3", flags, exit_signal)


def sys_fork(k: Kernel) -> int:
    return _create(k, "fork", signal.SIGCHLD, None)


def sys_vfork(k: Kernel) -> int:
    return _create(k, "vfork", CLONE_VM | CLONE_VFORK | signal.SIGCHLD, None)


def sys_execve(k: Kernel, path: int, argv: int, envp: int) -> int:
    raise Unsupported("execve of another program")


def sys_execveat(k: Kernel, dirfd: int, path: int, argv: int, envp: int, flags: int) -> int:
    raise Unsupported("execveat of another program")


def sys_wait4(k: Kernel, pid: int, status: int, options: int, rusage: int) -> int:
    """No guest task has children yet: what Linux answers then."""
    return -errno.ECHILD


def sys_waitid(k: Kernel, idtype: int, ident: int, info: int, options: int,
               rusage: int) -> int:
    return -errno.ECHILD


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    56: ("clone", sys_clone),
    57: ("fork", sys_fork),
    58: ("vfork", sys_vfork),
    59: ("execve", sys_execve),
    61: ("wait4", sys_wait4),
    247: ("waitid", sys_waitid),
    322: ("execveat", sys_execveat),
    435: ("clone3", sys_clone3),
}
