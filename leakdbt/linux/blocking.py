"""Blocking system calls: one host wait for file descriptors, a deadline and signals.

poll(2), select(2), epoll_wait(2), sigsuspend(2), pause(2) and nanosleep(2) all wait until
something happens.  :func:`block` waits on the host (poll(2) on the host fds, never a busy
loop) until one of the given host fds is ready, a deadline passes, or a signal the caller
lets through becomes pending.  While it waits, the guest's timers fire (their deadline bounds
the host wait), its children's ends send SIGCHLD (their pidfds are in the host wait when
SIGCHLD would run a handler) and signals from other processes arrive (the wakeup pipe of
leakdbt.linux.hostsignals), as in Linux, where all of them interrupt a blocked call with
EINTR.

Under virtual time (``leakdbt check``) a wait with no fd to watch jumps the clock instead of
sleeping (``Kernel.wait_until``), as timers already do.

:func:`park_on_fd` and :func:`park_on_children` serve the calls that block on one host fd
or on a child (read, write, readv, writev, wait4, waitid): with other guest threads they
park the caller in the scheduler (leakdbt.linux.threads) instead of blocking the engine;
alone, they let ``--timeout`` end the wait.  :func:`park_on_set` does the same for poll,
select and epoll_wait (a set of host fds and a deadline) and :func:`park_for_signal` for
pause and sigsuspend, when no timer and no child's SIGCHLD could end the wait
(:func:`parkable`).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import select
import signal
import socket
import stat
import time
from collections.abc import Callable

from leakdbt.errors import Deadlock
from leakdbt.linux.files import OpenFile
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.kernel import Kernel
from leakdbt.linux.signals import SIG_DFL, SIG_IGN
from leakdbt.linux.threads import Wait

Deadline = tuple[int, int]  # (host clock id, ns on that clock)


def interrupting(k: Kernel, mask: int) -> bool:
    """Is a signal outside ``mask`` pending (it would end the wait: a handler runs, or the
    default action ends the guest; ignored signals are never queued)?"""
    return any(not mask >> (s - 1) & 1 for s, _ in k.signals.pending)


def sigchld_interrupts(k: Kernel, mask: int) -> bool:
    """Would a child's end interrupt a wait with ``mask`` blocked (a SIGCHLD handler)?"""
    if mask >> (signal.SIGCHLD - 1) & 1:
        return False
    return k.signals.action(signal.SIGCHLD).handler not in (SIG_DFL, SIG_IGN)


def _earliest(k: Kernel, until: Deadline | None) -> tuple[Deadline | None, int | None]:
    """The first of ``until`` and the armed timers' deadlines, and ns left until it."""
    best: Deadline | None = None
    left: int | None = None
    candidates = [until] if until is not None else []
    candidates += [(t.clock, t.deadline) for t in k.timers.all() if t.deadline]
    for clock, ns in candidates:
        remaining = ns - k.clock_ns(clock)
        if left is None or remaining < left:
            best, left = (clock, ns), remaining
    return best, left


def block(k: Kernel, want: dict[int, int], until: Deadline | None, mask: int,
          what: str) -> dict[int, int] | int:
    """Wait for ``want`` (host fd -> poll events): the ready fds with their revents; ``{}``
    once ``until`` has passed; ``-EINTR`` when a signal outside ``mask`` is pending first.

    Ready fds win over a pending signal, as in Linux's do_poll.  ``--timeout`` ends the
    wait (:meth:`Kernel.timeout_left`).  With nothing in the run that could ever end it,
    a host-time run waits as Linux does (another process's signal may come); under virtual
    time (``check``: nothing from outside) the guest is deadlocked: :class:`Deadlock`."""
    watch = k.child_watch
    first = True
    while True:
        watch.sync(k.children)
        watch.drain(k.signals)
        HOST.drain(k.signals)
        k.timers.fire_due(k)
        children = watch.pending_fds() if sigchld_interrupts(k, mask) else {}
        outside = HOST.wake_fd if HOST.caught & ~mask else None
        if outside is not None:
            children = {**children, outside: -1}
        deadline, left = _earliest(k, until)
        if not first and interrupting(k, mask):
            return -errno.EINTR
        if not first and until is not None and k.clock_ns(until[0]) >= until[1]:
            return {}
        if interrupting(k, mask) or (left is not None and left <= 0):
            timeout_ms = 0
        elif left is None:
            timeout_ms = -1
        else:
            timeout_ms = -(-left // 1_000_000)
        limit = None if k.virtual_time else k.timeout_left(what)  # past it: LimitExceeded
        if limit is not None and timeout_ms != 0:
            cap = math.ceil(limit * 1000)
            timeout_ms = cap if timeout_ms < 0 else min(timeout_ms, cap)
        if not want and not children:
            if timeout_ms < 0 and k.virtual_time:
                raise Deadlock(f"deadlock: the only guest thread waits in {what} for "
                               "something that nothing can send")
            if timeout_ms < 0:
                # Host time: only another process's signal can end this wait now (a caught
                # one would be watched above; the default action ends leakdbt as it would
                # end the guest), so wait as Linux does, until one comes.
                signal.pause()
            elif k.virtual_time and deadline is not None and timeout_ms > 0:
                k.wait_until(*deadline)  # virtual time: the clock jumps
            elif timeout_ms > 0:
                time.sleep(timeout_ms / 1000)
            first = False
            continue
        poller = select.poll()
        for fd, events in want.items():
            poller.register(fd, events)
        for fd in children:
            poller.register(fd, select.POLLIN)
        events_seen = poller.poll(timeout_ms)
        ready = {fd: ev for fd, ev in events_seen if fd in want}
        if ready:
            return ready
        watch.claim((children[fd], fd) for fd, _ in events_seen
                    if children.get(fd, -1) > 0)
        if outside is not None and any(fd == outside for fd, _ in events_seen):
            HOST.woken()  # the thread queued them: the next round drains them
        if k.virtual_time and not events_seen and deadline is not None and timeout_ms > 0:
            k.wait_until(*deadline)  # the clock reaches the deadline too
        first = False


# -- calls that may block on one host fd (read, write, wait4...) ------------------------------

ALL_SIGNALS = (1 << 64) - 1  # a mask no signal passes: only readiness or --timeout end it


def threaded(k: Kernel) -> bool:
    """Has the guest more than one live thread (its blocking calls must let the others
    run)?"""
    return k.threads is not None and len(k.threads.live()) > 1


def parkable(k: Kernel, mask: int) -> bool:
    """May a wait that a signal outside ``mask`` ends (poll, select, epoll_wait, pause,
    sigsuspend) park its thread?  With other threads, and when no armed timer and no child
    whose end would run a SIGCHLD handler could end it (the scheduler does not fire those:
    such waits keep :func:`block`, which blocks every thread).  Signals from other
    processes are the scheduler's (ThreadGroup._route_signals)."""
    return threaded(k) and not k.timers.active \
        and not (k.children and sigchld_interrupts(k, mask))


def claim_own(k: Kernel, mask: int) -> None:
    """Queue the running thread's own pending signals that ``mask`` lets through
    (ThreadGroup.claim_own), before a wait under ``mask`` looks for one."""
    if k.threads is not None:
        k.threads.claim_own(mask)


def resumed_deadline(k: Kernel, nr: int) -> tuple[bool, Deadline | None]:
    """(True, its deadline) when the running thread makes call ``nr`` again after a park
    (:func:`park_on_set`): it waits only until the first call's deadline; (False, None)
    for a new call."""
    if k.threads is None or k.threads.current.until is None:
        return False, None
    (again, until), k.threads.current.until = k.threads.current.until, None
    return again == nr, until


def park_on_set(k: Kernel, want: dict[int, int], until: Deadline | None, mask: int | None,
                nr: int, on_eintr: Callable[[], None] | None) -> None:
    """Park the running thread until one of ``want`` (host fd -> poll events) is ready or
    ``until`` passes; its call ``nr`` is then made again, with what is left of ``until``
    (:func:`resumed_deadline`).  ``mask``: the call's temporary signal mask; a signal it
    lets through ends the wait with EINTR, after ``on_eintr`` (which writes the time
    left)."""
    assert k.threads is not None
    k.threads.block(Wait(fds=dict(want), deadline=until, restart=nr, mask=mask,
                         on_eintr=on_eintr, signals=True))
    k.threads.current.until = (nr, until)


def park_for_signal(k: Kernel, mask: int) -> None:
    """pause/sigsuspend with other threads: park the running thread until a signal outside
    ``mask`` is sent to it (its call then returns EINTR and the handler runs under ``mask``,
    the thread's own mask restored after it)."""
    assert k.threads is not None
    k.threads.block(Wait(mask=mask, signals=True))


def nonblocking(host_fd: int) -> bool:
    """Is ``host_fd`` in O_NONBLOCK mode (its calls answer EAGAIN, never wait)?"""
    try:
        return bool(fcntl.fcntl(host_fd, fcntl.F_GETFL) & os.O_NONBLOCK)
    except OSError:
        return True  # a bad fd: the call itself reports it


def _ready(host_fd: int, events: int) -> bool:
    poller = select.poll()
    poller.register(host_fd, events)
    return bool(poller.poll(0))  # any event, POLLHUP/POLLERR/POLLNVAL too: the call answers


def park_on_fd(k: Kernel, host_fd: int, events: int, nr: int, what: str) -> bool:
    """Before a call on ``host_fd`` that may block (``events``: POLLIN for a read, POLLOUT
    for a write).  True: the calling thread was parked until the fd is ready, and its
    call ``nr`` is made again then (the handler returns now, its result unused); False:
    make the call now.

    With other threads, a blocking-mode fd that is not ready parks the thread in the
    scheduler (leakdbt.linux.threads) so the others run.  Alone, the thread waits for the
    fd here, with ``--timeout`` bounding the wait (:func:`block`), only when a --timeout is
    set and time is the host's; otherwise the host call blocks as it always did.  An
    O_NONBLOCK fd never waits (the call answers EAGAIN)."""
    if threaded(k):
        if nonblocking(host_fd) or _ready(host_fd, events):
            return False
        assert k.threads is not None
        k.threads.block(Wait(fd=host_fd, events=events, restart=nr))
        return True
    if k.timeout is not None and not k.virtual_time and not nonblocking(host_fd) \
            and not _ready(host_fd, events):
        block(k, {host_fd: events}, None, ALL_SIGNALS, what)
    return False


def park_on_children(k: Kernel, pids: list[int], nr: int, what: str) -> bool:
    """Before a wait4/waitid that found no child to report (a WNOHANG try): True when the
    thread was parked until one of ``pids`` ends (its call ``nr`` is made again then);
    False: make the blocking call now (alone, after waiting here for an end with
    ``--timeout`` bounding the wait when it is set; no pidfd to wait on: at once)."""
    pidfds: list[int] = []
    for pid in pids:
        try:
            pidfds.append(os.pidfd_open(pid))
        except OSError:
            continue  # reaped meanwhile: the call finds out
    if not pidfds:
        return False
    if threaded(k):
        assert k.threads is not None
        k.threads.block(Wait(pidfds=tuple(pidfds), restart=nr))  # the wait closes them
        return True
    try:
        block(k, dict.fromkeys(pidfds, select.POLLIN), None, ALL_SIGNALS, what)
    finally:
        for fd in pidfds:
            os.close(fd)
    return False


def may_wait(k: Kernel, f: OpenFile) -> bool:
    """Can a read or write of ``f`` block on the host, and must the wait be ours (other
    threads to run, or a --timeout to honour)?  Regular files and directories never wait."""
    if (k.timeout is None or k.virtual_time) and not threaded(k):
        return False  # one thread, nothing to bound: the plain host call, as fast as before
    if getattr(f, "epoll", None) is not None:
        return False  # an epoll fd (sys_poll.EpollFile) polls readable only with events
    return f.host_fd >= 0 and not f.is_regular and not f.is_dir


PIPE_BUF = 4096  # a pipe that polls writable has room for this much (one free page)
MSG_DONTWAIT = 0x40


def _write_now(f: OpenFile, mode: int, data: bytes, flags: int = 0) -> int | None:
    """Write what fits of ``data`` without blocking the host: bytes written, or None when
    nothing fits now.  A pipe takes PIPE_BUF bytes once it polls writable; a socket is sent
    to with MSG_DONTWAIT (stream sockets take part, datagrams all or nothing) and the
    caller's send ``flags``; anything else (a terminal) takes the plain write.  ``mode``:
    the host fd's st_mode."""
    if stat.S_ISFIFO(mode):
        poller = select.poll()
        poller.register(f.host_fd, select.POLLOUT)
        if not poller.poll(0):
            return None
        return os.write(f.host_fd, data[:PIPE_BUF])
    if stat.S_ISSOCK(mode):
        with socket.socket(fileno=os.dup(f.host_fd)) as sock:
            try:
                return sock.send(data, MSG_DONTWAIT | flags)
            except BlockingIOError:
                return None
    return f.write(data)


def take_progress(k: Kernel) -> int:
    """What the running thread's write wrote before it was parked (0 for a new call)."""
    if k.threads is None:
        return 0
    done, k.threads.current.progress = k.threads.current.progress, 0
    return done


def write_waiting(k: Kernel, f: OpenFile, data: bytes, nr: int, done: int,
                  what: str = "write", flags: int = 0) -> int:
    """A blocking-mode write to a pipe or socket that waits our way, from byte ``done``
    on: in pieces that never block the host; with other threads, a full pipe parks the
    thread (its call is made again later and goes on after the bytes already written,
    kept in ``Thread.progress``); alone, the wait is here, bounded by --timeout.  Returns
    what write(2) returns once all is written.  ``flags``: a send(2)'s flags, for a
    socket."""
    mode = os.fstat(f.host_fd).st_mode
    while done < len(data):
        try:
            n = _write_now(f, mode, data[done:], flags)
        except OSError:
            if done:
                return done  # what was written before the error, as pipe_write does
            raise
        if n is not None:
            done += n
        elif threaded(k):
            if park_on_fd(k, f.host_fd, select.POLLOUT, nr, what):
                assert k.threads is not None
                k.threads.current.progress = done
                return 0  # made again once writable
        else:
            block(k, {f.host_fd: select.POLLOUT}, None, ALL_SIGNALS, what)
    return done
