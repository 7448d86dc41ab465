"""A pass's rewrite (replacement sequences with local labels) laid out by the relocator:
checked by assembling, and by running original and rewritten copies on random states."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.region import form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.elf import load_image
from leakdbt.x86.asm import AssemblyError, assemble_block
from leakdbt.x86.insn import decode_all
from tests.conftest import binary
from tests.unit.dbt.harness import RegionCheck, Sandbox


def test_labels_resolve_forward_and_backward() -> None:
    lines = ["mov ecx, 3", "top:", "dec ecx", "jne top", "jmp done", "ud2", "done:", "nop"]
    code = assemble_block(lines, 0x401000)
    insns = decode_all(code, 0x401000)
    assert [i.mnemonic for i in insns] == ["mov", "dec", "jne", "jmp", "ud2", "nop"]
    top, done = insns[1].address, insns[5].address
    assert insns[2].target == top and insns[3].target == done


def test_far_labels_get_near_branches() -> None:
    lines = ["jmp end", *["nop"] * 200, "end:", "ret"]
    code = assemble_block(lines, 0x10000)
    first = decode_all(code, 0x10000)[0]
    assert first.size == 5 and first.target == 0x10000 + len(code) - 1


def test_a_label_defined_twice_is_refused() -> None:
    with pytest.raises(AssemblyError, match="label defined twice"):
        assemble_block(["a:", "nop", "a:", "nop"], 0)


@pytest.mark.parametrize("kind", ["static", "static-pie"])
def test_rewritten_region_computes_what_the_original_computes(built: Path, kind: str) -> None:
    """Replace every instruction of tiny_region's branch region by a sequence that detours
    through local labels and then does the same thing: registers, flags and memory agree
    with the original on random states, so rewrites are laid out and linked correctly."""
    image = load_image(binary(kind, "region_loop"))
    func = image.symbol("tiny_region")
    assert func is not None
    cfg = function_cfg(image, func)
    region = form_region(cfg, func.value, "tiny_region", True)
    rewrite = {}
    for block in region.block_list():
        for insn in block.insns:
            if insn.mnemonic in ("jne", "ret"):
                continue  # control transfers stay the relocator's
            rewrite[insn.address] = ("jmp over", "int3", "back:", insn.text, "jmp out",
                                     "over:", "jmp back", "out:")
    sandbox = Sandbox(image, 0x5555_5555_4000 if image.is_pie else 0)
    t = relocate(region, sandbox.bias, sandbox.place, rewrite)
    assert len(t.code) > sum(i.size for b in region.block_list() for i in b.insns) + 20
    with RegionCheck(sandbox, region, t) as check:
        report = check.check(f"rewrite:{kind}:{i}" for i in range(60))
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= 58
