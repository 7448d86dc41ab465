"""`leakdbt analyze` against ground truth: on the leaky test programs the findings are the
leaking instructions; on constant-time code there are none; and the three-step workflow —
analyze --write, exec --mode hardened, check --mode hardened — needs no hand-written region."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from leakdbt.analysis.analyze import analyze
from leakdbt.contract import load
from leakdbt.leakage.findings import LeakKind
from tests.conftest import REPO, binary, run_leakdbt, run_native
from tests.integration.test_hardening import SECRETS
from tests.unit.dbt.harness import compile_program

CONTRACTS = REPO / "contracts"
CF, MEM, LAT = LeakKind.CONTROL_FLOW, LeakKind.MEMORY_ACCESS, LeakKind.VARIABLE_LATENCY

LEAKY: dict[str, set[tuple[LeakKind, str]]] = {
    "ct_modexp": {(CF, "modexp+0x2f"), (LAT, "modexp+0x28"), (LAT, "modexp+0x3a")},
    "idea_mul": {(CF, "mul+0x3"), (CF, "mul+0x8")},  # both zero-operand tests
    "sbox_round": {(MEM, "sub_bytes_key+0x1a")},
    "ttable_round": {(MEM, "ttable_round+0x10"), (MEM, "ttable_round+0x3b"),
                     (MEM, "ttable_round+0x60"), (MEM, "ttable_round+0x84")},
    "secret_div": {(LAT, "divmod_u32+0x7"), (LAT, "divmod_s32+0x6"),
                   (LAT, "divmod_u64+0x8"), (LAT, "divmod_s64+0x8")},
    # every floating-point operation on the secret (the checker flags only the one whose
    # operands' classes differ between its trials)
    "fp_secret": {(LAT, "fp_dot+0x18"), (LAT, "fp_dot+0x1c"), (LAT, "fp_dot+0x20")},
}


@pytest.mark.parametrize("name", list(LEAKY))
def test_findings_are_the_leaking_instructions(built: Path, name: str) -> None:
    exe = binary("static", name)
    report = analyze(exe, load(CONTRACTS / f"{name}.toml", binary=exe))
    assert {(f.kind, f.location) for f in report.findings} == LEAKY[name]
    assert all(f.secrets and f.count > 0 and f.source is not None for f in report.findings)


def test_a_dynamic_build_has_the_same_findings_without_tracking_the_loader(
        built: Path) -> None:
    """ld.so's start-up (relocating libc) is most of a small dynamic program's run; it
    handles no secret, and the tracker skips it."""
    static = binary("static", "ct_modexp")
    dynamic = binary("dynamic", "ct_modexp")
    contract = CONTRACTS / "ct_modexp.toml"
    want = analyze(static, load(contract, binary=static))
    got = analyze(dynamic, load(contract, binary=dynamic))
    assert [(f.kind, f.location) for f in got.findings] == \
        [(f.kind, f.location) for f in want.findings]
    stats = run_leakdbt(["exec", "--count-insns", "--stats", dynamic, "0123456789abcdef"])
    executed = int(next(line.split(":")[1] for line in stats.stderr.decode().splitlines()
                        if "guest instructions" in line))
    assert 0 < got.instructions * 4 < executed


def test_stripped_code_is_analyzed_but_gets_no_region(built: Path, tmp_path: Path) -> None:
    """Without symbols the same instructions are found (at their addresses; without the
    scope, printf's too); no contract location can name their blocks, and the output says
    so."""
    exe = tmp_path / "ct_modexp"
    subprocess.run(["strip", "-o", str(exe), binary("static", "ct_modexp")], check=True)
    source = tmp_path / "source"
    source.mkdir()
    (source / "stripped.toml").write_text((CONTRACTS / "ct_modexp.toml").read_text().replace(
        'functions = ["modexp"]\n', ""))
    contract = _without_regions(source / "stripped.toml", tmp_path)
    want = analyze(binary("static", "ct_modexp"),
                   load(CONTRACTS / "ct_modexp.toml", binary=binary("static", "ct_modexp")))
    out = run_leakdbt(["analyze", "--contract", str(contract), str(exe)])
    text = out.stdout.decode()
    assert out.status == 0, out.stderr.decode()
    for f in want.findings:
        assert f"at {f.address:#x}: {f.instruction}" in text, text
    findings = [line for line in text.splitlines() if line.startswith("  control-flow at ")
                or line.startswith(("  memory-access at ", "  variable-latency at "))]
    assert not any(line.startswith("  region ") for line in text.splitlines()), text
    assert f"  {len(findings)} finding(s) without a region" in text, text


def test_constant_time_code_has_no_findings(built: Path) -> None:
    """sha256's block() takes the secret message through a pointer at its entry."""
    exe = binary("static", "sha256")
    report = analyze(exe, load(CONTRACTS / "sha256.toml", binary=exe), ["0"])
    assert report.findings == [] and report.instructions > 1000


def _without_regions(contract: Path, tmp_path: Path) -> Path:
    text = re.sub(r"\n\[\[protect\.region\]\]\n.*?(?=\n\[|\Z)", "\n", contract.read_text(),
                  flags=re.S)
    out = tmp_path / contract.name
    out.write_text(text)
    assert "[[protect.region]]" not in text
    return out


# Every leaky test program (test_check.py's list), argv after the program name: the secrets
# of test_hardening.py, or region_loop's public count (its secret is a register).
WORKFLOW = [("secret_div", "static"), ("ct_modexp", "static"), ("idea_mul", "static"),
            ("ttable_round", "static"), ("fp_secret", "static"), ("mac_verify", "static"),
            ("region_loop", "static-pie"),
            # PIE: the oblivious-table pass needs the table's bounds, which analyze names
            ("sbox_round", "static-pie")]


@pytest.mark.parametrize(("name", "kind"), WORKFLOW)
def test_analyze_write_then_hardened_exec_and_check(built: Path, tmp_path: Path, name: str,
                                                    kind: str, fastmath_fp_secret: str) -> None:
    """The three steps from a contract without regions: the hardened program prints what the
    native one prints (fp_secret: what it prints with FTZ and DAZ set, the pass's purpose),
    and check finds leaks in the original code and none in the hardened code."""
    contract = _without_regions(CONTRACTS / f"{name}.toml", tmp_path)
    exe = binary(kind, name)
    before = contract.read_text()
    written = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe])
    assert written.status == 0, written.stderr.decode()
    after = contract.read_text()
    assert after.startswith(before.split("[check]")[0].rstrip()) and "[[protect.region]]" in after
    again = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe])
    assert contract.read_text() == after and "already in the contract" in again.stdout.decode()
    for argv in ([["1000"], ["7"]] if name == "region_loop" else [[s] for s in SECRETS[name]]):
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                "--cpu", "intel-skylake", exe, *argv])
        native = run_native([fastmath_fp_secret if name == "fp_secret" else exe, *argv])
        assert (hardened.status, hardened.stdout) == (0, native.stdout), \
            hardened.stderr.decode()
    checked = run_leakdbt(["check", "--contract", str(contract), "--mode", "both", "--cpu",
                           "intel-skylake", "--trials", "6", exe])
    out = checked.stdout.decode()
    assert checked.status == 1 and "[original]" in out, out
    # mac_verify prints its tag with the verdict: a directed trial that completes the right tag
    # shows the verdict branch after the bounded loop (tests/integration/test_check.py)
    assert set(re.findall(r"\[hardened\] at (\S+)", out)) == \
        ({"verify+0x15"} if name == "mac_verify" else set()), out


def test_an_early_exit_loop_gets_a_loop_region_with_its_bound(built: Path,
                                                              tmp_path: Path) -> None:
    """mac_verify: a branch region would hold the loop (if-conversion refuses that); the bound
    is the trip count with the early exit suppressed, whatever the analyzed tag."""
    contract = _without_regions(CONTRACTS / "mac_verify.toml", tmp_path)
    exe = binary("static", "mac_verify")
    report = analyze(exe, load(contract, binary=exe))
    assert [(r.at, r.kind, r.bound) for r in report.regions] == [("verify+0x8", "loop", 16)]


def test_confirm_marks_what_the_checker_sees_too(built: Path) -> None:
    exe = binary("static", "ct_modexp")
    out = run_leakdbt(["analyze", "--contract", str(CONTRACTS / "ct_modexp.toml"), "--confirm",
                       "--cpu", "intel-skylake", "--trials", "6", "--format", "json", exe])
    assert out.status == 0, out.stderr.decode()
    findings = json.loads(out.stdout)["findings"]
    assert len(findings) == 3
    assert all(f["confirmed"] and "trial" in f["confirmed"] for f in findings), findings


ENV_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noipa)) int pick(const char *pin)
{
    if (pin[0] == '7')  /* a call in the arm: gcc keeps the branch */
        puts("seven");
    return 1;
}
int main(void)
{
    const char *pin = getenv("PIN");
    printf("%d\n", pin ? pick(pin) : 0);
    return 0;
}
"""


def test_an_environment_secret_is_tainted(built: Path, tmp_path: Path) -> None:
    exe = compile_program(tmp_path, "envpin", {"envpin.c": ENV_SOURCE}, "static")
    contract = tmp_path / "envpin.toml"
    contract.write_text('version = 1\n[[secret]]\nname = "pin"\nenv = "PIN"\nlength = 2\n'
                        '[protect]\nadversary = "remote"\nfunctions = ["pick"]\n')
    report = analyze(str(exe), load(contract, binary=str(exe)))
    assert [(f.kind, f.location.split("+")[0], f.secrets) for f in report.findings] == [
        (CF, "pick", ("pin",))]
    assert [(e.at, e.kind) for e in report.regions] == [("pick", "branch")]


READ_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noipa)) void on_public(unsigned char c) { if (c == 'x') puts("x"); }
__attribute__((noipa)) void on_stdin(unsigned char c) { if (c == 7) puts("seven"); }
__attribute__((noipa)) void on_file(unsigned char c) { if (c == 9) puts("nine"); }
int main(void)
{
    unsigned char in[4] = {0}, key[3] = {0};
    if (read(0, in, 4) != 4) return 1;
    FILE *f = fopen("keys/k.bin", "rb");
    if (!f || fread(key, 1, 3, f) != 3) return 2;
    on_public(in[0]);  /* public: offset 0 */
    on_stdin(in[3]);   /* secret: offsets 2-3 */
    on_file(key[2]);   /* secret: file offsets 1-2 */
    return 0;
}
"""


def test_stdin_and_file_secrets_are_tainted_at_their_offsets(built: Path,
                                                             tmp_path: Path) -> None:
    exe = compile_program(tmp_path, "reads", {"reads.c": READ_SOURCE}, "static")
    contract = tmp_path / "reads.toml"
    contract.write_text(
        'version = 1\n[[secret]]\nname = "s"\nstdin = true\noffset = 2\nlength = 2\n'
        '[[secret]]\nname = "k"\nfile = "keys/k.bin"\noffset = 1\nlength = 2\n'
        '[protect]\nadversary = "remote"\n'
        'functions = ["on_public", "on_stdin", "on_file"]\n'
        '[check]\nstdin = "xy"\n')
    report = analyze(str(exe), load(contract, binary=str(exe)))
    assert sorted((f.location.split("+")[0], f.secrets) for f in report.findings) == [
        ("on_file", ("k",)), ("on_stdin", ("s",))]


ROUND_TRIP = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noipa)) void decide(unsigned char c) { if (c == 5) puts("five"); }
int main(int argc, char **argv)
{
    FILE *f = argc > 2 ? fopen(argv[2], "w+b") : NULL;
    unsigned char back[2] = {0};
    if (!f) return 1;
    fputs(argv[1], f);              /* the secret goes to a file ... */
    fflush(f);
    rewind(f);
    if (fread(back, 1, 2, f) != 2) return 2;   /* ... and comes back */
    decide(back[1]);
    decide('x');                     /* public: the same branch, never tainted */
    fclose(f);
    return 0;
}
"""


def _decisions(tmp_path: Path, source: str, args: list[str]) -> list[tuple[object, ...]]:
    """Analyze ``source`` (its secret: argv[1], 2 bytes; the scope: decide()) with ``args``
    after it, writing only in tmp_path: (kind, function, secrets, count) per finding."""
    exe = compile_program(tmp_path, "prog", {"prog.c": source}, "static")
    contract = tmp_path / "prog.toml"
    quoted = ", ".join(f'"{a}"' for a in ["0000", *args])
    contract.write_text('version = 1\n[[secret]]\nname = "a"\nargv = 1\nlength = 2\n'
                        '[protect]\nadversary = "remote"\nfunctions = ["decide"]\n'
                        f'[check]\nargs = [{quoted}]\n')
    report = analyze(str(exe), load(contract, binary=str(exe)), rw=[str(tmp_path)])
    return [(f.kind, f.location.split("+")[0], f.secrets, f.count) for f in report.findings]


def test_taint_survives_a_round_trip_through_a_file(built: Path, tmp_path: Path) -> None:
    assert _decisions(tmp_path, ROUND_TRIP, [str(tmp_path / "spill.bin")]) == [
        (CF, "decide", ("a",), 1)]


VECTORED = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
__attribute__((noipa)) void decide(unsigned char c) { if (c == 5) puts("five"); }
int main(int argc, char **argv)
{
    int fd = argc > 3 ? open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600) : -1;
    char pad[3] = "ab", head[3] = {0}, back[2] = {0};
    if (fd < 0) return 1;
    struct iovec out[2] = {{pad, 2}, {argv[1], 2}};     /* the secret at file offset 2 */
    if (writev(fd, out, 2) != 4) return 2;
    if (strcmp(argv[3], "vec") == 0) {                  /* ... back through preadv */
        struct iovec in[2] = {{head, 3}, {back, 1}};
        if (preadv(fd, in, 2, 0) != 4) return 3;
        decide(head[2]);                                /* secret byte 0 */
        decide(back[0]);                                /* secret byte 1 */
        decide(head[0]);                                /* public */
    } else {                                            /* ... back through a mapping */
        unsigned char *m = mmap(0, 4, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) return 4;
        decide(m[2]);
        decide(m[3]);
        decide(m[0]);
    }
    return 0;
}
"""


@pytest.mark.parametrize("mode", ["vec", "map"])
def test_taint_survives_vectored_io_and_file_mappings(built: Path, tmp_path: Path,
                                                      mode: str) -> None:
    """writev puts the secret in a file; preadv, or an mmap of the file, brings it back:
    both secret bytes reach the branch (twice), the public byte does not."""
    assert _decisions(tmp_path, VECTORED, [str(tmp_path / "vec.bin"), mode]) == [
        (CF, "decide", ("a",), 2)]


def test_sarif_output_validates(built: Path, tmp_path: Path) -> None:
    exe = binary("static", "ct_modexp")
    out = run_leakdbt(["analyze", "--contract", str(CONTRACTS / "ct_modexp.toml"),
                       "--format", "sarif", exe])
    assert out.status == 0, out.stderr.decode()
    log = json.loads(out.stdout)
    schema = json.loads((REPO / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(log)
    results = log["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"leakdbt/control-flow",
                                              "leakdbt/variable-latency"}
    assert all("taint tracking" in r["message"]["text"] for r in results)
    # the divisions sit in the branch region that covers them
    assert all('at = "modexp+0x20"' in r["properties"]["suggestion"] for r in results)


def test_libsodium_and_memcmp(built: Path) -> None:
    exe = binary("static", "sodium_verify")
    leaky = analyze(exe, load(CONTRACTS / "sodium_verify_memcmp.toml", binary=exe))
    assert {(f.kind, f.location) for f in leaky.findings} == {
        (CF, "__memcmp_sse2+0xb5"), (CF, "__memcmp_sse2+0xd1")}
    clean = analyze(exe, load(CONTRACTS / "sodium_verify_ct.toml", binary=exe))
    assert clean.findings == []


def test_openssl_leaky_and_constant_time_exponentiation(built: Path) -> None:
    exe = binary("static", "ossl_modexp")
    leaky = analyze(exe, load(CONTRACTS / "ossl_modexp_leaky.toml", binary=exe))
    found = {(f.kind, f.location) for f in leaky.findings}
    assert {(CF, "BN_mod_exp_mont+0x476"), (CF, "BN_mod_exp_mont+0x58c"),
            (MEM, "BN_mod_exp_mont+0x5d1"), (MEM, "BN_is_bit_set+0x18"),
            # address-to-value taint: +0x5d1 loads the BIGNUM pointer from the secret slot
            # val[wvalue >> 1], so bn_mul_mont_fixed_top reads b->top through it (+0x1d) ...
            (MEM, "bn_mul_mont_fixed_top+0x1d"),
            # ... and bn_mul_mont reads the words of b->d, itself loaded through it (+0x150)
            (MEM, "bn_mul_mont+0x150")} <= found
    ct = analyze(exe, load(CONTRACTS / "ossl_modexp_ct.toml", binary=exe))
    # The one finding of the constant-time path, explained: bn_correct_top trims the
    # result's leading zero words, so it branches on the result, which the program prints
    # (declassified output) anyway.
    assert [(f.kind, f.location) for f in ct.findings] == [(CF, "bn_correct_top+0x25")]


def test_an_entry_function_scope_covers_its_callees(built: Path, tmp_path: Path) -> None:
    """entry_div's contract names process(); the division is in its callee scale().  analyze
    and check agree on it (one scope: while process is active, callees included), nothing
    after process returns counts (main's printf), and the three steps remove the leak."""
    exe = binary("static", "entry_div")
    contract = tmp_path / "entry_div.toml"
    contract.write_text((CONTRACTS / "entry_div.toml").read_text())
    found = analyze(exe, load(contract, binary=exe))
    assert {(f.kind, f.location) for f in found.findings} == {(LAT, "scale+0x5")}
    checked = run_leakdbt(["check", "--contract", str(contract), "--cpu", "intel-skylake",
                           "--format", "json", exe])
    assert checked.status == 1
    assert {(f["kind"], f["location"]) for f in json.loads(checked.stdout)["findings"]} == \
        {(LAT.value, "scale+0x5")}
    written = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe])
    assert written.status == 0 and 'at = "scale"' in contract.read_text(), \
        written.stderr.decode()
    for divisor in ("00000007", "fffffffd", "00000000"):
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                exe, divisor])
        assert (hardened.status, hardened.stdout) == \
            (0, run_native([exe, divisor]).stdout), hardened.stderr.decode()
    clean = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened", "--cpu",
                         "intel-skylake", exe])
    assert clean.status == 0, clean.stdout.decode()


NESTED = r"""
#include <stdint.h>
#include <stdio.h>
#include "secret_io.h"
__attribute__((noipa)) int decide(const uint8_t *s)
{
    if (s[0] == 0) {        /* random secrets almost never take it */
        if (s[1] & 1)       /* reached only when s[0] == 0 */
            puts("odd");
        return 1;
    }
    return 0;
}
int main(int argc, char **argv)
{
    uint8_t s[2];
    if (argc != 2 || parse_hex(argv[1], s, 2) != 0) return 2;
    printf("%d\n", decide(s));
    return 0;
}
"""


def test_trials_taint_paths_the_first_secret_does_not_take(built: Path,
                                                           tmp_path: Path) -> None:
    """The first trial's random secret leaves decide() at the first branch; the second trial
    (all zero bytes, as check chooses it) reaches the nested one: --trials 2 merges both."""
    (tmp_path / "secret_io.h").write_text((REPO / "test_binaries" / "secret_io.h").read_text())
    exe = str(compile_program(tmp_path, "nested", {"nested.c": NESTED}, "static"))
    contract = tmp_path / "nested.toml"
    contract.write_text('version = 1\n[[secret]]\nname = "s"\nargv = 1\nlength = 2\n'
                        'format = "hex"\n[protect]\nadversary = "remote"\n'
                        'functions = ["decide"]\n[check]\nseed = 3\n')
    one = analyze(exe, load(contract, binary=exe))
    assert [(f.kind, f.location) for f in one.findings] == [(CF, "decide+0x3")], one.findings
    two = analyze(exe, load(contract, binary=exe), trials=2)
    assert [(f.kind, f.location.split("+")[0]) for f in two.findings] == \
        [(CF, "decide"), (CF, "decide")], two.findings
    first, nested = two.findings
    assert first.location == "decide+0x3" and nested.location != first.location
    assert (first.count, nested.count) == (2, 1)  # the same branch in both runs: counts add
    out = run_leakdbt(["analyze", "--contract", str(contract), "--trials", "2", exe])
    assert out.status == 0, out.stderr.decode()
    assert f"control-flow at {nested.location}" in out.stdout.decode()
