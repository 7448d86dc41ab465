"""The vector and bit-manipulation taint rules (leakdbt.analysis.vector_rules and their
registration in rules): hand-computed cases per family, then ground truth from Unicorn.

The soundness test runs each instruction in raw Unicorn from seeded random states: for every
input byte (general-purpose and xmm0-3 register bytes, the memory operand's bytes, the flags)
it replaces the byte by other values and records which output bytes (registers, a memory
window, the status flags) change; the rule, given only that byte tainted, must taint every
one of them.  Where a rule is meant to be exact (permutations, shifts by an immediate,
sign masks, ...), the bytes it taints must also be exactly the ones that change.  Unicorn
does not run VEX instructions correctly, so each VEX form is checked against its SSE form
instead: ``vop d, s1, s2`` must propagate as ``movdqa d, s1; op d, s2``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import UcError
from unicorn import x86_const as ux

from leakdbt.analysis import vector_rules as vr
from leakdbt.analysis.rules import (
    GPRS,
    REGISTERS,
    VSHIFT,
    XMM_BASE,
    Insn,
    Op,
    RegLoc,
    Shadow,
    decode,
    is_default,
)
from leakdbt.analysis.taint import EngineValues
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PROT_EXEC, PROT_READ, PROT_WRITE

_ks = Ks(KS_ARCH_X86, KS_MODE_64)
_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True

A, B, C, D = 1, 2, 4, 8
MEM = 0x10000


def insn(text: str, address: int = 0x400000) -> Insn:
    code, _ = _ks.asm(text, address)
    assert code, text
    return decode(next(_cs.disasm(bytes(code), address, 1)))


def step(sh: Shadow, text: str, ea: Sequence[int] | None = None) -> Insn:
    """Apply one instruction's rule; memory operands are at MEM unless ``ea`` says."""
    ins = insn(text)
    addrs = list(ea) if ea is not None else [MEM if o.kind == "m" else 0 for o in ins.ops]
    assert ins.rule is not None
    ins.rule(sh, ins, addrs)
    return ins


def xmm(sh: Shadow, n: int, labels: Sequence[int]) -> None:
    sh.set_reg_named(f"xmm{n}", list(labels))


def distinct(n: int = 16, first: int = 0) -> list[int]:
    """Labels 1 << first, 1 << (first + 1), ...: one secret per byte."""
    return [1 << (first + i) for i in range(n)]


class Values:
    """Concrete values for the rules that need them, from a fixed table."""

    def __init__(self, regs: dict[str, bytes], mem: bytes = b"") -> None:
        self.regs, self.mem = regs, mem

    def reg_value(self, loc: RegLoc) -> bytes:
        return self.regs[loc.name]

    def mem_value(self, address: int, size: int) -> bytes:
        return self.mem[address - MEM:address - MEM + size]


# -- hand-computed cases, family by family ------------------------------------------------------


def test_pshufd_and_word_shuffles_permute() -> None:
    sh = Shadow()
    xmm(sh, 1, distinct())
    step(sh, "pshufd xmm0, xmm1, 0x1b")  # dwords reversed
    d = distinct()
    assert sh.reg_named("xmm0") == d[12:16] + d[8:12] + d[4:8] + d[0:4]
    step(sh, "pshuflw xmm2, xmm1, 0x00")  # word 0 four times, high half copied
    assert sh.reg_named("xmm2") == d[0:2] * 4 + d[8:16]
    step(sh, "pshufhw xmm3, xmm1, 0xe4")  # identity
    assert sh.reg_named("xmm3") == d
    sh.store(MEM, d)
    step(sh, "pshufd xmm4, xmmword ptr [rdi], 0x55")
    assert sh.reg_named("xmm4") == d[4:8] * 4


def test_pshufb_clean_mask_is_precise_tainted_mask_is_conservative() -> None:
    sh = Shadow()
    xmm(sh, 0, distinct())
    mask = bytes([3, 0x80, 15, 0] + [1] * 12)
    sh.concrete = Values({"xmm1": mask})
    step(sh, "pshufb xmm0, xmm1")
    d = distinct()
    assert sh.reg_named("xmm0") == [d[3], 0, d[15], d[0]] + [d[1]] * 12
    sh2 = Shadow()
    xmm(sh2, 0, distinct())
    xmm(sh2, 1, [0, A << 20] + [0] * 14)  # mask byte 1 tainted: that output = whole lane
    sh2.concrete = Values({"xmm1": mask})
    step(sh2, "pshufb xmm0, xmm1")
    out = sh2.reg_named("xmm0")
    assert out[1] == vr.union(d) | A << 20 and out[0] == d[3]
    sh3 = Shadow()  # no engine: every byte gets the lane
    xmm(sh3, 0, [A] + [0] * 15)
    step(sh3, "pshufb xmm0, xmm1")
    assert sh3.reg_named("xmm0") == [A] * 16


def test_unpacks_interleave() -> None:
    sh = Shadow()
    a, b = distinct(), distinct(16, 16)
    xmm(sh, 0, a)
    xmm(sh, 1, b)
    step(sh, "punpcklbw xmm0, xmm1")
    assert sh.reg_named("xmm0") == [x for i in range(8) for x in (a[i], b[i])]
    xmm(sh, 0, a)
    step(sh, "punpckhwd xmm0, xmm1")
    assert sh.reg_named("xmm0") == [x for i in range(8, 16, 2) for x in a[i:i + 2] + b[i:i + 2]]
    xmm(sh, 0, a)
    step(sh, "punpcklqdq xmm0, xmm1")
    assert sh.reg_named("xmm0") == a[:8] + b[:8]
    xmm(sh, 0, a)
    step(sh, "unpckhps xmm0, xmm1")
    assert sh.reg_named("xmm0") == a[8:12] + b[8:12] + a[12:16] + b[12:16]
    step(sh, "vpunpckhqdq xmm2, xmm1, xmm1")
    assert sh.reg_named("xmm2") == b[8:16] * 2


def test_palignr_and_byte_shifts() -> None:
    sh = Shadow()
    a, b = distinct(), distinct(16, 16)
    xmm(sh, 0, a)
    xmm(sh, 1, b)
    step(sh, "palignr xmm0, xmm1, 5")
    assert sh.reg_named("xmm0") == b[5:] + a[:5]
    step(sh, "vpalignr xmm2, xmm0, xmm1, 20")  # beyond the 16 bytes of b: a, then zeros
    assert sh.reg_named("xmm2") == sh.reg_named("xmm0")[4:] + [0] * 4
    xmm(sh, 0, a)
    step(sh, "pslldq xmm0, 3")
    assert sh.reg_named("xmm0") == [0] * 3 + a[:13]
    step(sh, "vpsrldq xmm3, xmm1, 14")
    assert sh.reg_named("xmm3") == b[14:] + [0] * 14


def test_element_shifts_by_immediate_and_by_register() -> None:
    sh = Shadow()
    xmm(sh, 0, distinct())
    d = distinct()
    step(sh, "psrlw xmm0, 8")  # each word's high byte moves down, the high byte is zero
    assert sh.reg_named("xmm0") == [x for i in range(0, 16, 2) for x in (d[i + 1], 0)]
    xmm(sh, 0, distinct())
    step(sh, "psrad xmm0, 4")  # bits straddle bytes; the sign fills the top byte
    assert sh.reg_named("xmm0")[:4] == [d[0] | d[1], d[1] | d[2], d[2] | d[3], d[3]]
    xmm(sh, 0, distinct())
    step(sh, "pslld xmm0, 32")  # the whole element
    assert sh.reg_named("xmm0") == [0] * 16
    xmm(sh, 0, distinct())
    xmm(sh, 1, [0, A << 20] + [0] * 14)  # a tainted count: element-wise union + count
    step(sh, "psllq xmm0, xmm1")
    assert sh.reg_named("xmm0") == [vr.union(d[:8]) | A << 20] * 8 + \
        [vr.union(d[8:]) | A << 20] * 8
    xmm(sh, 0, distinct())
    xmm(sh, 1, [0] * 16)
    sh.concrete = Values({"xmm1": bytes([16] + [0] * 15)})  # a clean count, value known
    step(sh, "psrlq xmm0, xmm1")
    assert sh.reg_named("xmm0") == d[2:8] + [0, 0] + d[10:16] + [0, 0]
    step(sh, "vpsllw xmm2, xmm1, 3")
    assert sh.reg_named("xmm2") == [0] * 16


def test_shufps_shufpd_and_half_moves() -> None:
    sh = Shadow()
    a, b = distinct(), distinct(16, 16)
    xmm(sh, 0, a)
    xmm(sh, 1, b)
    step(sh, "shufps xmm0, xmm1, 0x1b")  # a[3], a[2], b[1], b[0]
    assert sh.reg_named("xmm0") == a[12:16] + a[8:12] + b[4:8] + b[0:4]
    xmm(sh, 0, a)
    step(sh, "shufpd xmm0, xmm1, 1")
    assert sh.reg_named("xmm0") == a[8:16] + b[0:8]
    xmm(sh, 0, a)
    step(sh, "movhlps xmm0, xmm1")
    assert sh.reg_named("xmm0") == b[8:16] + a[8:16]
    step(sh, "vmovlhps xmm2, xmm1, xmm1")
    assert sh.reg_named("xmm2") == b[:8] * 2
    sh.store(MEM, [C] * 8)
    xmm(sh, 0, a)
    step(sh, "movhps xmm0, qword ptr [rdi]")
    assert sh.reg_named("xmm0") == a[:8] + [C] * 8
    step(sh, "movlpd qword ptr [rdi], xmm1", ea=[MEM + 64, 0])
    assert sh.load(MEM + 64, 8) == b[:8]
    step(sh, "vmovlps xmm3, xmm1, qword ptr [rdi]", ea=[0, 0, MEM])
    assert sh.reg_named("xmm3") == [C] * 8 + b[8:16]


def test_insert_extract_and_sign_masks() -> None:
    sh = Shadow()
    xmm(sh, 0, [0] * 16)
    sh.set_reg_named("rax", [A, B, C, D, 0, 0, 0, 0])
    step(sh, "pinsrw xmm0, eax, 3")
    assert sh.reg_named("xmm0") == [0] * 6 + [A, B] + [0] * 8
    step(sh, "pinsrb xmm0, eax, 17")  # the index wraps: byte 1
    assert sh.reg_named("xmm0")[:2] == [0, A]
    step(sh, "vpinsrq xmm1, xmm0, rax, 1")
    assert sh.reg_named("xmm1") == sh.reg_named("xmm0")[:8] + [A, B, C, D, 0, 0, 0, 0]
    sh.set_reg_named("rcx", [C] * 8)
    step(sh, "pextrd ecx, xmm1, 2")  # zero-extended
    assert sh.reg_named("rcx") == [A, B, C, D, 0, 0, 0, 0]
    step(sh, "pextrb byte ptr [rdi], xmm1, 9")
    assert sh.load(MEM, 2) == [B, 0]
    xmm(sh, 2, distinct())
    d = distinct()
    step(sh, "pmovmskb edx, xmm2")  # bit i from byte i's sign
    assert sh.reg_named("rdx") == [vr.union(d[:8]), vr.union(d[8:])] + [0] * 6
    step(sh, "movmskps esi, xmm2")
    assert sh.reg_named("rsi") == [d[3] | d[7] | d[11] | d[15]] + [0] * 7
    step(sh, "movmskpd edi, xmm2")
    assert sh.reg_named("rdi") == [d[7] | d[15]] + [0] * 7


def test_lane_wise_arithmetic_compares_and_idioms() -> None:
    sh = Shadow()
    xmm(sh, 0, [A] + [0] * 15)
    xmm(sh, 1, [0] * 5 + [B] + [0] * 10)
    step(sh, "paddw xmm0, xmm1")
    assert sh.reg_named("xmm0") == [A, A, 0, 0, B, B] + [0] * 10
    xmm(sh, 0, [A] + [0] * 15)
    step(sh, "pcmpeqd xmm0, xmm1")
    assert sh.reg_named("xmm0") == [A] * 4 + [B] * 4 + [0] * 8
    xmm(sh, 0, [A] + [0] * 15)
    step(sh, "pminub xmm0, xmm1")  # byte lanes: exact positions
    assert sh.reg_named("xmm0") == [A, 0, 0, 0, 0, B] + [0] * 10
    step(sh, "vpmaxsw xmm2, xmm1, xmm0")
    assert sh.reg_named("xmm2") == [A, A, 0, 0, B, B] + [0] * 10
    step(sh, "pmuludq xmm2, xmm1")
    assert sh.reg_named("xmm2") == [A | B] * 8 + [0] * 8
    for idiom in ("psubb xmm0, xmm0", "pcmpeqd xmm0, xmm0", "pcmpgtb xmm0, xmm0",
                  "vpsubq xmm3, xmm0, xmm0"):
        xmm(sh, 0, [A] * 16)
        step(sh, idiom)
        assert sh.reg_named(idiom.split()[1].rstrip(",")) == [0] * 16, idiom
    xmm(sh, 0, distinct())
    xmm(sh, 1, [0] * 16)
    step(sh, "psadbw xmm0, xmm1")
    d = distinct()
    assert sh.reg_named("xmm0") == [vr.union(d[:8])] * 2 + [0] * 6 + \
        [vr.union(d[8:])] * 2 + [0] * 6
    step(sh, "ptest xmm1, xmm0")
    assert sh.flags == vr.union(d)


def test_packs_and_widening_moves() -> None:
    sh = Shadow()
    a, b = distinct(), distinct(16, 16)
    xmm(sh, 0, a)
    xmm(sh, 1, b)
    step(sh, "packuswb xmm0, xmm1")  # each byte from one word
    assert sh.reg_named("xmm0") == [a[i] | a[i + 1] for i in range(0, 16, 2)] + \
        [b[i] | b[i + 1] for i in range(0, 16, 2)]
    step(sh, "pmovzxbw xmm2, xmm1")
    assert sh.reg_named("xmm2") == [x for i in range(8) for x in (b[i], 0)]
    step(sh, "pmovsxwd xmm3, xmm1")
    assert sh.reg_named("xmm3") == [x for i in range(0, 8, 2) for x in b[i:i + 2] + [b[i + 1]] * 2]


def test_bit_scans_and_counts() -> None:
    sh = Shadow()
    sh.set_reg_named("rcx", [0, A, 0, 0, 0, 0, 0, 0])
    sh.set_reg_named("rax", [0, 0, B, 0, 0, 0, 0, C])
    step(sh, "bsf rax, rcx")  # a zero source keeps the old destination
    assert sh.reg_named("rax") == [A, A, A | B, A, A, A, A, A | C] and sh.flags == A
    sh.set_reg_named("rax", [B] * 8)
    step(sh, "bsr eax, ecx")  # a 32-bit write still zero-extends (what the engine does)
    assert sh.reg_named("rax") == [A | B] * 4 + [0] * 4
    step(sh, "popcnt rdx, rcx")  # a count fits byte 0
    assert sh.reg_named("rdx") == [A] + [0] * 7 and sh.flags == A
    step(sh, "lzcnt esi, ecx")
    assert sh.reg_named("rsi") == [A] + [0] * 7


def test_bit_test_and_modify() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A, B, 0, 0, 0, 0, 0, 0])
    sh.flags = D
    step(sh, "bts rax, 9")  # an immediate: byte 1 holds the bit; the old flags stay in
    assert sh.reg_named("rax") == [A, B] + [0] * 6 and sh.flags == B | D
    sh.set_reg_named("rcx", [C] + [0] * 7)
    step(sh, "btr rax, rcx")  # a register offset: every byte may change
    assert sh.reg_named("rax") == [A | C, B | C] + [C] * 6
    sh2 = Shadow()  # a bit string: offset -9 from MEM+8 is bit 7 of byte MEM+6
    sh2.store(MEM + 6, [A])
    sh2.concrete = Values({"rcx": (-9).to_bytes(8, "little", signed=True)})
    step(sh2, "btc qword ptr [rdi], rcx", ea=[MEM + 8, 0])  # a clean offset: that byte
    assert sh2.mem == {MEM + 6: A} and sh2.flags == A
    sh2.set_reg_named("rcx", [C] + [0] * 7)  # byte 0 tainted: offsets -256..-1, 32 bytes
    step(sh2, "btc qword ptr [rdi], rcx", ea=[MEM + 8, 0])
    assert sh2.mem == {a: C | (A if a == MEM + 6 else 0) for a in range(MEM - 24, MEM + 8)}


def test_bmi_instructions() -> None:
    sh = Shadow()
    sh.set_reg_named("rbx", [A, 0, 0, 0, 0, 0, 0, B])
    sh.set_reg_named("rcx", [0, C, 0, 0, 0, 0, 0, 0])
    step(sh, "andn rax, rbx, rcx")
    assert sh.reg_named("rax") == [A, C, 0, 0, 0, 0, 0, B] and sh.flags == A | B | C
    step(sh, "blsr rdx, rbx")  # a borrow runs upwards
    assert sh.reg_named("rdx") == [A] * 7 + [A | B]
    step(sh, "bzhi rsi, rbx, rcx")  # the index is rcx's byte 0 (clean)
    assert sh.reg_named("rsi") == sh.reg_named("rbx")
    step(sh, "pdep rdi, rcx, rbx")  # bit p from source bits at or below p
    assert sh.reg_named("rdi") == [A, A | C, A | C, A | C, A | C, A | C, A | C, A | B | C]
    step(sh, "pext r8, rbx, rcx")  # bit k from source bits at or above k, mask: all
    assert sh.reg_named("r8") == [A | B | C] + [B | C] * 7
    step(sh, "shrx r9, rbx, rcx")  # no engine: a right shift's byte j = bytes j..7
    assert sh.reg_named("r9") == [A | B] + [B] * 7
    sh.concrete = Values({"rcx": (8).to_bytes(8, "little")})
    step(sh, "shlx r10, rbx, rcx")  # a clean count, value known: exact
    assert sh.reg_named("r10") == [0, A] + [0] * 6
    step(sh, "rorx r11, rbx, 8")
    assert sh.reg_named("r11") == [0] * 6 + [B, A]
    sh.store(MEM, [A, B, C, D])
    step(sh, "movbe eax, dword ptr [rdi]")
    assert sh.reg_named("rax") == [D, C, B, A, 0, 0, 0, 0]


def test_flag_instructions() -> None:
    sh = Shadow()
    sh.flags = A
    for text in ("cmc", "clc", "stc"):
        step(sh, text)
        assert sh.flags == A  # the other flags keep their labels
    step(sh, "lahf")
    assert sh.reg_named("rax") == [0, A] + [0] * 6
    sh.set_reg_named("rax", [0, B] + [0] * 6)
    step(sh, "sahf")
    assert sh.flags == A | B  # OF is kept


def test_known_zero_bits() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A] * 8)
    step(sh, "and eax, 0xf")
    assert sh.zero_bits(REGISTERS["rax"]) == (1 << 64) - 1 - 0xF
    step(sh, "mov ecx, eax")
    assert sh.zero_bits(REGISTERS["rcx"]) == (1 << 64) - 1 - 0xF
    step(sh, "shl ecx, 2")
    assert sh.zero_bits(REGISTERS["rcx"]) == (1 << 64) - 1 - 0x3C
    step(sh, "movzx edx, byte ptr [rdi]")
    assert sh.zero_bits(REGISTERS["rdx"]) == (1 << 64) - 1 - 0xFF
    sh.set_reg_named("rdx", [A] * 8)
    step(sh, "shr rdx, 60")
    assert sh.zero_bits(REGISTERS["rdx"]) == (1 << 64) - 1 - 0xF
    step(sh, "add rdx, 1")  # any other write forgets
    assert sh.zero_bits(REGISTERS["rdx"]) == 0
    step(sh, "mov dl, 3")  # a byte write forgets only that byte's bits
    step(sh, "and ecx, 0xff")
    step(sh, "mov cl, al")  # ... and mov copies the source's
    assert sh.zero_bits(REGISTERS["rcx"]) == (1 << 64) - 1 - 0xF


def test_families_are_registered_with_their_vex_forms() -> None:
    for m in ("pshufd", "pshufb", "punpcklbw", "palignr", "psrldq", "psraw", "shufps",
              "unpckhpd", "movhlps", "movhps", "pinsrb", "pextrq", "movmskps", "pmovmskb",
              "pcmpgtq", "pminud", "paddb", "psubq", "pmulld", "pmuludq", "pavgb", "psadbw",
              "ptest", "packuswb", "pmovzxbw"):
        assert not is_default(m) and not is_default("v" + m), m
    for m in ("bsf", "bsr", "tzcnt", "lzcnt", "popcnt", "bts", "btr", "btc", "andn", "blsi",
              "blsr", "blsmsk", "bzhi", "pdep", "pext", "shlx", "shrx", "sarx", "rorx",
              "movbe", "cmc", "clc", "stc", "sahf", "lahf"):
        assert not is_default(m), m


# -- ground truth: Unicorn ----------------------------------------------------------------------

CODE, DATA, WINDOW = 0x1000, 0x10080, (0x10000, 0x10100)
STATUS = 0x8D5  # CF PF AF ZF SF OF
NXMM = 4  # xmm0-3 are the vector registers the cases use
GPR_IDS = [getattr(ux, f"UC_X86_REG_{r.upper()}") for r in GPRS]
XMM_IDS = [getattr(ux, f"UC_X86_REG_XMM{n}") for n in range(NXMM)]
NREG = XMM_BASE + 16 * NXMM  # register bytes compared: GPRs, then xmm0-3
FLAGS = NREG + (WINDOW[1] - WINDOW[0])  # the position of the flags in a state
INPUT_GPRS = [g for g, r in enumerate(GPRS) if r not in ("rsp", "rsi")]  # rsi: the address


@dataclass(frozen=True)
class Case:
    text: str
    exact: bool = False  # the rule's taint = exactly the bytes that change
    window: int = 0  # memory inputs: [rsi - window, rsi + size + window)
    small: str = ""  # a register whose states hold small signed values (a bit offset)


def _texts(texts: str) -> list[str]:
    """Instructions separated by semicolons."""
    return [t.strip() for t in texts.split(";") if t.strip()]


def _cases(texts: str, exact: bool = False, window: int = 0, small: str = "") -> list[Case]:
    return [Case(t, exact, window, small) for t in _texts(texts)]


SSE_CASES = [
    *_cases("pshufd xmm0, xmm1, 0x1b; pshufd xmm0, xmmword ptr [rsi], 0xd8; "
            "pshuflw xmm0, xmm1, 0x1b; pshufhw xmm2, xmm1, 0x4e; pshufb xmm0, xmm1; "
            "pshufb xmm0, xmmword ptr [rsi]; punpcklbw xmm0, xmm1; punpcklwd xmm0, xmm1; "
            "punpckldq xmm0, xmmword ptr [rsi]; punpcklqdq xmm0, xmm1; punpckhbw xmm0, xmm1; "
            "punpckhwd xmm0, xmm1; punpckhdq xmm0, xmm1; punpckhqdq xmm0, xmm1; "
            "palignr xmm0, xmm1, 5; palignr xmm0, xmm1, 20; palignr xmm0, xmm1, 0; "
            "pslldq xmm0, 3; psrldq xmm0, 11; pslldq xmm0, 17; psllw xmm0, 3; psllw xmm0, 9; "
            "pslld xmm0, 13; psllq xmm0, 40; psrlw xmm0, 8; psrld xmm0, 31; psrlq xmm0, 1; "
            "psraw xmm0, 4; psraw xmm0, 20; psrad xmm0, 12; pslld xmm0, 32; "
            "shufps xmm0, xmm1, 0x4e; shufps xmm0, xmm0, 0x1b; shufpd xmm0, xmm1, 1; "
            "shufpd xmm0, xmm1, 2; unpcklps xmm0, xmm1; unpckhps xmm0, xmm1; "
            "unpcklpd xmm0, xmm1; unpckhpd xmm0, xmm1; movhlps xmm0, xmm1; "
            "movlhps xmm0, xmm1; movhps xmm0, qword ptr [rsi]; movhps qword ptr [rsi], xmm1; "
            "movlps xmm0, qword ptr [rsi]; movlps qword ptr [rsi], xmm1; "
            "movhpd xmm2, qword ptr [rsi]; movlpd qword ptr [rsi], xmm3; "
            "pinsrb xmm0, eax, 5; pinsrb xmm0, byte ptr [rsi], 17; pinsrw xmm0, eax, 3; "
            "pinsrd xmm0, ecx, 2; pinsrq xmm0, rdx, 1; pinsrd xmm0, dword ptr [rsi], 1; "
            "pextrb eax, xmm1, 5; pextrb byte ptr [rsi], xmm1, 3; pextrw ecx, xmm1, 6; "
            "pextrd edx, xmm1, 3; pextrq rbx, xmm1, 1; pextrd dword ptr [rsi], xmm2, 1; "
            "movmskps eax, xmm1; movmskpd ecx, xmm1; pmovmskb edx, xmm1; "
            "pmovzxbw xmm0, xmm1; pmovzxdq xmm0, qword ptr [rsi]; pmovsxbd xmm0, xmm1; "
            "pmovsxwq xmm0, xmm1; pmovzxwd xmm0, xmm1", exact=True),
    *_cases("psllw xmm0, xmm1; psrld xmm0, xmm1; psraw xmm0, xmm1; psrlq xmm0, xmm1; "
            "pcmpeqb xmm0, xmm1; pcmpeqw xmm0, xmm1; pcmpeqd xmm0, xmm1; "
            "pcmpeqq xmm0, xmm1; pcmpgtb xmm0, xmm1; pcmpgtw xmm0, xmm1; pcmpgtd xmm0, xmm1; "
            "pcmpgtq xmm0, xmm1; pcmpeqb xmm0, xmm0; pcmpgtd xmm2, xmm2; "
            "pminub xmm0, xmm1; pmaxub xmm0, xmm1; pminsw xmm0, xmm1; pmaxsw xmm0, xmm1; "
            "pminud xmm0, xmm1; pmaxud xmm0, xmm1; pminsb xmm0, xmm1; pmaxsd xmm0, xmm1; "
            "pminuw xmm0, xmm1; paddb xmm0, xmm1; paddw xmm0, xmm1; paddd xmm0, xmm1; "
            "paddq xmm0, xmmword ptr [rsi]; psubb xmm0, xmm1; psubw xmm0, xmm1; "
            "psubd xmm0, xmm1; psubq xmm0, xmm1; psubb xmm1, xmm1; paddusb xmm0, xmm1; "
            "psubsw xmm0, xmm1; pmullw xmm0, xmm1; pmulld xmm0, xmm1; pmuludq xmm0, xmm1; "
            "pmulhw xmm0, xmm1; pmulhuw xmm0, xmm1; pmaddwd xmm0, xmm1; pavgb xmm0, xmm1; "
            "pavgw xmm0, xmm1; psadbw xmm0, xmm1; ptest xmm0, xmm1; packuswb xmm0, xmm1; "
            "packsswb xmm0, xmm1; packssdw xmm0, xmm1; packusdw xmm0, xmm1; "
            "pabsb xmm0, xmm1; pabsd xmm0, xmm1; psignw xmm0, xmm1"),
]
GPR_CASES = [
    *_cases("bsf eax, ecx; bsf rax, rcx; bsr rdx, rbx; bsf ax, cx; tzcnt eax, ecx; "
            "tzcnt rax, rcx; lzcnt rdx, rbx; lzcnt ax, bx; popcnt eax, ecx; popcnt rax, rcx; "
            "bt rax, rcx; bts rax, rcx; btr eax, 13; btc rax, 63; bts qword ptr [rsi], 5; "
            "btr dword ptr [rsi], 33; bt word ptr [rsi], 7; "
            "andn rax, rbx, rcx; andn eax, ebx, dword ptr [rsi]; blsi rax, rbx; "
            "blsr eax, ebx; blsmsk rax, qword ptr [rsi]; bzhi rax, rbx, rcx; "
            "bzhi eax, ebx, ecx; pdep rax, rbx, rcx; pdep eax, ebx, ecx; pext rax, rbx, rcx; "
            "pext eax, ebx, dword ptr [rsi]; shlx rax, rbx, rcx; shrx eax, ebx, ecx; "
            "sarx rax, qword ptr [rsi], rcx; cmc; clc; stc; sahf; lahf; "
            "shl rax, 9; shr eax, 3; sar ax, 5; sar rax, 63; shl bl, 7"),
    *_cases("rorx rax, rbx, 13; rorx eax, ebx, 7; movbe eax, dword ptr [rsi]; "
            "movbe qword ptr [rsi], rbx; movbe ax, word ptr [rsi]", exact=True),
    *_cases("btc qword ptr [rsi], rcx; bts word ptr [rsi], cx; bt dword ptr [rsi], ecx",
            window=40, small="rcx"),
]
STATES = 6
FLIPS = (0xFF, 0x80, 0x01)  # xor patterns tried besides a random one (exact cases)


class Probe:
    """One instruction in a raw Unicorn, run from states laid out like the shadow register
    file: GPR bytes, xmm0-3 bytes, then the memory window, then the status flags."""

    def __init__(self, case: Case) -> None:
        code, _ = _ks.asm(case.text, CODE)
        assert code, case.text
        self.code = bytes(code)
        self.ins = decode(next(_cs.disasm(self.code, CODE, 1)))
        self.machine = Machine()
        self.machine.mem.map(CODE, 0x1000, PROT_READ | PROT_EXEC)
        self.machine.mem.map(WINDOW[0], 0x1000, PROT_READ | PROT_WRITE)
        self.machine.mem.write(CODE, self.code)
        self.uc = self.machine.uc
        size = max([o.size for o in self.ins.ops if o.kind == "m"], default=0)
        lo, hi = DATA - case.window, DATA + size + case.window if size else DATA
        self.inputs = [8 * g + j for g in INPUT_GPRS for j in range(8)] + \
            list(range(XMM_BASE, NREG)) + \
            [NREG + a - WINDOW[0] for a in range(lo, hi)] + [FLAGS]

    def load(self, state: bytearray) -> None:
        """Set the engine's registers and memory to ``state``."""
        values = [(rid, int.from_bytes(state[8 * g:8 * g + 8], "little"))
                  for g, rid in enumerate(GPR_IDS)]
        values += [(rid, int.from_bytes(state[XMM_BASE + 16 * n:XMM_BASE + 16 * n + 16],
                                        "little")) for n, rid in enumerate(XMM_IDS)]
        values.append((ux.UC_X86_REG_EFLAGS, 0x202 | int.from_bytes(state[FLAGS:], "little")))
        self.uc.reg_write_batch(values)  # type: ignore[attr-defined]
        self.uc.mem_write(WINDOW[0], bytes(state[NREG:FLAGS]))

    def run(self, state: bytearray) -> bytes | None:
        """The state after the instruction (flags: the status bits), None if it faults."""
        self.load(state)
        uc = self.uc
        try:
            uc.emu_start(CODE, CODE + len(self.code), count=1)
        except UcError:
            return None
        values = uc.reg_read_batch([*GPR_IDS, *XMM_IDS, ux.UC_X86_REG_EFLAGS])  # type: ignore[attr-defined]
        out = b"".join(int(v).to_bytes(8, "little") for v in values[:16])
        out += b"".join(int(v).to_bytes(16, "little") for v in values[16:16 + NXMM])
        out += bytes(uc.mem_read(WINDOW[0], WINDOW[1] - WINDOW[0]))
        return out + (int(values[-1]) & STATUS).to_bytes(2, "little")

    def tainted(self, state: bytearray, position: int) -> set[int]:
        """The output positions the rule taints when only input ``position`` is (the engine
        holds ``state``: the rules that need concrete values read them there)."""
        sh = Shadow()
        sh.concrete = EngineValues(self.machine)
        if position < NREG:
            sh.regs[position] = 1
        elif position < FLAGS:
            sh.mem[WINDOW[0] + position - NREG] = 1
        else:
            sh.flags = 1
        ea = [self._address(op, state) if op.kind == "m" else 0 for op in self.ins.ops]
        assert self.ins.rule is not None
        self.ins.rule(sh, self.ins, ea)
        out = {i for i in range(NREG) if sh.regs[i]}
        out |= {NREG + a - WINDOW[0] for a, t in sh.mem.items() if t and WINDOW[0] <= a < WINDOW[1]}
        return out | ({FLAGS} if sh.flags else set())

    @staticmethod
    def _address(op: Op, state: bytearray) -> int:
        base = op.base
        assert base is not None and base.name == "rsi" and op.index is None
        return int.from_bytes(state[base.start:base.start + 8], "little") + op.disp


def _state(rnd: random.Random, small: str = "", plain: bool = False) -> bytearray:
    """A random state: each 8-byte chunk random, zero, small, a one-bit value or all ones (so
    that zero sources, small counts and equal lanes happen), or all random bytes if
    ``plain``; rsi points at DATA."""
    state = bytearray()
    for _ in range(FLAGS // 8):
        kind = 0.0 if plain else rnd.random()
        if kind < 0.5:
            chunk = rnd.randbytes(8)
        elif kind < 0.65:
            chunk = bytes(8)
        elif kind < 0.8:
            chunk = rnd.randrange(72).to_bytes(8, "little")
        elif kind < 0.9:
            chunk = (1 << rnd.randrange(64)).to_bytes(8, "little")
        else:
            chunk = b"\xff" * 8
        state += chunk
    if not plain and rnd.random() < 0.3:  # equal registers: compares and min/max go both ways
        state[XMM_BASE + 16:XMM_BASE + 32] = state[XMM_BASE:XMM_BASE + 16]
    rsi = GPRS.index("rsi")
    state[8 * rsi:8 * rsi + 8] = DATA.to_bytes(8, "little")
    if small:
        g = GPRS.index(small)
        state[8 * g:8 * g + 8] = rnd.randrange(-300, 300).to_bytes(8, "little", signed=True)
    state += (rnd.randrange(1 << 12) & STATUS).to_bytes(2, "little")
    return state


def _flipped(state: bytearray, position: int, flip: int) -> bytearray:
    """``state`` with input ``position`` xor ``flip`` (the flags: xor ``flip``'s status
    bits, all of them if it has none)."""
    other = bytearray(state)
    if position == FLAGS:
        old = int.from_bytes(state[FLAGS:FLAGS + 2], "little")
        other[FLAGS:FLAGS + 2] = (old ^ (flip & STATUS or STATUS)).to_bytes(2, "little")
    else:
        other[position] ^= flip
    return other


def _changed(before: bytes, after: bytes) -> set[int]:
    out = {i for i in range(FLAGS) if before[i] != after[i]}
    return out | ({FLAGS} if before[FLAGS:] != after[FLAGS:] else set())


def _ground_truth(case: Case) -> None:
    probe = Probe(case)
    rnd = random.Random(case.text)
    for n in range(STATES):
        exact = case.exact and n % 2 == 0  # exactness: judged on states of random bytes
        state = _state(rnd, case.small, plain=exact)
        probe.load(state)
        taints = {p: probe.tainted(state, p) for p in probe.inputs}
        base = probe.run(state)
        assert base is not None, f"{case.text} faults"
        for p in probe.inputs:
            tainted = taints[p]
            flips = [rnd.randrange(1, 1 << 12 if p == FLAGS else 256)]
            if exact:
                flips += FLIPS
            changed: set[int] = set()
            for flip in flips:
                after = probe.run(_flipped(state, p, flip))
                if after is not None:
                    changed |= _changed(base, after)
            missed = sorted(map(_name, changed - tainted))
            assert changed <= tainted, \
                f"{case.text}: input {_name(p)} changes {missed} which the rule leaves clean"
            if exact:
                extra = sorted(map(_name, tainted - changed))
                assert tainted == changed, \
                    f"{case.text}: input {_name(p)} taints {extra} which do not change"


def _name(position: int) -> str:
    if position < XMM_BASE:
        return f"{GPRS[position // 8]}[{position % 8}]"
    if position < NREG:
        n, j = divmod(position - XMM_BASE, 16)
        return f"xmm{n}[{j}]"
    if position < FLAGS:
        return f"mem[{position - NREG - (DATA - WINDOW[0]):+d}]"
    return "flags"


@pytest.mark.parametrize("case", SSE_CASES + GPR_CASES, ids=lambda c: c.text)
def test_rules_are_sound_against_unicorn(case: Case) -> None:
    _ground_truth(case)


# -- VEX forms: the same propagation as their SSE forms -----------------------------------------

VEX_CASES = _texts(
    "vpshufd xmm3, xmm1, 0x1b; vpshuflw xmm3, xmmword ptr [rsi], 0x93; "
    "vpshufhw xmm3, xmm1, 0x4e; vpshufb xmm3, xmm0, xmm1; vpshufb xmm3, xmm0, xmmword ptr [rsi]; "
    "vpunpcklbw xmm3, xmm0, xmm1; vpunpckhwd xmm3, xmm0, xmm1; vpunpckldq xmm3, xmm0, xmm1; "
    "vpunpckhqdq xmm3, xmm0, xmmword ptr [rsi]; vunpcklps xmm3, xmm0, xmm1; "
    "vunpckhpd xmm3, xmm0, xmm1; vpalignr xmm3, xmm0, xmm1, 7; vpslldq xmm3, xmm0, 5; "
    "vpsrldq xmm3, xmm0, 9; vpsllw xmm3, xmm0, 3; vpsrld xmm3, xmm0, 17; vpsraw xmm3, xmm0, 9; "
    "vpsrlq xmm3, xmm0, xmm1; vpsrad xmm3, xmm0, xmm1; vshufps xmm3, xmm0, xmm1, 0x4e; "
    "vshufpd xmm3, xmm0, xmm1, 2; vmovhlps xmm3, xmm0, xmm1; vmovlhps xmm3, xmm0, xmm1; "
    "vmovhps xmm3, xmm0, qword ptr [rsi]; vmovlpd xmm3, xmm0, qword ptr [rsi]; "
    "vmovhps qword ptr [rsi], xmm1; vmovlps qword ptr [rsi], xmm1; "
    "vpinsrb xmm3, xmm0, eax, 5; vpinsrw xmm3, xmm0, word ptr [rsi], 2; "
    "vpinsrq xmm3, xmm0, rdx, 1; vpextrb eax, xmm1, 5; vpextrw ecx, xmm1, 6; "
    "vpextrq qword ptr [rsi], xmm1, 1; vmovmskps eax, xmm1; vmovmskpd ecx, xmm1; "
    "vpmovmskb edx, xmm1; vpcmpeqb xmm3, xmm0, xmm1; vpcmpgtq xmm3, xmm0, xmm1; "
    "vpcmpeqd xmm3, xmm1, xmm1; vpminub xmm3, xmm0, xmm1; vpmaxsd xmm3, xmm0, xmm1; "
    "vpaddw xmm3, xmm0, xmmword ptr [rsi]; vpsubq xmm3, xmm0, xmm1; vpsubb xmm3, xmm1, xmm1; "
    "vpmulld xmm3, xmm0, xmm1; vpmuludq xmm3, xmm0, xmm1; vpavgb xmm3, xmm0, xmm1; "
    "vpsadbw xmm3, xmm0, xmm1; vptest xmm0, xmm1; vpackuswb xmm3, xmm0, xmm1; "
    "vpmovzxbw xmm3, xmm1; vpmovsxdq xmm3, qword ptr [rsi]; vpabsw xmm3, xmm1")


def _sse_form(text: str) -> list[str]:
    """``vop d, s1, rest`` as ``movdqa d, s1; op d, rest`` (``op d, d`` when rest is s1: the
    idioms); two-operand forms (and ``vpshufd d, s, imm``-like ones) as they are."""
    mnemonic, _, operands = text.partition(" ")
    ops = [o.strip() for o in operands.split(",")]
    sources = [o for o in ops[1:] if not o[0].isdigit()]
    shift = mnemonic[1:] in VSHIFT or mnemonic in ("vpslldq", "vpsrldq")
    if len(sources) == 2 or (shift and len(ops) == 3):
        rest = ", ".join(ops[2:]) if ops[2] != ops[1] else ops[0]
        return [f"movdqa {ops[0]}, {ops[1]}", f"{mnemonic[1:]} {ops[0]}, {rest}"]
    return [f"{mnemonic[1:]} {operands}"]


def _random_shadow(rnd: random.Random) -> Shadow:
    sh = Shadow()
    sh.regs[:XMM_BASE + 16 * NXMM] = [rnd.choice((0, 0, A, B, C, D, A | C)) for _ in
                                      range(XMM_BASE + 16 * NXMM)]
    sh.flags = rnd.choice((0, A, B))
    for a in range(MEM, MEM + 16):
        if rnd.random() < 0.7:
            sh.mem[a] = rnd.choice((A, B, C, D))
    regs = {f"xmm{n}": rnd.randbytes(16) for n in range(NXMM)}
    regs["xmm1"] = bytes(rnd.choice((0, 0x80, 1, 15)) for _ in range(16))  # masks, counts
    sh.concrete = Values(regs, rnd.randbytes(16))
    return sh


@pytest.mark.parametrize("text", VEX_CASES)
def test_vex_forms_propagate_like_their_sse_forms(text: str) -> None:
    ins = insn(text)
    assert ins.rule is not None and not is_default(ins.mnemonic), text
    sse = _sse_form(text)
    assert len(sse) == 2 or len(insn(sse[0]).ops) == len(ins.ops), (text, sse)
    rnd = random.Random(text)
    for _ in range(20):
        vex, ref = _random_shadow(rnd), Shadow()
        ref.regs, ref.flags, ref.mem = list(vex.regs), vex.flags, dict(vex.mem)
        ref.concrete = vex.concrete
        step(vex, text)
        for s in sse:
            step(ref, s)
        assert (vex.regs, vex.flags, vex.mem) == (ref.regs, ref.flags, ref.mem), (text, sse)


def test_256_bit_forms_follow_the_shadowed_low_lane() -> None:
    """Only 16 bytes of a vector register are shadowed: a ymm source's upper lane reads as
    the union of its lower one, and results are kept for the lower lane."""
    sh = Shadow()
    d = distinct()
    xmm(sh, 1, d)
    sh.concrete = Values({"ymm2": bytes(range(15, -1, -1)) * 2})  # reverse each lane
    step(sh, "vpshufb ymm0, ymm1, ymm2")
    assert sh.reg_named("xmm0") == d[::-1]
    step(sh, "vpunpcklbw ymm3, ymm1, ymm0")
    assert sh.reg_named("xmm3") == [x for i in range(8) for x in (d[i], d[15 - i])]
    step(sh, "vpmovmskb eax, ymm1")  # bits 16-31 from the upper lane: the union
    assert sh.reg_named("rax") == [vr.union(d[:8]), vr.union(d[8:])] + [vr.union(d)] * 2 + \
        [0] * 4
