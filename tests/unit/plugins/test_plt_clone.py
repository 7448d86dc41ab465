"""Predicated calls through the PLT and the GOT (plugins/support/clone.py with
leakdbt/dbt/calls.py): the callee lives in another module, libmulmod.so, and is found
through the GOT slot the call goes through.

Differential: test_binaries/plt_call's secret branches (``call mulmod@plt`` and ``call
[rip + GOT]``) hardened with a clone of libmulmod's ``mulmod`` (and its ``__umodti3``),
original vs hardened in raw Unicorn with both modules mapped and the GOT bound, predicate on
and off.  Resolution: bound slots, lazily bound ones (ld.so's lookup order), slots that are
no GOT slot, symbols defined nowhere, IFUNCs, and resolutions asked for while loading."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import pytest

from leakdbt.dbt.calls import Linker, lookup_order
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import Callees, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import relocate
from leakdbt.loader.dynsym import linkage
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.plugin_api import Flow, Insn, Refusal, Rewrite
from plugins.ct_division import PASS as CT_DIVISION
from plugins.if_conversion import PASS
from tests.unit.dbt.harness import PIE_BIAS, STACK, RegionCheck, Sandbox, State
from tests.unit.plugins.ifc_support import REG, harden, load_plt_call, state

LIB_BASE = PIE_BIAS + 0x2000_0000  # libmulmod.so, as ld.so might map it near the program


@pytest.fixture(scope="module")
def program(built: Path) -> tuple[Image, Image]:
    """build/dynamic/plt_call and the libmulmod.so next to it."""
    return load_plt_call()


def _branch(image: Image, function: str) -> CodeRegion:
    """``function``'s exponent-bit branch (``bt``; ``jb`` to the arm with the call)."""
    sym = image.symbol(function)
    assert sym is not None
    cfg = function_cfg(image, sym)
    at = next(a for a in sorted(cfg.blocks) if cfg.blocks[a].last.mnemonic == "jb"
              and any(i.mnemonic == "bt" for i in cfg.blocks[a].insns))
    bt = next(i.address for i in cfg.blocks[at].insns if i.mnemonic == "bt")
    cfg = function_cfg(image, sym, extra_leaders=[bt])
    return form_region(cfg, bt, f"{function}-bit", branch=True)


def _modules(exe: Image, lib: Image | None, bias: int = PIE_BIAS) -> tuple[ModuleMap,
                                                                           list[LoadedModule]]:
    modules = ModuleMap()
    loaded = [modules.add_image(exe, bias, is_main=True)]
    if lib is not None:
        loaded.append(modules.add_image(lib, LIB_BASE))
    return modules, loaded


def _slot(exe: Image, name: str) -> int:
    return next(a for a, n in linkage(exe).slots.items() if n == name)


def _linker(exe: Image, lib: Image | None, memory: dict[int, int], running: bool = True
            ) -> Linker:
    """A linker over exe (at PIE_BIAS) and lib (at LIB_BASE) whose GOT reads ``memory``."""
    modules, loaded = _modules(exe, lib)

    def read(address: int, size: int) -> bytes | None:
        value = memory.get(address)
        return None if value is None else struct.pack("<Q", value)

    return Linker(modules, loaded[0], read, lambda: loaded, running)


def _mulmod(lib: Image) -> int:
    return linkage(lib).exports["mulmod"].value + LIB_BASE


def _call(region: CodeRegion) -> Insn:
    return next(i for b in region.block_list() for i in b.insns
                if i.flow in (Flow.CALL, Flow.INDIRECT_CALL))


# -- resolution ------------------------------------------------------------------------------

def test_a_lazily_bound_plt_slot_resolves_to_the_first_definition(
        program: tuple[Image, Image]) -> None:
    exe, lib = program
    stub = _call(_branch(exe, "modexp_plt"))
    slot = _slot(exe, "mulmod") + PIE_BIAS
    plt_push = stub.target + 6 + PIE_BIAS  # type: ignore[operator]
    linker = _linker(exe, lib, {slot: plt_push})  # lazy: the slot points back into the PLT
    blocks = Callees(exe, linker)(stub.target)  # type: ignore[arg-type]
    assert blocks is not None and len(blocks) == 1
    jump = blocks[0].last
    assert jump.flow is Flow.INDIRECT_JUMP
    assert linker.resolve(jump) == _mulmod(lib) - PIE_BIAS


def test_a_bound_slot_resolves_to_what_it_holds(program: tuple[Image, Image]) -> None:
    exe, lib = program
    call = _call(_branch(exe, "modexp_got"))
    assert call.flow is Flow.INDIRECT_CALL  # call [rip + GOT]
    slot = _slot(exe, "mulmod_got") + PIE_BIAS
    umodti3 = LIB_BASE + next(f.value for f in lib.functions if f.name == "__umodti3")
    # Whatever function the slot holds is the target (here: not what the name would give).
    assert _linker(exe, lib, {slot: umodti3}).resolve(call) == umodti3 - PIE_BIAS


def test_the_main_program_comes_first_and_the_dynamic_linker_last(
        program: tuple[Image, Image]) -> None:
    exe, lib = program
    interp = load_image(exe.interpreter or "")
    modules = ModuleMap()
    main = modules.add_image(exe, PIE_BIAS, is_main=True)
    ld = modules.add_image(interp, LIB_BASE + 0x100_0000)
    mul = modules.add_image(lib, LIB_BASE)
    assert lookup_order(modules, [main, ld, mul]) == [main, mul, ld]


@pytest.mark.parametrize("case", ["nowhere", "not-running", "unmapped-slot", "ifunc"])
def test_resolution_refusals_say_why(program: tuple[Image, Image], case: str) -> None:
    exe, lib = program
    stub = Callees(exe)(_call(_branch(exe, "modexp_plt")).target)  # type: ignore[arg-type]
    assert stub is not None
    jump = stub[0].last
    slot = _slot(exe, "mulmod") + PIE_BIAS
    if case == "nowhere":  # libmulmod.so is not loaded: the lazy slot has no definition
        got = _linker(exe, None, {slot: 0}).resolve(jump)
        assert got == f"mulmod (GOT slot at {slot:#x}, not bound yet) is defined in no " \
                      "loaded module"
    elif case == "not-running":
        linker = _linker(exe, lib, {}, running=False)
        assert linker.resolve(jump) == "the GOT slot of mulmod is bound only when the " \
                                       "program runs"
        assert linker.put_off
    elif case == "unmapped-slot":
        far = Insn(jump.address, jump.raw, "jmp", "", "qword ptr [rip + 0x10000000]",
                   Flow.INDIRECT_JUMP, None, jump.address + 0x1000_0000, 2)
        got = _linker(exe, lib, {}).resolve(far)
        assert got == f"its slot at {far.rip_target + PIE_BIAS:#x} is in no loaded module"  # type: ignore[operator]
    else:
        libc = load_image("/lib/x86_64-linux-gnu/libc.so.6")
        name = next(n for n in linkage(exe).slots.values()
                    if (e := linkage(libc).exports.get(n)) is not None and e.ifunc)
        modules, loaded = _modules(exe, None)
        loaded.append(modules.add_image(libc, LIB_BASE))
        got_slot = _slot(exe, name)
        probe = Insn(0x100, b"\xff\x25\0\0\0\0", "jmp", "", "qword ptr [rip]",
                     Flow.INDIRECT_JUMP, None, got_slot, 2)
        linker = Linker(modules, loaded[0], lambda a, n: None, lambda: loaded, True)
        assert linker.resolve(probe) == (
            f"{name} is an IFUNC of libc.so.6, whose resolver chooses the function when "
            f"the GOT slot at {got_slot + PIE_BIAS:#x} is bound (it is not yet)")


def test_a_program_pointer_is_not_a_got_slot(program: tuple[Image, Image]) -> None:
    exe, lib = program
    data = next(s for s in exe.symbols if s.kind == "object" and s.name == "__dso_handle")
    probe = Insn(0x100, b"\xff\x25\0\0\0\0", "jmp", "", "qword ptr [rip]",
                 Flow.INDIRECT_JUMP, None, data.value, 2)
    assert _linker(exe, lib, {}).resolve(probe) == (
        f"its slot at {data.value + PIE_BIAS:#x} is not a GOT slot of plt_call (a function "
        "pointer the program may change)")


def test_another_modules_function_is_decoded_at_its_runtime_address_minus_the_bias(
        program: tuple[Image, Image]) -> None:
    exe, lib = program
    linker = _linker(exe, lib, {})
    blocks = Callees(exe, linker)(_mulmod(lib) - PIE_BIAS)
    assert blocks is not None
    first = blocks[0].insns[0]
    assert first.address + PIE_BIAS == _mulmod(lib)
    assert first.raw == lib.read(_mulmod(lib) - LIB_BASE, first.size)
    call = next(i for b in blocks for i in b.insns if i.flow is Flow.CALL)
    assert lib.symbolize(call.target + PIE_BIAS - LIB_BASE) == "__umodti3"  # type: ignore[operator]
    assert call.op_str == f"{call.target + PIE_BIAS:#x}"  # type: ignore[operator]


# -- the plugin ------------------------------------------------------------------------------

def test_if_conversion_refuses_a_stub_it_cannot_resolve(program: tuple[Image, Image]) -> None:
    exe, _ = program
    region = _branch(exe, "modexp_plt")
    linker = _linker(exe, None, {})
    view = region_view(region, "branch", PIE_BIAS, {}, None, exe, Callees(exe, linker))
    result = harden(PASS, view)
    assert isinstance(result, Refusal)
    call = _call(region)
    stub = Callees(exe)(call.target)[0].last  # type: ignore[arg-type,index]
    slot = _slot(exe, "mulmod") + PIE_BIAS
    assert result.reason == (
        f"'{call.text}' at {call.address + PIE_BIAS:#x} calls the function at "
        f"{call.target + PIE_BIAS:#x} through '{stub.text}' at {stub.address + PIE_BIAS:#x}, "  # type: ignore[operator]
        f"whose target cannot be resolved: mulmod (GOT slot at {slot:#x}, not bound yet) is "
        "defined in no loaded module")


def _sandbox(exe: Image, lib: Image) -> Sandbox:
    """Both modules mapped, every GOT slot of exe that names a libmulmod function bound."""
    sb = Sandbox(exe, PIE_BIAS)
    lo = LIB_BASE + lib.low
    sb.uc.mem_map(lo, LIB_BASE + lib.high - lo)
    for seg in lib.segments:
        sb.uc.mem_write(seg.vaddr + LIB_BASE, lib.read(seg.vaddr, seg.filesz))
    for slot, name in linkage(exe).slots.items():
        export = linkage(lib).exports.get(name)
        if export is None:
            continue
        value = struct.pack("<Q", export.value + LIB_BASE)
        sb.writable = [(a, d[:slot + PIE_BIAS - a] + value + d[slot + PIE_BIAS - a + 8:])
                       if a <= slot + PIE_BIAS < a + len(d) else (a, d) for a, d in sb.writable]
    return sb


def _check(exe: Image, lib: Image, function: str) -> tuple[RegionCheck, Rewrite]:
    sb = _sandbox(exe, lib)
    modules, loaded = _modules(exe, lib)

    def read(address: int, size: int) -> bytes | None:
        try:
            data = bytes(sb.uc.mem_read(address, size))
        except Exception:  # noqa: BLE001 - unmapped: nothing to read
            return None
        for a, d in sb.writable:  # what the sandbox writes before each run
            if a <= address < a + len(d):
                return d[address - a:address - a + size]
        return data

    linker = Linker(modules, loaded[0], read, lambda: loaded, True)
    region = _branch(exe, function)
    callees = Callees(exe, linker)
    view = region_view(region, "branch", PIE_BIAS, {}, None, exe, callees)
    rewrite = harden(PASS, view)
    assert isinstance(rewrite, Rewrite), rewrite
    divisions = CT_DIVISION.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(divisions, Rewrite) and divisions.replace  # __umodti3's, in the clone
    assert all(a + PIE_BIAS >= LIB_BASE for a in divisions.replace)
    t = relocate(region, PIE_BIAS, sb.place, dict(divisions.replace), rewrite.code,
                 callees.instructions())
    return RegionCheck(sb, region, t, scratch_below_red_zone=True, dead_below=0), rewrite


def _state(seed: str, bit: int, r: int, b: int, m: int, region: CodeRegion) -> State:
    """The bt's bit register and exponent, and the arm's operands: r, m in registers, b in
    the stack slot the arm reads."""
    bt = next(i for b_ in region.block_list() for i in b_.insns if i.mnemonic == "bt")
    exp, index = (x.strip() for x in bt.op_str.split(","))
    arm = next(b_ for b_ in region.block_list() if b_.last.flow in (Flow.CALL,
                                                                    Flow.INDIRECT_CALL))
    moves = {i.op_str.split(",")[0]: i.op_str.split(",")[1].strip() for i in arm.insns
             if i.mnemonic == "mov"}
    regs = {index: 5, exp: (0x1234 & ~0x20) | (bit << 5), moves["rdi"]: r, moves["rdx"]: m}
    s = state(seed, **regs)
    assert moves["rsi"] == "qword ptr [rsp + 8]"
    at = s.gprs[REG["rsp"]] - STACK + 8
    stack = s.stack[:at] + b.to_bytes(8, "little") + s.stack[at + 8:]
    return dataclasses.replace(s, stack=stack)


@pytest.mark.parametrize("function", ["modexp_plt", "modexp_got"])
def test_a_call_into_another_module_computes_what_the_original_does(
        program: tuple[Image, Image], function: str) -> None:
    exe, lib = program
    check, rewrite = _check(exe, lib, function)
    assert rewrite.code is not None and not any(line.startswith("call")
                                                for line in rewrite.code)
    with check:
        report = check.check(f"{function}:{i}" for i in range(120))
        chosen = check.compare(
            (f"{function}-bit:{i}",
             _state(f"{function}-bit:{i}", i & 1, 0x9E37_79B9_7F4A_7C15 + i, 65537 + i,
                    2**64 - 59 - (i >> 1), check.region))
            for i in range(80))
    assert not report.mismatches, report.mismatches[:2]
    assert not chosen.mismatches, chosen.mismatches[:2]
    assert report.compared >= 100 and chosen.compared == 80
