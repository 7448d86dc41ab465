"""Signals from other processes meet the guest's disposition (leakdbt.linux.hostsignals):
caught ones are forwarded through the wakeup pipe and kick the engine, ignored ones are
ignored by the host, SIG_DFL gives the host's own handler back; without an engine to kick
nothing host-wide changes."""

from __future__ import annotations

import os
import signal
import threading

from leakdbt.linux.hostsignals import HostSignals
from leakdbt.linux.signals import SIG_DFL, SIG_IGN, Signals


def test_forwarded_ignored_and_restored() -> None:
    before_usr1 = signal.getsignal(signal.SIGUSR1)
    before_usr2 = signal.getsignal(signal.SIGUSR2)
    old_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup)
    host = HostSignals()
    host.set(signal.SIGUSR1, 0x401000)  # no kick: a unit test's kernel changes nothing
    assert signal.getsignal(signal.SIGUSR1) == before_usr1 and host.caught == 0
    kicked = threading.Event()
    host.kick = kicked.set
    try:
        host.set(signal.SIGUSR1, 0x401000)
        host.set(signal.SIGUSR2, SIG_IGN)
        host.set(signal.SIGSEGV, 0x401000)  # a fault: the engine reports the guest's own
        host.set(signal.SIGCHLD, 0x401000)  # the child watch's
        assert host.caught == 1 << (signal.SIGUSR1 - 1)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
        assert host.wake_fd is not None
        os.kill(os.getpid(), signal.SIGUSR2)  # ignored: neither fatal nor forwarded
        os.kill(os.getpid(), signal.SIGUSR1)
        assert kicked.wait(10)
        sigs = Signals()
        assert host.drain(sigs)
        assert [s for s, _ in sigs.pending] == [signal.SIGUSR1]
        host.set(signal.SIGUSR1, SIG_DFL)
        host.set(signal.SIGUSR2, SIG_DFL)
        assert signal.getsignal(signal.SIGUSR1) == before_usr1
        assert signal.getsignal(signal.SIGUSR2) == before_usr2
        assert host.caught == 0 and host.wake_fd is None
    finally:
        signal.signal(signal.SIGUSR1, before_usr1)
        signal.signal(signal.SIGUSR2, before_usr2)
        signal.set_wakeup_fd(old_wakeup)
        host.kick = None
        host._pipe = None  # noqa: SLF001 - ends the thread's loop
