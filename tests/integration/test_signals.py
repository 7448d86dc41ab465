"""Guest signal handlers: synchronous faults (SIGSEGV, SIGFPE, SIGILL, SIGTRAP), signals sent
to itself, timers (setitimer, alarm, timer_create) and the alternate stack give the same
output and exit status as native runs, in every ELF kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import KINDS, binary, run_leakdbt, run_native

PROGRAMS = ("sig_segv", "sig_fpe", "sig_alarm", "sig_altstack")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_same_as_native(built: Path, kind: str, program: str) -> None:
    exe = binary(kind, program)
    native = run_native([exe])
    guest = run_leakdbt(["exec", exe])
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert guest.status == native.status
    if native.status == 0:
        assert guest.stderr == native.stderr == b""
    else:  # killed by its own SIGTERM: the one-line report names it
        assert guest.stderr.decode().count("guest killed by SIGTERM") == 1


def test_handlers_run_from_translated_code(built: Path) -> None:
    """Faults inside relocated copies reach the guest's handler too (--translate-all); after
    int3 the handler returns to the copy of the next instruction (int3 is a trap)."""
    for program in ("sig_segv", "sig_fpe"):
        exe = binary("static", program)
        native = run_native([exe])
        guest = run_leakdbt(["exec", "--timeout", "60", "--translate-all", exe])
        assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr


def test_unhandled_faults_keep_their_report(built: Path) -> None:
    """Without a handler a fault still ends the guest with 128+signal and one line."""
    for program, sig, status in (("segfault", "SIGSEGV", 139), ("divzero", "SIGFPE", 136)):
        r = run_leakdbt(["exec", binary("dynamic", program)])
        assert r.status == status
        assert r.stderr.decode().count(f"guest killed by {sig}") == 1
