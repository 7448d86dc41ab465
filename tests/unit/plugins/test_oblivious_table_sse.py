"""Tests of plugins.oblivious_table's 16-byte (legacy SSE) accesses: hand-assembled loads,
ALU sources and stores on random tables, granularities, indices and machine states (all
sixteen xmm registers, flags, memory), with the alignment rule of the aligned forms modelled
(Unicorn does not raise #GP for a misaligned ``movdqa``: a hook does, so "faults exactly where
the original would" is compared too); compiled SSE table code through the differential
harness; the footprint; the refusals; and the cost."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc, UcError
from unicorn import x86_const as x

from leakdbt.loader.elf import load_image
from leakdbt.plugin_api import BlockView, RegionView, detail, detail_constants
from leakdbt.x86.asm import assemble, assemble_block, assemble_block_map
from leakdbt.x86.insn import Insn, decode
from plugins.oblivious_table import (
    UNALIGNED_OK,
    find_accesses,
    heap_access,
    heap_accesses,
)
from tests.unit.dbt.harness import GPRS, RegionCheck, Sandbox, compile_program, nm_symbols
from tests.unit.plugins.test_oblivious_table import (
    Program,
    _harden,
    _lines_for,
    _refusal,
    _region,
)

CODE = 0x10_0000
SEQ = 0x20_0000
DATA = 0x40_0000  # 3 pages: the table lives in the middle one
STACK = 0x70_0000
XMMS = tuple(getattr(x, f"UC_X86_REG_XMM{i}") for i in range(16))
REG = dict(GPRS)

# (text, index scale): scale 8 with a 16-byte-aligned table gives misaligned EAs for odd
# indices (the aligned forms then fault); scale 1 gives every offset (the unaligned forms)
FORMS = [
    ("movdqu xmm0, xmmword ptr [rdx + rcx]", 1),
    ("movdqa xmm0, xmmword ptr [rdx + rcx*8]", 8),
    ("movups xmm1, xmmword ptr [rdx + rcx]", 1),
    ("movaps xmm2, xmmword ptr [rdx + rcx*8]", 8),
    ("movupd xmm3, xmmword ptr [rdx + rcx*8 + 8]", 8),
    ("movapd xmm0, xmmword ptr [rdx + rcx*8]", 8),
    ("lddqu xmm1, xmmword ptr [rdx + rcx]", 1),
    ("pxor xmm0, xmmword ptr [rdx + rcx*8]", 8),
    ("pand xmm1, xmmword ptr [rdx + rcx*8]", 8),
    ("paddd xmm2, xmmword ptr [rdx + rcx*8]", 8),
    ("pshufd xmm3, xmmword ptr [rdx + rcx*8], 0x1b", 8),
    ("ptest xmm0, xmmword ptr [rdx + rcx*8]", 8),  # flags
    ("pcmpistri xmm1, xmmword ptr [rdx + rcx], 0xc", 1),  # ecx and flags
    ("movdqu xmmword ptr [rdx + rcx], xmm0", 1),
    ("movdqa xmmword ptr [rdx + rcx*8], xmm1", 8),
    ("movups xmmword ptr [rdx + rcx*8 + 8], xmm2", 8),
    ("movaps xmmword ptr [rdx + rcx*8], xmm3", 8),
    ("movntdq xmmword ptr [rdx + rcx*8], xmm0", 8),
]
GRANULARITIES = [1, 2, 4, 8, 16, 32, 64, 128, 4096]

_decoded: dict[tuple[int, bytes], tuple[bool, Any]] = {}


def _aligned_operand(uc: Uc, address: int, size: int, _: object) -> None:
    """#GP for a legacy-SSE aligned form whose 16-byte operand is misaligned (what the CPU
    does and Unicorn does not): the run stops at that instruction, marked in RAX's place."""
    raw = bytes(uc.mem_read(address, size))
    key = (address, raw)
    if key not in _decoded:
        insn = decode(raw, address)
        assert insn is not None
        k = detail_constants()
        ci = detail(insn)
        mems = [op for op in ci.operands if op.type == k.op_mem and op.size == 16]
        check = bool(mems) and insn.mnemonic not in UNALIGNED_OK
        _decoded[key] = (check, (ci, mems[0].mem) if check else None)
    check, found = _decoded[key]
    if not check:
        return
    ci, mem = found
    ea = mem.disp
    if mem.base:
        ea += uc.reg_read(REG[ci.reg_name(mem.base)])
    if mem.index:
        ea += uc.reg_read(REG[ci.reg_name(mem.index)]) * mem.scale
    if ea % 16:
        _faults.append(address)
        uc.emu_stop()


_faults: list[int] = []


def _run(code: bytes, at: int, regs: dict[str, int], flags: int, xmm: list[int], data: bytes,
         probe: tuple[int, Callable[..., None]] | None = None) -> tuple[Any, ...]:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x10000)
    uc.mem_map(SEQ, 0x10000)
    uc.mem_map(DATA, 0x3000)
    uc.mem_map(STACK, 0x10000)
    uc.mem_write(at, code)
    uc.mem_write(DATA, data)
    uc.mem_write(STACK, bytes(0x10000))
    for name, reg in GPRS:
        uc.reg_write(reg, regs[name])
    uc.reg_write(x.UC_X86_REG_EFLAGS, flags)
    for reg, value in zip(XMMS, xmm, strict=True):
        uc.reg_write(reg, value)
    uc.hook_add(UC_HOOK_CODE, _aligned_operand, None, at, at + len(code))
    if probe is not None:
        uc.hook_add(UC_HOOK_CODE, probe[1], None, probe[0], probe[0])
    del _faults[:]
    fault = None
    try:
        uc.emu_start(at, at + len(code))
    except UcError as e:
        fault = f"{e.errno}"
    gp = "#GP" if _faults else None
    return ({name: uc.reg_read(reg) for name, reg in GPRS}, uc.reg_read(x.UC_X86_REG_EFLAGS),
            [uc.reg_read(reg) for reg in XMMS], bytes(uc.mem_read(DATA, 0x3000)), fault, gp)


def _state(seed: int, table: int, index: int, flags: int
           ) -> tuple[dict[str, int], int, list[int], bytes]:
    rng = random.Random(seed)
    regs = {name: rng.getrandbits(64) for name, _ in GPRS}
    # RSP anywhere 8-aligned: the copy's 16-byte slot must be aligned whatever RSP is
    regs.update(rsp=STACK + 0x8000 - 8 * rng.randrange(4), rdx=table,
                rcx=index & ((1 << 64) - 1))
    return regs, 0x2 | flags & 0xCD5, [rng.getrandbits(128) for _ in XMMS], rng.randbytes(0x3000)


def _compare(want: tuple[Any, ...], got: tuple[Any, ...]) -> None:
    assert want[4] is None and got[4] is None  # the index stays in the mapped pages
    assert got[5] == want[5], "faults where the original does not, or the other way"
    assert got[0] == want[0] and got[1] == want[1]
    assert got[2] == want[2]
    assert got[3] == want[3]



@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), granularity=st.sampled_from(GRANULARITIES),
       count=st.integers(1, 40), offset=st.integers(0, 8), seed=st.integers(0, 2**32),
       index=st.one_of(st.integers(0, 700), st.integers(-40, 760)),
       flags=st.integers(0, 0xFFF))
def test_property_equivalent(form: tuple[str, int], granularity: int, count: int,
                             offset: int, seed: int, index: int, flags: int) -> None:
    """Any 16-byte-aligned table of ``count`` 16-byte elements, any granularity and index
    (in bounds, misaligned, straddling, out of bounds): the same general registers, flags,
    xmm0-15, memory and #GP as the instruction."""
    text, scale = form
    table = DATA + 0x1000 + offset * 16
    length = count * 16
    index = index if scale == 1 else index // 8
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    code = assemble_block(_lines_for(insn, table, length, granularity), SEQ)
    regs, flags, xmm, data = _state(seed, table, index, flags)
    _compare(_run(insn.raw, CODE, regs, flags, xmm, data),
             _run(code, SEQ, regs, flags, xmm, data))


def _heap_lines(insn: Insn, granularity: int) -> tuple[list[Any], int]:
    from leakdbt.x86.asm import Fixed

    view = RegionView("t", "table", "block", insn.address,
                      (BlockView(insn.address, (insn,), ()),), 0, None,
                      {"granularity": granularity})
    (access,) = heap_accesses(view)
    out: list[Any] = []
    offset = 0
    for line in heap_access(access, granularity):
        if line.startswith(".bounds"):
            offset = int(line.split()[2], 0)
            out.append(Fixed(1, lambda at: b"\x90", 1 << 40))
        else:
            out.append(insn.text if line == f".insn {insn.address:#x}" else line)
    return out, offset


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), granularity=st.sampled_from(GRANULARITIES),
       count=st.integers(1, 40), offset=st.integers(0, 8), seed=st.integers(0, 2**32),
       index=st.one_of(st.integers(0, 700), st.integers(-40, 760)),
       flags=st.integers(0, 0xFFF), known=st.sampled_from(["yes", "yes", "no"]))
def test_heap_property_equivalent(form: tuple[str, int], granularity: int, count: int,
                                  offset: int, seed: int, index: int, flags: int,
                                  known: str) -> None:
    """The same with the bounds of the allocation given at run time (or unknown)."""
    text, scale = form
    table = DATA + 0x1000 + offset * 16
    length = count * 16
    index = index if scale == 1 else index // 8
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    lines, slot = _heap_lines(insn, granularity)
    code, pieces = assemble_block_map(lines, SEQ)
    (probe, _), = pieces

    def bounds(uc: Uc, address: int, size: int, _: object) -> None:
        ea = uc.reg_read(x.UC_X86_REG_RSI)
        found = (table, length) if known == "yes" and table <= ea < table + length else (0, 0)
        rsp = uc.reg_read(x.UC_X86_REG_RSP)
        uc.mem_write(rsp - slot, found[0].to_bytes(8, "little") + found[1].to_bytes(8, "little"))

    regs, flags, xmm, data = _state(seed, table, index, flags)
    _compare(_run(insn.raw, CODE, regs, flags, xmm, data),
             _run(code, SEQ, regs, flags, xmm, data, (probe, bounds)))


def test_misaligned_aligned_form_runs_the_original() -> None:
    """``movdqa`` at a misaligned in-bounds element: out of contract, so the original runs
    (and faults, #GP, at the original's instruction); ``movdqu`` there is in contract.  The
    rule is checked directly, not only through the property."""
    table, length = DATA + 0x1000, 256
    for text, faults in (("movdqa xmm0, xmmword ptr [rdx + rcx]", True),
                         ("movdqu xmm0, xmmword ptr [rdx + rcx]", False)):
        insn = decode(assemble(text, CODE), CODE)
        assert insn is not None
        lines = _lines_for(insn, table, length, 64)
        code = assemble_block(lines, SEQ)
        regs, flags, xmm, data = _state(7, table, 0x28, 0)  # 8 bytes into element 2
        want = _run(insn.raw, CODE, regs, flags, xmm, data)
        got = _run(code, SEQ, regs, flags, xmm, data)
        _compare(want, got)
        assert (want[5] == "#GP") is faults
        assert ("and edx, 0xf" in lines) is faults  # the alignment term of the check


# --------------------------------------------------------------------------------------------
# Compiled SSE table code, through the differential harness (xmm0-15 compared)

SOURCE = r"""
#include <emmintrin.h>
#include <stdint.h>
#define NI __attribute__((noinline))
__m128i vtab[16] __attribute__((aligned(64)));
uint8_t btab[256] __attribute__((aligned(64)));
NI __m128i vget(unsigned i) { return _mm_load_si128(&vtab[i & 15]); }
NI __m128i vxor(unsigned i, __m128i v) { return _mm_xor_si128(v, vtab[i & 15]); }
NI void vput(unsigned i, __m128i v) { _mm_store_si128(&vtab[i & 15], v); }
NI __m128i vgetu(unsigned i) { return _mm_loadu_si128((const __m128i *)(btab + (i & 127))); }
NI void vputu(unsigned i, __m128i v) { _mm_storeu_si128((__m128i *)(btab + (i & 127)), v); }
int main(int argc, char **argv) {
    __m128i v = _mm_set1_epi32(argc);
    vput(argc, v); vputu(argc, v);
    return _mm_cvtsi128_si32(_mm_add_epi32(_mm_add_epi32(vget(argc), vgetu(argc)),
                                           vxor(argc, v)));
}
"""
STATES = 150


@pytest.fixture(scope="module", params=["static", "static-pie"])
def sse_program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> Program:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"sse-{kind}")
    extra = ["-fno-pie"] if kind == "static" else []
    path = compile_program(directory, "sse", {"sse.c": SOURCE}, kind, extra)
    return Program(load_image(str(path)), nm_symbols(Path(path)))


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize("function", ["vget", "vxor", "vput", "vgetu", "vputu"])
def test_differential(sse_program: Program, function: str, granularity: int) -> None:
    region = sse_program.block_region(function)
    sandbox = Sandbox(sse_program.image, sse_program.bias)
    rewrite, t = _harden(sse_program, region, sandbox, granularity)
    texts = [insn.text for b in region.block_list() for insn in b.insns
             if insn.address in rewrite.replace]
    assert len(texts) == 1 and "xmmword ptr" in texts[0], texts
    with RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"sse:{function}:{granularity}:{i}" for i in range(STATES)),
                             choose={"rdi": lambda rng: rng.choice(
                                 [rng.randrange(256), rng.getrandbits(32)])})
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= STATES - 2


# --------------------------------------------------------------------------------------------
# Refusals and cost

@pytest.mark.parametrize(("text", "why"), [
    ("vmovdqu xmm0, xmmword ptr [rax + 0x4a3c00]", "VEX-encoded 16-byte access is not supported"),
    ("vpxor xmm0, xmm1, xmmword ptr [rax + 0x4a3c00]",
     "VEX-encoded 16-byte access is not supported"),
    ("vmovdqu ymm0, ymmword ptr [rax + 0x4a3c00]",
     "32-byte memory operand is not supported (1, 2, 4, 8 or 16 bytes)"),
    ("fld xword ptr [rax + 0x4a3c00]",
     "10-byte memory operand is not supported (1, 2, 4, 8 or 16 bytes)"),
])
def test_refused_wide_forms(text: str, why: str) -> None:
    reason = _refusal(_region(text))
    assert reason.startswith(f"'{text}' at ") and why in reason, reason


def test_refused_misaligned_table() -> None:
    assert "not aligned to its 16-byte accesses" in _refusal(
        _region("movdqu xmm0, xmmword ptr [rax + 0x4a3c08]", table=(0x4A_3C08, 256)))


def _executed(lines: list[str], table: int, index: int) -> int:
    """Instructions the sequence runs for one in-contract lookup."""
    code = assemble_block(lines, SEQ)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    for base in (SEQ, DATA, STACK):
        uc.mem_map(base, 0x10000)
    uc.mem_write(SEQ, code)
    uc.reg_write(x.UC_X86_REG_RSP, STACK + 0x8000)
    uc.reg_write(x.UC_X86_REG_RDX, table)
    uc.reg_write(x.UC_X86_REG_RCX, index)
    count = [0]
    uc.hook_add(UC_HOOK_CODE, lambda *a: count.__setitem__(0, count[0] + 1))
    uc.emu_start(SEQ, SEQ + len(code))
    return count[0]


@pytest.mark.parametrize(("text", "units", "per_unit", "fixed"), [
    # n units: fixed + per_unit * n instructions (the numbers docs/passes.md quotes)
    ("mov rax, qword ptr [rdx + rcx*8]", 4, 6, 46),
    ("movdqu xmm0, xmmword ptr [rdx + rcx]", 4, 8, 58),
    ("movdqa xmm0, xmmword ptr [rdx + rcx*8]", 4, 8, 62),
    ("movdqu xmmword ptr [rdx + rcx], xmm0", 4, 10, 74),
])
def test_cost(text: str, units: int, per_unit: int, fixed: int) -> None:
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    table = DATA + 0x1000
    costs = []
    for n in (units, 4 * units):
        lines = _lines_for(insn, table, 64 * n, 64)
        costs.append(_executed(lines, table, 2))
    assert costs[1] - costs[0] == per_unit * 3 * units
    assert costs[0] - per_unit * units == fixed


# Stores Capstone marks as reading their (1-8 byte) destination and not writing it: taken as
# stores (before, the table was left unwritten)
NARROW_STORES = [
    ("movnti dword ptr [rdx + rcx*4], eax", 4),
    ("movnti qword ptr [rdx + rcx*8], rax", 8),
    ("movq qword ptr [rdx + rcx*8], xmm1", 8),
    ("movlps qword ptr [rdx + rcx*8], xmm2", 8),
    ("movhps qword ptr [rdx + rcx*8], xmm3", 8),
    ("pextrd dword ptr [rdx + rcx*4], xmm0, 1", 4),
    ("pextrb byte ptr [rdx + rcx], xmm1, 3", 1),
    ("extractps dword ptr [rdx + rcx*4], xmm2, 2", 4),
    ("movd dword ptr [rdx + rcx*4], xmm0", 4),
]


def test_narrow_stores_are_stores() -> None:
    view = _region(*(text.replace("rdx", "rax").replace("rcx", "rsi")
                     for text, _ in NARROW_STORES))
    found = find_accesses(view)
    assert len(found) == len(NARROW_STORES)
    assert all(a.writes and not a.reads for a, _ in found)
    (cmp, _), = find_accesses(_region("cmp dword ptr [rax + rsi*4], eax"))
    assert cmp.reads and not cmp.writes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(NARROW_STORES), granularity=st.sampled_from(GRANULARITIES),
       count=st.integers(1, 96), offset=st.integers(0, 15), seed=st.integers(0, 2**32),
       index=st.one_of(st.integers(0, 95), st.integers(-40, 140)),
       flags=st.integers(0, 0xFFF))
def test_narrow_store_property_equivalent(form: tuple[str, int], granularity: int, count: int,
                                          offset: int, seed: int, index: int,
                                          flags: int) -> None:
    text, width = form
    table = DATA + 0x1000 + offset * width
    length = count * width
    insn = decode(assemble(text, CODE), CODE)
    assert insn is not None
    code = assemble_block(_lines_for(insn, table, length, granularity), SEQ)
    regs, flags, xmm, data = _state(seed, table, index, flags)
    _compare(_run(insn.raw, CODE, regs, flags, xmm, data),
             _run(code, SEQ, regs, flags, xmm, data))
