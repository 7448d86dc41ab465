"""Tests of the oblivious-table pass's value-range tables (plugins.oblivious_table.
range_access, plugins.support.value_range): an index the block bounds (``movzx``, ``and``,
``shr``) gives the span an access can touch, scanned obliviously with no table bounds.

Soundness of the bounds (random states in raw Unicorn never exceed them); differential
(original vs hardened in raw Unicorn: a Blowfish-style F function with its S-boxes on the
stack, in an allocation, across the end of a mapping, or unmapped; a hypothesis property on
hand-assembled pairs); leakage (the units touched do not depend on the index); and which
accesses get value-range bounds, allocation bounds, or are left alone."""

from __future__ import annotations

import random
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as x

from leakdbt.loader.elf import load_image
from leakdbt.plugin_api import BlockView, Refusal, RegionView, Rewrite
from leakdbt.x86.asm import Fixed, Line, assemble, assemble_block_map
from leakdbt.x86.insn import Insn, decode
from plugins.oblivious_table import PASS, heap_accesses, range_access
from plugins.support.value_range import upper_bound
from tests.unit.dbt.harness import (
    GPRS,
    SCRATCH,
    SCRATCH_SIZE,
    STACK,
    RegionCheck,
    Sandbox,
    compile_program,
    nm_symbols,
    random_state,
)
from tests.unit.plugins.test_oblivious_table import (
    AT,
    CODE,
    DATA,
    KINDS,
    PROBE_MARK,
    RSP,
    SEQ,
    Program,
    _allocation_map,
    _heap_harden,
    _probes,
    _recording,
    _region,
    _run,
)

STATES = 200

# --------------------------------------------------------------------------------------------
# The bounds are sound: no input makes the register exceed them

BOUNDED = [
    # (block before the access, register, bound)
    (["movzx ecx, al"], "rcx", 0xFF),
    (["movzx ecx, ah"], "rcx", 0xFF),
    (["movzx rcx, word ptr [rsp]"], "rcx", 0xFFFF),
    (["mov ecx, eax", "shr ecx, 0x18"], "rcx", 0xFF),
    (["shr rcx, 0x38"], "rcx", 0xFF),
    (["and ecx, 0x3f"], "rcx", 0x3F),
    (["and rcx, 0x7f0"], "rcx", 0x7F0),
    (["movzx edi, ch", "mov r10d, edi"], "r10", 0xFF),
    (["movzx eax, al", "mov rcx, rax"], "rcx", 0xFF),
    (["movzx edx, dl", "and ecx, edx"], "rcx", 0xFF),
    (["xor ecx, ecx"], "rcx", 0),
    (["mov ecx, 0x30"], "rcx", 0x30),
    (["mov ecx, dword ptr [rsp]"], "rcx", 0xFFFF_FFFF),
    (["bswap ecx"], "rcx", 0xFFFF_FFFF),
    (["movzx ecx, al", "mov cl, bl"], "rcx", 0xFF),
    (["movzx ecx, al", "mov ch, bl"], "rcx", 0xFFFF),
    (["mov ecx, eax", "shr ecx, cl"], "rcx", 0xFFFF_FFFF),
    (["movzx ecx, dh", "add ecx, 0x200"], "rcx", 0x2FF),
    (["and ecx, 0xf", "or ecx, 0x10"], "rcx", 0x1F),
    (["movzx eax, al", "lea ecx, [rax*4 + 8]"], "rcx", 0x404),
    (["movzx eax, al", "movzx edx, dl", "lea rcx, [rdx + rax*2 + 1]"], "rcx", 0x2FE),
    (["movzx ecx, al", "add ecx, -1"], "rcx", 0xFFFF_FFFF),  # wraps: only the width
]
UNBOUNDED = [
    # a live-in register, 64-bit writes the rules do not know, a partial write of an
    # unknown register, sign extension, bsf (may leave its destination as it was)
    ([], "rcx"), (["add rcx, 1"], "rcx"), (["mov cl, al"], "rcx"),
    (["movsxd rcx, eax"], "rcx"), (["movsx rcx, al"], "rcx"), (["bsf ecx, eax"], "rcx"),
    (["movzx ecx, al", "mov rcx, rdx"], "rcx"), (["shr rcx, cl"], "rcx"),
    (["movzx ecx, al", "add rcx, -1"], "rcx"), (["lea rcx, [rdx + 1]"], "rcx"),
    (["movzx eax, al", "lea rcx, [rax - 1]"], "rcx"),
]


def _block(texts: list[str], tail: str = "nop") -> tuple[Insn, ...]:
    insns = []
    at = CODE
    for text in [*texts, tail]:
        insn = decode(assemble(text, at), at)
        assert insn is not None
        insns.append(insn)
        at += len(insn.raw)
    return tuple(insns)


@pytest.mark.parametrize(("texts", "register", "bound"), BOUNDED,
                         ids=["; ".join(c[0]) for c in BOUNDED])
def test_bound_is_read_off_the_block_and_holds(texts: list[str], register: str, bound: int
                                               ) -> None:
    block = _block(texts)
    assert upper_bound(block, len(block) - 1, register) == bound
    rng = random.Random(f"bound {texts}")
    code = b"".join(i.raw for i in block[:-1])
    reached = 0
    for _ in range(STATES):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(CODE, 0x1000)
        uc.mem_map(RSP - 0x1000, 0x2000)
        uc.mem_write(CODE, code)
        uc.mem_write(RSP, rng.randbytes(8))
        for name, reg in GPRS:
            uc.reg_write(reg, RSP if name == "rsp" else rng.choice(
                [rng.getrandbits(64), rng.getrandbits(8), (1 << 64) - 1]))
        uc.emu_start(CODE, CODE + len(code))
        value = uc.reg_read(dict(GPRS)[register])
        assert value <= bound, (texts, hex(value))
        reached = max(reached, value)
    assert bound in (0, 0xFFFF_FFFF) or reached > bound // 4  # not wildly loose here


@pytest.mark.parametrize(("texts", "register"), UNBOUNDED,
                         ids=["; ".join(c[0]) or "live-in" for c in UNBOUNDED])
def test_no_bound_without_evidence(texts: list[str], register: str) -> None:
    block = _block(texts)
    assert upper_bound(block, len(block) - 1, register) is None


# --------------------------------------------------------------------------------------------
# Which accesses get value-range bounds


def test_value_range_span_of_each_access() -> None:
    """``[base + index*scale + disp]``: the span starts at base + disp and holds
    bound*scale + width bytes; scale 1 with only the base bounded: the base is the index."""
    view = _region("movzx r8d, cl", "mov ebx, dword ptr [rax + r8*4 + 0x400]",
                   "movzx ecx, byte ptr [rcx + rdx - 0x10]",
                   "shr rsi, 0x38", "mov rdx, qword ptr [rsi + rdi]", table=None)
    spans = [(a.insn.text, a.span) for a in heap_accesses(view)]
    assert [(t, s.start, s.length, s.index, s.base) if s else (t, None) for t, s in spans] == [
        ("mov ebx, dword ptr [rax + r8*4 + 0x400]", "rax + 0x400", 255 * 4 + 4, "r8", "rax"),
        ("movzx ecx, byte ptr [rcx + rdx - 0x10]", None),  # neither register bounded
        ("mov rdx, qword ptr [rsi + rdi]", "rdi + 0x0", 255 + 8, "rsi", "rdi")]


def test_too_wide_or_self_indexed_gets_allocation_bounds() -> None:
    """An index bounded above 64 KiB of span, or used as its own base, gets the allocation's
    bounds at run time (a plain ``.bounds`` line on the effective address)."""
    for texts in (["and ecx, 0xffff", "mov eax, dword ptr [rdx + rcx*4]"],
                  ["movzx ecx, cl", "mov eax, dword ptr [rcx + rcx*2]"],
                  ["mov eax, dword ptr [rdx + rcx*4]"]):
        view = _region(*texts, table=None)
        (access,) = heap_accesses(view)
        assert access.span is None
        rewrite = PASS.harden(view, None, None)  # type: ignore[arg-type]
        assert isinstance(rewrite, Rewrite)
        (lines,) = rewrite.replace.values()
        assert ".bounds rsi, 0x1b0" in lines and not any("mapped" in li for li in lines)


def test_accesses_through_the_public_base_are_left_alone() -> None:
    """Blowfish's P-array reads ``[rax + 0x1000]`` use the base register the S-box spans
    start at: as public as those starts, not a table access; once the base changes (or
    before it is set) they are heap-table accesses again."""
    sbox = "mov ebx, dword ptr [rax + r8*4]"
    view = _region("movzx r8d, cl", "xor ecx, dword ptr [rax + 0x1000]", sbox,
                   "xor edx, dword ptr [rax + 0x1004]", "mov rax, rdx",
                   "xor edx, dword ptr [rax + 0x1008]", table=None)
    assert [a.insn.text for a in heap_accesses(view)] == [
        sbox, "xor edx, dword ptr [rax + 0x1008]"]


def test_range_replacement_shape() -> None:
    """The span's start (public) is what the translator is asked about (``mapped``), before
    RSI is overwritten; the only data-dependent branch is the in-contract test."""
    view = _region("movzx esi, cl", "mov eax, dword ptr [rsi*4 + 0x400]", table=None)
    view2 = _region("movzx ecx, cl", "mov eax, dword ptr [rdi + rcx*4 + 0x400]", table=None)
    (a,) = heap_accesses(view2)
    assert a.span is not None
    lines = range_access(a, a.span, 64)
    assert lines[8:12] == ["lea rdx, [rdi + 0x400]", "lea rsi, [rdi + rcx*4 + 0x400]",
                           "mov rdi, rdx", ".bounds rdi, 0x1b0, mapped"]
    assert "movabs rax, 0x400" in lines
    jumps = [line for line in lines if line.split()[0].startswith("j")]
    assert jumps == ["jmp ot_test", "jb ot_read", "je ot_outside", "jmp ot_done"]
    (b,) = heap_accesses(view)  # no base: the span starts at the displacement
    assert b.span is not None and b.span.start == "0x400" and b.span.base is None


@pytest.mark.parametrize(("text", "why"), [
    ("lock add dword ptr [rdx + rcx*4], eax", "prefixes (lock/rep) are not supported"),
    ("xchg dword ptr [rdx + rcx*4], eax", "xchg/cmpxchg/xadd are atomic"),
    ("call qword ptr [rdx + rcx*8]", "a control transfer through the table"),
    ("vmovdqu xmm0, xmmword ptr [rdx + rcx]", "VEX-encoded 16-byte access is not supported"),
])
def test_range_access_refusals(text: str, why: str) -> None:
    """A bounded index does not lift the per-access refusals."""
    view = _region("movzx ecx, cl", text, table=None)
    result = PASS.harden(view, None, None)  # type: ignore[arg-type]
    assert isinstance(result, Refusal)
    at = AT + len(assemble("movzx ecx, cl", AT))
    assert result.reason.startswith(f"'{text}' at {at:#x}: ") and why in result.reason


# --------------------------------------------------------------------------------------------
# Differential: hand-assembled (bounding instruction, access) pairs, any placement

PAIRS = [
    # (bounding instruction, access, width)
    ("movzx ecx, cl", "movzx eax, byte ptr [rdx + rcx]", 1),
    ("movzx ecx, cl", "mov eax, dword ptr [rdx + rcx*4 + 0x400]", 4),
    ("movzx ecx, ch", "add eax, dword ptr [rdx + rcx*4]", 4),
    ("and ecx, 0x3f", "xor al, byte ptr [rdx + rcx]", 1),
    ("and ecx, 0x1f", "mov rax, qword ptr [rdx + rcx*8 + 8]", 8),
    ("shr rcx, 0x38", "mov rax, qword ptr [rdx + rcx*8]", 8),
    ("shr rcx, 0x39", "movsx eax, word ptr [rdx + rcx*2]", 2),
    ("and ecx, 0xff", "mov byte ptr [rdx + rcx], al", 1),
    ("and ecx, 0x3f", "add dword ptr [rdx + rcx*4], eax", 4),
    ("and ecx, 0x7", "movdqu xmm0, xmmword ptr [rdx + rcx*8]", 16),
    ("movzx ecx, cl", "mov eax, dword ptr [rcx*4 + 0x401000]", 4),
]


def _range_lines(pair: tuple[str, str, int], granularity: int
                 ) -> tuple[list[Line], Insn, Insn]:
    first = decode(assemble(pair[0], CODE), CODE)
    assert first is not None
    second = decode(assemble(pair[1], CODE + len(first.raw)), CODE + len(first.raw))
    assert second is not None
    view = RegionView("t", "table", "block", CODE, (BlockView(CODE, (first, second), ()),),
                      0, None, {"granularity": granularity})
    (access,) = heap_accesses(view)
    assert access.span is not None
    out: list[Line] = [first.text]
    for line in range_access(access, access.span, granularity):
        if line.startswith(".bounds"):
            assert line.endswith(", mapped")
            offset = int(line.split()[2].rstrip(","), 0)
            out.append(Fixed(1, lambda at: b"\x90", PROBE_MARK + offset))
        else:
            out.append(second.text if line == f".insn {second.address:#x}" else line)
    return out, first, second


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(PAIRS), granularity=st.sampled_from([1, 4, 16, 64, 128, 4096]),
       offset=st.integers(0, 15), seed=st.integers(0, 2**32),
       known=st.sampled_from(["mapping", "mapping", "allocation", "short", "none"]),
       flags=st.integers(0, 0xFFF))
def test_range_property_equivalent(pair: tuple[str, str, int], granularity: int, offset: int,
                                   seed: int, known: str, flags: int) -> None:
    """Any table start (mid-line), index, granularity, and what the translator answers for
    the span's start — the mapping (whole span readable), an allocation smaller than the
    span, a mapping ending inside the span, nothing — gives the instruction's registers,
    flags, xmm0 and memory."""
    rng = random.Random(seed)
    width = pair[2]
    table = DATA + 0x1000 + offset * width
    lines, first, second = _range_lines(pair, granularity)
    code, pieces = assemble_block_map(lines, SEQ)
    (probe, mark), = pieces
    disp = re.search(r"\+ (0x[0-9a-f]+|[0-9]+)\]", pair[1])
    start = int(disp.group(1), 0) if disp else 0
    if "rdx" in pair[1]:
        start += table

    def bounds(uc: Uc, address: int, size: int, _: object) -> None:
        assert uc.reg_read(x.UC_X86_REG_RDI) == start  # the span's public start
        found = {"mapping": (DATA, 0x3000), "allocation": (start, 100),
                 "short": (DATA, start + 40 - DATA), "none": (0, 0)}[known]
        rsp = uc.reg_read(x.UC_X86_REG_RSP)
        uc.mem_write(rsp - (mark - PROBE_MARK), struct.pack("<QQ", *found))

    regs = {name: rng.getrandbits(64) for name, _ in GPRS}
    regs.update(rsp=RSP, rdx=table)
    data = rng.randbytes(0x3000)
    xmm0 = rng.getrandbits(128)
    flags = 0x2 | flags & 0xCD5
    want = _run(first.raw + second.raw, CODE, regs, flags, xmm0, data)
    got = _run(code, SEQ, regs, flags, xmm0, data, (probe, bounds))
    assert want[4] is None and got[4] is None  # every span lies in the mapped pages
    assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
    assert got[3] == want[3]


# --------------------------------------------------------------------------------------------
# Differential on compiled code: a Blowfish round function with its S-boxes anywhere

RANGE_SOURCE = """
#include <stdint.h>
#include <stddef.h>
#define NI __attribute__((noinline))
NI uint32_t bf_f(const uint32_t *S, uint32_t x) {
    return ((S[x >> 24] + S[256 + ((x >> 16) & 0xff)]) ^ S[512 + ((x >> 8) & 0xff)])
           + S[768 + (x & 0xff)];
}
NI unsigned masked_get(const uint8_t *t, size_t i) { return t[i & 63]; }
NI void masked_put(uint16_t *t, uint64_t x, uint16_t v) { t[x >> 58] = v; }
int main(int argc, char **argv) {
    uint32_t s[1024] = {0}; uint8_t t[64] = {0}; uint16_t h[64] = {0};
    masked_put(h, (uint64_t)argc << 60, 1);
    return (int)(bf_f(s, (uint32_t)argc) + masked_get(t, (size_t)argc) + h[1]);
}
"""


@pytest.fixture(scope="module", params=KINDS)
def range_program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Program:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"range-{kind}")
    path = compile_program(directory, "range", {"range.c": RANGE_SOURCE}, kind)
    return Program(load_image(str(path)), nm_symbols(Path(path)))


STACK_TABLE = STACK + 0x400  # 4 KiB below the harness's RSP: no allocation holds it
END_OF_SCRATCH = SCRATCH + SCRATCH_SIZE - 0x100  # the span runs past the mapping


def _table(rng: random.Random) -> int:
    """On the stack mostly; else in an allocation (256 bytes), at the end of a mapping, or
    unmapped (every access then faults, both sides)."""
    return rng.choice([STACK_TABLE] * 5 + [SCRATCH + 0x1010, END_OF_SCRATCH, 0x1000])


RANGE_CASES = [
    ("bf_f", {"rdi": _table}, 4),
    ("masked_get", {"rdi": _table}, 1),
    ("masked_put", {"rdi": _table}, 1),
]


@pytest.mark.parametrize("granularity", [64, 4])
@pytest.mark.parametrize(("function", "choose", "count"), RANGE_CASES,
                         ids=[c[0] for c in RANGE_CASES])
def test_range_differential(range_program: Program, function: str, choose: dict[str, Any],
                            count: int, granularity: int) -> None:
    region = range_program.block_region(function)
    sandbox = Sandbox(range_program.image, range_program.bias)
    rewrite, t = _heap_harden(range_program, region, sandbox, granularity)
    assert len(rewrite.replace) == count
    assert [mapped for _, _, mapped in t.probes.values()] == [True] * count
    sizes: list[int] = []
    with _probes(sandbox.uc, t.probes, _allocation_map(), sizes), \
            RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        report = check.check((f"range:{function}:{granularity}:{i}" for i in range(STATES)),
                             choose=choose)
    assert not report.mismatches, report.mismatches[:3]
    assert report.compared >= STATES - 2
    # the stack's mapping, the 256-byte allocation, the scratch mapping, nothing
    assert {0x4000, 256, 0} <= set(sizes)


@pytest.mark.parametrize(("granularity", "shift"), [(64, 6), (4, 2)])
def test_range_footprint_does_not_depend_on_the_index(range_program: Program,
                                                      granularity: int, shift: int) -> None:
    """bf_f with its S-boxes on the stack: the units the copy touches are the same for every
    input and cover the four S-boxes; the original's differ."""
    region = range_program.block_region("bf_f")
    sandbox = Sandbox(range_program.image, range_program.bias)
    _, t = _heap_harden(range_program, region, sandbox, granularity)
    base = random_state(random.Random("range leak"))
    names = [name for name, _ in GPRS]
    rng = random.Random("bf_f")
    copies, originals = set(), set()
    with _probes(sandbox.uc, t.probes, _allocation_map()), \
            RegionCheck(sandbox, region, t, scratch_below_red_zone=True) as check:
        for value in [0, 0xFFFF_FFFF, *(rng.getrandbits(32) for _ in range(10))]:
            gprs = list(base.gprs)
            gprs[names.index("rdi")] = STACK_TABLE
            gprs[names.index("rsi")] = value
            state = replace(base, gprs=tuple(gprs))
            with _recording(sandbox, t.base, t.end, shift) as touched:
                check.outcome(True, state)
            copies.add(tuple(touched))
            lo, hi = region.byte_ranges[0]
            with _recording(sandbox, lo + sandbox.bias, hi + sandbox.bias, shift) as touched:
                check.outcome(False, state)
            originals.add(tuple(touched))
    assert len(copies) == 1, "the copy's footprint depends on the secret"
    assert len(originals) > 1, "the original's footprint should depend on the secret"
    (trace,) = copies
    first, last = STACK_TABLE >> shift, (STACK_TABLE + 4096 - 1) >> shift
    assert set(range(first, last + 1)) <= set(trace)
