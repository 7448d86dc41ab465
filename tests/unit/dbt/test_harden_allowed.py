"""The Hardener when unhardened regions are allowed (a whole-program contract, or
``--allow-unhardened``): two passes whose rewrites conflict, and a merged rewrite that
cannot be laid out, no longer stop the run.  The later conflicting pass counts as refused
and the earlier one's rewrite is kept; a rewrite that cannot be laid out gives way to the
region's original code.  Either way the region is reported with the reason, and what runs
computes what the original computes (random states in raw Unicorn).  Without the
allowance both stay errors, with the messages they always had."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import Hardener, HardeningError
from leakdbt.dbt.passes import LoadedPass
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import Rewrite, goto, original
from leakdbt.run.protect import ReportingHardener
from tests.conftest import binary
from tests.unit.dbt.harness import RegionCheck, Sandbox
from tests.unit.dbt.test_harden import CONTRACT, PROFILE, FakePass, needs

BIAS = 0x5555_5555_4000


@pytest.fixture(scope="module")
def tiny(built: Path) -> tuple[Image, CodeRegion]:
    """tiny_region of region_loop (static-pie: run at BIAS in the sandbox)."""
    image = load_image(binary("static-pie", "region_loop"))
    func = image.symbol("tiny_region")
    assert func is not None
    return image, form_region(function_cfg(image, func), func.value, "tiny_region", True)


def _first(region: CodeRegion) -> int:
    return region.block_list()[0].insns[0].address


def _same_as_original(image: Image, region: CodeRegion,
                      translate: Callable[[Sandbox], Translation]) -> Translation:
    """The translation ``translate`` makes in a fresh sandbox, after checking that it
    computes what the original computes on 60 random states."""
    sandbox = Sandbox(image, BIAS)
    t = translate(sandbox)
    with RegionCheck(sandbox, region, t) as check:
        report = check.check(f"allowed:{i}" for i in range(60))
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared >= 58
    return t


def _whole_code(region: CodeRegion) -> tuple[str, ...]:
    """A whole-region rewrite that is the original: its control flow re-created with local
    labels and ``@`` exits, every other instruction carried through ``.insn``."""
    code: list[str] = []
    for block in region.block_list():
        code.append(f"b{block.start:x}:")
        for i in block.insns:
            if i.mnemonic == "jne":
                code.append(f"jne b{i.target:x}")
            elif i.mnemonic == "ret":
                code.append("ret")
            else:
                code.append(original(i.address))
        if block.last.mnemonic not in ("ret", "jmp"):
            code.append(f"jmp {goto(block.end)}" if block.end not in region.blocks
                        else f"jmp b{block.end:x}")
    return tuple(code)


def _hardener(*passes: FakePass, allow: bool, lines: list[str] | None = None) -> Hardener:
    loaded = [LoadedPass(p, f"test {p.name}") for p in passes]
    if lines is not None:
        return ReportingHardener(tuple(loaded), CONTRACT, PROFILE, allow, lines.append)
    return Hardener(loaded, CONTRACT, PROFILE, allow)


def test_conflicting_rewrites_keep_the_first_and_refuse_the_second(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = _first(region)

    def passes() -> tuple[FakePass, FakePass]:
        return (FakePass("if-conversion", Rewrite(replace={first: ("nop", original(first))})),
                FakePass("ct-division", Rewrite(replace={first: ("int3",)})))

    plan = needs("if-conversion", "ct-division")
    def why(at: int) -> str:  # the instruction's run-time address
        return f"passes 'if-conversion' and 'ct-division' both replace the instruction at {at:#x}"

    with pytest.raises(HardeningError) as e:
        _hardener(*passes(), allow=False).translate(region, plan, 0, 0x7000_0000, image)
    assert e.value.one_line() == f"tiny_region: {why(first)}"
    lines: list[str] = []
    h = _hardener(*passes(), allow=True, lines=lines)
    t = _same_as_original(image, region,
                          lambda s: h.translate(region, plan, s.bias, s.place, image))
    alone = _hardener(passes()[0], allow=False).translate(region, plan, BIAS, t.base, image)
    assert t.code == alone.code and t.code.startswith(b"\x90")  # the first pass's rewrite
    assert h.report() == {"tiny_region": {"passes": ["if-conversion"],
                                          "unhardened": f"ct-division: {why(first + BIAS)}"}}
    assert lines == [f"leakdbt: region tiny_region runs unhardened: ct-division: "
                     f"{why(first + BIAS)}"]


def test_two_whole_region_rewrites_keep_the_first(tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = _first(region)
    whole = FakePass("if-conversion", Rewrite(code=_whole_code(region)))
    other = FakePass("bounded-loop", Rewrite(code=("ret",), replace={first: ("int3",)}))
    plan = needs("if-conversion", "bounded-loop")
    with pytest.raises(HardeningError, match="^tiny_region: passes 'if-conversion' and "
                                             "'bounded-loop' both replace the whole region$"):
        _hardener(whole, other, allow=False).translate(region, plan, 0, 0x7000_0000, image)
    h = _hardener(whole, other, allow=True)
    _same_as_original(image, region, lambda s: h.translate(region, plan, s.bias, s.place, image))
    assert h.report() == {"tiny_region": {
        "passes": ["if-conversion"],
        "unhardened": "bounded-loop: passes 'if-conversion' and 'bounded-loop' both replace "
                      "the whole region"}}


def test_a_rewrite_that_cannot_be_laid_out_gives_way_to_the_original(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = _first(region)

    def broken() -> FakePass:  # whole-region code that does not end with jmp or ret
        return FakePass("if-conversion", Rewrite(code=(original(first), "nop")))

    why = ("the rewrite of if-conversion cannot be laid out: tiny_region: the region's code "
           "does not end with jmp or ret")
    with pytest.raises(HardeningError) as e:
        _hardener(broken(), allow=False).translate(region, needs("if-conversion"), 0,
                                                   0x7000_0000, image)
    assert e.value.one_line() == f"tiny_region: {why}"
    lines: list[str] = []
    h = _hardener(broken(), allow=True, lines=lines)
    t = _same_as_original(image, region, lambda s: h.translate(
        region, needs("if-conversion"), s.bias, s.place, image))
    plain = relocate(region, BIAS, t.base)  # the original code, laid out at the same place
    assert t.code == plain.code
    assert h.report() == {"tiny_region": {"passes": ["if-conversion"],
                                          "unhardened": f"translator: {why}"}}
    assert lines == [f"leakdbt: region tiny_region runs unhardened: translator: {why}"]
