"""contracts/*.toml resolve in the test programs they describe, built here as the Makefile does.

The offsets in contracts/modexp.toml belong to gcc 12 (Debian 12, the toolchain
test_binaries/Makefile documents); with another compiler its test fails and the offsets must be
updated (the other contracts name function entries only).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import capstone
import pytest

from leakdbt.contract import load
from leakdbt.contract.model import RegionKind
from leakdbt.loader.elf import load_image

REPO = Path(__file__).resolve().parents[3]
SOURCES = REPO / "test_binaries"
CONTRACTS = REPO / "contracts"
FLAGS = {  # as test_binaries/Makefile builds them
    "static": ["-static", "-no-pie"],
    "static-pie": ["-static-pie", "-fPIE"],
    "dynamic": ["-fPIE", "-pie"],
}
OFFSET_BOUND = {"modexp", "ct_modexp", "idea_mul", "mac_verify", "sbox_round", "ttable_round",
                "secret_div", "fp_secret", "heap_table", "nested_loop"}  # symbol+offset
LIBS = {"ossl_modexp": ["-lcrypto"], "ossl_powm1024": ["-lcrypto"],
        "sodium_verify": ["-lsodium"]}  # the Makefile's LIBPROGS


def program(stem: str) -> str:
    """The test program a contract describes: NAME.toml, or NAME_MODE.toml for one mode of it."""
    return stem if (SOURCES / f"{stem}.c").exists() else stem.rsplit("_", 1)[0]


def gcc_major() -> str:
    out = subprocess.run(["gcc", "-dumpversion"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(".")[0]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test programs")
    return tmp_path_factory.mktemp("examples")


def build(build_dir: Path, name: str, kind: str) -> Path:
    out = build_dir / kind / name
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-g", "-Wall", *FLAGS[kind], "-o", str(out),
                        str(SOURCES / f"{name}.c"), *LIBS.get(name, [])],
                       check=True, capture_output=True)
    return out


# The library harnesses' contracts name symbols of the static archives: the shared libraries
# (dynamic kind) export none of those internals.
CASES = [(p.stem, kind) for p in sorted(CONTRACTS.glob("*.toml")) for kind in FLAGS
         if not (program(p.stem) in LIBS and kind == "dynamic")]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_example_contract_resolves(build_dir: Path, name: str, kind: str) -> None:
    if name in OFFSET_BOUND and gcc_major() != "12":
        pytest.fail(f"{name}.toml's offsets are for gcc 12")
    c = load(CONTRACTS / f"{name}.toml", binary=build(build_dir, program(name), kind))
    assert c.binding is not None
    assert len(c.binding.regions) == len(c.protect.regions)
    assert c.binding.is_pie == (kind != "static")


def test_modexp_regions_land_on_the_instructions_they_describe(build_dir: Path) -> None:
    if gcc_major() != "12":
        pytest.fail("modexp.toml's offsets are for gcc 12")
    binary = build(build_dir, "modexp", "static")
    c = load(CONTRACTS / "modexp.toml", binary=binary)
    assert c.binding is not None
    data = binary.read_bytes()
    image = load_image(binary)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for region, where in zip(c.protect.regions, c.binding.regions, strict=True):
        seg = next(s for s in image.segments if s.vaddr <= where.at.address < s.end)
        offset = seg.offset + where.at.address - seg.vaddr
        block = []
        for insn in md.disasm(data[offset:offset + 64], where.at.address):
            block.append(insn.mnemonic)
            if insn.mnemonic.startswith("j") or insn.mnemonic in ("ret", "call"):
                break
        if region.kind is RegionKind.BRANCH:
            assert block[-1] in ("je", "jne"), block
        elif region.kind is RegionKind.DIVIDE:
            assert "div" in block, block
