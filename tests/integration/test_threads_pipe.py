"""Blocking read, write, readv, writev, send, recv, wait4 and waitid let the guest's other
threads run
(leakdbt.linux.blocking.park_on_fd / park_on_children, the scheduler in
leakdbt.linux.threads): a producer and a consumer thread through a pipe or a socketpair and
a main that waits for a child another thread must feed give native's output in every ELF
kind (each would hang if the waiting thread blocked the engine); the interleaving repeats
exactly; and ``--timeout`` ends a single thread blocked in read, write, recv or wait4 with
status 124 and one line."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import KINDS, binary, run_leakdbt, run_native

MODES = ("pipe", "socket", "send", "wait")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_threads_waiting_on_fds_and_children_same_as_native(built: Path, kind: str,
                                                            mode: str) -> None:
    exe = binary(kind, "threads_pipe")
    native, guest = run_native([exe, mode]), run_leakdbt(["exec", "--timeout", "300", exe,
                                                          mode])
    assert native.status == 0 and native.stdout.count(b"\n") >= 1
    assert b"failed" not in native.stdout and b"other" not in native.stdout
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr
    assert guest.stderr == b""


def test_a_waitall_receive_goes_on_after_a_park(built: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """send mode's every fifth recv asks for 4096 bytes with MSG_WAITALL: it parks when the
    socket runs dry with part of them received, and its call, made again, goes on after
    them (the guest checks no such receive returns early; stderr stays empty)."""
    from leakdbt.linux import sys_poll

    calls: list[tuple[int, int, int | None]] = []
    original = sys_poll._recv_waiting

    def recording(k: object, f: object, buf: int, size: int, flags: int,
                  done: int) -> int | None:
        result = original(k, f, buf, size, flags, done)  # type: ignore[arg-type]
        calls.append((flags, done, result))
        return result

    monkeypatch.setattr(sys_poll, "_recv_waiting", recording)
    argv = [binary("static", "threads_pipe"), "send"]
    stdout, status, _counts, _switches = _run_in_process(argv)
    assert (stdout, status) == (run_native(argv).stdout, 0)
    assert any(r is None for _, _, r in calls)  # receives parked
    resumed = [d for fl, d, _ in calls if fl & sys_poll.MSG_WAITALL and d > 0]
    assert resumed and all(0 < d < 4096 for d in resumed)


def _run_in_process(argv: list[str]) -> tuple[bytes, int, list[int], int]:
    """(stdout, status, instructions per thread in creation order, thread switches)."""
    machines: list[Machine] = []
    with tempfile.TemporaryFile() as out:
        options = ExecOptions(argv=argv, env=["LC_ALL=C"], stdio=(0, out.fileno(), 2),
                              on_start=lambda m, _t: machines.append(m))
        result = execute(argv[0], options)
        out.seek(0)
        stdout = out.read()
    kernel = machines[0].syscall_handler.kernel  # type: ignore[union-attr]
    threads = kernel.threads
    assert threads is not None
    counts = threads.instruction_counts()
    return stdout, result.exit_status, [counts[t.tid] for t in threads.threads], \
        threads.switches


@pytest.mark.parametrize("quantum", ("1000", None))
@pytest.mark.parametrize("mode", ("pipe", "socket", "send"))
def test_the_pipe_interleaving_is_the_same_in_every_run(built: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        mode: str, quantum: str | None) -> None:
    """Readiness between the guest's own threads follows from what they did: two runs give
    the same output, the same instructions per thread and the same number of switches.
    With the default quantum most switches are parks: the producer's four writes of
    100000 bytes each fill the pipe (65536 bytes) or socket buffer at least once, so it
    parks and the consumer runs, then the consumer parks on the emptied pipe."""
    if quantum is not None:
        monkeypatch.setenv("LEAKDBT_QUANTUM", quantum)
    argv = [binary("static", "threads_pipe"), mode]
    first, second = _run_in_process(argv), _run_in_process(argv)
    assert first == second
    stdout, status, counts, switches = first
    assert status == 0 and stdout == run_native(argv).stdout
    assert len(counts) == 3 and all(n > 0 for n in counts)
    assert switches >= 2 * 4
    if quantum is not None:
        assert switches > 100


@pytest.mark.parametrize(("mode", "call"), [("block", "read"), ("fill", "write"),
                                            ("recvblock", "recvfrom"),
                                            ("waitblock", "wait4")])
@pytest.mark.parametrize("kind", ("static", "dynamic"))
def test_timeout_ends_a_lone_thread_blocked_in_a_host_call(built: Path, kind: str,
                                                           mode: str, call: str) -> None:
    """Natively these never end (the thread waits for itself); --timeout ends them."""
    guest = run_leakdbt(["exec", "--timeout", "2", binary(kind, "threads_pipe"), mode])
    assert guest.status == 124
    line = b"leakdbt: --timeout 2 s reached while the guest waited in %s"
    lines = guest.stderr.decode().splitlines()
    assert (line % call.encode()).decode() in lines
    if mode != "waitblock":
        assert len(lines) == 1
    else:  # the child, blocked in read, reaches the same --timeout and may say so too
        assert all(x.startswith("leakdbt: --timeout 2 s reached ") for x in lines)
    assert guest.stdout == b""
