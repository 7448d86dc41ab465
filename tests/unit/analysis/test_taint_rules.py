"""The taint propagation rules, family by family, on hand-computed cases (no engine)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from leakdbt.analysis.rules import RULES, Insn, Shadow, decode, is_default, rule_default, rule_for

_ks = Ks(KS_ARCH_X86, KS_MODE_64)
_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True

A, B, C = 1, 2, 4  # three secrets
MEM = 0x10000
RSP = 0x7000


def insn(text: str) -> Insn:
    code, _ = _ks.asm(text, 0x400000)
    assert code
    return decode(next(_cs.disasm(bytes(code), 0x400000, 1)))


def step(sh: Shadow, text: str, ea: Sequence[int] | None = None) -> Insn:
    """Apply one instruction's rule; memory operands are at MEM unless ``ea`` says; the
    stack-using rules get RSP appended."""
    ins = insn(text)
    addrs = list(ea) if ea is not None else [MEM if o.kind == "m" else 0 for o in ins.ops]
    if ins.mnemonic in ("push", "pop", "call", "ret", "leave"):
        addrs.append(RSP)
    assert ins.rule is not None
    ins.rule(sh, ins, addrs)
    return ins


def test_add_32_bit_zero_extends_and_taints_flags() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [C] * 8)  # old upper bytes of rax: dropped by a 32-bit write
    sh.set_reg_named("rbx", [A, 0, 0, 0, 0, 0, 0, 0])
    step(sh, "add eax, ebx")
    assert sh.reg_named("rax") == [A | C] * 4 + [0] * 4
    assert sh.flags == A | C


def test_arith_conservative_union_and_cmp_writes_only_flags() -> None:
    sh = Shadow()
    sh.set_reg_named("rbx", [0, A, 0, 0, 0, 0, 0, 0])
    step(sh, "sub rcx, rbx")
    assert sh.reg_named("rcx") == [A] * 8
    sh2 = Shadow()
    sh2.set_reg_named("rdx", [B] + [0] * 7)
    step(sh2, "cmp rdx, 5")
    assert sh2.flags == B and sh2.reg_named("rdx") == [B] + [0] * 7
    sh3 = Shadow()
    sh3.flags = C
    step(sh3, "adc eax, 1")  # the carry in
    assert sh3.reg_named("eax") == [C] * 4
    sh4 = Shadow()
    sh4.set_reg_named("rsi", [A] * 8)
    step(sh4, "inc sil")
    assert sh4.reg_named("rsi") == [A] * 8 and sh4.flags == A
    step(sh4, "neg rsi")
    assert sh4.reg_named("rsi") == [A] * 8


@pytest.mark.parametrize("text", ["xor eax, eax", "sub eax, eax", "xor rax, rax"])
def test_zeroing_idioms_clear(text: str) -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A] * 8)
    sh.flags = B
    step(sh, text)
    assert sh.reg_named("rax") == [0] * 8
    assert sh.flags == 0


def test_logic_is_byte_wise_and_and_with_immediate_clears() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A, 0, B, 0, 0, 0, 0, 0])
    sh.set_reg_named("rbx", [0, C, 0, 0, 0, 0, 0, 0])
    step(sh, "or rax, rbx")
    assert sh.reg_named("rax") == [A, C, B, 0, 0, 0, 0, 0]
    assert sh.flags == A | B | C
    step(sh, "and eax, 0xff")
    assert sh.reg_named("rax") == [A] + [0] * 7
    step(sh, "xor al, bl")
    assert sh.reg_named("rax") == [A] + [0] * 7  # bl is clean


def test_not_keeps_and_test_taints_flags() -> None:
    sh = Shadow()
    sh.set_reg_named("rdi", [0, 0, A, 0, 0, 0, 0, 0])
    step(sh, "not rdi")
    assert sh.reg_named("rdi") == [0, 0, A, 0, 0, 0, 0, 0]
    step(sh, "test rdi, rdi")
    assert sh.flags == A
    sh.flags = 0
    step(sh, "bt rdi, rcx")
    assert sh.flags == A


def test_mov_family() -> None:
    sh = Shadow()
    sh.store(MEM, [A, B, 0, C])
    step(sh, "movzx eax, byte ptr [rdi]")
    assert sh.reg_named("rax") == [A] + [0] * 7
    step(sh, "mov ecx, dword ptr [rdi]")
    assert sh.reg_named("rcx") == [A, B, 0, C, 0, 0, 0, 0]
    step(sh, "movsx rdx, word ptr [rdi]")
    assert sh.reg_named("rdx") == [A, B] + [B] * 6  # sign bytes come from the top byte
    step(sh, "movsxd rsi, dword ptr [rdi]")
    assert sh.reg_named("rsi") == [A, B, 0, C] + [C] * 4
    step(sh, "mov qword ptr [rdi], rsi", ea=[MEM + 8, 0])
    assert sh.load(MEM + 8, 8) == [A, B, 0, C] + [C] * 4
    step(sh, "mov al, 7")
    assert sh.reg_named("rax") == [0] * 8
    step(sh, "movabs rsi, 0x1122334455667788")
    assert sh.reg_named("rsi") == [0] * 8
    sh.set_reg_named("rbx", [0, A, 0, 0, 0, 0, 0, 0])
    step(sh, "mov bh, 1")
    assert sh.reg_named("rbx") == [0] * 8


def test_lea_unions_address_registers() -> None:
    sh = Shadow()
    sh.set_reg_named("rcx", [A] + [0] * 7)
    step(sh, "lea rax, [rbx + rcx*4]")
    assert sh.reg_named("rax") == [A] * 8
    step(sh, "lea edx, [rbx + 8]")
    assert sh.reg_named("rdx") == [0] * 8


def test_shifts() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A, 0, 0, 0, 0, 0, 0, B])
    step(sh, "shl rax, 8")  # byte-wise: byte j comes from byte j-1
    assert sh.reg_named("rax") == [0, A, 0, 0, 0, 0, 0, 0]
    sh.set_reg_named("rax", [A, 0, 0, 0, 0, 0, 0, B])
    step(sh, "shr rax, 60")
    assert sh.reg_named("rax") == [B] + [0] * 7
    sh.set_reg_named("rax", [0, 0, 0, B, 0, 0, 0, 0])
    step(sh, "sar eax, 4")  # bits straddle bytes 2-3; the sign fills byte 3
    assert sh.reg_named("rax") == [0, 0, B, B, 0, 0, 0, 0]
    sh.set_reg_named("rdx", [A] + [0] * 7)
    sh.set_reg_named("rcx", [C] + [0] * 7)
    step(sh, "shl rdx, cl")
    assert sh.reg_named("rdx") == [A | C] * 8 and sh.flags == A | C
    sh.set_reg_named("rdx", [A] + [0] * 7)
    step(sh, "rol rdx, 3")
    assert sh.reg_named("rdx") == [A] * 8


def test_mul_and_div() -> None:
    sh = Shadow()
    sh.set_reg_named("rbx", [A] + [0] * 7)
    step(sh, "imul eax, ebx, 3")
    assert sh.reg_named("rax") == [A] * 4 + [0] * 4
    sh2 = Shadow()
    sh2.set_reg_named("rsi", [B] + [0] * 7)
    step(sh2, "mul rsi")
    assert sh2.reg_named("rax") == [B] * 8 and sh2.reg_named("rdx") == [B] * 8
    sh3 = Shadow()
    sh3.set_reg_named("rdx", [0, C] + [0] * 6)
    step(sh3, "div ecx")
    assert sh3.reg_named("rax") == [C] * 4 + [0] * 4
    assert sh3.reg_named("rdx") == [C] * 4 + [0] * 4
    sh4 = Shadow()
    sh4.store(MEM, [A])
    step(sh4, "idiv byte ptr [rdi]")
    assert sh4.reg_named("rax") == [A, A] + [0] * 6


def test_setcc_and_cmov() -> None:
    sh = Shadow()
    sh.flags = A
    step(sh, "setne al")
    assert sh.reg_named("rax") == [A] + [0] * 7
    sh.set_reg_named("rcx", [0, B] + [0] * 6)
    step(sh, "cmove rdx, rcx")
    assert sh.reg_named("rdx") == [A, A | B] + [A] * 6
    sh.flags = 0
    sh.set_reg_named("rsi", [C] * 8)
    step(sh, "cmovb esi, ecx")  # the 32-bit destination is zero-extended either way
    assert sh.reg_named("rsi") == [C, B | C, C, C, 0, 0, 0, 0]


def test_push_pop_round_trip_and_call() -> None:
    sh = Shadow()
    sh.set_reg_named("rbx", [A, 0, B, 0, 0, 0, 0, C])
    step(sh, "push rbx")
    assert sh.load(RSP - 8, 8) == [A, 0, B, 0, 0, 0, 0, C]
    # pop reads at rsp: here the tracker would see rsp = RSP - 8
    ins = insn("pop rdx")
    assert ins.rule is not None
    ins.rule(sh, ins, [0, RSP - 8])
    assert sh.reg_named("rdx") == [A, 0, B, 0, 0, 0, 0, C]
    step(sh, "push 5")
    assert sh.load(RSP - 8, 8) == [0] * 8
    sh.store(RSP - 8, [A] * 8)
    ins = insn("call 0x400100")
    assert ins.rule is not None
    ins.rule(sh, ins, [0, RSP])
    assert sh.load(RSP - 8, 8) == [0] * 8  # a return address is clean


def test_xchg_xadd_cmpxchg_bswap() -> None:
    sh = Shadow()
    sh.set_reg_named("rax", [A] * 8)
    sh.set_reg_named("rbx", [B] * 8)
    step(sh, "xchg rax, rbx")
    assert sh.reg_named("rax") == [B] * 8 and sh.reg_named("rbx") == [A] * 8
    step(sh, "xadd rax, rbx")
    assert sh.reg_named("rbx") == [B] * 8 and sh.reg_named("rax") == [A | B] * 8
    sh2 = Shadow()
    sh2.set_reg_named("rcx", [C] + [0] * 7)
    step(sh2, "lock cmpxchg qword ptr [rdi], rcx")
    assert sh2.load(MEM, 8) == [C] * 8 and sh2.reg_named("rax") == [C] * 8
    assert sh2.flags == C
    sh3 = Shadow()
    sh3.set_reg_named("rdx", [A, B, 0, 0, 0, 0, 0, C])
    step(sh3, "bswap rdx")
    assert sh3.reg_named("rdx") == [C, 0, 0, 0, 0, 0, B, A]


def test_vector_moves_and_logic() -> None:
    sh = Shadow()
    sh.store(MEM, [A] * 4 + [0] * 11 + [B])
    step(sh, "movdqu xmm1, xmmword ptr [rdi]")
    assert sh.reg_named("xmm1") == [A] * 4 + [0] * 11 + [B]
    step(sh, "movq rax, xmm1")
    assert sh.reg_named("rax") == [A] * 4 + [0] * 4
    step(sh, "movd xmm2, eax")
    assert sh.reg_named("xmm2") == [A] * 4 + [0] * 12
    sh.set_reg_named("xmm3", [0] * 15 + [C])
    step(sh, "por xmm3, xmm1")
    assert sh.reg_named("xmm3") == [A] * 4 + [0] * 11 + [B | C]
    step(sh, "pxor xmm3, xmm3")
    assert sh.reg_named("xmm3") == [0] * 16
    step(sh, "movaps xmmword ptr [rdi], xmm1", ea=[MEM + 32, 0])
    assert sh.load(MEM + 32, 16) == sh.reg_named("xmm1")
    step(sh, "xorps xmm1, xmm1")
    assert sh.reg_named("xmm1") == [0] * 16


def test_scalar_sse_moves() -> None:
    sh = Shadow()
    sh.set_reg_named("xmm0", [C] * 16)
    sh.store(MEM, [A] * 8)
    step(sh, "movsd xmm0, qword ptr [rdi]")  # from memory: the upper half is zeroed
    assert sh.reg_named("xmm0") == [A] * 8 + [0] * 8
    sh.set_reg_named("xmm1", [B] * 16)
    step(sh, "movss xmm1, xmm0")  # register to register: merges the low element
    assert sh.reg_named("xmm1") == [A] * 4 + [B] * 12


def test_string_instructions() -> None:
    sh = Shadow()
    sh.store(0x2000, [A, B])
    step(sh, "movsb byte ptr [rdi], byte ptr [rsi]", ea=[0x3000, 0x2000])
    assert sh.load(0x3000, 2) == [A, 0]
    sh.set_reg_named("rax", [C] * 8)
    step(sh, "rep stosq qword ptr [rdi], rax", ea=[0x4000, 0])
    assert sh.load(0x4000, 8) == [C] * 8
    ins = insn("rep movsb byte ptr [rdi], byte ptr [rsi]")
    assert ins.rep and ins.mnemonic == "movsb"
    step(sh, "movsd dword ptr [rdi], dword ptr [rsi]", ea=[0x5000, 0x2000])  # the string form
    assert sh.load(0x5000, 4) == [A, B, 0, 0]


def test_syscall_and_nops_are_not_default_and_default_unions() -> None:
    assert not is_default("nop") and not is_default("jne") and is_default("aesenc")
    assert not is_default("pshufb") and not is_default("vpunpcklqdq")
    assert rule_for("pcmpistri") is rule_default
    assert RULES["add"] is RULES["cmp"]
    sh = Shadow()
    sh.set_reg_named("xmm1", [A] + [0] * 15)
    step(sh, "aesenc xmm0, xmm1")  # no specific rule: every output byte = union of inputs
    assert sh.reg_named("xmm0") == [A] * 16
    sh.set_reg_named("rbx", [0, B] + [0] * 6)
    step(sh, "crc32 rax, rbx")
    assert sh.reg_named("rax") == [B] * 8


def test_memory_shadow_clear() -> None:
    sh = Shadow()
    sh.store(MEM, [A] * 32)
    sh.clear(MEM + 8, 8)
    assert sh.load(MEM, 32) == [A] * 8 + [0] * 8 + [A] * 16
    sh.clear(0, 1 << 40)  # huge: walks the shadow instead of the range
    assert sh.mem == {}
