"""analyze's loop-bound counting is finite: a trip budget per loop and an instruction budget
per counting run, and a loop whose bound they do not show is "loop bound unknown", written
with the reason and refused by bounded-loop until the user gives a bound.

test_binaries/secret_scan.c: scan() looks for a secret byte in a 64-byte ring whose index
wraps; its only exit is the secret one, so with that exit suppressed it would never end.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from leakdbt.analysis.loops import (
    INSN_FACTOR,
    INSN_FLOOR,
    MAX_TRIPS,
    TRIP_FACTOR,
    TRIP_FLOOR,
    LoopCounter,
    exit_loop,
    insn_budget,
    trip_budget,
)
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.errors import LimitExceeded
from leakdbt.loader.elf import load_image
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import TEST_BINARIES, binary, run_leakdbt


def test_budgets_grow_with_what_the_tainted_run_saw() -> None:
    assert trip_budget(0) == trip_budget(1) == TRIP_FLOOR
    assert trip_budget(1000) == TRIP_FACTOR * 1000
    assert trip_budget(1 << 40) == MAX_TRIPS
    assert insn_budget(0) == INSN_FLOOR
    assert insn_budget(10_000) == INSN_FLOOR + INSN_FACTOR * 10_000


def program(kind: str = "static") -> str:
    exe = binary(kind, "secret_scan")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), f"build/{kind}/secret_scan"],
                       check=True)
    return exe


def _count(budget: int, max_insns: int = 0) -> tuple[LoopCounter, bool]:
    """scan()'s loop counted with its secret exit suppressed; whether the run hit
    ``max_insns``."""
    exe = program()
    image = load_image(exe)
    scan = image.symbol("scan")
    assert scan is not None
    cfg = function_cfg(image, scan)
    loop = exit_loop(cfg, scan.value + 0x23, "scan")  # jne scan+0x18: not found yet
    assert loop is not None and loop.entry == scan.value + 0x18
    box: dict[str, LoopCounter] = {}

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        box["counter"] = LoopCounter(machine)
        box["counter"].watch("scan+0x18", loop, scan.value + 0x23, 0, budget)

    limited = False
    with open(os.devnull, "w") as null:
        try:
            execute(exe, ExecOptions(argv=[exe, "05"], env=[], on_start=on_start,
                                     max_insns=max_insns,
                                     stdio=(0, null.fileno(), null.fileno())))
        except LimitExceeded:
            limited = True
    return box["counter"], limited


def test_an_entry_past_its_trip_budget_gives_no_trip_count() -> None:
    """At the budget the secret exit is let through (the run goes on and ends); the entry
    gives no trip count, and the reason says so."""
    counter, limited = _count(50)
    assert not limited
    assert counter.trips("scan+0x18") == ()
    assert counter.unknown("scan+0x18") == ("1 entry ran 50 iterations (the trip budget) "
                                            "without leaving by another exit")


def test_a_run_ended_by_the_instruction_budget_gives_no_trip_count() -> None:
    """The loop in progress when the instruction budget ends the run is not counted."""
    counter, limited = _count(MAX_TRIPS, max_insns=60_000)
    assert limited
    assert counter.trips("scan+0x18") == ()
    assert counter.unknown("scan+0x18") == ("the counting run ended inside it (its "
                                            "instruction budget, a fault or an exit)")
    assert counter.unknown("elsewhere") == "the counting run never reached it"


CONTRACT = """\
version = 1

[[secret]]
name = "key"
argv = 1
length = 1
format = "hex"

[protect]
adversary = "co-resident"
policy = "always"
functions = ["scan"]

[check]
trials = 3
seed = 3
"""


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_analyze_writes_the_loop_with_bound_unknown_and_exec_refuses_it(
        tmp_path: Path, kind: str) -> None:
    """analyze ends (the loop would never end with its exit suppressed), writes the loop
    region without a bound and says why; a scoped exec stops with the refusal."""
    contract = tmp_path / "scan.toml"
    contract.write_text(CONTRACT)
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", program(kind),
                        "05"])
    assert done.status == 0, done.stderr.decode()
    assert "region scan+0x18 kind loop (no bound known: add one): written" \
        in done.stdout.decode()
    text = contract.read_text()
    assert ('at = "scan+0x18"\nkind = "loop"\nwhy = "leakdbt analyze: control-flow leak at '
            'scan+0x23 (jne ') in text
    assert ("leaves the loop; loop bound unknown: with that exit suppressed 1 entry ran "
            f"{TRIP_FLOOR} iterations (the trip budget) without leaving by another exit: add "
            "bound = the loop's maximum number of iterations") in text
    run = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                       program(kind), "05"])
    err = run.stderr.decode()
    assert run.status == 2 and len(err.strip().splitlines()) == 1, err
    assert "region scan+0x18 cannot be hardened: bounded-loop: needs the contract's `bound`" \
        in err
