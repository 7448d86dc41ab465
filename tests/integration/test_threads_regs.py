"""Threads and per-thread state (test_binaries/threads_regs.c: two threads hold a secret and
public numbers in r12 across many scheduler quanta): ``leakdbt analyze`` keeps register taint
per thread, so the threaded program's findings are the single-threaded program's, wherever
the binary lies and however the threads interleave; mode switches at every thread switch,
with threads parked in and around the regions, keep the output native's."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from unicorn import UC_HOOK_CODE, Uc

from leakdbt.analysis.taint import TaintTracker
from leakdbt.contract import load
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.linux.syscalls import SyscallDispatcher
from leakdbt.linux.threads import State, ThreadGroup
from leakdbt.machine.machine import Machine
from leakdbt.run.secrets import argv_string
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import KINDS, REPO, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "threads_regs.toml"
KEY = "0123456789abcdef"  # odd: hold_secret's branch is taken, as hold_public's


@pytest.fixture(scope="module")
def program(built: Path) -> Path:
    """threads_regs, built if this tree's build predates it."""
    import subprocess

    wanted = [f"build/{kind}/threads_regs" for kind in KINDS]
    if not all((TEST_BINARIES / w).exists() for w in wanted):
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), *wanted], check=True)
    return built


def _analyze(exe: str, mode: str, quantum: int = 1000) -> dict[str, Any]:
    run = run_leakdbt(["analyze", "--format", "json", "--contract", str(CONTRACT), exe, KEY,
                       mode], env={**os.environ, "LEAKDBT_QUANTUM": str(quantum)})
    assert run.status == 0, run.stderr.decode()
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def _findings(exe: str, mode: str) -> list[tuple[str, str, int]]:
    return sorted((f["kind"], f["location"], f["count"])
                  for f in _analyze(exe, mode)["findings"])


def _argv2_address(exe: str) -> int:
    """Where argv[2] (the mode word) starts on the initial stack of a run of ``exe``."""
    seen: list[int] = []

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        seen.append(argv_string(machine, 2)[0])

    with tempfile.TemporaryFile() as out:  # argv and environment as analyze gives them
        execute(exe, ExecOptions(argv=[exe, KEY, "thread"], env=[],
                                 stdio=(0, out.fileno(), 2), on_start=on_start))
    (address,) = seen
    return address


def _placed(exe: str, tmp: Path, offset: int) -> str:
    """A copy of ``exe`` whose path (it is on the stack above argv's strings, as AT_EXECFN)
    puts argv[2]'s first byte ``offset`` bytes into a 64-byte block: one more byte of path
    moves it one byte down."""
    first = tmp / "p" / "threads_regs"
    first.parent.mkdir()
    shutil.copy(exe, first)
    more = (_argv2_address(str(first)) - offset) % 64
    path = tmp / ("p" * (1 + more)) / "threads_regs"
    if more:
        path.parent.mkdir()
        shutil.copy(exe, path)
    assert _argv2_address(str(path)) % 64 == offset
    return str(path)


# Where the binary lies: this tree, and copies whose path puts argv[2] in the last 16 bytes
# of a 64-byte block, where glibc's SSE4.2 strcmp reads the aligned 16 bytes around it (the
# end of the key just below it: a clean clone in /tmp/tmp.XXXXXXXXXX put it at 0x3d).
PLACES = ["tree", 0x3D, 0x33]


@pytest.mark.parametrize("where", PLACES, ids=lambda w: w if isinstance(w, str)
                         else f"argv2-at-{w:#x}")
def test_analyze_keeps_register_taint_per_thread(program: Path, tmp_path: Path,
                                                 where: str | int) -> None:
    """A switch every 1000 instructions, while each thread holds r12 through a loop of
    ~1600: the secret thread's branch on r12 is found 4 times (once per call), the public
    thread's never — exactly the findings of the single-threaded run (inline).  With one
    register taint for all threads, the public thread inherits the secret's taint (a false
    finding in hold_public) and the secret thread the public numbers' (a missed one).

    The same wherever the binary lies: the program reads its mode word without strcmp, whose
    aligned loads next to the key gave the threaded run (which compares the word twice)
    findings in __strcmp_sse42 and main that the inline run had not, for some path lengths
    only."""
    exe = binary("static", "threads_regs")
    if isinstance(where, int):
        exe = _placed(exe, tmp_path, where)
    threaded, inline = _findings(exe, "thread"), _findings(exe, "inline")
    assert threaded == inline
    where_found = {location.split("+")[0]: (kind, count) for kind, location, count in threaded}
    assert where_found["hold_secret"] == ("control-flow", 4)
    assert "hold_public" not in where_found
    assert not any("strcmp" in location for _, location, _ in threaded)


def test_analyze_does_not_depend_on_the_interleaving(program: Path) -> None:
    """The threads take turns by guest instruction counts, under virtual time (analyze runs
    as a check trial), never by host time: two runs give the same report (timings aside),
    and other quanta — other switch points, other threads running at each instruction —
    give the same findings."""
    exe = binary("static", "threads_regs")
    timing = ("seconds", "taint_seconds")

    def untimed(report: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in report.items() if k not in timing}

    first, again = _analyze(exe, "thread"), _analyze(exe, "thread")
    assert untimed(first) == untimed(again)
    for quantum in (1777, 4099):
        assert _analyze(exe, "thread", quantum)["findings"] == first["findings"], quantum


def test_register_taint_follows_each_thread_through_every_kind_of_switch(
        program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real scheduler, the real tracker (the key tainted, as analyze taints it): at
    every switch the incoming thread gets back exactly the register, flag and known-zero
    taint it had when it last stopped, whether it stopped because it blocked (main in
    pthread_join's futex wait), because its quantum ended, or for another thread's end; a
    thread that stopped in a system call stops with the registers the call wrote (rax, rcx,
    r11) clean; and the secret thread (the third: main, public, secret) is switched out
    holding the key in r12, the public thread never."""
    monkeypatch.setenv("LEAKDBT_QUANTUM", "1000")
    exe = binary("static", "threads_regs")
    parked: dict[int, tuple[list[int], int, list[int]]] = {}
    causes: dict[str, int] = {}
    r12_out: dict[int, int] = {}  # thread -> switches out with r12 tainted
    running = [0]
    box: dict[str, object] = {}

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        syscalls = machine.syscall_handler
        assert isinstance(syscalls, SyscallDispatcher)
        kernel = syscalls.kernel
        tracker = TaintTracker(machine)
        tracker.taint_argv(1, 1)
        sh = tracker.shadow

        def before(index: int) -> None:  # the outgoing thread's taint, as it stops
            group = kernel.threads
            assert isinstance(group, ThreadGroup)
            out = group.threads[running[0]]
            cause = {State.BLOCKED: "blocked", State.EXITED: "exited"}.get(out.state,
                                                                             "preempted")
            causes[cause] = causes.get(cause, 0) + 1
            parked[running[0]] = (list(sh.regs), sh.flags, list(sh.zero))
            if cause == "blocked":
                assert not any(sh.reg_named("rax") + sh.reg_named("rcx")
                               + sh.reg_named("r11"))
            r12_out.setdefault(running[0], 0)
            if any(sh.reg_named("r12")):
                r12_out[running[0]] += 1

        def after(index: int) -> None:  # the incoming thread's, as it runs again
            if index in parked:
                assert (list(sh.regs), sh.flags, list(sh.zero)) == parked.pop(index), index
            running[0] = index

        machine.thread_listeners.insert(0, before)
        machine.thread_listeners.append(after)
        box["tracker"] = tracker

    with tempfile.TemporaryFile() as out:
        execute(exe, ExecOptions(argv=[exe, KEY, "thread"], env=[],
                                 stdio=(0, out.fileno(), 2), on_start=on_start))
    assert causes.get("blocked", 0) >= 1 and causes.get("preempted", 0) >= 10, causes
    assert causes.get("exited", 0) >= 1, causes
    assert r12_out.get(2, 0) >= 2 and r12_out.get(1) == 0, r12_out
    tracker = box["tracker"]
    assert isinstance(tracker, TaintTracker)
    found = {f.where.split("+")[0]: f.count for f in tracker.findings()}
    assert found.get("hold_secret") == 4 and "hold_public" not in found


@pytest.mark.parametrize("kind", KINDS)
def test_mode_switches_at_every_thread_switch_keep_the_output(
        program: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The branch in each function is a region entered by a jump; the mode flips at every
    thread switch (hundreds, with the other threads parked in the functions): the output
    is native's, the copies ran (not always), and the flips looked at the parked threads."""
    monkeypatch.setenv("LEAKDBT_QUANTUM", "1000")
    exe = binary(kind, "threads_regs")
    argv = [exe, KEY, "thread", "40"]
    native = run_native(argv)
    regions = requests_from_contract(load(CONTRACT, binary=exe))
    seen: list[Dispatcher] = []
    parked_seen = [0]
    copies: dict[str, int] = {}

    def on_start(machine: Machine, d: Dispatcher | None) -> None:
        assert d is not None and all(site.patch is not None for site in d.sites)
        seen.append(d)
        for site in d.sites:
            copies[site.name] = 0

            def hit(uc: Uc, address: int, size: int, _ud: object, name: str = site.name
                    ) -> None:
                copies[name] += 1

            machine.uc.hook_add(UC_HOOK_CODE, hit, None, site.translation.entry,
                                site.translation.entry)

        def flip(_index: int) -> None:
            parked_seen[0] = max(parked_seen[0], len(machine.resume_pcs()) - 1)
            d.set_mode(Mode.FAST if d.mode is Mode.HARDENED else Mode.HARDENED)

        machine.thread_listeners.append(flip)

    with tempfile.TemporaryFile() as out:
        options = ExecOptions(argv=argv, env=[], regions=regions, mode=Mode.FAST,
                              count_entries=False, stdio=(0, out.fileno(), 2),
                              on_start=on_start)
        status = execute(exe, options).exit_status
        out.seek(0)
        stdout = out.read()
    assert (stdout, status) == (native.stdout, native.status)
    (d,) = seen
    assert len(d.sites) == 2 and d.stats.switches > 100
    assert parked_seen[0] >= 2  # main (joining) and the other worker were parked
    # 40 entries of each region: some through a copy (hardened), some not (fast)
    assert len(copies) == 2 and 0 < sum(copies.values()) < 80, copies
