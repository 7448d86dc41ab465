"""Knowing when a guest child ends, so that the guest gets its SIGCHLD (signal(7), pidfd_open(2)).

Guest children are host processes (leakdbt.linux.sys_clone), so their ends are host events.
Each child gets a pidfd, which becomes readable when the child ends.  Two places look at them:

- a blocking system call (poll, select, epoll_wait, sigsuspend, pause, nanosleep...) adds
  the pidfds to its host wait (leakdbt.linux.blocking), so a child's end interrupts it;
- with host time, a host thread waits on them while the guest computes and *kicks* the
  engine (the machine's thread-safe ``defer``): the SIGCHLD is then delivered at the next
  block boundary, as a timer's signal is (leakdbt.linux.timers.HostWaker).

Each child is reported once (``reported``): the ends found by the thread wait in ``arrived``
until the engine's thread turns them into signals (:meth:`ChildWatch.drain`), so that only
that thread touches the guest's signal state.  Under virtual time (``leakdbt check``) there
is no thread: a child's end interrupts blocking calls only, deterministically.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable

from leakdbt.linux.signals import Signals, siginfo

P_PID, WEXITED, WNOHANG, WNOWAIT = 1, 4, 1, 0x1000000
RETRY_MS = 50  # kick again after this long while reported ends wait for the engine
MAX_RETRIES = 40  # then the ends wait for the engine's next stop (it may be in a host call)
CLD_EXITED = 1


def sigchld_info(pid: int) -> bytes:
    """The siginfo of ``pid``'s SIGCHLD: its si_code and status as waitid(2) peeks them."""
    try:
        result = os.waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)
    except OSError:
        result = None
    if result is None:  # already reaped by the guest: what is known is the pid
        return siginfo(signal.SIGCHLD, CLD_EXITED, pid, os.getuid(), 0, 0, 0,
                       layout="iIi4xqq")
    return siginfo(signal.SIGCHLD, result.si_code, result.si_pid, result.si_uid,
                   result.si_status, 0, 0, layout="iIi4xqq")


class ChildWatch:
    """The pidfds of the guest's children and which ends were already reported."""

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self.reported: set[int] = set()
        self.arrived: deque[int] = deque()  # reported by the thread, not yet signalled
        self._thread: threading.Thread | None = None
        self._control: tuple[int, int] | None = None  # wakes the thread on changes
        self.kick: Callable[[], None] | None = None  # set: ends are watched while computing

    # -- bookkeeping (engine thread) -----------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: the parent's pidfds are siblings, its thread does not exist
        here and its lock may have been held at the fork."""
        self._owner = os.getpid()
        self._lock = threading.Lock()
        for fd in self._pidfds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._control is not None:
            for fd in self._control:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pidfds, self._control, self._thread = {}, None, None
        self.reported, self.arrived = set(), deque()

    def sync(self, children: Iterable[int]) -> None:
        """Watch exactly ``children`` (the kernel's set): new pids get a pidfd, reaped ones
        lose theirs.  A pid that no longer exists (reaped behind our back) is skipped."""
        if os.getpid() != self._owner:
            self._after_fork()
        wanted = set(children)
        with self._lock:
            for pid in [p for p in self._pidfds if p not in wanted]:
                with contextlib.suppress(OSError):
                    os.close(self._pidfds.pop(pid))
                self.reported.discard(pid)
            added = False
            for pid in wanted - self._pidfds.keys():
                try:
                    self._pidfds[pid] = os.pidfd_open(pid)
                    added = True
                except OSError:
                    continue
        if added and self.kick is not None:
            self._start()

    def pending_fds(self) -> dict[int, int]:
        """pidfd -> pid of every child whose end has not been reported yet."""
        with self._lock:
            return {fd: pid for pid, fd in self._pidfds.items() if pid not in self.reported}

    def claim(self, ended: Iterable[tuple[int, int]]) -> None:
        """Report the ends of ``ended`` ((pid, pidfd) pairs seen readable; each once): they
        join ``arrived``.  A pidfd :meth:`sync` has dropped meanwhile (the guest reaped that
        child, whose SIGCHLD went with the wait) is not reported again."""
        with self._lock:
            for pid, fd in ended:
                if pid not in self.reported and self._pidfds.get(pid) == fd:
                    self.reported.add(pid)
                    self.arrived.append(pid)

    def reaped(self, signals: Signals, pid: int, info: bytes) -> None:
        """The guest's wait reaped ``pid``: its SIGCHLD, if not reported yet, is queued now
        (in Linux it was sent at the child's end, before any wait could return)."""
        with self._lock:
            if pid in self.reported:
                if pid not in self.arrived:
                    return  # its SIGCHLD was sent already
                # Seen by the watcher thread but not sent yet: send it now, with the wait,
                # or it would wait for the next kick and may merge with a later child's.
                self.arrived.remove(pid)
            self.reported.add(pid)
        signals.send(signal.SIGCHLD, info)

    def drain(self, signals: Signals) -> bool:
        """Turn reported ends into SIGCHLD (engine thread only); True if any was sent."""
        sent = False
        while self.arrived:
            pid = self.arrived.popleft()
            signals.send(signal.SIGCHLD, sigchld_info(pid))
            sent = True
        return sent

    # -- the host thread -----------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._control is None:
                self._control = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            if self._thread is not None and self._thread.is_alive():
                with contextlib.suppress(OSError):
                    os.write(self._control[1], b"x")  # look at the new pidfd too
                return
            self._thread = threading.Thread(target=self._run, name="leakdbt-sigchld",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Wait for the next unreported end, report it, kick the engine; end when no child
        is left to watch (or :meth:`close`)."""
        control = self._control
        assert control is not None
        retries = 0
        while True:
            with self._lock:
                fds = {fd: pid for pid, fd in self._pidfds.items() if pid not in self.reported}
                if (not fds and (not self.arrived or retries >= MAX_RETRIES)) \
                        or self._control is not control:
                    self._thread = None
                    return
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.register(control[0], select.POLLIN)
            try:
                # A kick that reaches the engine between two runs is lost (the stop is for
                # a run not yet started): until the engine has taken the ends, kick again.
                events = poller.poll(RETRY_MS if self.arrived and retries < MAX_RETRIES
                                     else -1)
            except OSError:  # a pidfd closed under us (reaped): look again
                continue
            if not events and self.arrived and self.kick is not None:
                retries += 1
                if retries <= MAX_RETRIES:
                    self.kick()
                continue
            retries = 0
            if any(fd == control[0] for fd, _ in events):
                with contextlib.suppress(OSError):
                    os.read(control[0], 64)
            ended = [(fds[fd], fd) for fd, _ in events if fd in fds]
            if ended:
                self.claim(ended)
                kick = self.kick
                if kick is not None:
                    kick()

    def close(self) -> None:
        """Stop the thread and close every pidfd (the process's guest is done)."""
        if os.getpid() != self._owner:
            self._after_fork()
            return
        with self._lock:
            control, self._control = self._control, None
            for fd in self._pidfds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pidfds = {}
        if control is not None:
            with contextlib.suppress(OSError):
                os.write(control[1], b"x")
            thread = self._thread
            if thread is not None:
                thread.join(timeout=5)
            for fd in control:
                with contextlib.suppress(OSError):
                    os.close(fd)
