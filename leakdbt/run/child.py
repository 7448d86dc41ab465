"""How a forked guest process ends: with the guest's status, as a host process.

A guest fork is a host fork of leakdbt (leakdbt.linux.sys_clone), so the child holds a copy of
the caller's Python stack (the CLI, or ``check`` looping over trials).  It must never return
into that code: :func:`end_child` ends the host process right where the guest's run ends —
with the guest's exit status, or killed by the guest's fatal signal so that the parent's
wait4 sees WIFSIGNALED as under Linux (without a core file: RLIMIT_CORE is set to 0).
leakdbt's one-line report of a crash (SIGSEGV and the other synchronous faults) or a limit
is printed as for the first process; a child killed by another signal dies quietly.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import traceback
from typing import NoReturn

from leakdbt.errors import GuestFault, LeakDBTError

INTERNAL_ERROR_STATUS = 125  # as the CLI's (leakdbt.cli)
# A child killed by one of these faults gets leakdbt's one-line report (where it crashed);
# one killed by a signal it sent or by SIGPIPE dies as quietly as natively: its parent
# (a shell) sees the signal in the wait status.
REPORTED = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                      signal.SIGTRAP, signal.SIGSYS})


def end_child(error: BaseException) -> NoReturn:
    """End this forked child whose run raised ``error`` (a crash, a limit, a bug)."""
    status = _status_of(error)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def exit_child(status: int) -> NoReturn:
    """End this forked child with ``status`` (the guest's exit status)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status & 0xFF)


def _status_of(error: BaseException) -> int:
    if isinstance(error, GuestFault):
        if error.signo in REPORTED:
            _report(f"leakdbt: {error.one_line()}")
        _die_by(error.signo)
        return error.exit_status
    if isinstance(error, LeakDBTError):
        _report(f"leakdbt: {error.one_line()}")
        return error.exit_status
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    with contextlib.suppress(Exception):
        if os.environ.get("LEAKDBT_DEBUG"):
            traceback.print_exception(error)
    _report(f"leakdbt: internal error in a forked guest process: {type(error).__name__}: "
            f"{error}")
    return INTERNAL_ERROR_STATUS


def _report(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _die_by(signo: int) -> None:
    """Kill this process with ``signo`` (its default action), as the guest was."""
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if signo not in (signal.SIGKILL, signal.SIGSTOP):
        with contextlib.suppress(Exception):
            signal.signal(signo, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signo])
    with contextlib.suppress(Exception):
        os.kill(os.getpid(), signo)
