"""A secret branch whose region gcc -O2 does not make single-entry (test_binaries/
shared_tail.c): the public test `pub == 0` jumps straight into a tail of the secret branch's
first arm.  analyze writes the branch region, the translator forms it with its own
duplicate of the shared block (issue 15 item 2), if-conversion hardens it, and the side
entry keeps running the original: the hardened program prints what native prints, the copy
is entered exactly on the calls that reach the secret branch, and check finds no leak."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.dbt.dispatch import request_region, requests_from_contract
from leakdbt.loader.elf import load_image
from tests.conftest import REPO, SWEEP, TEST_BINARIES, binary, run_leakdbt, run_native

CONTRACT = REPO / "contracts" / "shared_tail.toml"
SECRET = "0123456789abcdef"
CALLS, SIDE = 64, 13  # mix() calls per run; those with pub == i % 5 == 0 (the side entry)


@pytest.fixture(scope="module")
def analyzed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contract after ``analyze --write`` on the static build."""
    exe = binary("static", "shared_tail")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES)], check=True)
    contract = tmp_path_factory.mktemp("shared_tail") / "shared_tail.toml"
    contract.write_text(CONTRACT.read_text())
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe, SECRET])
    assert done.status == 0, done.stderr
    assert re.search(r'at = "mix\+0x[0-9a-f]+"\nkind = "branch"', contract.read_text())
    return contract


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_the_region_has_a_side_entry_into_a_block_of_the_arm(analyzed: Path,
                                                             kind: str) -> None:
    """The shape this program exists for: a block of the region also entered from outside."""
    exe = binary(kind, "shared_tail")
    contract = load(analyzed, binary=exe)
    (req,) = requests_from_contract(contract)
    region = request_region(load_image(exe), req, exe)
    assert region.kind == "branch" and region.shared
    for b in region.shared:
        assert any(p not in region.blocks for p in region.cfg.blocks[b].preds)


def _hardened(contract: Path, kind: str, secret: str, stats: bool) -> tuple[bytes, str]:
    """stdout and stderr of a hardened run; with ``stats`` the region is entered through a
    hook that counts entries, without through the entry jump written over its start."""
    run = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened",
                       *(["--stats"] if stats else []), binary(kind, "shared_tail"), secret])
    assert run.status == 0, run.stderr.decode()
    return run.stdout, run.stderr.decode()


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_hardened_prints_what_native_prints(analyzed: Path, kind: str) -> None:
    rng = random.Random(f"shared_tail:{kind}")
    randoms = (13 if SWEEP else 5) if kind == "static" else 3
    secrets = [SECRET, "0" * 16, "f" * 16] + [f"{rng.getrandbits(64):016x}"
                                              for _ in range(randoms)]
    outputs = set()
    for n, secret in enumerate(secrets):
        native = run_native([binary(kind, "shared_tail"), secret])
        stdout, stats = _hardened(analyzed, kind, secret, stats=n < 3)
        assert stdout == native.stdout and native.status == 0
        outputs.add(stdout)
        if n >= 3:
            continue
        assert "{'passes': ['if-conversion']}" in stats, stats
        # the copy on every call that reaches the secret branch; the side entry in the
        # original (it never reaches the region's start, so it is not counted at all)
        assert f"{{'fast': 0, 'hardened': {CALLS - SIDE}}}" in stats, stats
    assert len(outputs) == len(secrets)


def test_hardened_run_shows_no_leak_and_the_original_does(analyzed: Path) -> None:
    exe = binary("static", "shared_tail")
    done = run_leakdbt(["check", "--contract", str(analyzed), "--mode", "hardened", exe,
                        SECRET])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()
    leaky = run_leakdbt(["check", "--contract", str(analyzed), "--mode", "original", exe,
                         SECRET])
    assert "control-flow leak at mix+" in leaky.stdout.decode(), leaky.stdout.decode()
