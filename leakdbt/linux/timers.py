"""Interval timers that send signals: alarm(2), setitimer(2) and timer_create(2) timers.

A timer is a deadline on a clock (the kernel's ``clock_ns``, so virtual under ``leakdbt
check``) and an optional interval.  Expiry is checked between engine runs after each system
call while a timer is armed, and when the guest waits for a signal (``wait``).  With host
time, a host thread also wakes the engine at the next deadline (``waker``), so that a guest
spinning without system calls still gets its SIGALRM; virtual time has no such thread, so
there a timer fires only at system calls and waits (deterministically).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from leakdbt.linux.signals import SI_KERNEL, SI_TIMER, Signals, siginfo


class Kernel(Protocol):
    """What timers need of the kernel (leakdbt.linux.kernel.Kernel): its clocks and signals."""

    @property
    def signals(self) -> Signals: ...

    @property
    def clock_ns(self) -> Callable[[int], int]: ...

    @property
    def wait_until(self) -> Callable[[int, int], None]: ...

ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF = 0, 1, 2
ITIMER_CLOCKS = {ITIMER_REAL: time.CLOCK_MONOTONIC,
                 ITIMER_VIRTUAL: time.CLOCK_PROCESS_CPUTIME_ID,
                 ITIMER_PROF: time.CLOCK_PROCESS_CPUTIME_ID}
ITIMER_SIGNALS = {ITIMER_REAL: signal.SIGALRM, ITIMER_VIRTUAL: signal.SIGVTALRM,
                  ITIMER_PROF: signal.SIGPROF}
SIGEV_SIGNAL, SIGEV_NONE = 0, 1


@dataclass
class Timer:
    """One timer: ``deadline`` (ns on ``clock``; 0 = disarmed) and ``interval`` (0: once)."""

    clock: int
    signo: int
    posix_id: int | None = None  # timer_create's id; None for an itimer
    notify: int = SIGEV_SIGNAL
    value: int = 0  # sigev_value
    deadline: int = 0
    interval: int = 0
    overrun: int = 0

    def info(self) -> bytes:
        if self.posix_id is None:
            return siginfo(self.signo, SI_KERNEL)
        return siginfo(self.signo, SI_TIMER, self.posix_id, self.overrun, self.value,
                       layout="iiQ")


@dataclass
class Timers:
    """Every timer of the guest.  ``waker(seconds)`` (host time only) schedules a wake-up."""

    itimers: dict[int, Timer] = field(default_factory=dict)
    posix: dict[int, Timer] = field(default_factory=dict)
    waker: Callable[[float], None] | None = None
    active: bool = False  # any timer armed: after_syscall must look
    _scheduled: tuple[int, int] = (0, 0)  # the deadline the waker was last set for

    def all(self) -> list[Timer]:
        return [*self.itimers.values(), *self.posix.values()]

    def arm(self, k: Kernel, timer: Timer, deadline: int, interval: int) -> None:
        timer.deadline, timer.interval, timer.overrun = deadline, interval, 0
        self._changed(k)

    def remaining(self, k: Kernel, timer: Timer) -> int:
        """Nanoseconds until ``timer`` expires (0: disarmed)."""
        if not timer.deadline:
            return 0
        return max(1, timer.deadline - k.clock_ns(timer.clock))

    def fire_due(self, k: Kernel) -> None:
        """Send the signal of every expired timer; re-arm periodic ones (counting overruns)."""
        if not self.active:
            return
        fired = False
        for timer in self.all():
            if not timer.deadline:
                continue
            now = k.clock_ns(timer.clock)
            if now < timer.deadline:
                continue
            if timer.interval:
                missed = (now - timer.deadline) // timer.interval
                timer.overrun = missed
                timer.deadline += (missed + 1) * timer.interval
            else:
                timer.deadline = 0
            if timer.notify == SIGEV_SIGNAL:
                k.signals.send(timer.signo, timer.info())
            fired = True
        if fired:
            self._changed(k)

    def wait(self, k: Kernel, until: tuple[int, int] | None = None) -> bool:
        """Block until the next timer expires (True, its signal is queued) or ``until`` (a
        (clock, ns) deadline) passes first (False).  False at once if nothing is armed."""
        armed = [t for t in self.all() if t.deadline]
        if not armed and until is None:
            return False
        first = min(armed, key=lambda t: t.deadline - k.clock_ns(t.clock), default=None)
        if first is not None and (until is None or first.deadline - k.clock_ns(first.clock)
                                  <= until[1] - k.clock_ns(until[0])):
            k.wait_until(first.clock, first.deadline)
            self.fire_due(k)
            return True
        assert until is not None
        k.wait_until(*until)
        return False

    def _changed(self, k: Kernel) -> None:
        armed = [t for t in self.all() if t.deadline]
        self.active = bool(armed)
        if self.waker is None or not armed:
            return
        first = min(armed, key=lambda t: (t.deadline - k.clock_ns(t.clock)))
        if (first.clock, first.deadline) != self._scheduled:  # one host timer at a time
            self._scheduled = (first.clock, first.deadline)
            self.waker((first.deadline - k.clock_ns(first.clock)) / 1e9)


class HostWaker:
    """Wakes the engine at the next timer deadline from a host thread: ``kick`` is run there
    (the machine's thread-safe ``defer``)."""

    def __init__(self, kick: Callable[[], None]) -> None:
        self._kick = kick
        self._thread: threading.Timer | None = None
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.cancel()
            self._thread = threading.Timer(max(seconds, 0.0), self._kick)
            self._thread.daemon = True
            self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: the parent's timer thread does not exist here; forget it (and
        a lock it may have held at the fork), keeping this object, which the session
        closes at exit."""
        self._thread = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.cancel()
                self._thread = None
