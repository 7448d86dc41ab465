"""analyze's loop bounds when an earlier loop's suppressed exit ends the counting run
(test_binaries/loop_order.c): tail_hash() walks the secret string to its NUL, and with that
exit suppressed walks off the top of the stack and faults; match() runs after it.  A counting
run suppressing both exits never reaches match; analyze counts match again in a run of its
own and writes its bound, 16, and says truthfully why tail_hash has none."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from leakdbt.analysis.loops import LoopCounter, exit_loop, trip_budget
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.errors import LeakDBTError
from leakdbt.loader.elf import load_image
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import TEST_BINARIES, binary, run_leakdbt, run_native

SECRET = "000102030405060708090a0b0c0d0e0e"  # match() leaves at the last byte
CONTRACT = """\
version = 1

[[secret]]
name = "key"
argv = 1
length = 16
format = "hex"

[protect]
adversary = "co-resident"
policy = "always"
functions = ["tail_hash", "match"]

[check]
trials = 3
seed = 3
declassify = ["stdout"]
"""


def program(kind: str) -> str:
    exe = binary(kind, "loop_order")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), f"build/{kind}/loop_order"],
                       check=True)
    return exe


def test_one_run_suppressing_both_exits_never_reaches_the_second_loop() -> None:
    """What made analyze write match's loop without a bound before: the shared run."""
    exe = program("static")
    image = load_image(exe)
    watched = {}
    for name in ("tail_hash", "match"):
        sym = image.symbol(name)
        assert sym is not None
        cfg = function_cfg(image, sym)
        branch = next(b.last.address for b in cfg.blocks.values()
                      if b.last.mnemonic == "jne" and exit_loop(cfg, b.last.address, name))
        loop = exit_loop(cfg, branch, name)
        assert loop is not None
        watched[name] = (loop, branch)
    box: dict[str, LoopCounter] = {}

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        box["counter"] = counter = LoopCounter(machine)
        for name, (loop, branch) in watched.items():
            counter.watch(name, loop, branch, 0, trip_budget(32))

    ended = ""
    with open(os.devnull, "w") as null:
        try:
            execute(exe, ExecOptions(argv=[exe, SECRET], env=[], on_start=on_start,
                                     stdio=(0, null.fileno(), null.fileno())))
        except LeakDBTError as e:
            ended = e.one_line()
    counter = box["counter"]
    assert "SIGSEGV at tail_hash+" in ended
    assert counter.entered("tail_hash") and counter.trips("tail_hash") == ()
    assert not counter.entered("match") and counter.trips("match") == ()
    assert counter.unknown("match") == "the counting run never reached it"


@pytest.fixture(scope="module", params=["static", "dynamic"])
def analyzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, Path, str]:
    kind = request.param
    contract = tmp_path_factory.mktemp(f"loop_order_{kind}") / "loop_order.toml"
    contract.write_text(CONTRACT)
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", program(kind),
                        SECRET])
    assert done.status == 0, done.stderr.decode()
    return kind, contract, done.stdout.decode()


def test_the_later_loop_gets_its_bound(analyzed: tuple[str, Path, str]) -> None:
    _kind, contract, out = analyzed
    assert "region match+0x8 kind loop bound 16: written" in out, out
    text = contract.read_text()
    assert ('at = "match+0x8"\nkind = "loop"\nbound = 16\nwhy = "leakdbt analyze: '
            'control-flow leak at match+0xf') in text, text
    # the tainted run, the shared counting run, match's run of its own (tail_hash, entered
    # in the shared run, is not counted again) and the growing run for tail_hash's regions
    assert "(4 runs)" in out, out


def test_the_loop_whose_exit_ended_the_run_says_so(analyzed: tuple[str, Path, str]) -> None:
    _kind, contract, _out = analyzed
    assert ("leaves the loop; loop bound unknown: with that exit suppressed the counting run "
            "ended inside it (guest killed by SIGSEGV at tail_hash+") in contract.read_text()
    assert "no entry left it by another exit" not in contract.read_text()


def test_the_bounded_loop_runs_hardened_as_native(analyzed: tuple[str, Path, str]) -> None:
    kind, contract, _out = analyzed
    for n, secret in enumerate((SECRET, "000102030405060708090a0b0c0d0e0f",
                                "ff0102030405060708090a0b0c0d0e0f")):
        done = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                            "--allow-unhardened", *(["--stats"] if n == 0 else []),
                            program(kind), secret])
        assert done.status == 0, done.stderr.decode()
        assert done.stdout == run_native([program(kind), secret]).stdout
        if n == 0:
            assert "match+0x8                      {'passes': ['bounded-loop']}" \
                in done.stderr.decode(), done.stderr.decode()
