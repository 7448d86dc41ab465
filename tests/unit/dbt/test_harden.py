"""The Hardener: passes chosen by the plan, rewrites merged (and composed through ``.insn``
lines), conflicts and refusals reported with the region and the pass, broken plugins named.
The merged result is checked by running it against the original on random states."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leakdbt.contract import loads
from leakdbt.contract.mapping import PassStep
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import Hardener, HardeningError, RegionNeeds, region_view
from leakdbt.dbt.passes import LoadedPass
from leakdbt.dbt.region import CodeRegion, RegionError, form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.errors import PluginError
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import (
    API_VERSION,
    ContractView,
    HardeningPass,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    goto,
    original,
)
from plugins.ct_division import PASS as CT_DIVISION
from tests.conftest import binary
from tests.unit.dbt.harness import ARITH_FLAGS, FLAGS_MASK, RegionCheck, Sandbox

CONTRACT = loads('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 4\n'
                 '[protect]\nadversary = "co-resident"\n')
PROFILE = get_profile("intel-skylake")


@dataclass
class FakePass:
    """A pass whose answers the test chooses; it records the views it was shown."""

    name: str
    answer: Rewrite | Refusal | Exception | None = None  # None: does not apply
    api_version: int = API_VERSION
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    views: list[RegionView] = field(default_factory=list)
    shown: list[tuple[object, object]] = field(default_factory=list)  # (contract, profile)

    def applies(self, region: RegionView, contract: object, profile: object) -> bool | Refusal:
        self.views.append(region)
        self.shown.append((contract, profile))
        return self.answer is not None

    def harden(self, region: RegionView, contract: object, profile: object
               ) -> Rewrite | Refusal:
        if isinstance(self.answer, Exception):
            raise self.answer
        assert self.answer is not None
        return self.answer


def hardener(*passes: HardeningPass, allow: bool = False) -> Hardener:
    return Hardener([LoadedPass(p, f"test {p.name}") for p in passes], CONTRACT, PROFILE, allow)


def needs(*names: str, kind: str | None = None, **params: int) -> RegionNeeds:
    return RegionNeeds(kind, tuple(PassStep(n, tuple(params.items())) for n in names))


def _region(image: Image, function: str, branch: bool = True) -> CodeRegion:
    func = image.symbol(function)
    assert func is not None
    return form_region(function_cfg(image, func), func.value, function, branch)


@pytest.fixture(scope="module")
def tiny(built: Path) -> tuple[Image, CodeRegion]:
    image = load_image(binary("static", "region_loop"))
    return image, _region(image, "tiny_region")


def test_only_the_plans_passes_are_asked_and_see_their_parameters(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = tiny_first_insn(region)
    asked = FakePass("if-conversion", Rewrite(replace={first: (original(first),)}))
    not_planned = FakePass("oblivious-table", Rewrite())
    h = hardener(asked, not_planned)
    h.translate(region, needs("if-conversion", kind="branch", bound=3), 0, 0x7000_0000, image)
    assert not not_planned.views
    (view,) = asked.views
    assert (view.name, view.kind, view.shape, view.entry) == (
        "tiny_region", "branch", "branch", region.entry)
    assert dict(view.params) == {"bound": 3}
    assert [b.start for b in view.blocks] == list(region.blocks)
    assert h.report() == {"tiny_region": {"passes": ["if-conversion"]}}
    # the contract and the profile only as read-only views, never the core objects
    ((contract, profile),) = asked.shown
    assert contract == ContractView("co-resident", "always")
    assert isinstance(profile, ProfileView)
    assert (profile.name, profile.line_size) == ("intel-skylake", 64)
    assert profile.variable_latency == {c for c, f in PROFILE.latency if f.value}
    assert "int-div" in profile.variable_latency
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.adversary = "remote"  # type: ignore[misc]


def tiny_first_insn(region: CodeRegion) -> int:
    return region.block_list()[0].insns[0].address


def test_a_region_no_pass_applies_to_is_an_error_naming_each_pass(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    h = hardener(FakePass("if-conversion", Refusal("arm at +0x9 calls foo")),
                 FakePass("ct-division"))
    with pytest.raises(HardeningError) as e:
        h.translate(region, needs("if-conversion", "ct-division", "fp-ftz-daz"), 0, 0x7000_0000)
    assert e.value.one_line() == (
        "region tiny_region cannot be hardened: if-conversion: arm at +0x9 calls foo "
        "(--allow-unhardened runs it anyway)")
    h = hardener(FakePass("ct-division"))
    with pytest.raises(HardeningError, match=r"no pass applies \(ct-division: does not apply; "
                                             r"fp-ftz-daz: not installed\)"):
        h.translate(region, needs("ct-division", "fp-ftz-daz"), 0, 0x7000_0000)


def test_allow_unhardened_keeps_what_applied_and_reports_the_rest(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = tiny_first_insn(region)
    h = hardener(FakePass("if-conversion", Refusal("no")),
                 FakePass("ct-division", Rewrite(replace={first: ("nop", original(first))})),
                 allow=True)
    t = h.translate(region, needs("if-conversion", "ct-division"), 0, 0x7000_0000)
    assert t.code.startswith(b"\x90")
    assert h.report() == {"tiny_region": {"passes": ["ct-division"],
                                          "unhardened": "if-conversion: no"}}


def test_a_region_is_hardened_only_when_a_pass_of_its_kind_applied(
        tiny: tuple[Image, CodeRegion]) -> None:
    """A branch region where if-conversion does not apply but ct-division (which a branch
    region also gets, for its divisions) does: the branch still leaks, so the region is not
    hardened (an error; with unhardened regions allowed, reported as such).  The same
    passes on a region without a kind: ct-division applying is enough."""
    image, region = tiny
    first = tiny_first_insn(region)

    def passes() -> tuple[FakePass, FakePass]:
        return (FakePass("if-conversion"),
                FakePass("ct-division", Rewrite(replace={first: ("nop", original(first))})))

    plan = ("if-conversion", "ct-division")
    with pytest.raises(HardeningError) as e:
        hardener(*passes()).translate(region, needs(*plan, kind="branch"), 0, 0x7000_0000)
    assert e.value.one_line() == (
        "region tiny_region cannot be hardened: no pass for a branch region applied "
        "(applied: ct-division) (--allow-unhardened runs it anyway)")
    h = hardener(*passes(), allow=True)
    h.translate(region, needs(*plan, kind="branch"), 0, 0x7000_0000)
    (outcome,) = h.outcomes
    assert not outcome.hardened and outcome.needed == ("if-conversion",)
    assert h.report()["tiny_region"] == {
        "passes": ["ct-division"],
        "unhardened": "no pass for a branch region applied (applied: ct-division)"}
    h = hardener(*passes())
    h.translate(region, needs(*plan), 0, 0x7000_0000)
    assert h.outcomes[0].hardened
    # a pass of the kind applying is enough, whatever else applied
    both = FakePass("if-conversion", Rewrite(replace={first: (original(first),)}))
    h = hardener(both, FakePass("ct-division", Rewrite()))
    h.translate(region, needs(*plan, kind="branch"), 0, 0x7000_0000)
    assert h.outcomes[0].hardened and h.outcomes[0].applied == ["if-conversion", "ct-division"]


def test_a_region_that_cannot_be_formed_is_an_error_or_recorded_as_unhardened() -> None:
    """leakdbt.dbt.dispatch hands region-formation refusals (leakdbt.dbt.region) to the
    hardener: an error for a strict run, recorded with its reason for a whole-program one."""
    with pytest.raises(HardeningError, match=r"^r: irreducible$"):
        hardener().not_formed("r", "r: irreducible")
    h = hardener(allow=True)
    h.not_formed("r", "r: irreducible")
    assert h.report() == {"r": {"passes": [], "unhardened": "translator: r: irreducible"}}


def test_two_passes_replacing_one_instruction_conflict(tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    first = tiny_first_insn(region)
    h = hardener(FakePass("if-conversion", Rewrite(replace={first: ("nop",)})),
                 FakePass("ct-division", Rewrite(replace={first: ("nop",)})))
    with pytest.raises(HardeningError, match="passes 'if-conversion' and 'ct-division' both "
                                             f"replace the instruction at {first:#x}"):
        h.translate(region, needs("if-conversion", "ct-division"), 0, 0x7000_0000)


def test_a_pass_that_raises_or_returns_garbage_is_a_plugin_error(
        tiny: tuple[Image, CodeRegion]) -> None:
    image, region = tiny
    h = hardener(FakePass("ct-division", ZeroDivisionError("oops")))
    with pytest.raises(PluginError, match="pass 'ct-division' \\(test ct-division\\) failed on "
                                          "tiny_region: ZeroDivisionError: oops"):
        h.translate(region, needs("ct-division"), 0, 0x7000_0000)
    h = hardener(FakePass("ct-division", "text"))  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="returned str, not a Rewrite or Refusal"):
        h.translate(region, needs("ct-division"), 0, 0x7000_0000)


def test_whole_region_code_must_leave_by_jmp_or_ret_and_keep_replacements(
        tiny: tuple[Image, CodeRegion]) -> None:
    _image, region = tiny
    first = tiny_first_insn(region)
    with pytest.raises(RegionError, match="does not end with jmp or ret"):
        relocate(region, 0, 0x7000_0000, code=("nop",))
    with pytest.raises(RegionError, match="drops the replacement"):
        relocate(region, 0, 0x7000_0000, {first: ("nop",)}, ("ret",))
    branch = next(i for b in region.block_list() for i in b.insns if i.mnemonic == "jne")
    with pytest.raises(RegionError, match="stands for a branch"):
        relocate(region, 0, 0x7000_0000, code=(original(branch.address), "ret"))


def test_composed_rewrites_compute_what_the_original_computes(built: Path) -> None:
    """A whole-region rewrite of tiny_region that re-creates its control flow with local
    labels and ``@`` exits, carrying every instruction through ``.insn`` — one of them
    replaced by a second pass's sequence — runs like the original on random states."""
    image = load_image(binary("static-pie", "region_loop"))
    region = _region(image, "tiny_region")
    insns = [i for b in region.block_list() for i in b.insns]
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
    plain = next(i for i in insns if i.mnemonic not in ("jne", "ret"))
    outer = FakePass("if-conversion", Rewrite(code=tuple(code)))
    inner = FakePass("ct-division", Rewrite(replace={
        plain.address: ("jmp over", "ud2", "over:", original(plain.address))}))
    sandbox = Sandbox(image, 0x5555_5555_4000)
    t = hardener(outer, inner).translate(region, needs("if-conversion", "ct-division"),
                                         sandbox.bias, sandbox.place, image)
    assert len(t.code) > sum(i.size for i in insns)
    with RegionCheck(sandbox, region, t) as check:
        report = check.check(f"compose:{i}" for i in range(80))
    assert not report.mismatches, report.mismatches[:2]
    assert report.compared >= 78


def test_ct_division_pass_replaces_every_division(built: Path) -> None:
    """The ct-division pass on modexp's divide region: same results on random states (flags
    that DIV leaves undefined excepted), and its view of a region without a division says
    it does not apply."""
    image = load_image(binary("static", "modexp"))
    main = image.symbol("main")
    assert main is not None
    cfg = function_cfg(image, main)
    block = next(b for b in cfg.blocks.values() if any(i.mnemonic == "div" for i in b.insns))
    region = form_region(cfg, block.start, "divide", False)
    view = region_view(region, "divide", 0, {}, None, image)
    assert CT_DIVISION.applies(view, CONTRACT, PROFILE) is True
    rewrite = CT_DIVISION.harden(view, CONTRACT, PROFILE)
    assert isinstance(rewrite, Rewrite)
    assert set(rewrite.replace) == {i.address for i in block.insns if i.mnemonic == "div"}
    sandbox = Sandbox(image, 0)
    t = relocate(region, 0, sandbox.place, rewrite.replace)
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True,
                     flags=FLAGS_MASK & ~ARITH_FLAGS) as check:
        report = check.check(f"ctdiv:{i}" for i in range(60))
    assert not report.mismatches, report.mismatches[:2]
    first = next(b for b in cfg.blocks.values() if not any(i.mnemonic in ("div", "idiv")
                                                            for i in b.insns))
    plain = region_view(form_region(cfg, first.start, "plain", False), "divide")
    assert CT_DIVISION.applies(plain, CONTRACT, PROFILE) is False


def test_ct_division_reads_rip_relative_divisors_at_their_runtime_address() -> None:
    from leakdbt.x86.insn import decode
    from plugins.ct_division import UnsupportedDivision, constant_time_divide

    insn = decode(bytes.fromhex("f73510000000"), 0x401000)  # div dword ptr [rip + 0x10]
    assert insn is not None and insn.rip_target == 0x401016
    with pytest.raises(UnsupportedDivision, match="RIP-relative"):
        constant_time_divide(insn)
    lines = constant_time_divide(insn, 0x1000)
    assert "movabs rbx, 0x402016" in lines


def test_a_pass_wrapping_an_instruction_another_replaced_nests_it(
        tiny: tuple[Image, CodeRegion]) -> None:
    """Later lines that stand for the instruction once (``.insn``) wrap the earlier pass's
    replacement, whose labels are renamed apart; anything else is a conflict."""
    image, region = tiny
    first = tiny_first_insn(region)
    inner = FakePass("ct-division", Rewrite(replace={
        first: ("jmp x", "x:", original(first))}))
    outer = FakePass("fp-ftz-daz", Rewrite(replace={
        first: ("jmp x", "x:", "nop", original(first), "nop")}))
    h = hardener(inner, outer)
    t = h.translate(region, needs("ct-division", "fp-ftz-daz"), 0, 0x7000_0000, image)
    assert h.report()["tiny_region"] == {"passes": ["ct-division", "fp-ftz-daz"]}
    # jmp x (2) + nop + [jmp x__n1 (2) + the instruction] + nop
    assert t.code[:5] == bytes.fromhex("eb0090eb00")
