"""Predicated calls into another module (test_binaries/plt_call.c, libmulmod.c): the secret
arms of ``modexp_plt`` (``call mulmod@plt``, lazily bound) and ``modexp_got`` (``call
[rip + GOT]``, bound at load) call ``mulmod`` in libmulmod.so.  The translator hardens each
region when it is first entered, resolving the GOT slot as ld.so binds it, and clones
``mulmod`` and its ``__umodti3`` from the library (docs/passes.md, "Predicated calls").
With the general passes only (``ct-equivalent`` switched off).  Also the contract's clone
budget (``clone_depth``, ``clone_insns``) and its refusals, as exec prints them."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SWEEP, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = """\
version = 1
description = "plt_call: the secret arm calls libmulmod.so through the PLT and the GOT"

[[secret]]
name = "exponent"
argv = 1
length = 8
format = "hex"

[protect]
adversary = "co-resident"
policy = "always"
functions = ["modexp_plt", "modexp_got"]
passes_off = ["ct-equivalent"]

[check]
trials = 8
seed = 15
declassify = ["stdout"]
"""
M = 2**64 - 59
# Each run takes both arms of all 128 bit branches (64 per function); the edge secrets plus one
# random one by default, twelve random ones more with LEAKDBT_SWEEP=1.
SECRETS = ["0123456789abcdef", "8000000000000001", "ffffffffffffffff", "0000000000000000",
           *(f"{random.Random(f'plt:{i}').getrandbits(64):016x}"
             for i in range(12 if SWEEP else 1))]


@pytest.fixture(scope="module")
def program(built: Path) -> str:
    exe = binary("dynamic", "plt_call")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), "build/dynamic/plt_call"],
                       check=True)
    return exe


@pytest.fixture(scope="module")
def contract(program: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract after ``analyze --write``, which must write both bit branches."""
    path = tmp_path_factory.mktemp("plt") / "plt_call.toml"
    path.write_text(CONTRACT)
    done = run_leakdbt(["analyze", "--contract", str(path), "--write", program, SECRETS[0]])
    assert done.status == 0, done.stderr
    text = path.read_text()
    for function in ("modexp_plt", "modexp_got"):
        assert f'at = "{function}+0x' in text and 'kind = "branch"' in text, text
    return path


def expected(secret: str) -> bytes:
    e = int(secret, 16)
    plt = ",".join(f"{pow(b, e, M):016x}" for b in (2, 0x9E3779B97F4A7C15))
    return f"plt_call: e={secret} plt={plt} got={plt}\n".encode()


def test_native_output_is_the_modular_power(program: str) -> None:
    for secret in SECRETS[:4]:
        assert run_native([program, secret]).stdout == expected(secret)


def test_calls_into_the_library_run_hardened_as_native(program: str, contract: Path) -> None:
    for n, secret in enumerate(SECRETS):
        args = ["exec", "--contract", str(contract), "--mode", "hardened"]
        hardened = run_leakdbt([*args, *(["--stats"] if n == 0 else []), program, secret])
        assert hardened.status == 0, hardened.stderr
        assert hardened.stdout == run_native([program, secret]).stdout == expected(secret)
        if n == 0:
            stats = hardened.stderr.decode()
            for function in ("modexp_plt", "modexp_got"):
                # Both hardened (the clone and its divisions), on every one of their entries.
                assert f"{function}+0x" in stats
            assert stats.count("{'passes': ['if-conversion', 'ct-division']}") == 2, stats
            assert stats.count("{'fast': 0, 'hardened': 128}") == 2, stats


def test_slots_bound_at_load_resolve_too(program: str, contract: Path) -> None:
    """LD_BIND_NOW: the PLT's slot is bound before the region is first entered."""
    for secret in SECRETS[:2]:
        done = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                            "--env", "LD_BIND_NOW=1", program, secret])
        assert done.status == 0, done.stderr
        assert done.stdout == expected(secret)


def test_ibt_plt_sec_stubs(program: str, contract: Path, tmp_path: Path) -> None:
    """-fcf-protection with -z ibtplt: the call goes to ``.plt.sec``'s ``endbr64; bnd jmp
    [rip + GOT]``.  The offsets analyze wrote belong to the first build: analyze again."""
    shutil.copy(Path(program).parent / "libmulmod.so", tmp_path / "libmulmod.so")
    exe = tmp_path / "plt_call"
    subprocess.run(["gcc", "-O2", "-g", "-fPIE", "-pie", "-fcf-protection=full",
                    "-Wl,-z,ibtplt", "-o", str(exe), str(TEST_BINARIES / "plt_call.c"),
                    f"-L{tmp_path}", "-lmulmod", "-Wl,-rpath,$ORIGIN"], check=True)
    sections = subprocess.run(["readelf", "-SW", str(exe)], capture_output=True, text=True,
                              check=True).stdout
    assert ".plt.sec" in sections
    ibt = tmp_path / "ibt.toml"
    ibt.write_text(CONTRACT)
    assert run_leakdbt(["analyze", "--contract", str(ibt), "--write", str(exe),
                        SECRETS[0]]).status == 0
    for secret in SECRETS[:2]:
        done = run_leakdbt(["exec", "--contract", str(ibt), "--mode", "hardened", "--stats",
                            str(exe), secret])
        assert done.status == 0, done.stderr
        assert done.stdout == expected(secret)
        assert done.stderr.decode().count("['if-conversion', 'ct-division']") == 2


def test_hardened_run_shows_no_leak(program: str, contract: Path) -> None:
    done = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened", program,
                        SECRETS[0]])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()


def _budget(contract: Path, tmp_path: Path, line: str) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(contract.read_text().replace('kind = "branch"\n',
                                                 f'kind = "branch"\n{line}\n'))
    return path


def test_a_low_depth_budget_is_refused_naming_the_call(program: str, contract: Path,
                                                        tmp_path: Path) -> None:
    """mulmod calls __umodti3: two levels; clone_depth = 1 stops at the inner call."""
    done = run_leakdbt(["exec", "--contract", str(_budget(contract, tmp_path, "clone_depth = 1")),
                        "--mode", "hardened", program, SECRETS[0]])
    assert done.status == 2
    err = done.stderr.decode()
    assert err.startswith("leakdbt: region modexp_plt+0x"), err
    assert ": if-conversion: 'call 0x" in err
    assert err.endswith(": the call is nested deeper than the clone budget (clone_depth = 1) "
                        "(--allow-unhardened runs it anyway)\n"), err


def test_a_low_size_budget_is_refused(program: str, contract: Path, tmp_path: Path) -> None:
    done = run_leakdbt(["exec", "--contract", str(_budget(contract, tmp_path, "clone_insns = 20")),
                        "--mode", "hardened", program, SECRETS[0]])
    assert done.status == 2
    assert done.stderr.decode().endswith(
        ": if-conversion: the clones of the region's callees would run more than 20 "
        "instructions (clone_insns) (--allow-unhardened runs it anyway)\n"), done.stderr
