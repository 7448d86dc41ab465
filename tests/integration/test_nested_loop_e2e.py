"""test_binaries/nested_loop.c end to end: loop regions holding an inner loop (bounded-loop
with the contract's ``inner_bounds``) print what the native program prints, look the same
for every key, leave no leak to ``check --mode hardened``; ``analyze --write`` measures an
inner loop's bound and writes it."""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

import pytest

from leakdbt.contract import load, plan
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.dbt.harden import Hardener
from leakdbt.dbt.passes import load_passes
from leakdbt.leakage.observe import OBSERVERS, RunObserver
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import REPO, SWEEP, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "nested_loop.toml"
PROFILE = "intel-skylake"
EXPECTED = "00000000c0ffee000000000000000042000000000000000000000000deadbeef"


def _key(rng: random.Random) -> str:
    """64 hex digits: limbs with random runs of leading zeros, often a prefix of the
    expected key (same_limbs then leaves late, or not at all)."""
    if rng.random() < 0.3:
        keep = rng.randrange(65)
        tail = "".join(rng.choice("0123456789abcdef") for _ in range(64 - keep))
        return EXPECTED[:keep] + tail
    limbs = []
    for _ in range(4):
        zeros = rng.choice([0, 0, 1, 2, 5, 9, 15, 16])
        limbs.append("0" * zeros + "".join(rng.choice("123456789abcdef")
                                           for _ in range(16 - zeros)))
    return "".join(limbs)


def _run(exe: str, argv: list[str], mode: Mode, observe: bool = False
         ) -> tuple[int, bytes, list[tuple[int, ...]] | None]:
    """One in-process run with the contract's regions from ``mode``'s cache: exit status,
    standard output and, if ``observe``, the regions' blocks and cache lines."""
    contract = load(CONTRACT, binary=exe)
    profile = get_profile(PROFILE)
    observers: list[RunObserver] = []

    def start(machine: Machine, dispatcher: Dispatcher | None) -> None:
        assert dispatcher is not None
        if observe:
            observers.append(RunObserver(machine, OBSERVERS, 64, [], None, full=True,
                                         ranges=dispatcher.code_ranges()))

    with tempfile.TemporaryFile() as out:
        options = ExecOptions(argv=[exe, *argv], env=[], mode=mode, on_start=start,
                              regions=requests_from_contract(contract, plan(contract, profile)),
                              hardener=Hardener(load_passes(), contract, profile),
                              stdio=(0, out.fileno(), 2))
        status = execute(exe, options).exit_status
        out.seek(0)
        text = out.read()
    if not observe:
        return status, text, None
    trace = observers[0].trace
    seen = [tuple(a for a, _, _ in trace.blocks),
            tuple(line for _, _, _, line in trace.memory)]
    return status, text, seen


def test_hardened_prints_what_native_prints_for_many_keys(built: Path) -> None:
    exe = binary("static", "nested_loop")
    rng = random.Random(2026)
    for i in range(40 if SWEEP else 12):
        argv = [_key(rng)] + ([] if i % 4 == 0 else [str(rng.randrange(1, 5))])
        native = run_native([exe, *argv])
        status, out, _ = _run(exe, argv, Mode.HARDENED)
        assert (status, out) == (native.status, native.stdout), argv


@pytest.mark.parametrize("kind", ["static-pie", "dynamic"])
def test_every_build_runs_both_regions_hardened(built: Path, kind: str) -> None:
    exe = binary(kind, "nested_loop")
    for key in (EXPECTED, "0" * 64, "1" + "0" * 63):
        guest = run_leakdbt(["exec", "--contract", str(CONTRACT), "--cpu", PROFILE,
                             "--mode", "hardened", "--stats", exe, key])
        native = run_native([exe, key])
        assert (guest.status, guest.stdout) == (native.status, native.stdout)
        stats = guest.stderr.decode()
        assert "unhardened" not in stats
        assert len(re.findall(r"\{'passes': \['bounded-loop'\]\}", stats)) == 2, stats


def test_the_regions_look_the_same_for_every_key(built: Path) -> None:
    """Keys with the same public limb count but different zero runs and first differences:
    the original's blocks or lines differ, the hardened regions' do not."""
    exe = binary("static", "nested_loop")
    keys = [EXPECTED, "0" * 64, "f" * 64, "0001" + "1" * 60, EXPECTED[:20] + "f" * 44]
    hard = [_run(exe, [k], Mode.HARDENED, observe=True)[2] for k in keys]
    orig = [_run(exe, [k], Mode.FAST, observe=True)[2] for k in keys]
    assert hard[0] is not None and hard[0][0], "the hardened regions never ran"
    assert all(h == hard[0] for h in hard[1:])
    assert len({tuple(o or ()) for o in orig}) == len(keys)


def test_check_finds_no_leak_in_the_hardened_regions(built: Path) -> None:
    exe = binary("static", "nested_loop")
    out = run_leakdbt(["check", "--contract", str(CONTRACT), "--mode", "hardened", "--cpu",
                       PROFILE, "--trials", "4", exe])
    text = out.stdout.decode()
    assert out.status == 0 and "no leak found" in text, text + out.stderr.decode()
    assert "distinct traces: control-flow 1, memory-access 1" in text, text


def test_analyze_writes_the_inner_bound_it_measures(built: Path, tmp_path: Path) -> None:
    """Without regions: the secret exit of same_limbs leaves both loops, so analyze
    suggests the outer loop with bound 4 (limbs) and inner_bounds 16 (digits); the
    leading-zero scan's exit leaves only the inner loop, a loop region of its own."""
    text = re.sub(r"\n\[\[protect\.region\]\]\n.*?(?=\n\[|\Z)", "\n", CONTRACT.read_text(),
                  flags=re.S)
    contract = tmp_path / "nested_loop.toml"
    contract.write_text(text)
    exe = binary("static", "nested_loop")
    written = run_leakdbt(["analyze", "--contract", str(contract), "--cpu", PROFILE,
                           "--write", exe])
    assert written.status == 0, written.stderr.decode()
    regions = load(contract).protect.regions
    got = {(str(r.at), r.bound, tuple((str(h), n) for h, n in r.inner_bounds))
           for r in regions}
    assert got == {("same_limbs+0x7", 4, (("same_limbs+0x10", 16),)),
                   ("leading_zeros+0x20", 16, ())}
    key = EXPECTED[:40] + "0" * 24
    guest = run_leakdbt(["exec", "--contract", str(contract), "--cpu", PROFILE,
                         "--mode", "hardened", "--stats", exe, key])
    assert (guest.status, guest.stdout) == (0, run_native([exe, key]).stdout)
    assert "unhardened" not in guest.stderr.decode()
