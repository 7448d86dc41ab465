"""Tests of plugins.oblivious_table: differential (original vs rewritten region on random
states, in the harness's raw Unicorn), leakage (cache lines / intra-line units touched by the
copy do not depend on the index; the original's do), a hypothesis property on hand-assembled
instructions, and the refusals."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as x

from leakdbt.contract.profiles import get_profile, profile_names
from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.harden import profile_view, region_view
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.plugin_api import BlockView, DataObject, Refusal, RegionView, Rewrite, original
from leakdbt.run.allocations import AllocationMap
from leakdbt.x86.asm import Fixed, Line, assemble, assemble_block, assemble_block_map
from leakdbt.x86.insn import Insn, decode
from plugins.oblivious_table import (
    PASS,
    TableAccess,
    find_accesses,
    heap_access,
    heap_accesses,
    oblivious_access,
)
from tests.unit.dbt.harness import (
    GPRS,
    PIE_BIAS,
    SCRATCH,
    RegionCheck,
    Sandbox,
    compile_program,
    nm_symbols,
    random_state,
)

KINDS = ("static", "static-pie")
STATES = 150
RNG = random.Random("oblivious-table tables")


def _table(name: str, ctype: str, count: int, bits: int, const: bool = True) -> str:
    values = ", ".join(hex(RNG.getrandbits(bits)) + ("ull" if bits == 64 else "u")
                       for _ in range(count))
    qualifier = "const " if const else ""
    return f"{qualifier}{ctype} {name}[{count}] __attribute__((aligned(64))) = {{{values}}};\n"


SOURCE = (
    "#include <stdint.h>\n#include <stddef.h>\n"
    + _table("sbox", "uint8_t", 256, 8)
    + "".join(_table(f"T{i}", "uint32_t", 256, 32) for i in range(4))
    + _table("T64", "uint64_t", 128, 64)
    + _table("wtab", "uint8_t", 256, 8, const=False)
    + _table("wtab32", "uint32_t", 64, 32, const=False)
    + _table("stab", "int8_t", 256, 7)
    + "const double dtab[32] __attribute__((aligned(64))) = {"
    + ", ".join(repr(RNG.uniform(-1e6, 1e6)) for _ in range(32)) + "};\n"
    + """
#define NI __attribute__((noinline))
NI void sub_bytes(uint8_t *out, const uint8_t *in, const uint8_t *key, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = sbox[in[i] ^ key[i]];
}
NI uint32_t tround(uint32_t x) {
    return T0[x & 0xff] ^ T1[(x >> 8) & 0xff] ^ T2[(x >> 16) & 0xff] ^ T3[x >> 24];
}
NI uint64_t t64(unsigned i) { return T64[i & 127]; }
NI unsigned get_unchecked(size_t i) { return sbox[i]; }
NI int get_signed(unsigned i) { return stab[i & 255]; }
NI double get_double(unsigned i) { return dtab[i & 31]; }
NI void put8(unsigned i, uint8_t v) { wtab[i & 255] = v; }
NI void add32(unsigned i, uint32_t v) { wtab32[i & 63] += v; }
int main(int argc, char **argv) {
    uint8_t o[4], b[4] = {1, 2, 3, 4};
    sub_bytes(o, b, b, 4); put8(argc, 1); add32(argc, 2);
    return (int)(tround(argc) + t64(argc) + get_unchecked(argc) + get_signed(argc)
                 + get_double(argc)) + o[1];
}
"""
)


@dataclass
class Program:
    image: Image
    symbols: dict[str, int]

    @property
    def bias(self) -> int:
        return PIE_BIAS if self.image.is_pie else 0

    def cfg(self, function: str) -> FunctionCFG:
        func = self.image.symbol(function)
        assert func is not None
        return function_cfg(self.image, func)

    def block_region(self, function: str, mnemonic: str = "") -> CodeRegion:
        """The block region of ``function`` holding its first indexed memory access (with
        ``mnemonic``, if given)."""
        cfg = self.cfg(function)
        for start in sorted(cfg.blocks):
            for insn in cfg.blocks[start].insns:
                if "[" in insn.op_str and insn.mnemonic != "lea" and "rip" not in insn.op_str \
                        and "rsp" not in insn.op_str and mnemonic in insn.mnemonic:
                    return form_region(cfg, start, f"{function}+{start - cfg.entry:#x}",
                                       branch=False)
        raise AssertionError(f"no table access in {function}")


@pytest.fixture(scope="module", params=KINDS)
def program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Program:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"tables-{kind}")
    # -fno-pie: the non-PIE program addresses its tables absolutely ([rax + 0x4a3c20])
    extra = ["-fno-pie"] if kind == "static" else []
    path = compile_program(directory, "tables", {"tables.c": SOURCE}, kind, extra)
    return Program(load_image(str(path)), nm_symbols(Path(path)))


def _view(program: Program, region: CodeRegion, granularity: int = 64,
          table: tuple[int, int] | None = None) -> RegionView:
    return region_view(region, "table", program.bias,
                       {"granularity": granularity, "line_size": 64}, table, program.image)


def _harden(program: Program, region: CodeRegion, sandbox: Sandbox, granularity: int = 64,
            table: tuple[int, int] | None = None) -> tuple[Rewrite, Translation]:
    rewrite = PASS.harden(_view(program, region, granularity, table), None,  # type: ignore[arg-type]
                          profile_view(get_profile(profile_names()[0])))
    assert isinstance(rewrite, Rewrite), rewrite
    assert rewrite.replace and rewrite.code is None
    return rewrite, relocate(region, sandbox.bias, sandbox.place, rewrite.replace)


def _small(limit: int) -> Callable[[random.Random], int]:
    return lambda rng: rng.randrange(limit)


# (function, registers chosen in range, contract table (symbol) or None, accesses rewritten)
CASES = [
    ("tround", {}, None, 4),
    ("t64", {}, None, 1),
    ("get_signed", {}, None, 1),
    ("get_double", {}, None, 1),
    ("put8", {}, None, 1),
    ("add32", {}, None, 1),
    # in range, and out of bounds by a little (other data, same segment) and by a lot (faults)
    ("get_unchecked", {"rdi": lambda rng: rng.choice([rng.randrange(256), rng.randrange(256),
                                                      rng.randrange(-64, 512),
                                                      rng.getrandbits(40)])}, None, 1),
]


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize(("function", "choose", "table", "count"), CASES,
                         ids=[c[0] for c in CASES])
def test_differential(program: Program, function: str, choose: dict[str, Callable[
        [random.Random], int]], table: str | None, count: int, granularity: int) -> None:
    region = program.block_region(function)
    sandbox = Sandbox(program.image, program.bias)
    rewrite, t = _harden(program, region, sandbox, granularity)
    assert len(rewrite.replace) == count
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"{function}:{granularity}:{i}" for i in range(STATES)),
                             choose=choose)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= STATES - 2


def test_out_of_bounds_runs_the_original_access(program: Program) -> None:
    """get_unchecked's index is not masked: indices past the table read other data (the
    original access after the scan) and far ones fault at the original's address."""
    region = program.block_region("get_unchecked")
    sandbox = Sandbox(program.image, program.bias)
    _, t = _harden(program, region, sandbox)
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"oob:{i}" for i in range(40)),
                             choose={"rdi": lambda rng: rng.choice([-1, 256, 300, 1 << 40])})
    assert not report.mismatches, report.mismatches[:3]
    assert report.stops.get("exit", 0) > 10 and any(k.startswith("fault") for k in report.stops)


def test_sub_bytes_loop_body(program: Program) -> None:
    """The AES-like S-box lookup ``out[i] = sbox[in[i] ^ key[i]]``: the loop body block.  In
    the PIE program the table's ``lea`` is hoisted out of the loop, so the bounds come from
    the contract (every indexed access is then checked against them at run time); without
    them every access would get run-time allocation bounds (heap tables, below)."""
    region = program.block_region("sub_bytes", "movzx")
    sbox = program.symbols["sbox"]
    view = _view(program, region)
    found = find_accesses(view)
    if program.image.is_pie:
        assert not found  # nothing ties the base register to the table ...
        assert len(heap_accesses(view)) == 4  # (so run-time bounds would be asked for)
        table: tuple[int, int] | None = (sbox, 256)  # ... but the contract names it
    else:
        assert [a.anchor is not None for a, _ in found] == [True]
        table = None
    sandbox = Sandbox(program.image, program.bias)
    rewrite, t = _harden(program, region, sandbox, table=table)
    assert len(rewrite.replace) == (4 if table else 1)
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"sub_bytes:{i}" for i in range(60)),
                             choose={"rcx": lambda rng: rng.randrange(1, 6), "rax": _small(1)})
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= 58


# --------------------------------------------------------------------------------------------
# Leakage: the memory units the copy touches do not depend on the index


@contextmanager
def _recording(sandbox: Sandbox, low: int, high: int, shift: int) -> Iterator[list[int]]:
    """Addresses >> ``shift`` of every read and write made while RIP is in [low, high)."""
    touched: list[int] = []

    def hook(uc: Uc, access: int, address: int, size: int, value: int, _: object) -> None:
        if low <= uc.reg_read(x.UC_X86_REG_RIP) < high:
            touched.append(address >> shift)
            touched.append((address + size - 1) >> shift)

    handle = sandbox.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, hook)
    try:
        yield touched
    finally:
        sandbox.uc.hook_del(handle)


LEAK_CASES = [
    ("t64", "rdi", 128), ("tround", "rdi", 1 << 32), ("get_signed", "rdi", 256),
    ("put8", "rdi", 256), ("add32", "rdi", 64), ("get_double", "rdi", 32),
]


@pytest.mark.parametrize(("granularity", "shift"), [(64, 6), (4, 2)])
@pytest.mark.parametrize(("function", "register", "span"), LEAK_CASES,
                         ids=[c[0] for c in LEAK_CASES])
def test_footprint_does_not_depend_on_the_index(program: Program, function: str,
                                                register: str, span: int, granularity: int,
                                                shift: int) -> None:
    region = program.block_region(function)
    sandbox = Sandbox(program.image, program.bias)
    _, t = _harden(program, region, sandbox, granularity)
    base = random_state(random.Random(f"leak:{function}"))
    at = [name for name, _ in GPRS].index(register)
    rng = random.Random(function)
    indices = [0, span - 1, *(rng.randrange(span) for _ in range(6))]
    copies, originals = set(), set()
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        for index in indices:
            gprs = list(base.gprs)
            gprs[at] = index
            state = replace(base, gprs=tuple(gprs))
            with _recording(sandbox, t.base, t.end, shift) as touched:
                check.outcome(True, state)
            copies.add(tuple(touched))
            lo, hi = region.byte_ranges[0]
            with _recording(sandbox, lo + sandbox.bias, hi + sandbox.bias, shift) as touched:
                check.outcome(False, state)
            originals.add(tuple(touched))
    assert len(copies) == 1, "the copy's footprint depends on the index"
    assert len(originals) > 1, "the original's footprint should depend on the index"
    # every unit of each table was touched
    (trace,) = copies
    for access, (table, length) in find_accesses(_view(program, region, granularity)):
        first, last = (table + sandbox.bias) >> shift, (table + sandbox.bias + length - 1) >> shift
        assert set(range(first, last + 1)) <= set(trace), access.insn.text


# --------------------------------------------------------------------------------------------
# Property: hand-assembled accesses, random tables, widths, granularities and indices

CODE = 0x10_0000
SEQ = 0x20_0000
DATA = 0x40_0000  # 3 pages: the table lives in the middle one
STACK = 0x70_0000
RSP = STACK + 0x8000
EXIT = 0x30_0000

FORMS = [
    # (text, access width, index scale)
    ("movzx eax, byte ptr [rdx + rcx]", 1, 1),
    ("movsx eax, byte ptr [rdx + rcx]", 1, 1),
    ("mov al, byte ptr [rdx + rcx]", 1, 1),
    ("movsx rax, word ptr [rdx + rcx*2]", 2, 2),
    ("mov eax, dword ptr [rdx + rcx*4]", 4, 4),
    ("xor eax, dword ptr [rdx + rcx*4]", 4, 4),
    ("movsxd rax, dword ptr [rdx + rcx*4]", 4, 4),
    ("mov rax, qword ptr [rdx + rcx*8]", 8, 8),
    ("sub rax, qword ptr [rdx + rcx*8 + 8]", 8, 8),
    ("movsd xmm0, qword ptr [rdx + rcx*8]", 8, 8),
    ("cmp dword ptr [rdx + rcx*4], eax", 4, 4),
    ("mov byte ptr [rdx + rcx], al", 1, 1),
    ("add word ptr [rdx + rcx*2], ax", 2, 2),
    ("xor qword ptr [rdx + rcx*8], rax", 8, 8),
    ("inc dword ptr [rdx + rcx*4]", 4, 4),
]


def _run(code: bytes, at: int, regs: dict[str, int], flags: int, xmm0: int, data: bytes,
         probe: tuple[int, Callable[..., None]] | None = None
         ) -> tuple[dict[str, int], int, int, bytes, str | None]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x10000)
    uc.mem_map(SEQ, 0x10000)
    uc.mem_map(DATA, 0x3000)
    uc.mem_map(STACK, 0x10000)
    uc.mem_write(at, code)
    uc.mem_write(DATA, data)
    for name, reg in GPRS:
        uc.reg_write(reg, regs[name])
    uc.reg_write(x.UC_X86_REG_EFLAGS, flags)
    uc.reg_write(x.UC_X86_REG_XMM0, xmm0)
    if probe is not None:  # a hook standing for the translator's at a ``.bounds`` line
        uc.hook_add(UC_HOOK_CODE, probe[1], None, probe[0], probe[0])
    fault = None
    try:
        uc.emu_start(at, at + len(code))
    except UcError as e:
        fault = f"{e.errno}"
    return ({name: uc.reg_read(reg) for name, reg in GPRS}, uc.reg_read(x.UC_X86_REG_EFLAGS),
            uc.reg_read(x.UC_X86_REG_XMM0), bytes(uc.mem_read(DATA, 0x3000)), fault)


def _lines_for(insn: Insn, table: int, length: int, granularity: int) -> list[str]:
    view = RegionView("t", "table", "block", insn.address,
                      (BlockView(insn.address, (insn,), ()),), 0, (table, length),
                      {"granularity": granularity})
    (access, bounds), = find_accesses(view)
    assert bounds == (table, length)
    # bias 0: ``@A`` (a runtime address) is A itself
    return [insn.text if line == f".insn {insn.address:#x}" else line.replace("@", "")
            for line in oblivious_access(access, table, length, granularity)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), granularity=st.sampled_from([1, 2, 4, 8, 16, 64, 128, 4096]),
       count=st.integers(1, 96), offset=st.integers(0, 15), seed=st.integers(0, 2**32),
       index=st.one_of(st.integers(0, 95), st.integers(-40, 140)),
       flags=st.integers(0, 0xFFF))
def test_property_equivalent(form: tuple[str, int, int], granularity: int, count: int,
                             offset: int, seed: int, index: int, flags: int) -> None:
    """Any table (start: 64-byte aligned plus ``offset`` elements, ``count`` elements), any
    index (in bounds or not) and granularity: same registers, flags, xmm0 and memory."""
    text, width, scale = form
    rng = random.Random(seed)
    table = DATA + 0x1000 + offset * width
    length = count * width
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    code = assemble_block(_lines_for(insn, table, length, granularity), SEQ)
    regs = {name: rng.getrandbits(64) for name, _ in GPRS}
    regs.update(rsp=RSP, rdx=table, rcx=index & ((1 << 64) - 1))
    data = rng.randbytes(0x3000)
    xmm0 = rng.getrandbits(128)
    flags = 0x2 | flags & 0xCD5
    want = _run(insn.raw, CODE, regs, flags, xmm0, data)
    got = _run(code, SEQ, regs, flags, xmm0, data)
    assert want[4] is None and got[4] is None  # the index stays in the mapped pages
    assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
    assert got[3] == want[3]
    del scale


# --------------------------------------------------------------------------------------------
# Refusals and applicability

AT = 0x40_1000
T = 0x4A_3C00


def _region(*texts: str, table: tuple[int, int] | None = (T, 256), kind: str | None = "table",
            params: dict[str, int | str | bool] | None = None,
            objects: dict[str, tuple[int, int]] | None = None) -> RegionView:
    insns = []
    at = AT
    for text in texts:
        # Keystone cannot encode some forms: "hex:" gives the bytes
        raw = bytes.fromhex(text[4:]) if text.startswith("hex:") else assemble(text, at)
        insn = decode(raw, at)
        assert insn is not None
        insns.append(insn)
        at += len(raw)

    def object_at(address: int) -> DataObject | None:
        for name, (start, size) in (objects or {}).items():
            if start <= address < start + size:
                return DataObject(name, start, size)
        return None

    return RegionView("r", kind, "block", AT, (BlockView(AT, tuple(insns), ()),), 0, table,
                      params if params is not None else {"granularity": 64}, object_at)


def _refusal(view: RegionView) -> str:
    result = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal), result
    return result.reason


@pytest.mark.parametrize(("texts", "why"), [
    (["mov eax, dword ptr [rip + 0x100]"], "no load or store in r indexes a known table"),
    (["vmovdqa ymm0, ymmword ptr [rax + 0x4a3c00]"], "32-byte memory operand is not supported"),
    (["lock add dword ptr [rax + 0x4a3c00], ecx"], "prefixes (lock/rep) are not supported"),
    (["xchg dword ptr [rax + 0x4a3c00], ecx"], "xchg/cmpxchg/xadd are atomic"),
    (["push qword ptr [rax*8 + 0x4a3c00]"], "changes RSP"),
    (["jmp qword ptr [rax*8 + 0x4a3c00]"], "a control transfer through the table"),
    (["movsb byte ptr [rdi], byte ptr [rsi]"], "more than one memory operand"),
    (["mov eax, dword ptr [ecx + 0x4a3c00]"], "32-bit addressing is not supported"),
    (["mov eax, dword ptr fs:[rax + 0x4a3c00]"], "segment override"),
    (["xlatb"], "xlat reads the table implicitly"),
    (["hex:c4e269908488003c4a00"],  # vpgatherdd xmm0, dword ptr [rax + xmm1*4 + ...], xmm2
     "vector-indexed addressing (gather/scatter) is not supported"),
])
def test_refused_forms(texts: list[str], why: str) -> None:
    table = None if why.startswith("no load") else (T, 256)
    reason = _refusal(_region(*texts, table=table))
    assert why in reason
    if table is not None:  # the instruction and its (runtime) address come first
        assert reason.startswith("'") and f"' at {AT:#x}: " in reason
        assert texts[0].startswith("hex:") or reason.startswith(f"'{texts[0]}'")


def test_refused_tables() -> None:
    assert "not aligned to its 4-byte accesses" in _refusal(
        _region("mov eax, dword ptr [rax*4 + 0x4a3c02]", table=(T + 2, 256)))
    assert "smaller than its 8-byte accesses" in _refusal(
        _region("mov rax, qword ptr [rax + 0x4a3c00]", table=(T, 4)))
    assert "needs 131072 loads per lookup (limit 65536)" in _refusal(
        _region("movzx eax, byte ptr [rax + 0x4a3c00]", table=(T, 1 << 17),
                params={"granularity": 1}))
    for bad in (3, 0, 8192):
        assert f"granularity {bad} is not a power of two" in _refusal(
            _region("movzx eax, byte ptr [rax + 0x4a3c00]", params={"granularity": bad}))


def test_tables_found_through_symbols_and_lea() -> None:
    objects = {"sbox": (T, 256), "other": (T + 0x1000, 64)}
    # non-PIE: the displacement names the object; PIE: the lea of the base register does
    view = _region("movzx eax, byte ptr [rax + 0x4a3c00]", "lea rdx, [rip + 0x1000]",
                   "mov rcx, qword ptr [rdi + rsi*8]", table=None, objects=objects)
    found = find_accesses(view)
    assert [(a.insn.mnemonic, b) for a, b in found] == [("movzx", (T, 256))]
    lea_at = AT + view.blocks[0].insns[0].size
    lea = view.blocks[0].insns[1]
    target = lea.next + 0x1000
    objects["tab"] = (target, 128)
    view = _region("movzx eax, byte ptr [rax + 0x4a3c00]", "lea rdx, [rip + 0x1000]",
                   "mov ecx, dword ptr [rdx + rsi*4]", "mov ecx, dword ptr [rdx]",
                   table=None, objects=objects)
    assert view.blocks[0].insns[1].address == lea_at
    found = find_accesses(view)
    assert [(a.insn.text, b) for a, b in found] == [
        ("movzx eax, byte ptr [rax + 0x4a3c00]", (T, 256)),
        ("mov ecx, dword ptr [rdx + rsi*4]", (target, 128))]  # [rdx] alone: a constant
    # the mapping names the table: other objects are not its accesses
    view = _region("movzx eax, byte ptr [rax + 0x4a3c00]", "mov al, byte ptr [rcx + 0x4a4c00]",
                   table=None, objects=objects, params={"granularity": 64, "table": "other"})
    assert [a.insn.mnemonic for a, _ in find_accesses(view)] == ["mov"]
    # with the contract's bounds, an access provably into another object is left alone
    view = _region("movzx eax, byte ptr [rax + 0x4a3c00]", "mov al, byte ptr [rcx + 0x4a4c00]",
                   "mov al, byte ptr [rcx + rdi]", objects=objects)
    assert [a.insn.text for a, _ in find_accesses(view)] == [
        "movzx eax, byte ptr [rax + 0x4a3c00]", "mov al, byte ptr [rcx + rdi]"]


def test_applies() -> None:
    profile = profile_view(get_profile(profile_names()[0]))
    load = "movzx eax, byte ptr [rax + 0x4a3c00]"
    assert PASS.applies(_region(load, table=None, kind="table"), None, profile) is True  # type: ignore[arg-type]
    assert PASS.applies(_region(load, table=None, kind=None), None, profile) is False  # type: ignore[arg-type]
    assert PASS.applies(_region(load, kind=None), None, profile) is True  # type: ignore[arg-type]
    assert PASS.applies(_region(load, kind="divide"), None, profile) is False  # type: ignore[arg-type]
    assert PASS.name == "oblivious-table"


def test_replacement_shape() -> None:
    """No branch depends on data except the loop's (public trip count) and the
    in-contract test; the flags are saved before anything and restored before the
    instruction runs on the slot."""
    view = _region("mov eax, dword ptr [rax*4 + 0x4a3c00]", table=(T, 1024))
    (access, _), = find_accesses(view)
    assert isinstance(access, TableAccess)
    lines = oblivious_access(access, T, 1024, 64)
    assert lines[:2] == ["lea rsp, [rsp - 0x80]", "pushfq"]
    jumps = [line for line in lines if line.split()[0].startswith("j")]
    assert jumps == ["jb ot_read", "je ot_outside", "jmp ot_done"]
    assert "cmp rcx, 0x400" in lines  # 16 lines of 64 bytes
    inside = lines.index("je ot_outside")
    assert lines[inside + 9] == "mov eax, dword ptr [rsp - 0x280]"
    assert lines[-2:] == [f".insn {AT:#x}", "ot_done:"]


def test_through_the_hardener(program: Program) -> None:
    """The pass as the translator runs it: loaded, asked, merged and laid out by the
    Hardener for a ``table`` region whose bounds the contract gives."""
    from leakdbt.contract import loads
    from leakdbt.contract.mapping import PassStep
    from leakdbt.dbt.harden import Hardener, RegionNeeds
    from leakdbt.dbt.passes import LoadedPass

    region = program.block_region("t64")
    sandbox = Sandbox(program.image, program.bias)
    contract = loads('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 4\n'
                     '[protect]\nadversary = "same-core"\n')
    hardener = Hardener([LoadedPass(PASS, "test")], contract, get_profile(profile_names()[0]))
    step = PassStep("oblivious-table", (("granularity", 64), ("line_size", 64)))
    t = hardener.translate(region, RegionNeeds("table", (step,), (program.symbols["T64"], 1024)),
                           sandbox.bias, sandbox.place, program.image)
    assert hardener.report() == {region.name: {"passes": ["oblivious-table"]}}
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check(f"hardener:{i}" for i in range(50))
    assert not report.mismatches and report.compared == 50


# --------------------------------------------------------------------------------------------
# Heap tables: no ELF object and no contract bounds; the sequence gets (start, size) of the
# allocation holding the address at run time, at its ``.bounds`` line (a hook writes them,
# here as leakdbt.run.allocations does in a run: from an AllocationMap, with a size cap).

HEAP_SOURCE = """
#include <stdint.h>
#include <stddef.h>
#define NI __attribute__((noinline))
NI unsigned heap_get(const uint8_t *t, size_t i) { return t[i]; }
NI uint32_t heap_get32(const uint32_t *t, size_t i) { return t[i]; }
NI int heap_get16s(const int16_t *t, size_t i) { return t[i]; }
NI void heap_put(uint8_t *t, size_t i, uint8_t v) { t[i] = v; }
NI void heap_add64(uint64_t *t, size_t i, uint64_t v) { t[i] += v; }
NI void heap_sub_bytes(uint8_t *out, const uint8_t *in, const uint8_t *key,
                       const uint8_t *sbox, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = sbox[in[i] ^ key[i]];
}
int main(int argc, char **argv) {
    uint8_t t[256] = {0}; uint32_t w[64] = {0}; int16_t h[8] = {0}; uint64_t q[8] = {0};
    heap_put(t, argc, 1); heap_add64(q, argc & 7, 2); heap_sub_bytes(t, t, t, t, 4);
    return (int)(heap_get(t, argc) + heap_get32(w, argc) + heap_get16s(h, argc & 7));
}
"""
HEAP_CAP = 0x400  # the cap the probe hook applies in these tests
# Allocations in the harness's scratch memory: (start, size).  The S-box starts mid-line.
SBOX_AT = SCRATCH + 0x1010
ALLOCATIONS = [(SBOX_AT, 256), (SCRATCH + 0x1200, 16), (SCRATCH + 0x1240, 16),
               (SCRATCH + 0x1300, 16), (SCRATCH + 0x1400, 0x100), (SCRATCH + 0x1800, 0x800)]
TOO_BIG = SCRATCH + 0x1800  # larger than HEAP_CAP: refused at run time


@pytest.fixture(scope="module", params=KINDS)
def heap_program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Program:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"heap-{kind}")
    path = compile_program(directory, "heap", {"heap.c": HEAP_SOURCE}, kind)
    return Program(load_image(str(path)), nm_symbols(Path(path)))


def _allocation_map() -> AllocationMap:
    live = AllocationMap()
    for start, size in ALLOCATIONS:
        live.add(start, size)
    return live


def _mapping(uc: Uc, address: int) -> tuple[int, int] | None:
    """(start, size) of the readable engine mapping holding ``address``."""
    for begin, end, perms in uc.mem_regions():
        if begin <= address <= end and perms & 1:
            return begin, end + 1 - begin
    return None


@contextmanager
def _probes(uc: Any, probes: dict[int, tuple[str, int, bool]], live: AllocationMap,
            calls: list[int] | None = None) -> Iterator[None]:
    """Hooks on the ``.bounds`` lines that write what leakdbt.run.allocations would (for a
    ``mapped`` line: the allocation, else the readable mapping, uncapped)."""
    regs = dict(GPRS)

    def hook(uc: Uc, address: int, size: int, _: object) -> None:
        register, offset, mapped = probes[address]
        value = uc.reg_read(regs[register])
        found = live.find(value)
        if mapped:
            found = found or _mapping(uc, value)
            start, length = found if found is not None else (0, 0)
        else:
            start, length = found if found is not None and found[1] <= HEAP_CAP else (0, 0)
        if calls is not None:
            calls.append(length)
        rsp = uc.reg_read(x.UC_X86_REG_RSP)
        uc.mem_write(rsp - offset, start.to_bytes(8, "little") + length.to_bytes(8, "little"))

    handles = [uc.hook_add(UC_HOOK_CODE, hook, None, a, a) for a in probes]
    uc.ctl_flush_tb()
    try:
        yield
    finally:
        for h in handles:
            uc.hook_del(h)
        uc.ctl_flush_tb()


def _heap_harden(program: Program, region: CodeRegion, sandbox: Sandbox, granularity: int = 64
                 ) -> tuple[Rewrite, Translation]:
    view = region_view(region, "table", program.bias,
                       {"granularity": granularity, "line_size": 64}, None, program.image)
    assert not find_accesses(view)
    rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite), rewrite
    t = relocate(region, sandbox.bias, sandbox.place, rewrite.replace)
    assert len(t.probes) == len(rewrite.replace)
    return rewrite, t


def _index(limit: int) -> Callable[[random.Random], int]:
    """Mostly in range; sometimes just outside (other memory: unknown or another
    allocation), sometimes far away (the original faults)."""
    return lambda rng: rng.choice([rng.randrange(limit)] * 6 + [
        rng.randrange(-80, limit + 80), rng.getrandbits(40)])


def _table_pointer(rng: random.Random) -> int:
    """The S-box mostly; else another allocation, the over-cap one or no allocation."""
    return rng.choice([SBOX_AT] * 5 + [SCRATCH + 0x1400, TOO_BIG, SCRATCH + 0x3000])


HEAP_CASES = [
    ("heap_get", {"rdi": _table_pointer, "rsi": _index(256)}, 1),
    ("heap_get32", {"rdi": _table_pointer, "rsi": _index(64)}, 1),
    ("heap_get16s", {"rdi": _table_pointer, "rsi": _index(128)}, 1),
    ("heap_put", {"rdi": _table_pointer, "rsi": _index(256)}, 1),
    ("heap_add64", {"rdi": _table_pointer, "rsi": _index(32)}, 1),
]


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize(("function", "choose", "count"), HEAP_CASES,
                         ids=[c[0] for c in HEAP_CASES])
def test_heap_differential(heap_program: Program, function: str, choose: dict[str, Callable[
        [random.Random], int]], count: int, granularity: int) -> None:
    region = heap_program.block_region(function)
    sandbox = Sandbox(heap_program.image, heap_program.bias)
    rewrite, t = _heap_harden(heap_program, region, sandbox, granularity)
    assert len(rewrite.replace) == count
    sizes: list[int] = []
    with _probes(sandbox.uc, t.probes, _allocation_map(), sizes), \
            RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"heap:{function}:{granularity}:{i}" for i in range(STATES)),
                             choose=choose)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= STATES - 2
    # the probe ran on every copy run: known bounds, and refusals (unknown, over the cap)
    assert sizes.count(256) > STATES // 3 and sizes.count(0) > 5


def test_heap_sub_bytes_loop_body(heap_program: Program) -> None:
    """``out[i] = sbox[in[i] ^ key[i]]`` with all four arrays malloc'ed: every access of the
    block gets the bounds of its own allocation."""
    region = heap_program.block_region("heap_sub_bytes", "movzx")
    sandbox = Sandbox(heap_program.image, heap_program.bias)
    rewrite, t = _heap_harden(heap_program, region, sandbox)
    assert len(rewrite.replace) == 4
    texts = [insn.text for insn in region.block_list()[0].insns]
    assert texts[:5] == [  # gcc 12 -O2: in = r9, key = rdx, sbox = rcx, out = rdi, i = rax
        "movzx esi, byte ptr [r9 + rax]", "xor sil, byte ptr [rdx + rax]", "movzx esi, sil",
        "movzx esi, byte ptr [rcx + rsi]", "mov byte ptr [rdi + rax], sil"], texts
    choose: dict[str, Callable[[random.Random], int]] = {
        "r9": lambda rng: SCRATCH + 0x1200, "rdx": lambda rng: SCRATCH + 0x1240,
        "rcx": lambda rng: SBOX_AT, "rdi": lambda rng: SCRATCH + 0x1300,
        "rax": lambda rng: rng.randrange(16), "r8": lambda rng: 16}
    with _probes(sandbox.uc, t.probes, _allocation_map()), \
            RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"heap_sub_bytes:{i}" for i in range(STATES)), choose=choose)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= STATES - 2


@pytest.mark.parametrize(("granularity", "shift"), [(64, 6), (4, 2)])
@pytest.mark.parametrize(("function", "span"), [("heap_get", 256), ("heap_get32", 64),
                                                ("heap_put", 256)])
def test_heap_footprint_does_not_depend_on_the_index(heap_program: Program, function: str,
                                                     span: int, granularity: int,
                                                     shift: int) -> None:
    """The units touched by the copy are the same for every index in the allocation, and
    they cover the allocation; the original's differ."""
    region = heap_program.block_region(function)
    sandbox = Sandbox(heap_program.image, heap_program.bias)
    _, t = _heap_harden(heap_program, region, sandbox, granularity)
    base = random_state(random.Random(f"heap leak:{function}"))
    names = [name for name, _ in GPRS]
    rng = random.Random(function)
    width = 256 // span
    copies, originals = set(), set()
    with _probes(sandbox.uc, t.probes, _allocation_map()), \
            RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        for index in [0, span - 1, *(rng.randrange(span) for _ in range(10))]:
            gprs = list(base.gprs)
            gprs[names.index("rdi")] = SBOX_AT
            gprs[names.index("rsi")] = index
            state = replace(base, gprs=tuple(gprs))
            with _recording(sandbox, t.base, t.end, shift) as touched:
                check.outcome(True, state)
            copies.add(tuple(touched))
            lo, hi = region.byte_ranges[0]
            with _recording(sandbox, lo + sandbox.bias, hi + sandbox.bias, shift) as touched:
                check.outcome(False, state)
            originals.add(tuple(touched))
    assert len(copies) == 1, "the copy's footprint depends on the index"
    assert len(originals) > 1, "the original's footprint should depend on the index"
    (trace,) = copies
    first, last = SBOX_AT >> shift, (SBOX_AT + span * width - 1) >> shift
    assert set(range(first, last + 1)) <= set(trace)


def _heap_lines(insn: Insn, granularity: int) -> list[Line]:
    """The heap sequence for ``insn`` at bias 0, its ``.bounds`` line a marked nop."""
    view = RegionView("t", "table", "block", insn.address,
                      (BlockView(insn.address, (insn,), ()),), 0, None,
                      {"granularity": granularity})
    (access,) = heap_accesses(view)
    out: list[Line] = []
    for line in heap_access(access, granularity):
        if line.startswith(".bounds"):
            register, offset = line.split()[1].rstrip(","), int(line.split()[2], 0)
            assert register == "rsi"
            out.append(Fixed(1, lambda at: b"\x90", PROBE_MARK + offset))
        else:
            out.append(insn.text if line == f".insn {insn.address:#x}" else line)
    return out


PROBE_MARK = 1 << 40


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), granularity=st.sampled_from([1, 2, 4, 8, 16, 64, 128, 4096]),
       count=st.integers(1, 96), offset=st.integers(0, 15), seed=st.integers(0, 2**32),
       index=st.one_of(st.integers(0, 95), st.integers(-40, 140)),
       flags=st.integers(0, 0xFFF), known=st.sampled_from(["yes", "yes", "no", "neighbour"]))
def test_heap_property_equivalent(form: tuple[str, int, int], granularity: int, count: int,
                                  offset: int, seed: int, index: int, flags: int,
                                  known: str) -> None:
    """Any allocation (16-byte aligned start plus ``offset`` elements), index and
    granularity, with the bounds known, unknown, or those of a neighbouring allocation:
    the same registers, flags, xmm0 and memory as the instruction."""
    text, width, _ = form
    rng = random.Random(seed)
    table = DATA + 0x1000 + offset * width
    length = count * width
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    code, pieces = assemble_block_map(_heap_lines(insn, granularity), SEQ)
    (probe, mark), = pieces
    neighbour = (table + length, 0x80)

    def bounds(uc: Uc, address: int, size: int, _: object) -> None:
        ea = uc.reg_read(x.UC_X86_REG_RSI)
        if known == "no":
            found = (0, 0)
        elif table <= ea < table + length:
            found = (table, length)
        elif known == "neighbour" and neighbour[0] <= ea < sum(neighbour):
            found = neighbour
        else:
            found = (0, 0)
        rsp = uc.reg_read(x.UC_X86_REG_RSP)
        uc.mem_write(rsp - (mark - PROBE_MARK), struct.pack("<QQ", *found))

    regs = {name: rng.getrandbits(64) for name, _ in GPRS}
    regs.update(rsp=RSP, rdx=table, rcx=index & ((1 << 64) - 1))
    data = rng.randbytes(0x3000)
    xmm0 = rng.getrandbits(128)
    flags = 0x2 | flags & 0xCD5
    want = _run(insn.raw, CODE, regs, flags, xmm0, data)
    got = _run(code, SEQ, regs, flags, xmm0, data, (probe, bounds))
    assert want[4] is None and got[4] is None
    assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
    assert got[3] == want[3]


def test_heap_replacement_shape() -> None:
    """The scan's trip count comes from the bounds slots (no constant); unknown bounds make
    it empty; the only data-dependent branch is the in-contract test."""
    view = _region("mov eax, dword ptr [rdi + rsi*4]", table=None)
    (access,) = heap_accesses(view)
    lines = heap_access(access, 64)
    assert lines[:2] == ["lea rsp, [rsp - 0x80]", "pushfq"]
    assert lines[8] == "lea rsi, [rdi + rsi*4]" and lines[9] == ".bounds rsi, 0x1b0"
    jumps = [line for line in lines if line.split()[0].startswith("j")]
    assert jumps == ["jmp ot_test", "jb ot_read", "je ot_outside", "jmp ot_done"]
    assert "cmp rcx, qword ptr [rsp - 0x1a0]" in lines  # the span, from the bounds
    assert lines[-2:] == [f".insn {AT:#x}", "ot_done:"]


def test_heap_mode_is_chosen_only_without_other_bounds() -> None:
    load = "movzx eax, byte ptr [rdi + rsi]"
    assert [a.insn.text for a in heap_accesses(_region(load, table=None))] == [load]
    assert heap_accesses(_region(load)) == []  # the contract's bounds
    assert heap_accesses(_region(load, table=None, kind=None)) == []  # not a table region
    assert heap_accesses(_region(load, table=None, params={"granularity": 64,
                                                           "table": "sbox"})) == []
    objects = {"sbox": (T, 256)}  # an access tied to an ELF object: static bounds only
    assert heap_accesses(_region(load, "movzx eax, byte ptr [rax + 0x4a3c00]", table=None,
                                 objects=objects)) == []
    assert "no load or store" in _refusal(_region(load, table=None, params={
        "granularity": 64, "table": "sbox"}))


@pytest.mark.parametrize(("text", "why"), [
    ("lock add dword ptr [rdi + rsi*4], ecx", "prefixes (lock/rep) are not supported"),
    ("xchg dword ptr [rdi + rsi*4], ecx", "xchg/cmpxchg/xadd are atomic"),
    ("push qword ptr [rdi + rsi*8]", "changes RSP"),
    ("call qword ptr [rdi + rsi*8]", "a control transfer through the table"),
    ("vmovdqu ymm0, ymmword ptr [rdi + rsi]", "32-byte memory operand is not supported"),
    ("vmovdqu xmm0, xmmword ptr [rdi + rsi]", "VEX-encoded 16-byte access is not supported"),
])
def test_heap_refusals(text: str, why: str) -> None:
    reason = _refusal(_region(text, table=None))
    assert reason.startswith(f"'{text}' at {AT:#x}: ") and why in reason


def test_bounds_line_through_relocation(heap_program: Program) -> None:
    """relocate() lays a ``.bounds`` line out as a one-byte nop and says where; a malformed
    one is an error."""
    from leakdbt.dbt.region import RegionError

    region = heap_program.block_region("heap_get")
    sandbox = Sandbox(heap_program.image, heap_program.bias)
    rewrite, t = _heap_harden(heap_program, region, sandbox)
    ((at, (register, offset, mapped)),) = t.probes.items()
    assert (register, offset, mapped) == ("rsi", 0x1B0, False)
    assert t.code[at - t.base] == 0x90
    (address,) = rewrite.replace
    flagged = relocate(region, sandbox.bias, sandbox.place,
                       {address: (".bounds rdi, 0x1b0, mapped", original(address))})
    assert list(flagged.probes.values()) == [("rdi", 0x1B0, True)]
    for bad in (".bounds rsi", ".bounds rsi, rdi", ".bounds rsi, 0x10, maped"):
        with pytest.raises(RegionError, match=f"malformed line '{bad}'"):
            relocate(region, sandbox.bias, sandbox.place, {address: (bad, original(address))})
