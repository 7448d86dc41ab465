"""Branches on public values in a predicated clone (test_binaries/public_mode.c): analyze
writes the round's branch region with the registers public at its entry (the mode's and the
bit index's, not the state's, which depends on the key through the path taken); the
hardened run keeps step()'s branches on the mode as branches, prints what native prints,
runs fewer instructions than with every clone branch if-converted, the same number for
every key, and check finds no leak.  A wrong claim (the state declared public) is a leak
check reports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "public_mode.toml"
KEYS = ("0123456789abcdef", "8000000000000001", "ffffffffffffffff")
MASK = (1 << 64) - 1


def _model(key: int, mode: int) -> int:
    """public_mode.c's run(), in Python: the ground truth for the native output."""
    def step(x: int, mode: int) -> int:
        if x & 0x100:
            x ^= x >> 7
            x = x * 0xFF51AFD7ED558CCD & MASK
        if mode & 1:
            x = x * 0x9E3779B97F4A7C15 & MASK
            x ^= x >> 29
        else:
            x = (x * 0xBF58476D1CE4E5B9 + 7) & MASK
        if mode > 8:
            x ^= x >> 31
            x = x * 0x94D049BB133111EB & MASK
        return x

    r = 1
    for i in range(63, -1, -1):
        r = (r * 6364136223846793005 + 1442695040888963407) & MASK
        if key >> i & 1:
            r = step(r ^ i, mode)
        r ^= r >> 13
    return r


@pytest.fixture(scope="module")
def program(built: Path) -> str:
    exe = binary("static", "public_mode")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), "build/static/public_mode"],
                       check=True)
    return exe


@pytest.fixture(scope="module")
def analyzed(program: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract after ``analyze --write``: the round's branch with ``public``."""
    contract = tmp_path_factory.mktemp("public_mode") / "public_mode.toml"
    contract.write_text(CONTRACT.read_text())
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", program, KEYS[0],
                        "9"])
    assert done.status == 0, done.stderr
    return contract


def _public(contract: Path) -> list[str]:
    found = re.findall(r'^public = \[(.*)\]$', contract.read_text(), re.M)
    assert len(found) == 1
    return [r.strip().strip('"') for r in found[0].split(",")]


def _insns(contract: Path, exe: str, key: str, mode: int) -> int:
    done = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                        "--count-insns", "--stats", exe, key, str(mode)])
    assert done.status == 0, done.stderr
    return int(re.search(r"guest instructions: (\d+)", done.stderr.decode()).group(1))  # type: ignore[union-attr]


def test_native_output_is_the_model(program: str) -> None:
    for key in KEYS:
        for mode in (0, 1, 9, 10):
            want = f"public_mode: mode={mode} r={_model(int(key, 16), mode):016x}\n"
            assert run_native([program, key, str(mode)]).stdout.decode() == want


def test_analyze_declares_the_mode_public_and_not_the_state(analyzed: Path) -> None:
    text = analyzed.read_text()
    assert 'at = "round_"\nkind = "branch"' in text
    public = _public(analyzed)
    assert {"rcx", "rdx"} <= set(public)  # mode, bit index: round_'s 4th and 3rd arguments
    assert not {"rdi", "rsi", "rax"} & set(public)  # the state (implicitly keyed), the bit


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_hardened_run_prints_what_native_prints(analyzed: Path, kind: str) -> None:
    exe = binary(kind, "public_mode")
    for key in KEYS:
        for mode in (0, 9):
            done = run_leakdbt(["exec", "--contract", str(analyzed), "--mode", "hardened",
                                "--stats", exe, key, str(mode)])
            assert done.status == 0, done.stderr
            assert done.stdout == run_native([exe, key, str(mode)]).stdout
            assert "{'fast': 0, 'hardened': 64}" in done.stderr.decode()


def test_kept_branches_run_fewer_instructions_the_same_for_every_key(
        program: str, analyzed: Path, tmp_path: Path) -> None:
    without = tmp_path / "without.toml"
    without.write_text(re.sub(r"^public = .*\n", "", analyzed.read_text(), flags=re.M))
    counts = {(key, mode): _insns(analyzed, program, key, mode)
              for key in KEYS[:2] for mode in (0, 9)}
    for mode in (0, 9):
        assert counts[(KEYS[0], mode)] == counts[(KEYS[1], mode)]  # not the key's
        assert counts[(KEYS[0], mode)] < _insns(without, program, KEYS[0], mode)
    assert counts[(KEYS[0], 0)] != counts[(KEYS[0], 9)]  # the kept branches show the mode


def test_check_finds_no_leak_and_finds_a_wrong_claim(program: str, analyzed: Path,
                                                      tmp_path: Path) -> None:
    done = run_leakdbt(["check", "--contract", str(analyzed), "--mode", "hardened", program,
                        KEYS[0], "9"])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(re.sub(r"^public = \[", 'public = ["rdi", ', analyzed.read_text(),
                            flags=re.M))
    done = run_leakdbt(["check", "--contract", str(wrong), "--mode", "hardened", program,
                        KEYS[0], "9"])
    assert done.status == 1, done.stdout.decode() + done.stderr.decode()
    assert "1 leak point(s)" in done.stdout.decode()
