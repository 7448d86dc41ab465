"""Waiting for children and connecting them: wait4(2), waitid(2), pipe(2), pipe2(2).

Guest children are host processes (the emulator forks, see leakdbt.linux.sys_clone) and
guest pids are host pids, so a wait is the host's wait4/waitid with the same arguments; the
status word needs no translation (the host is Linux), the rusage and siginfo are written in
the x86-64 layout.  A wait that would block is first tried with WNOHANG when the guest has
other threads (they run while it waits: it is parked until a child it may report ends,
leakdbt.linux.blocking.park_on_children) or a --timeout (which then ends the wait).
A pipe is a host pipe: both processes of a fork hold its host fds, and a
reader sees end of file once every holder has closed the write end, as in Linux.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import struct
from collections.abc import Callable

from leakdbt.linux.blocking import park_on_children, threaded
from leakdbt.linux.files import OpenFile
from leakdbt.linux.kernel import Kernel, s32
from leakdbt.linux.signals import siginfo

WNOHANG, WUNTRACED, WCONTINUED, WEXITED, WNOWAIT = 1, 2, 8, 4, 0x1000000
WSTOPPED = WUNTRACED
__WNOTHREAD, __WALL, __WCLONE = 0x20000000, 0x40000000, 0x80000000
WAIT4_OPTIONS = WNOHANG | WUNTRACED | WCONTINUED | __WNOTHREAD | __WALL | __WCLONE
WAITID_OPTIONS = WNOHANG | WSTOPPED | WCONTINUED | WEXITED | WNOWAIT | __WNOTHREAD | __WALL \
    | __WCLONE
P_ALL, P_PID, P_PGID, P_PIDFD = 0, 1, 2, 3
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
RUSAGE = struct.Struct("<4q14q")


def pack_rusage(ru: resource.struct_rusage) -> bytes:
    """struct rusage (two timevals, then fourteen longs) of a host rusage."""
    utime, stime = round(ru.ru_utime * 1e6), round(ru.ru_stime * 1e6)
    return RUSAGE.pack(utime // 10**6, utime % 10**6, stime // 10**6, stime % 10**6,
                       ru.ru_maxrss, ru.ru_ixrss, ru.ru_idrss, ru.ru_isrss, ru.ru_minflt,
                       ru.ru_majflt, ru.ru_nswap, ru.ru_inblock, ru.ru_oublock,
                       ru.ru_msgsnd, ru.ru_msgrcv, ru.ru_nsignals, ru.ru_nvcsw, ru.ru_nivcsw)


def _may_have(k: Kernel, pid: int) -> bool:
    """Can a wait for ``pid`` (wait4's meaning: > 0 one child, else any) find a child of the
    guest?  Only the guest's own children are waited for: leakdbt's host process may have
    other children (a resource tracker, a Dask worker), and waiting for any host child with
    none of the guest's would block forever."""
    return bool(k.children) and (pid <= 0 or pid in k.children)


def _wait_ours(k: Kernel, opts: int) -> bool:
    """Must a blocking wait wait our way (other threads to run, a --timeout to honour)?"""
    if opts & WNOHANG:
        return False
    return threaded(k) or (k.timeout is not None and not k.virtual_time)


def _targets(k: Kernel, pid: int) -> list[int]:
    """The guest's children a wait for ``pid`` (wait4's meaning) may report."""
    return [pid] if pid > 0 else sorted(k.children)


def sys_wait4(k: Kernel, pid: int, status: int, options: int, rusage: int) -> int:
    opts = options & 0xFFFF_FFFF
    if opts & ~WAIT4_OPTIONS:
        return -errno.EINVAL
    if not _may_have(k, s32(pid)):
        return -errno.ECHILD
    try:
        if _wait_ours(k, opts):
            child, word, usage = os.wait4(s32(pid), opts | WNOHANG)
            if child == 0 and park_on_children(k, _targets(k, s32(pid)), 61, "wait4"):
                return 0  # made again once a child has ended
            if child == 0:  # alone: a child has ended, or none could be watched
                child, word, usage = os.wait4(s32(pid), opts)
        else:
            child, word, usage = os.wait4(s32(pid), opts)
    except OSError as e:  # ChildProcessError is ECHILD
        return -(e.errno or errno.ECHILD)
    if child == 0:  # WNOHANG and no child has changed state
        return 0
    if os.WIFEXITED(word) or os.WIFSIGNALED(word):
        k.children.discard(child)
        if os.WIFEXITED(word):
            code, value = CLD_EXITED, os.WEXITSTATUS(word)
        else:
            code, value = CLD_DUMPED if os.WCOREDUMP(word) else CLD_KILLED, os.WTERMSIG(word)
        k.child_watch.reaped(k.signals, child, siginfo(signal.SIGCHLD, code, child, k.ids.uid,
                                                       value, 0, 0, layout="iIi4xqq"))
    if status:
        k.mem.write(status, struct.pack("<i", word))
    if rusage:
        k.mem.write(rusage, pack_rusage(usage))
    return child


def sys_waitid(k: Kernel, idtype: int, ident: int, info: int, options: int,
               rusage: int) -> int:
    opts, kind = options & 0xFFFF_FFFF, idtype & 0xFFFF_FFFF
    if opts & ~WAITID_OPTIONS or not opts & (WEXITED | WSTOPPED | WCONTINUED):
        return -errno.EINVAL
    if kind == P_PIDFD:
        return -errno.EINVAL  # pidfds are not handed out (clone's CLONE_PIDFD is refused)
    if kind not in (P_ALL, P_PID, P_PGID):
        return -errno.EINVAL
    target = s32(ident)
    if kind in (P_PID, P_PGID) and target <= 0 and not (kind == P_PGID and target == 0):
        return -errno.EINVAL
    if kind == P_PGID and target == 0:
        target = os.getpgrp()
    if not _may_have(k, target if kind == P_PID else -1):
        return -errno.ECHILD
    try:
        if _wait_ours(k, opts):
            result = os.waitid(kind, target, opts | WNOHANG)
            pids = _targets(k, target if kind == P_PID else -1)
            if result is None and park_on_children(k, pids, 247, "waitid"):
                return 0  # made again once a child has ended
            if result is None:
                result = os.waitid(kind, target, opts)
        else:
            result = os.waitid(kind, target, opts)
    except OSError as e:
        return -(e.errno or errno.ECHILD)
    if result is None:  # WNOHANG, nothing to report: Linux zeroes these fields
        if info:
            k.mem.write(info, bytes(12))
            k.mem.write(info + 16, bytes(12))
    else:
        if result.si_code in (CLD_EXITED, CLD_KILLED, CLD_DUMPED) and not opts & WNOWAIT:
            k.children.discard(result.si_pid)
            k.child_watch.reaped(k.signals, result.si_pid, siginfo(
                signal.SIGCHLD, result.si_code, result.si_pid, result.si_uid,
                result.si_status, 0, 0, layout="iIi4xqq"))
        if info:
            k.mem.write(info, siginfo(result.si_signo, result.si_code, result.si_pid,
                                      result.si_uid, result.si_status, 0, 0,
                                      layout="iIi4xqq"))
    if rusage:  # the host's waitid gives no usage: Linux's would be the child's
        k.mem.write(rusage, bytes(RUSAGE.size))
    return 0


def sys_pipe2(k: Kernel, fds: int, flags: int) -> int:
    fl = flags & 0xFFFF_FFFF
    if fl & ~(os.O_CLOEXEC | os.O_NONBLOCK | os.O_DIRECT):
        return -errno.EINVAL
    host = fl & (os.O_NONBLOCK | os.O_DIRECT)
    try:
        read_end, write_end = os.pipe2(os.O_CLOEXEC | host)
    except OSError as e:
        return -(e.errno or errno.EMFILE)
    ends = [OpenFile(host_fd=read_end, flags=os.O_RDONLY | host),
            OpenFile(host_fd=write_end, flags=os.O_WRONLY | host)]
    cloexec = bool(fl & os.O_CLOEXEC)
    installed: list[int] = []
    try:
        for end in ends:
            installed.append(k.fds.install(end, cloexec=cloexec))
        k.mem.write(fds, struct.pack("<2i", *installed))
    except OSError as e:  # EMFILE: nothing stays open
        _undo(k, installed, ends)
        return -(e.errno or errno.EMFILE)
    except Exception:  # EFAULT (the dispatcher's answer): nothing stays open either
        _undo(k, installed, ends)
        raise
    return 0


def _undo(k: Kernel, installed: list[int], ends: list[OpenFile]) -> None:
    for fd in installed:
        k.fds.close(fd)
    for end in ends[len(installed):]:
        end.close_host()


def sys_pipe(k: Kernel, fds: int) -> int:
    return sys_pipe2(k, fds, 0)


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    22: ("pipe", sys_pipe),
    61: ("wait4", sys_wait4),
    247: ("waitid", sys_waitid),
    293: ("pipe2", sys_pipe2),
}
