"""Hardened test programs, end to end: `leakdbt exec --contract C --mode hardened` prints what
the native program prints for every secret, every region is hardened, and what an attacker
observes of the regions (blocks run, cache lines touched, division operands) is the same
for every secret — while the original's observations differ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.contract import load, plan
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Dispatcher, Mode, requests_from_contract
from leakdbt.dbt.harden import Hardener
from leakdbt.dbt.passes import load_passes
from leakdbt.leakage.observe import OBSERVERS, RunObserver, Trace
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from tests.conftest import REPO, binary, run_leakdbt, run_native

CONTRACTS = REPO / "contracts"
PROFILE = "intel-skylake"  # every latency class variable: every pass is in the plans

# Program -> secrets (argv[1]) that take different paths through its regions.
SECRETS: dict[str, list[str]] = {
    "ct_modexp": ["0123456789abcdef", "ffffffff00000001", "8000000000000000"],
    "idea_mul": ["0123456789abcdef0011223344556677", "0000123400005678000000009abc0000",
                 "ffff0000ffff0000ffff0000ffff0000"],
    "mac_verify": ["bb72509640bec05a5283b4422cda9c97", "bb72509640bec05a5283b4422cda9c00",
                   "00000000000000000000000000000000"],
    "sbox_round": ["000102030405060708090a0b0c0d0e0f", "2b7e151628aed2a6abf7158809cf4f3c",
                   "ffffffffffffffffffffffffffffffff"],
    "ttable_round": ["000102030405060708090a0b0c0d0e0f", "2b7e151628aed2a6abf7158809cf4f3c",
                     "ffffffffffffffffffffffffffffffff"],
    "secret_div": ["0000000000000007", "fffffffffffffffd", "00000001ffffffff"],
    "fp_secret": ["1234", "0100", "c0de"],
}
HEX_DIGITS = {name: len(secrets[0]) for name, secrets in SECRETS.items()}
EXACT = [n for n in SECRETS if n != "fp_secret"]  # FTZ/DAZ changes fp_secret's results


def hardened(name: str, kind: str, secret: str, *options: str) -> list[str]:
    return ["exec", "--contract", str(CONTRACTS / f"{name}.toml"), "--cpu", PROFILE,
            "--mode", "hardened", *options, binary(kind, name), secret]


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
@pytest.mark.parametrize("name", EXACT)
def test_hardened_program_prints_what_native_prints(built: Path, name: str, kind: str) -> None:
    for secret in SECRETS[name]:
        native = run_native([binary(kind, name), secret])
        guest = run_leakdbt(hardened(name, kind, secret, "--stats"))
        assert (guest.status, guest.stdout) == (native.status, native.stdout), \
            guest.stderr.decode()
        stats = guest.stderr.decode()
        assert "unhardened" not in stats and "passes" in stats, stats


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("name", EXACT)
def test_hardened_equals_native_on_random_secrets(built: Path, name: str,
                                                  data: st.DataObject) -> None:
    digits = HEX_DIGITS[name]
    secret = data.draw(st.binary(min_size=digits // 2, max_size=digits // 2)).hex()
    native = run_native([binary("static", name), secret])
    guest = run_leakdbt(hardened(name, "static", secret))
    assert (guest.status, guest.stdout) == (native.status, native.stdout), guest.stderr.decode()


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_ftz_daz_results_are_those_of_native_ftz_daz(built: Path, fastmath_fp_secret: str,
                                                     kind: str) -> None:
    """fp_secret's scale factor is itself subnormal, so with DAZ its scaled result is zero:
    the hardened program prints what the program prints natively with FTZ and DAZ set,
    which differs from the plain native run (the pass changes results that involve
    subnormals, as documented) only in the scaled value."""
    for secret in SECRETS["fp_secret"]:
        plain = run_native([binary(kind, "fp_secret"), secret])
        ftz = run_native([fastmath_fp_secret, secret])
        guest = run_leakdbt(hardened("fp_secret", kind, secret, "--stats"))
        assert (guest.status, guest.stdout) == (0, ftz.stdout), guest.stderr.decode()
        assert "unhardened" not in guest.stderr.decode()
        assert guest.stdout != plain.stdout
        assert guest.stdout.split()[-1] == plain.stdout.split()[-1]  # unscaled: all normal


@dataclass
class Observations:
    """What an attacker sees of the regions in one run, in order of occurrence."""

    blocks: list[int]  # the blocks that start in the regions' code
    accesses: list[tuple[str, int]]  # data accesses from there: (r/w, cache line)
    divisions: list[tuple[int, ...]]  # DIV/IDIV there: (rip, rax, rdx, divisor)

    @classmethod
    def of(cls, trace: Trace) -> Observations:
        return cls([address for address, _, _ in trace.blocks],
                   [(kind, line) for _, _, kind, line in trace.memory],
                   [(pc, *values) for (_, pc, _), values in zip(trace.latency, trace.operands,
                                                                 strict=True)])


def observe(name: str, secret: str, mode: Mode) -> Observations:
    """What observing the regions' code shows of one in-process run (static build)."""
    exe = binary("static", name)
    contract = load(CONTRACTS / f"{name}.toml", binary=exe)
    profile = get_profile(PROFILE)
    hardener = Hardener(load_passes(), contract, profile)
    observers: list[RunObserver] = []

    def start(machine: Machine, dispatcher: Dispatcher | None) -> None:
        assert dispatcher is not None
        observers.append(RunObserver(machine, OBSERVERS, 64, ["int-div"], None, full=True,
                                     ranges=dispatcher.code_ranges()))

    options = ExecOptions(argv=[exe, secret], env=[], mode=mode, on_start=start,
                          regions=requests_from_contract(contract, plan(contract, profile)),
                          hardener=hardener)
    assert execute(exe, options).exit_status == 0
    return Observations.of(observers[0].trace)


@pytest.mark.parametrize("name", list(SECRETS))
def test_hardened_regions_look_the_same_for_every_secret(
        built: Path, capfd: pytest.CaptureFixture[str], name: str) -> None:
    secrets = SECRETS[name]
    hard = [observe(name, s, Mode.HARDENED) for s in secrets]
    assert hard[0].blocks, "the hardened regions never ran"
    for other in hard[1:]:
        assert other.blocks == hard[0].blocks
        assert other.accesses == hard[0].accesses
        assert [d[1:] for d in other.divisions] == [d[1:] for d in hard[0].divisions]
    if name == "fp_secret":
        return  # its leak is the latency of subnormal arithmetic, not flow or addresses
    orig = [observe(name, s, Mode.FAST) for s in secrets]
    assert any((o.blocks, o.accesses, o.divisions) != (orig[0].blocks, orig[0].accesses,
                                                       orig[0].divisions) for o in orig[1:])
    capfd.readouterr()


def test_a_branch_arm_that_calls_runs_as_a_predicated_clone(built: Path) -> None:
    """modexp.toml's branch region calls mulmod in its arm: if-conversion clones the callee
    under the arm's predicate (docs/passes.md), and the program prints what native prints."""
    exe = binary("static", "modexp")
    args = ["exec", "--contract", str(CONTRACTS / "modexp.toml"), "--cpu", PROFILE, "--stats"]
    for secret in ("3", "12345"):
        run = run_leakdbt([*args, exe, secret])
        assert (run.status, run.stdout) == (0, run_native([exe, secret]).stdout)
        stats = run.stderr.decode()
        assert "main+0x116                     {'passes': ['if-conversion', 'ct-division']}" \
            in stats


def test_a_region_no_pass_can_harden_is_a_one_line_error(built: Path, tmp_path: Path) -> None:
    """With the passes its branch region needs switched off, exec says so in one line
    (status 2); --allow-unhardened runs it anyway, hardening what it can."""
    exe = binary("static", "modexp")
    contract = tmp_path / "modexp.toml"
    contract.write_text((CONTRACTS / "modexp.toml").read_text().replace(
        "[protect]\n", '[protect]\npasses_off = ["if-conversion", "ct-division"]\n', 1))
    args = ["exec", "--contract", str(contract), "--cpu", PROFILE]
    refused = run_leakdbt([*args, exe, "3"])
    assert refused.status == 2 and refused.stdout == b""
    assert refused.stderr.decode().splitlines() == [
        "leakdbt: region main+0x116 cannot be hardened: no pass applies (if-conversion: "
        "switched off by protect.passes_off; ct-division: switched off by "
        "protect.passes_off; oblivious-table: does not apply; fp-ftz-daz: does not apply) "
        "(--allow-unhardened runs it anyway)"]
    allowed = run_leakdbt([*args, "--allow-unhardened", "--stats", exe, "3"])
    assert (allowed.status, allowed.stdout) == (0, run_native([exe, "3"]).stdout)
    stats = allowed.stderr.decode()
    assert "main+0x116" in stats and "'unhardened': 'no pass applies" in stats
