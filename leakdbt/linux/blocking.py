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
"""

from __future__ import annotations

import errno
import math
import select
import signal
import time

from leakdbt.errors import Deadlock
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.kernel import Kernel
from leakdbt.linux.signals import SIG_DFL, SIG_IGN

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
