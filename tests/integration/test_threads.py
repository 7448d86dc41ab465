"""Threads (issue 17 item 1): pthread programs in static, static-PIE and dynamic builds give
native's output and exit status; the deterministic scheduler gives the same interleaving —
same output, same instructions per thread — in every run; a deadlock ends with one line and
status 125; an unsupported clone flag combination is still named; `leakdbt check` sees every
thread and finds in a worker thread what it finds in the single-threaded program."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage.check import CheckOptions, run_check
from leakdbt.leakage.trials import Observation, TrialSetup, trial_inputs
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import KINDS, REPO, binary, run_leakdbt, run_native

SYNC_CASES = ("pc", "exit", "timeout", "tls", "pipe", "cancel")


@pytest.mark.parametrize("kind", KINDS)
def test_pthread_programs_same_as_native(built: Path, kind: str) -> None:
    """The issue's example (4 threads, native prints 1999998000000), then mutex and
    condition variables, pthread_exit while others run, timed waits that time out, TLS,
    a barrier and sched_yield, a thread reading a pipe another one writes, pthread_cancel
    (a cleanup handler; SIGCANCEL through tgkill)."""
    exe = binary(kind, "threads_sum")
    native, guest = run_native([exe]), run_leakdbt(["exec", exe])
    assert native.stdout.endswith(b"\n1999998000000\n")
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr
    assert guest.stderr == b""
    exe = binary(kind, "threads_sync")
    for case in SYNC_CASES:
        native, guest = run_native([exe, case]), run_leakdbt(["exec", exe, case])
        assert native.status == 0
        assert (guest.stdout, guest.status) == (native.stdout, native.status), \
            (case, guest.stderr)
        assert guest.stderr == b""


def _run_in_process(argv: list[str]) -> tuple[bytes, int, dict[int, int], int]:
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
    return (stdout, result.exit_status, {i: counts[t.tid] for i, t in
                                         enumerate(threads.threads)}, threads.switches)


@pytest.mark.parametrize(("program", "args"), [("threads_sum", []),
                                               ("threads_sync", ["pc"])])
def test_the_interleaving_is_the_same_in_every_run(built: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   program: str, args: list[str]) -> None:
    """A small quantum (many preemptions, blocking futex waits in between): two runs give
    the same output and the same instruction count for each thread."""
    monkeypatch.setenv("LEAKDBT_QUANTUM", "1000")
    argv = [binary("static", program), *args]
    first, second = _run_in_process(argv), _run_in_process(argv)
    assert first == second
    stdout, status, counts, switches = first
    assert status == 0 and stdout == run_native(argv).stdout
    assert len(counts) == 5 and all(n > 1000 for n in counts.values())
    assert switches > 100


def test_a_deadlock_ends_with_one_line(built: Path) -> None:
    guest = run_leakdbt(["exec", binary("dynamic", "threads_sync"), "deadlock"])
    assert guest.status == 124
    lines = guest.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("leakdbt: deadlock: all 2 guest threads wait with no timeout "
                               "and none can wake them (thread ")


def test_an_unsupported_thread_clone_is_named(built: Path) -> None:
    exe = binary("static", "threads_sync")
    guest = run_leakdbt(["exec", exe, "badclone"])
    assert (guest.stdout, guest.status) == (b"clone: -1 Function not implemented\n", 0)
    assert guest.stderr == (b"leakdbt: unsupported clone flags CLONE_VM|CLONE_SIGHAND|"
                            b"CLONE_THREAD (clone, 56) returns -ENOSYS\n")
    strict = run_leakdbt(["exec", "--strict", exe, "badclone"])
    assert strict.status == 126 and b"(--strict)" in strict.stderr


def test_check_finds_in_a_worker_thread_what_it_finds_in_main(
        built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret is compared in a worker thread while two threads do public work (and
    switch every 1000 instructions): the same finding as when main compares it (and as
    tag_check's), and two trials with equal secrets observe exactly the same, thread
    switches included."""
    monkeypatch.setenv("LEAKDBT_QUANTUM", "1000")
    exe = binary("static", "threads_secret")
    contract = load(REPO / "contracts" / "threads_secret.toml", binary=exe)
    found = {}
    for mode, thread in (("thread", 3), ("inline", 0)):
        report = run_check(exe, contract, get_profile("intel-skylake"),
                           CheckOptions(("original",), trials=4, directed_rounds=0),
                           # args: argv[1] is the secret's place, argv[2] the mode
                           ["00" * 16, "inline"] if mode == "inline" else None)
        found[mode] = {(f.kind.value, f.location) for f in report.findings}
        # the witness says where the branch ran: the checker (created third) or main
        for f in report.findings:
            assert f.witness is not None
            assert all(seen.endswith(f" (in thread {thread})") for seen in f.witness.observed)
    assert found["thread"] == found["inline"] == {("control-flow", "verify+0xf")}
    setup = TrialSetup(exe, contract, Mode.FAST)
    t = trial_inputs(contract, 1, 5)[0]
    what = Observation(("control-flow", "memory", "latency"), 64, ("int-div",), full=True)
    a, b = setup.run(t, what), setup.run(t, what)
    assert a.status in (0, 1) and a.stdout == b.stdout
    assert a.trace.digests == b.trace.digests
    assert a.trace.blocks == b.trace.blocks and a.trace.memory == b.trace.memory
    # which thread each block ran in: main (0), the two workers, the checker (3)
    assert a.trace.threads == b.trace.threads
    assert {index for _, index in a.trace.threads} == {0, 1, 2, 3}
    checker = [n for n, index in a.trace.threads if index == 3]
    assert checker and checker[0] < len(a.trace.blocks)  # verify's blocks ran there


def test_the_quantum_is_checked(built: Path) -> None:
    guest = run_leakdbt(["exec", binary("static", "threads_sum")],
                        env={**os.environ, "LEAKDBT_QUANTUM": "10"})
    assert guest.status == 2
    assert guest.stderr == (b"leakdbt: LEAKDBT_QUANTUM='10': the quantum must be an "
                            b"instruction count from 1000 to 1099511627776\n")
