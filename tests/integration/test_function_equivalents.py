"""Library code that cannot be rewritten block by block — OpenSSL's sliding-window
BN_mod_exp_mont (secret branches around calls) and glibc's memcmp (early exit) — through the
three-step workflow: analyze --write suggests a whole-function region, the hardened program
prints what the native one prints, and check finds no leak in it (test_check.py shows the
original's)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO, binary, run_leakdbt, run_native
from tests.integration.test_analyze import _without_regions

CONTRACTS = REPO / "contracts"
TAG = "1fb7fdc7344b99c94856d3b4b1a7c38802c5115e494a3ae7cd7da237fca10f59"  # the right tag

CASES = {
    "sodium_verify_memcmp": ("sodium_verify", "__memcmp_sse2", ["memcmp"], [
        TAG, TAG[:-2] + "00", TAG[:32] + "0" * 32, "0" * 64, "f" * 64]),
    "ossl_modexp_leaky": ("ossl_modexp", "BN_mod_exp_mont", ["leaky"], [
        "f" * 64, "0123456789abcdef" * 4]),
}
# Besides the function: bn_correct_top's loop, which trims the result's leading zero words
# (its exit depends on the result, so on the exponent, in BN_mod_exp_mont_consttime too;
# docs/analyze.md).  Analyze writes a bounded loop for it: the limbs of a 256-bit number.
MORE_REGIONS = {"ossl_modexp_leaky": [("bn_correct_top+0x1d", "loop", 4)]}


@pytest.mark.parametrize("kind", ["static", "static-pie"])
@pytest.mark.parametrize("name", list(CASES))
def test_analyze_write_then_hardened_exec_and_check(built: Path, tmp_path: Path, name: str,
                                                    kind: str) -> None:
    program, function, mode, secrets = CASES[name]
    contract = _without_regions(CONTRACTS / f"{name}.toml", tmp_path)
    exe = binary(kind, program)
    written = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe])
    assert written.status == 0, written.stderr.decode()
    regions = tomllib.loads(contract.read_text())["protect"]["region"]
    assert sorted((r["at"], r["kind"], r.get("bound")) for r in regions) == sorted(
        [(function, "function", None), *MORE_REGIONS.get(name, [])]), regions
    for secret in secrets:
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                "--stats", exe, secret, *mode])
        native = run_native([exe, secret, *mode])
        assert (hardened.status, hardened.stdout) == (native.status, native.stdout), \
            hardened.stderr.decode()
        assert f"{function} {{'passes': ['ct-equivalent']}}" in \
            " ".join(hardened.stderr.decode().split())
    # the original's leaks: tests/integration/test_check.py
    checked = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened",
                           "--cpu", "intel-skylake", "--trials", "6", exe])
    out = checked.stdout.decode()
    assert checked.status == 0 and "no leak found" in out, out
    # every trial ran the same blocks and touched the same lines
    assert "distinct traces: control-flow 1, memory-access 1, variable-latency 1" in out, out


def test_shipped_contracts_harden_with_no_leak_left(built: Path) -> None:
    """The shipped contracts carry the regions analyze writes."""
    for name, (program, function, _mode, _secrets) in CASES.items():
        regions = tomllib.loads((CONTRACTS / f"{name}.toml").read_text())["protect"]["region"]
        assert [(r["at"], r["kind"]) for r in regions] == [(function, "function")]
        checked = run_leakdbt(["check", "--contract", str(CONTRACTS / f"{name}.toml"),
                               "--mode", "hardened", "--trials", "6",
                               binary("static", program)])
        assert checked.status == 0 and "no leak found" in checked.stdout.decode(), \
            checked.stdout.decode()


def test_the_shared_libcrypto_gets_the_same_treatment(built: Path, tmp_path: Path) -> None:
    """The dynamic build calls libcrypto.so.3, whose dynamic symbols name both functions:
    analyze suggests `libcrypto.so.3:BN_mod_exp_mont`, and the hardened run prints what the
    native one prints and leaves nothing for check to find."""
    text = (CONTRACTS / "ossl_modexp_leaky.toml").read_text()
    head, _, rest = text.partition("functions = [")
    text = head + 'functions = ["libcrypto.so.3:BN_mod_exp_mont"]\n' + rest.split("]\n", 1)[1]
    source = tmp_path / "source"
    source.mkdir()
    (source / "dynamic.toml").write_text(text)
    contract = _without_regions(source / "dynamic.toml", tmp_path)
    exe = binary("dynamic", "ossl_modexp")
    written = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe])
    assert written.status == 0, written.stderr.decode()
    regions = tomllib.loads(contract.read_text())["protect"]["region"]
    assert [(r["at"], r["kind"]) for r in regions] == [
        ("libcrypto.so.3:BN_mod_exp_mont", "function")], regions
    for secret in CASES["ossl_modexp_leaky"][3][:1]:
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                exe, secret, "leaky"])
        assert (hardened.status, hardened.stdout) == \
            (0, run_native([exe, secret, "leaky"]).stdout), hardened.stderr.decode()
    checked = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened",
                           "--trials", "3", exe])
    assert checked.status == 0 and "no leak found" in checked.stdout.decode(), \
        checked.stdout.decode()

