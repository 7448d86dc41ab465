"""Signals from outside: another process's kill(2) reaching a guest process (guest pids are
host pids, so it arrives at the emulator process as a host signal).

Without this, the host's default action would apply whatever the guest's disposition: a
guest that catches or ignores SIGTERM, SIGUSR1, SIGINT, SIGHUP... would die.  So when the
guest sets a disposition for such a signal, the emulator sets the host's to match: SIG_IGN
for SIG_IGN, the host's own again for SIG_DFL, and for a handler a no-op Python handler plus
Python's wakeup fd (signal.set_wakeup_fd): the C-level handler writes the signal number
into a pipe, which a host thread reads while the guest computes — it queues the number and
kicks the engine (``Machine.defer``), so the guest's handler runs at the next block boundary
— and which blocking waits (leakdbt.linux.blocking) watch too.  The siginfo is SI_USER with
si_pid 0: the wakeup fd does not say who sent it.

Only a real run does this (an engine to kick, host time, Python's main thread): the host's
signal dispositions are process-wide.  Faults (SIGSEGV & co.: the engine reports the
guest's own), SIGCHLD (leakdbt.linux.childwatch), SIGPIPE (write(2) reports it), SIGKILL and
SIGSTOP are not forwarded.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from leakdbt.linux.signals import (
    NSIG,
    SI_USER,
    SIG_DFL,
    SIG_IGN,
    SYNCHRONOUS,
    Signals,
    sender_info,
)

RETRY_MS = 50  # kick again after this long while queued signals wait for the engine
MAX_RETRIES = 40  # then they wait for the engine's next stop (it may be in a host call)
NOT_FORWARDED = SYNCHRONOUS | {signal.SIGCHLD, signal.SIGPIPE, signal.SIGKILL, signal.SIGSTOP}


def _noop(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup fd carries the signal (see the module doc)."""


class HostSignals:
    """The host's side of the guest's dispositions, and the signals that arrived."""

    def __init__(self) -> None:
        self._owner = os.getpid()
        self.arrived: deque[int] = deque()
        self.caught = 0  # mask of signals whose host handler forwards to the guest
        self._saved: dict[int, Any] = {}  # the host's handler before the guest changed it
        self._pipe: tuple[int, int] | None = None
        self._notify = -1  # eventfd: signals were queued (for blocking waits)
        self._thread: threading.Thread | None = None
        self.kick: Callable[[], None] | None = None

    @property
    def wake_fd(self) -> int | None:
        """What a blocking wait adds to its host poll (None: nothing forwarded): an eventfd
        the thread signals once it has queued signals (:meth:`woken` resets it)."""
        return self._notify if self._pipe is not None and self.caught else None

    def woken(self) -> None:
        """A blocking wait saw :attr:`wake_fd` readable: reset it (``arrived`` has them)."""
        with contextlib.suppress(OSError):
            os.eventfd_read(self._notify)

    def set(self, sig: int, handler: int) -> None:
        """The guest set ``sig``'s disposition to ``handler`` (SIG_DFL, SIG_IGN, an address)."""
        if (self.kick is None or sig in NOT_FORWARDED or not 1 <= sig < signal.NSIG
                or threading.current_thread() is not threading.main_thread()):
            return
        self._after_fork()
        try:
            if sig not in self._saved:
                self._saved[sig] = signal.getsignal(sig)
            if handler == SIG_DFL:
                signal.signal(sig, self._saved[sig] if self._saved[sig] is not None
                              else signal.SIG_DFL)
            elif handler == SIG_IGN:
                signal.signal(sig, signal.SIG_IGN)
            else:
                self._start()
                signal.signal(sig, _noop)
        except (OSError, ValueError):  # a signal the host reserves (glibc's 32, 33)
            return
        bit = 1 << (sig - 1)
        self.caught = self.caught | bit if handler not in (SIG_DFL, SIG_IGN) else \
            self.caught & ~bit

    def _after_fork(self) -> None:
        """A forked child must not share the parent's wakeup pipe (a signal to one would be
        read by the other): a new pipe and thread."""
        if os.getpid() == self._owner:
            return
        self._owner = os.getpid()
        old, self._pipe, self._thread = self._pipe, None, None
        self.arrived = deque()
        if self._notify >= 0:
            with contextlib.suppress(OSError):
                os.close(self._notify)
            self._notify = -1
        if old is not None:
            for fd in old:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._start()

    def _start(self) -> None:
        if self._pipe is None:
            if self._notify < 0:
                self._notify = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(self._pipe[0],),
                                            name="leakdbt-signals", daemon=True)
            self._thread.start()

    def take(self, fd: int) -> None:
        """Read the signal numbers waiting in the pipe into ``arrived`` (the thread)."""
        with contextlib.suppress(OSError):
            while data := os.read(fd, 256):
                self.arrived.extend(b for b in data  # leakdbt's own (SIGINT...): no
                                    if 1 <= b <= NSIG and self.caught >> (b - 1) & 1)

    def _run(self, fd: int) -> None:
        """The only reader of the wakeup pipe: queue, tell blocking waits (``notify``),
        kick the engine — again every RETRY_MS while the engine has not taken them (a kick
        between two engine runs is lost)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        retries = 0
        while self._pipe is not None and self._pipe[0] == fd:
            try:
                events = poller.poll(RETRY_MS if self.arrived and retries < MAX_RETRIES
                                     else -1)
            except OSError:
                return
            before = len(self.arrived)
            if events:
                self.take(fd)
                retries = 0
            else:
                retries += 1
            if self.arrived:
                if len(self.arrived) != before:
                    with contextlib.suppress(OSError):
                        os.eventfd_write(self._notify, 1)
                if self.kick is not None and retries <= MAX_RETRIES:
                    self.kick()

    def drain(self, signals: Signals) -> bool:
        """Queue the arrived signals for the guest (engine thread only); True if any."""
        self._after_fork()
        sent = False
        while self.arrived:
            sig = self.arrived.popleft()
            signals.send(sig, sender_info(sig, SI_USER, 0, 0))
            sent = True
        return sent


HOST = HostSignals()  # the host's dispositions are the process's: one for every kernel
