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
    # both zero-operand tests (as analyze finds): b == 0 is reached by a directed trial
    "idea_mul": ("idea_mul", [], {(CF, "mul+0x3"), (CF, "mul+0x8")}),
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


# mac_verify prints the tag with its verdict: the declassified stdout tells every trial apart,
# so all trials are compared (docs/checking.md).  A directed trial completes the right tag and
# takes the "verified" return after the bounded loop: that branch is the verdict itself.
VERDICT_BRANCH = {"mac_verify": {(CF, "verify+0x15")}}


@pytest.mark.parametrize("contract", list(LEAKY))
def test_hardened_program_reports_nothing(built: Path, contract: str) -> None:
    program, args, _ = LEAKY[contract]
    found, report = check(contract, program, args, mode="hardened")
    assert found == VERDICT_BRANCH.get(contract, set())
    distinct = report.modes[0].distinct_traces  # type: ignore[attr-defined]
    assert all(n == (2 if contract in VERDICT_BRANCH and o == CF else 1)
               for o, n in distinct.items()), distinct


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


def test_a_long_scope_of_library_code_gets_the_right_verdict(built: Path) -> None:
    """Issue 16's long run: OpenSSL's BN_mod_exp_mont with a 1024-bit secret exponent, over
    4 million guest instructions in scope per trial (time and memory are bench figures,
    docs/benchmarks.md).  The sliding window's branch on exponent bits is found, as in the
    256-bit program above."""
    run = run_leakdbt(["check", "--contract", "contracts/ossl_powm1024.toml", "--trials", "2",
                       "--directed-rounds", "0", "--jobs", "1", "--format", "json",
                       binary("static", "ossl_powm1024")])
    assert run.status == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["modes"][0]["instructions"] >= 4_000_000
    found = {(f["kind"], f["location"]) for f in report["findings"]}
    assert ("control-flow", "BN_mod_exp_mont+0x476") in found, found


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


def _tag_check(tmp_path: Path, declassify: str, points: str = "") -> object:
    """tag_check, hardened by its bounded loop, checked with the right tag among the trials."""
    text = (CONTRACTS / "tag_check.toml").read_text()
    text = text.replace('declassify = ["stdout", "exit-status"]\n', declassify)
    text = text.replace("[check.values]", points + "[check.values]")
    contract = tmp_path / "tag_check.toml"
    contract.write_text(text)
    exe = binary("static", "tag_check")
    return run_check(exe, load(contract, binary=exe), get_profile(CPU),
                     CheckOptions(("hardened",), trials=6, directed_rounds=0))


def test_a_declassified_verdict_is_no_leak_output_sensitive(built: Path, tmp_path: Path
                                                             ) -> None:
    """The path after the bounded loop differs between "verified" and "rejected": with the
    verdict (stdout, exit status) declassified, trials are compared only within a verdict and
    nothing leaks; without, the same difference is a leak."""
    public = _tag_check(tmp_path, 'declassify = ["stdout", "exit-status"]\n')
    assert not public.leaks and public.findings == []  # type: ignore[attr-defined]
    assert "separate the 6 trials into 2 classes" in \
        public.modes[0].declassification  # type: ignore[attr-defined]
    secret = _tag_check(tmp_path, "")
    assert {f.location for f in secret.findings} == {"verify+0x15"}  # type: ignore[attr-defined]
    assert len(secret.outputs) == 2  # type: ignore[attr-defined]


def test_a_declassified_return_value(built: Path, tmp_path: Path) -> None:
    """verify's return value, declassified at its return: the same classes as the printed
    verdict, and stdout (a function of it) is then no output leak either."""
    point = ('[[check.declassify_at]]\nname = "verdict"\nat = "verify"\nwhen = "return"\n'
             'register = "rax"\nlength = 4\n\n')
    report = _tag_check(tmp_path, "", point)
    assert not report.leaks, report  # type: ignore[attr-defined]
    assert "(verdict)" in report.modes[0].declassification  # type: ignore[attr-defined]


def _directed(contract: str, program: str, rounds: int, trials: int,
              kind: str = "static") -> object:
    exe = binary(kind, program)
    c = load(CONTRACTS / f"{contract}.toml", binary=exe)
    return run_check(exe, c, get_profile(CPU),
                     CheckOptions(("original",), trials=trials, directed_rounds=rounds))


def test_directed_trials_find_an_early_exit_loop_without_test_vectors(built: Path) -> None:
    """early_exit16's contract has no check.values and random tags all leave the loop at the
    first byte: with the same seed, only the directed trials (the byte the loop compared
    copied into the tag) reach the second iteration."""
    plain = _directed("early_exit16", "early_exit16", 0, 4)
    assert not plain.leaks and plain.derived == []  # type: ignore[attr-defined]
    directed = _directed("early_exit16", "early_exit16", 2, 4)
    assert {(f.kind, f.location) for f in directed.findings} == \
        {(CF, "tag_equal+0xf")}  # type: ignore[attr-defined]
    derived = directed.derived  # type: ignore[attr-defined]
    assert derived and derived[0].index == 4 and derived[0].parent == 0
    assert (derived[0].location, derived[0].offset, derived[0].length) == \
        ("tag_equal+0xc", 0, 1)
    witness = directed.findings[0].witness  # type: ignore[attr-defined]
    assert {witness.first.index, witness.second.index} & {d.index for d in derived}
    assert directed.modes[0].trials == 4 + len(derived)  # type: ignore[attr-defined]


def test_directed_trials_find_glibc_memcmp_on_a_32_byte_tag(built: Path) -> None:
    """sodium_verify_derived has no check.values: the derived trial copies the 16
    bytes memcmp's pcmpeqb compared the tag with into it, and takes the other branch."""
    plain = _directed("sodium_verify_derived", "sodium_verify", 0, 4)
    assert not plain.findings  # type: ignore[attr-defined]
    directed = _directed("sodium_verify_derived", "sodium_verify", 2, 4)
    assert (CF, "__memcmp_sse2+0xb5") in \
        {(f.kind, f.location) for f in directed.findings}  # type: ignore[attr-defined]
    first = directed.derived[0]  # type: ignore[attr-defined]
    assert (first.location, first.offset, first.length) == ("__memcmp_sse2+0xab", 0, 16)
    assert first.instruction.startswith("pcmpeqb")
    # the second round reaches the second 16-byte block from the first derived trial
    assert any(d.parent == first.index and d.offset == 16 and d.length == 16
               for d in directed.derived)  # type: ignore[attr-defined]


def test_replay_of_a_derived_trial_and_the_report_text(built: Path) -> None:
    exe = binary("static", "early_exit16")
    contract = str(CONTRACTS / "early_exit16.toml")
    out = run_leakdbt(["check", "--contract", contract, "--cpu", CPU, exe])
    assert out.status == 1, out.stderr.decode()
    assert "trial 4 from trial 0: tag[0:1] set to the other operand of cmp byte ptr " \
        "[rdi + rax], dl at tag_equal+0xc" in out.stdout.decode()
    out = run_leakdbt(["check", "--contract", contract, "--cpu", CPU, "--replay", "0,4", exe])
    assert out.status == 0, out.stderr.decode()
    assert "control-flow at tag_equal+0xf: went to tag_equal+0x28 / went to tag_equal+0x11" \
        in out.stdout.decode()
    out = run_leakdbt(["check", "--contract", contract, "--directed-rounds", "0", exe])
    assert out.status == 0 and "directed trials" not in out.stdout.decode()
