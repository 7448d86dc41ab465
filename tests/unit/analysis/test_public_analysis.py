"""The registers ``leakdbt analyze --write`` asserts public at a branch region's entry: the
tracker records the GPR taint at every block start it runs (complete, or unknown), the runs
are merged, and the branch regions analyze writes carry the registers that stayed clean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.analysis.analyze import analyze
from leakdbt.analysis.public import WHY, EntryTaint, JoinOracle, with_public
from leakdbt.analysis.taint import ENTRY_REGISTERS, SCAN_BYTES, Join, TaintTracker
from leakdbt.contract import load, loads
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.contract.model import GENERAL_REGISTERS
from leakdbt.loader.modules import ModuleMap
from leakdbt.machine.machine import Machine

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "test_binaries" / "build"
CODE = 0x10000
STACK = 0x80000
_ks = Ks(KS_ARCH_X86, KS_MODE_64)


def run_code(text: str, regs: dict[str, int], tainted: dict[str, int],
             entry_hook: tuple[int, str] | None = None,
             joins: Callable[[int], Join | None] | None = None) -> TaintTracker:
    """Run ``text`` at CODE with ``tainted`` registers tainted (label 1); ``entry_hook``:
    (offset, register) a source hook added after the tracker's taints there; ``joins``:
    the tracker's join oracle."""
    code = bytes(_ks.asm(text, CODE)[0])
    machine = Machine()
    machine.mem.map(CODE, 0x2000, 5)
    machine.mem.write(CODE, code)
    machine.mem.map(STACK, 0x1000, 3)
    machine.set_reg("rsp", STACK + 0x800)
    for name, value in regs.items():
        machine.set_reg(name, value)
    t = TaintTracker(machine)
    t.joins = joins
    for name, labels in tainted.items():
        t.taint_register(name, labels)
    if entry_hook is not None:
        offset, reg = entry_hook
        machine.hooks.at(CODE + offset, lambda _a, _s: t.taint_register(reg, 2))
    machine.uc.emu_start(CODE, CODE + len(code))
    return t


def public_at(t: TaintTracker, address: int) -> tuple[str, ...] | None:
    taint = EntryTaint()
    taint.add(t)
    return taint.public_at(address)


def test_the_entry_registers_are_the_contracts_general_registers() -> None:
    assert ENTRY_REGISTERS == GENERAL_REGISTERS


def test_a_loop_header_entered_by_falling_through_is_recorded_every_time() -> None:
    """The header first runs by falling through, before its back edge ran: the scan ahead
    saw the back edge, so that run is recorded too.  rax is clean on the first entry and
    tainted (from rbx) on the later ones: tainted."""
    t = run_code("mov ecx, 3; L: add rax, rbx; dec ecx; jnz L; nop",
                 {"rax": 0, "rbx": 5}, {"rbx": 1})
    header = CODE + 5  # after mov ecx, 3
    assert public_at(t, header) == tuple(r for r in ENTRY_REGISTERS if r not in ("rax", "rbx"))
    after = CODE + len(_ks.asm("mov ecx, 3; L: add rax, rbx; dec ecx; jnz L", CODE)[0])
    assert public_at(t, after) == public_at(t, header)  # the fall-through of jnz


def test_a_header_whose_back_edge_the_scan_did_not_reach_is_unknown() -> None:
    """A back edge further than the scan reaches is decoded after its header ran by falling
    through: that execution was not recorded, so nothing is asserted there."""
    nops = "; ".join(["nop"] * (SCAN_BYTES + 64))
    t = run_code(f"mov ecx, 2; L: inc rdx; {nops}; dec ecx; jnz L", {}, {})
    known, unknown = t.block_taint()
    assert CODE + 5 in unknown and CODE + 5 not in known
    assert public_at(t, CODE + 5) is None
    assert public_at(t, CODE + 0x1F00) is None  # never ran


def test_a_source_tainting_after_the_trackers_hook_taints_the_record() -> None:
    """A register secret tainted at a block start by a hook that runs after the tracker's
    (as for a library loaded later) still counts as tainted there."""
    t = run_code("mov ecx, 1; jmp L; nop; L: mov rax, rdi; nop", {}, {}, entry_hook=(8, "rdi"))
    assert len(_ks.asm("mov ecx, 1; jmp L; nop; L:", CODE)[0]) == 8
    got = public_at(t, CODE + 8)
    assert got is not None and "rdi" not in got and "rax" in got and "rcx" in got


class _Run:
    def __init__(self, known: dict[int, int], unknown: set[int]) -> None:
        self.result = (known, unknown)

    def block_taint(self) -> tuple[dict[int, int], set[int]]:
        return self.result


def test_runs_merge_a_register_tainted_in_any_run_and_unknown_in_any_run() -> None:
    taint = EntryTaint()
    taint.add(_Run({0x10: 0b1, 0x20: 0}, set()))  # type: ignore[arg-type]
    taint.add(_Run({0x10: 0b1000}, {0x20}))  # type: ignore[arg-type]
    assert taint.public_at(0x10) == tuple(r for r in ENTRY_REGISTERS if r not in ("rax", "rdx"))
    assert taint.public_at(0x20) is None  # some execution in the second run unrecorded
    assert taint.public_at(0x30) is None  # never ran


def test_only_branch_regions_at_a_known_entry_get_public() -> None:
    taint = EntryTaint({0x401000: 0}, set())
    table = RegionEntry("0x401000", "table", "why")
    assert with_public(table, taint, ModuleMap()) == table  # not a branch
    branch = RegionEntry("0x401000", "branch", "why")
    assert with_public(branch, taint, ModuleMap()) == branch  # no module holds it


@pytest.mark.usefixtures("built")
def test_ct_modexp_region_lists_the_public_registers_and_validates() -> None:
    """modexp(b, e, m): at the loop header modexp+0x20 the exponent (rdi) and r (rax, rdx:
    the multiply runs under the secret bit) are tainted; the counter i (rcx), the modulus
    (rsi) and the base (r8) are public.  The written contract loads, bound, with them."""
    exe = str(BUILD / "static" / "ct_modexp")
    contract = load(REPO / "contracts" / "ct_modexp.toml", binary=exe)
    report = analyze(exe, contract)
    region = next(e for e in report.regions if e.at == "modexp+0x20")
    assert region.kind == "branch"
    assert {"rcx", "rsi", "r8"} <= set(region.public)
    assert not {"rdi", "rax", "rdx"} & set(region.public)
    assert region.why.endswith(WHY)
    bare = (REPO / "contracts" / "ct_modexp.toml").read_text().split("[[protect.region]]")[0]
    text, added = add_regions(bare + "\n[check]\ntrials = 2\n", [region])
    assert added == [region] and "public = [" in text
    bound = loads(text, binary=exe)
    assert bound.protect.regions[0].public == region.public
    assert bound.binding is not None and bound.binding.regions[0].at.symbolic == "modexp+0x20"


@pytest.mark.usefixtures("built")
def test_a_register_secret_is_tainted_at_its_functions_entry() -> None:
    """region_loop: the secret is rdi at each entry of tiny_region, whose entry block is the
    region; rax holds the previous call's secret result."""
    exe = str(BUILD / "static-pie" / "region_loop")
    report = analyze(exe, load(REPO / "contracts" / "region_loop.toml", binary=exe), ["50"])
    region = next(e for e in report.regions if e.at == "tiny_region")
    assert region.kind == "branch" and "rsi" in region.public
    assert not {"rdi", "rax"} & set(region.public)


@pytest.mark.usefixtures("built")
def test_the_sources_are_tainted_before_the_tracker_propagates_the_entry() -> None:
    """tiny_region starts with mov rax, rdi; shr rax: the register secret is tainted by its
    entry hook before the tracker applies that mov, so rax = x >> 1 is tainted at the
    return block tiny_region+0xc (it was clean when the tracker's hook ran first)."""
    from leakdbt.analysis.analyze import _run
    from leakdbt.contract.profiles import get_profile
    from leakdbt.dbt.dispatch import Mode
    from leakdbt.leakage.trials import TrialSetup, trial_inputs

    exe = str(BUILD / "static-pie" / "region_loop")
    contract = load(REPO / "contracts" / "region_loop.toml", binary=exe)
    trial = trial_inputs(contract, 1, contract.check.seed)[0]
    tracker, modules = _run(TrialSetup(exe, contract, Mode.FAST), trial, (),
                            get_profile("intel-skylake"))
    assert tracker is not None
    main = next(m for m in modules.modules() if m.is_main)
    assert main.image is not None
    start = main.image.symbol("tiny_region")
    assert start is not None
    taint = EntryTaint()
    taint.add(tracker)
    at_return = taint.public_at(main.base + start.value + 0xC)
    assert at_return is not None and not {"rax", "rdi"} & set(at_return)


@pytest.mark.usefixtures("built")
def test_analyze_write_writes_public_and_says_so(tmp_path: Path) -> None:
    import json
    import re

    from tests.conftest import run_leakdbt

    exe = str(BUILD / "static" / "ct_modexp")
    text = re.sub(r"\n\[\[protect\.region\]\]\n.*?(?=\n\[|\Z)", "\n",
                  (REPO / "contracts" / "ct_modexp.toml").read_text(), flags=re.S)
    contract = tmp_path / "ct_modexp.toml"
    contract.write_text(text)
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", "--format", "json",
                        exe])
    assert done.status == 0, done.stderr.decode()
    region = json.loads(done.stdout)["regions"][0]
    assert region["at"] == "modexp+0x20" and {"rcx", "rsi", "r8"} <= set(region["public"])
    written = load(contract, binary=exe).protect.regions[0]
    assert written.public == tuple(region["public"]) and "rdi" not in written.public
    assert "public = [" + ", ".join(f'"{r}"' for r in region["public"]) + "]\n" in \
        contract.read_text()


JOIN_CODE = "test dil, 1; je J; mov edx, 5; J: test rdx, rdx; jne K; nop; K: nop"


@pytest.mark.parametrize("secret", [0, 1], ids=["write-skipped", "write-run"])
def test_registers_a_secret_branch_may_write_are_tainted_where_its_paths_meet(
        secret: int) -> None:
    """``if (s & 1) rdx = 5``: at the join rdx depends on the secret whichever path ran,
    also when the path that ran left it unwritten: it is not public there, while rcx (no
    path writes it) is.  The join's label is no secret's: when the write was skipped, the
    branch on rdx after the join is not a finding (when it ran, the hammock rule of the
    module doc taints rdx with the secret's label, as before)."""
    join = CODE + len(_ks.asm("test dil, 1; je J; mov edx, 5; J: nop", CODE)[0]) - 1
    t = run_code(JOIN_CODE, {"rdi": secret, "rdx": 0}, {"rdi": 1},
                 joins=lambda a: (join, frozenset({"rdx"})))
    public = public_at(t, join)
    assert public is not None and "rdx" not in public and "rcx" in public
    jne = CODE + len(_ks.asm("test dil, 1; je J; mov edx, 5; J: test rdx, rdx", CODE)[0])
    assert [f.address for f in t.findings()] == [CODE + 4, *([jne] if secret else [])]


def test_without_join_facts_a_secret_branch_taints_the_caller_saved_at_the_return() -> None:
    """Nothing known of the function: whatever it may change for its caller (the ABI's
    caller-saved registers) is tainted when it returns; the callee-saved ones are not."""
    t = run_code("call F; nop; jmp E; F: test dil, 1; je R; nop; R: ret; E: nop",
                 {"rdi": 1}, {"rdi": 1}, joins=lambda a: None)
    after = CODE + 5  # the return address
    assert public_at(t, after) == ("rbx", "rbp", "r12", "r13", "r14", "r15")


def test_the_join_oracle_finds_the_join_and_what_the_paths_write() -> None:
    """umod_modexp's secret bit branch: its arm calls __umodti3, so the caller-saved
    registers may change; the paths meet at modexp+0x66."""
    from leakdbt.loader.elf import load_image

    image = load_image(str(BUILD / "static" / "umod_modexp"))
    modules = ModuleMap()
    modules.add_image(image, 0, is_main=True)
    sym = image.symbol("modexp")
    assert sym is not None
    found = JoinOracle(modules)(sym.value + 0x4D)  # jae
    assert found is not None
    join, regs = found
    assert join == sym.value + 0x66
    assert {"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r11"} <= regs
    assert not regs & {"rbx", "rbp", "r12", "r13", "r14", "r15"}  # callee-saved, unwritten
    assert JoinOracle(modules)(sym.value + 0x49) is None  # not a branch
