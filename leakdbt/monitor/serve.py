"""Running a :class:`~leakdbt.monitor.monitor.Monitor` as a host service (``leakdbt
monitor``): until SIGINT or SIGTERM, or until a program it started exits."""

from __future__ import annotations

import signal
import subprocess
import threading
from types import FrameType

from leakdbt.errors import UsageError
from leakdbt.monitor.monitor import Monitor

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WAIT_SECONDS = 0.05  # how often the main thread looks at the program it started


def serve(monitor: Monitor, command: list[str]) -> int:
    """Observe once, then poll on the monitor's thread until stopped; returns the exit status:
    0 after a signal, the program's status when ``command`` was given (a signal is then
    passed on to the program, and we stop when it exits)."""
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        monitor.step()  # the first word is written before the program starts
        monitor.start()
        if command:
            try:
                child = subprocess.Popen(command)
            except OSError as e:
                raise UsageError(f"{command[0]}: {e.strerror or e}") from None
            return _exit_status(child.wait())
        while not stopping.wait(WAIT_SECONDS):
            pass
        return 0
    finally:
        monitor.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _exit_status(returncode: int) -> int:
    """A shell-style status: 128 + N for a program killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
