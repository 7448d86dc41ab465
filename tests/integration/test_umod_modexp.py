"""The square-and-multiply whose secret arm calls ``__umodti3`` (test_binaries/umod_modexp.c),
with the general passes only (``ct-equivalent`` switched off in its contract): analyze finds
the exponent-bit branch and writes its region; if-conversion hardens it with a predicated
clone of ``__umodti3`` (plugins/support/clone.py), and ct-division makes the clone's
divisions constant-time."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "umod_modexp.toml"
SECRETS = ("0123456789abcdef", "8000000000000001", "ffffffffffffffff")


@pytest.fixture(scope="module")
def program(built: Path) -> str:
    exe = binary("static", "umod_modexp")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), "build/static/umod_modexp"],
                       check=True)
    return exe


def test_native_output_is_the_modular_power(program: str) -> None:
    m = 2**64 - 59
    for secret in SECRETS:
        e = int(secret, 16)
        want = ",".join(f"{pow(b % m, e, m):016x}" for b in
                        (2, 65537, 0x9e3779b97f4a7c15, 0xfffffffffffffff0))
        assert run_native([program, secret]).stdout.decode() == \
            f"umod_modexp: e={secret} m={m} r={want}\n"


def _analyzed(program: str, directory: Path) -> Path:
    """A copy of the contract after ``analyze --write`` (which must write the bit branch)."""
    contract = directory / "umod_modexp.toml"
    contract.write_text(CONTRACT.read_text())
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", program, SECRETS[0]])
    assert done.status == 0, done.stderr
    text = contract.read_text()
    assert 'at = "modexp+0x46"\nkind = "branch"' in text
    # public: the modulus (rbx), not r (rax, rcx), which depends on the exponent's earlier
    # bits only through the path each took (analyze's join taint)
    public = re.search(r"^public = \[(.*)\]$", text, re.M)
    assert public is not None and '"rbx"' in public.group(1)
    assert '"rax"' not in public.group(1) and '"rcx"' not in public.group(1)
    return contract


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_analyzed_branch_with_the_call_runs_hardened_as_native(
        built: Path, kind: str, tmp_path: Path) -> None:
    """The secret arm's call to __umodti3 runs as a predicated clone (docs/passes.md)."""
    program = binary(kind, "umod_modexp")
    contract = _analyzed(program, tmp_path)
    for secret in SECRETS:
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                "--stats", program, secret])
        assert hardened.status == 0, hardened.stderr
        assert hardened.stdout == run_native([program, secret]).stdout
        stats = hardened.stderr.decode()
        assert "{'passes': ['if-conversion', 'ct-division']}" in stats  # clone + its divisions
        assert "{'fast': 0, 'hardened': 256}" in stats  # 4 bases x 64 bits, all hardened


def test_hardened_run_shows_no_leak(program: str, tmp_path: Path) -> None:
    """check --mode hardened: control flow, cache lines and division operands the same for
    every secret.  Besides the branch analyze writes, the contract names the block of
    __umodti3 that the *squaring* (outside the secret arm, on the secret-dependent r) runs:
    its division leaks through its operands, which no branch region covers."""
    contract = _analyzed(program, tmp_path)
    contract.write_text(contract.read_text()
                        + '\n[[protect.region]]\nat = "__umodti3+0x24"\nkind = "divide"\n')
    done = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened", program,
                        SECRETS[0]])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()
