"""A secret arm that calls a function with a counted loop (test_binaries/loop_callee.c),
with the general passes only: analyze finds the key-bit branch and writes its region;
if-conversion hardens it with a predicated clone of ``scramble`` whose loop (5 iterations,
the count set by the caller: ``mov esi, 5; call scramble``) runs its 5 iterations whatever
the bit (plugins/support/clone.py, plugins/support/arm_loop.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "loop_callee.toml"
SECRETS = ("0123456789abcdef", "8000000000000001", "ffffffffffffffff")
KINDS = ("static", "static-pie", "dynamic")


@pytest.fixture(scope="module")
def programs() -> dict[str, str]:
    """The three builds of loop_callee (made here: only this program's targets)."""
    subprocess.run(["make", "-s", "-C", str(TEST_BINARIES),
                    *(f"build/{k}/loop_callee" for k in KINDS)], check=True,
                   stdout=subprocess.DEVNULL)
    return {k: binary(k, "loop_callee") for k in KINDS}


def _model(key: int, seed: int) -> tuple[int, int]:
    """fold(seed, key) and the last value scramble stored, as the C program computes them."""
    mask = (1 << 64) - 1
    salt = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)
    r, last = seed, None
    for i in range(63, -1, -1):
        r = ((r << 1 | r >> 63) & mask) ^ salt[0]
        if key >> i & 1:
            for _ in range(5):
                r = (r * 0x9E3779B97F4A7C15 + (r >> 29) + salt[1]) & mask
            last = r
        r ^= r >> 17
        r = r * (salt[2] | 1) & mask
        r = (r + (r >> 31)) & mask
        r ^= (salt[3] + i) & mask
    return r, last or 0


def test_native_output_is_the_fold(programs: dict[str, str]) -> None:
    for secret in SECRETS:
        key = int(secret, 16)
        results = [_model(key, seed) for seed in (1, 0x0123456789ABCDEF, 0xFEDCBA9876543210)]
        last = next((r[1] for r in reversed(results) if r[1]), 0)
        want = ",".join(f"{r:016x}" for r, _ in results)
        assert run_native([programs["static"], secret]).stdout.decode() == \
            f"loop_callee: r={want} last={last:016x}\n"


def _analyzed(program: str, directory: Path) -> Path:
    """A copy of the contract after ``analyze --write`` (which must write the bit branch)."""
    contract = directory / "loop_callee.toml"
    contract.write_text(CONTRACT.read_text())
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", program, SECRETS[0]])
    assert done.status == 0, done.stderr
    assert 'kind = "branch"' in contract.read_text()
    assert " 0 refused" in done.stdout.decode() + done.stderr.decode()
    return contract


@pytest.mark.parametrize("kind", KINDS)
def test_the_call_to_a_looping_function_runs_hardened_as_native(
        programs: dict[str, str], kind: str, tmp_path: Path) -> None:
    program = programs[kind]
    contract = _analyzed(program, tmp_path)
    for secret in SECRETS[KINDS.index(kind):][:1]:  # one key per kind
        hardened = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                                "--stats", program, secret])
        assert hardened.status == 0, hardened.stderr
        assert hardened.stdout == run_native([program, secret]).stdout
        stats = hardened.stderr.decode()
        assert "{'passes': ['if-conversion']}" in stats
        assert "{'fast': 0, 'hardened': 192}" in stats  # 3 seeds x 64 bits, all hardened


def test_hardened_run_shows_no_leak(programs: dict[str, str], tmp_path: Path) -> None:
    contract = _analyzed(programs["static"], tmp_path)
    # (analyze wrote the region from the branch's control-flow leak in the original)
    done = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened",
                        programs["static"], SECRETS[0]])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()
