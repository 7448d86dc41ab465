"""Threads and per-thread state (test_binaries/threads_regs.c: two threads hold a secret and
public numbers in r12 across many scheduler quanta): ``leakdbt analyze`` keeps register taint
per thread, so the threaded program's findings are the single-threaded program's; mode
switches at every thread switch, with threads parked in and around the regions, keep the
output native's."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from unicorn import UC_HOOK_CODE, Uc

from leakdbt.contract import load
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.machine.machine import Machine
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


def _findings(exe: str, mode: str) -> list[tuple[str, str, int]]:
    run = run_leakdbt(["analyze", "--format", "json", "--contract", str(CONTRACT), exe, KEY,
                       mode], env={**os.environ, "LEAKDBT_QUANTUM": "1000"})
    assert run.status == 0, run.stderr.decode()
    return sorted((f["kind"], f["location"], f["count"])
                  for f in json.loads(run.stdout)["findings"])


def test_analyze_keeps_register_taint_per_thread(program: Path) -> None:
    """A switch every 1000 instructions, while each thread holds r12 through a loop of
    ~1600: the secret thread's branch on r12 is found 4 times (once per call), the public
    thread's never — exactly the findings of the single-threaded run (inline).  With one
    register taint for all threads, the public thread inherits the secret's taint (a false
    finding in hold_public) and the secret thread the public numbers' (a missed one)."""
    exe = binary("static", "threads_regs")
    threaded, inline = _findings(exe, "thread"), _findings(exe, "inline")
    assert threaded == inline
    where = {location.split("+")[0]: (kind, count) for kind, location, count in threaded}
    assert where["hold_secret"] == ("control-flow", 4)
    assert "hold_public" not in where


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
