"""Waiting on descriptors and process groups between guest processes: poll, ppoll, select,
pselect, epoll, eventfd and socketpair between a parent and forked children (timeouts, EINTR
from a timer), SIGCHLD delivered to a parent that computes, setpgid/getpgid/setsid/getsid as
shells use them; every ELF kind, byte-identical to native runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import KINDS, binary, run_leakdbt, run_native

PROGRAMS = ("poll_io", "proc_sigchld")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_same_as_native(built: Path, kind: str, program: str) -> None:
    exe = binary(kind, program)
    native = run_native([exe])
    guest = run_leakdbt(["exec", "--timeout", "120", exe])
    assert native.status == 0 and native.stderr == b""
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert (guest.status, guest.stderr) == (0, b"")
    if program == "poll_io":  # the waits that must have waited, and been interrupted
        assert b"poll: 1 revents=0x1 read via poll" in guest.stdout
        assert b"epoll_pwait interrupted: -1 Interrupted system call alarms=3" in guest.stdout
    else:
        assert guest.stdout.startswith(b"SIGCHLD while computing: 1 from the child: 1 "
                                       b"status 3\n")


def test_sigchld_reaches_a_spinning_parent_under_strict(built: Path) -> None:
    """Nothing in these programs is unsupported: --strict runs them too."""
    exe = binary("static", "proc_sigchld")
    guest = run_leakdbt(["exec", "--strict", "--timeout", "120", exe])
    assert guest.status == 0, guest.stderr
