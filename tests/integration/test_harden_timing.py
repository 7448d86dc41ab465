"""The timing builds of `make bench`'s hardened-file section (test_binaries/timing/): the
protected functions keep the other builds' instructions (so the contract hardens them the
same), the program prints what it prints, original and hardened, and the per-function
thunks count every call of each protected function -- the same calls in the hardened file."""

from __future__ import annotations

import os
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from leakdbt.loader.elf import load_image
from tests.conftest import REPO, TEST_BINARIES, binary, run_leakdbt, run_native

# program -> (fixed-class secret, calls of each protected function per main call, from
# the program's source: ct_modexp runs modexp for 8 bases; secret_div each divmod on 6 pairs)
PROGRAMS = {"ct_modexp": ("0123456789abcdef", {"modexp": 8}),
            "secret_div": ("fffffffffffffffd", dict.fromkeys(
                ["divmod_u32", "divmod_s32", "divmod_u64", "divmod_s64"], 6))}


@pytest.fixture(scope="module")
def timing_builds(built: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(TEST_BINARIES),
                    *(f"build/timing/{p}" for p in PROGRAMS)], check=True)
    return built / "timing"


def functions(prog: str) -> list[str]:
    with open(REPO / "contracts" / f"{prog}.toml", "rb") as f:
        return list(tomllib.load(f)["protect"]["functions"])


def instructions(exe: str, name: str) -> list[tuple[str, int]]:
    image = load_image(exe)
    sym = image.symbol(name)
    assert sym is not None and sym.size > 0
    code = image.read(sym.value, sym.size)
    return [(i.mnemonic, i.size) for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, sym.value)]


def records(path: Path) -> tuple[list[str], int, list[tuple[int, ...]]]:
    """(names, floor, records) of harness.c's output file."""
    data = path.read_bytes()
    (k,), at = struct.unpack_from("<I", data), 4
    names = []
    for _ in range(k):
        end = data.index(b"\0", at)
        names.append(data[at:end].decode())
        at = end + 1
    floor = struct.unpack_from("<Q", data, at)[0]
    return names, floor, list(struct.iter_unpack(f"<BQ{k}Q{k}Q", data[at + 8:]))


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_the_protected_functions_keep_their_instructions(timing_builds: Path,
                                                          prog: str) -> None:
    for name in functions(prog):
        assert (instructions(str(timing_builds / prog), name)
                == instructions(binary("static", prog), name)), name
        assert load_image(str(timing_builds / prog)).symbol(f"__leakdbt_timed_{name}")


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_thunks_count_every_call_original_and_hardened(timing_builds: Path, tmp_path: Path,
                                                       prog: str) -> None:
    secret, calls = PROGRAMS[prog]
    original = str(timing_builds / prog)
    hardened = tmp_path / prog
    run = run_leakdbt(["harden", "--contract", str(REPO / "contracts" / f"{prog}.toml"),
                       "--cpu", "intel-skylake", "-o", str(hardened), original])
    assert run.status == 0, run.stderr
    want = run_native([binary("static", prog), secret])
    seen = []
    for exe in (original, str(hardened)):
        got = run_native([exe, secret])  # without LEAKDBT_TIMING: the program itself
        assert (got.status, got.stdout) == (want.status, want.stdout)
        out = tmp_path / "records.bin"
        env = dict(os.environ, LEAKDBT_TIMING=f"64:{out}:7")
        timed = run_native([exe, secret], env=env)
        assert (timed.status, timed.stdout) == (0, b""), timed.stderr
        names, floor, rows = records(out)
        assert names == functions(prog) and len(rows) == 64 and floor > 0
        k = len(names)
        for row in rows:
            assert dict(zip(names, row[2 + k:], strict=True)) == calls
            assert row[1] > 0 and all(c > 0 for c in row[2:2 + k])
        assert {row[0] for row in rows} == {0, 1}  # both classes drawn
        seen.append([row[0] for row in rows])
    assert seen[0] == seen[1]  # the same seed draws the same classes for both files


def test_a_bad_timing_request_is_one_line_and_status_2(timing_builds: Path) -> None:
    exe = str(timing_builds / "ct_modexp")
    for spec in ("0:/dev/null", "10", "10:/dev/null:x"):
        run = run_native([exe, "0123456789abcdef"], env=dict(os.environ, LEAKDBT_TIMING=spec))
        assert run.status == 2 and len(run.stderr.splitlines()) == 1, (spec, run.stderr)
