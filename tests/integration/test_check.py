"""`leakdbt check` against ground truth: every leaky test program is flagged at the leaking
instructions with the right kind (and nothing else), every constant-time program and every
hardened program reports nothing; OpenSSL's and libsodium's leaky and constant-time code
are told apart; reports are valid JSON and SARIF; exit statuses are 0, 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage.check import CheckOptions, run_check
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.trials import Observation, TrialSetup, trial_inputs
from tests.conftest import REPO, binary, run_leakdbt, run_native
from tests.unit.dbt.harness import compile_program

CONTRACTS = REPO / "contracts"
CPU = "intel-skylake"  # every latency class variable
SCHEMA = REPO / "tests" / "data" / "sarif-schema-2.1.0.json"
CF, MEM, LAT = LeakKind.CONTROL_FLOW, LeakKind.MEMORY_ACCESS, LeakKind.VARIABLE_LATENCY

# contract -> (program, public args, the leak points of the original code)
LEAKY: dict[str, tuple[str, list[str], set[tuple[LeakKind, str]]]] = {
    "ct_modexp": ("ct_modexp", [], {(LAT, "modexp+0x28"), (CF, "modexp+0x2f"),
                                    (LAT, "modexp+0x3a")}),
    "idea_mul": ("idea_mul", [], {(CF, "mul+0x3")}),
    "mac_verify": ("mac_verify", [], {(CF, "verify+0xf")}),
    "sbox_round": ("sbox_round", [], {(MEM, "sub_bytes_key+0x1a")}),
    "ttable_round": ("ttable_round", [], {(MEM, "ttable_round+0x10"),
                                          (MEM, "ttable_round+0x3b"),
                                          (MEM, "ttable_round+0x60"),
                                          (MEM, "ttable_round+0x84")}),
    "secret_div": ("secret_div", [], {(LAT, "divmod_u32+0x7"), (LAT, "divmod_s32+0x6"),
                                      (LAT, "divmod_u64+0x8"), (LAT, "divmod_s64+0x8")}),
    "fp_secret": ("fp_secret", [], {(LAT, "fp_dot+0x20")}),
    "region_loop": ("region_loop", ["300"], {(CF, "tiny_region+0xa")}),
}
CONSTANT_TIME = {"sha256": ("sha256", ["0"]), "ossl_modexp_ct": ("ossl_modexp", []),
                 "sodium_verify_ct": ("sodium_verify", [])}


def check(contract: str, program: str, args: list[str], mode: str = "original",
          trials: int = 8, kind: str = "static") -> tuple[set[tuple[LeakKind, str]], object]:
    exe = binary(kind, program)
    c = load(CONTRACTS / f"{contract}.toml", binary=exe)
    report = run_check(exe, c, get_profile(CPU), CheckOptions((mode,), trials=trials),
                       args or None)
    return {(f.kind, f.location) for f in report.findings}, report


@pytest.mark.parametrize("contract", list(LEAKY))
def test_leaky_program_is_flagged_at_its_leaks_and_nowhere_else(built: Path,
                                                               contract: str) -> None:
    program, args, expected = LEAKY[contract]
    found, report = check(contract, program, args)
    assert found == expected
    for f in report.findings:  # type: ignore[attr-defined]
        assert f.witness.observed[0] != f.witness.observed[1]
        assert f.witness.first.index != f.witness.second.index
        assert f.source is not None and f.source.file.endswith(f"{program}.c")
        assert f.suggestion is not None and "[[protect.region]]" in f.suggestion


@pytest.mark.parametrize("contract", list(LEAKY))
def test_hardened_program_reports_nothing(built: Path, contract: str) -> None:
    program, args, _ = LEAKY[contract]
    found, report = check(contract, program, args, mode="hardened")
    assert found == set()
    assert all(n == 1 for n in report.modes[0].distinct_traces.values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("contract", list(CONSTANT_TIME))
def test_constant_time_code_reports_nothing(built: Path, contract: str) -> None:
    program, args = CONSTANT_TIME[contract]
    found, report = check(contract, program, args)
    assert found == set() and not report.outputs  # type: ignore[attr-defined]
    assert report.modes[0].instructions > 0  # type: ignore[attr-defined]


def test_openssl_bn_mod_exp_mont_leaks_where_openssl_branches_on_exponent_bits(
        built: Path) -> None:
    """The window scan of BN_mod_exp_mont branches on BN_is_bit_set and indexes the table
    of powers with the window value; the consttime variant above reports nothing."""
    found, _ = check("ossl_modexp_leaky", "ossl_modexp", [])
    assert {(CF, "BN_mod_exp_mont+0x476"), (CF, "BN_mod_exp_mont+0x58c"),
            (MEM, "BN_mod_exp_mont+0x5d1")} <= found
    assert all(loc.split("+")[0] in {"BN_mod_exp_mont", "BN_is_bit_set", "bn_mul_mont",
                                     "bn_mul_mont_fixed_top"} for _, loc in found), found


def test_memcmp_leaks_where_crypto_verify_does_not(built: Path) -> None:
    found, _ = check("sodium_verify_memcmp", "sodium_verify", [])
    assert found and all(loc.startswith("__memcmp_") for _, loc in found), found
    assert (CF, "__memcmp_sse2+0xb5") in found


def test_leak_points_do_not_depend_on_the_elf_kind(built: Path) -> None:
    """The static-pie build leaks at the same instructions (link-time names)."""
    program, args, expected = LEAKY["ct_modexp"]
    found, _ = check("ct_modexp", program, args, kind="static-pie")
    assert found == expected


CLOCKS = r"""
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
int main(int argc, char **argv)
{
    struct timespec t;
    unsigned char r[4];
    clock_gettime(CLOCK_REALTIME, &t);
    if (getrandom(r, sizeof r, 0) != sizeof r) return 1;
    unsigned spins = (unsigned)(t.tv_nsec % 97) + r[0];  /* time and entropy steer the flow */
    volatile unsigned acc = 0;
    for (unsigned i = 0; i < spins; i++) acc += i;
    printf("%s %lld.%09ld %02x%02x%02x%02x %u\n", argc > 1 ? argv[1] : "-", (long long)t.tv_sec,
           t.tv_nsec, r[0], r[1], r[2], r[3], acc);
    return 0;
}
"""


def test_trials_with_equal_secrets_observe_exactly_the_same(built: Path, tmp_path: Path
                                                            ) -> None:
    """Virtual time: a program whose control flow and output follow the clock and getrandom
    differs between two native runs, yet two trials with the same secret values produce
    identical outputs, digests and full traces."""
    exe = str(compile_program(tmp_path, "clocks", {"clocks.c": CLOCKS}, "static"))
    assert run_native([exe, "x"]).stdout != run_native([exe, "x"]).stdout
    contract = tmp_path / "clocks.toml"
    contract.write_text('version = 1\n[[secret]]\nname = "s"\nargv = 1\nlength = 2\n'
                        '[protect]\nadversary = "co-resident"\n')
    c = load(contract, binary=exe)
    setup = TrialSetup(exe, c, Mode.FAST)
    t = trial_inputs(c, 1, 5)[0]
    what = Observation(("control-flow", "memory", "latency"), 64, ("int-div",), full=True)
    a, b = setup.run(t, what), setup.run(t, what)
    assert a.status == 0 and a.stdout == b.stdout
    assert a.trace.digests == b.trace.digests
    assert a.trace.blocks == b.trace.blocks and a.trace.memory == b.trace.memory


def test_cli_exit_statuses_and_formats(built: Path, tmp_path: Path) -> None:
    exe = binary("static", "ct_modexp")
    base = ["check", "--contract", str(CONTRACTS / "ct_modexp.toml"), "--cpu", CPU,
            "--trials", "4"]
    text = run_leakdbt([*base, exe])
    assert text.status == 1, text.stderr.decode()
    out = text.stdout.decode()
    assert "control-flow leak [original] at modexp+0x2f" in out and "replay:" in out
    assert text.stderr == b""  # no progress output off a terminal
    hardened = run_leakdbt([*base, "--mode", "hardened", exe])
    assert hardened.status == 0 and "no leak found" in hardened.stdout.decode()
    data = json.loads(run_leakdbt([*base, "--format", "json", exe]).stdout)
    assert data["leaks"] and {f["kind"] for f in data["findings"]} == {
        "control-flow", "variable-latency"}
    sarif_file = tmp_path / "report.sarif"
    assert run_leakdbt([*base, "--format", "sarif", "-o", str(sarif_file), exe]).status == 1
    log = json.loads(sarif_file.read_text())
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(log)
    assert {r["ruleId"] for r in log["runs"][0]["results"]} == {
        "leakdbt/control-flow", "leakdbt/variable-latency"}
    bad = run_leakdbt(["check", "--contract", str(tmp_path / "missing.toml"), exe])
    assert bad.status == 2 and bad.stderr.decode().startswith("leakdbt: ")


def test_replay_shows_the_witness_differences(built: Path) -> None:
    exe = binary("static", "ct_modexp")
    out = run_leakdbt(["check", "--contract", str(CONTRACTS / "ct_modexp.toml"), "--cpu", CPU,
                       "--replay", "0,1", exe])
    assert out.status == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert text.startswith("original: trial 0 (exponent=")
    assert "control-flow at modexp+0x2f: went to modexp+0x" in text


def test_jobs_give_the_same_findings(built: Path) -> None:
    exe = binary("static", "secret_div")
    c = load(CONTRACTS / "secret_div.toml", binary=exe)
    one = run_check(exe, c, get_profile(CPU), CheckOptions(trials=6, jobs=1))
    two = run_check(exe, c, get_profile(CPU), CheckOptions(trials=6, jobs=2))
    assert [(f.kind, f.location, f.witness) for f in one.findings] == \
        [(f.kind, f.location, f.witness) for f in two.findings]


def test_an_undeclassified_output_that_depends_on_the_secret_is_a_leak(
        built: Path, tmp_path: Path) -> None:
    """secret_div prints its quotients: without declassify = ["stdout"] that is a leak."""
    text = (CONTRACTS / "secret_div.toml").read_text().replace('declassify = ["stdout"]', "")
    contract = tmp_path / "secret_div.toml"
    contract.write_text(text)
    exe = binary("static", "secret_div")
    report = run_check(exe, load(contract, binary=exe), get_profile(CPU),
                       CheckOptions(trials=4))
    assert report.outputs == [
        "original: the standard output depends on the secrets (trials 0 and 1 differ) and is "
        "not declassified"]
