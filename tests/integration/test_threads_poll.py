"""poll, select, epoll_wait and sigsuspend park their thread when other guest threads exist
(leakdbt.linux.blocking.park_on_set / park_for_signal, the scheduler in
leakdbt.linux.threads): an event loop that waits in poll, epoll_wait or select for what a
worker thread writes later, timeouts that end with nothing ready while another thread
computes, a thread in sigsuspend woken by pthread_kill, and ppoll/epoll_pwait whose
temporary mask lets a pthread_kill'd signal end them with EINTR give native's output in every
ELF kind (each would hang, or end at --timeout, if the waiting thread blocked the engine);
the interleaving repeats exactly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from leakdbt.errors import Deadlock
from leakdbt.linux import blocking
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.signals import SIG_DFL
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import KINDS, binary, run_leakdbt, run_native
from tests.integration.test_threads_pipe import _run_in_process

MODES = ("poll", "epoll", "select", "timeout", "pause", "ppintr")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_threads_waiting_in_poll_and_sigsuspend_same_as_native(built: Path, kind: str,
                                                               mode: str) -> None:
    exe = binary(kind, "threads_poll")
    native = run_native([exe, mode])
    guest = run_leakdbt(["exec", "--timeout", "300", exe, mode])
    assert native.status == 0 and native.stdout.count(b"\n") >= 1
    assert b"bad=0" in native.stdout or mode in ("timeout", "pause", "ppintr")
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr
    assert guest.stderr == b""


@pytest.mark.parametrize("mode", MODES)
def test_the_waits_park_and_the_interleaving_is_the_same_in_every_run(
        built: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """The waiting thread parks (park_on_set or park_for_signal is called: the others run),
    and two runs give the same output, instructions per thread and switches."""
    parks: list[str] = []
    on_set, for_signal = blocking.park_on_set, blocking.park_for_signal

    def park_on_set(*args: object) -> None:
        parks.append("set")
        on_set(*args)  # type: ignore[arg-type]

    def park_for_signal(*args: object) -> None:
        parks.append("signal")
        for_signal(*args)  # type: ignore[arg-type]

    from leakdbt.linux import sys_poll, sys_signal
    monkeypatch.setattr(sys_poll, "park_on_set", park_on_set)
    monkeypatch.setattr(sys_signal, "park_for_signal", park_for_signal)
    argv = [binary("static", "threads_poll"), mode]
    # The timeouts follow the clock: under virtual time (check's) they repeat too.
    run = _run_virtual if mode == "timeout" else _run_in_process
    try:
        first = run(argv)
        parked = list(parks)
        second = run(argv)
    finally:  # pause's SIGUSR1 handler: the host's disposition back for later tests
        for sig in range(1, 65):
            if HOST.caught >> (sig - 1) & 1:
                HOST.set(sig, SIG_DFL)
        HOST.kick = None
    assert first == second
    stdout, status, counts, switches = first
    assert (stdout, status) == (run_native(argv).stdout, 0)
    assert len(counts) >= 2 and all(n > 0 for n in counts)
    expected = "signal" if mode == "pause" else "set"
    assert parked and set(parked) == {expected}
    assert switches >= len(parked)
    if mode == "timeout":  # the poll parked, then timed out (all zero, 0: stdout above)
        assert parked[0] == "set"


def _run_virtual(argv: list[str]) -> tuple[bytes, int, list[int], int]:
    """_run_in_process under virtual time (ExecOptions.virtual_time, as check runs)."""
    machines: list[Machine] = []
    with tempfile.TemporaryFile() as out:
        options = ExecOptions(argv=argv, env=["LC_ALL=C"], stdio=(0, out.fileno(), 2),
                              on_start=lambda m, _t: machines.append(m), virtual_time=1)
        result = execute(argv[0], options)
        out.seek(0)
        stdout = out.read()
    kernel = machines[0].syscall_handler.kernel  # type: ignore[union-attr]
    threads = kernel.threads
    assert threads is not None
    counts = threads.instruction_counts()
    return stdout, result.exit_status, [counts[t.tid] for t in threads.threads], \
        threads.switches


def test_a_pause_nothing_can_end_waits_until_timeout_under_host_time(built: Path) -> None:
    """Every thread waits, one in pause: another process's signal could end it, so exec
    waits as Linux does, until --timeout (status 124, one line)."""
    guest = run_leakdbt(["exec", "--timeout", "2", binary("static", "threads_poll"),
                         "pausehang"])
    assert guest.status == 124 and guest.stdout == b""
    assert guest.stderr.decode().splitlines() == [
        "leakdbt: --timeout 2 s reached while the guest waited in a thread wait"]


def test_a_pause_nothing_can_end_is_a_deadlock_under_virtual_time(built: Path) -> None:
    """Under virtual time nothing comes from outside: the same guest is deadlocked, and the
    message names the thread waiting for a signal and the one joining it."""
    argv = [binary("static", "threads_poll"), "pausehang"]
    with pytest.raises(Deadlock, match=r"all 2 guest threads wait .*thread \d+ on futex "
                                       r"0x[0-9a-f]+, thread \d+ for a signal\)"):
        execute(argv[0], ExecOptions(argv=argv, env=["LC_ALL=C"], virtual_time=1))
