"""Keystone assembly is trusted only after Capstone agrees: the known mis-encodings are errors,
correct forms round-trip, and code from a real compiler either re-assembles to the same meaning
or is refused.  An independent oracle compares Capstone's operand details, not canonical text."""

from __future__ import annotations

import collections
from functools import lru_cache
from pathlib import Path
from typing import Any

import capstone
import pytest
from capstone import x86
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from leakdbt.errors import LeakDBTError, TranslationError
from leakdbt.x86.asm import (
    AssemblyError,
    assemble,
    assemble_many,
    canonical,
    canonical_insn,
    canonical_text,
    decode_one,
)

A = 0x400000
MASK64 = (1 << 64) - 1


@lru_cache(maxsize=1)
def _detail_decoder() -> Any:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def decode_detail(code: bytes, address: int) -> Any:
    insns = list(_detail_decoder().disasm(code, address))
    assert len(insns) == 1 and insns[0].size == len(code)
    return insns[0]


def meaning(insn: Any) -> tuple[object, ...]:
    """What an instruction does, from Capstone's operand details (not from its text).

    RIP-relative operands are resolved to the address they reach; the address size counts only
    where there is a memory operand; xchg operands are unordered; movabs is mov.
    """
    md = _detail_decoder()
    ops: list[tuple[object, ...]] = []
    for op in insn.operands:
        if op.type == x86.X86_OP_REG:
            ops.append(("reg", md.reg_name(op.reg), op.size))
        elif op.type == x86.X86_OP_IMM:
            ops.append(("imm", op.imm & MASK64, op.size))
        else:
            m = op.mem
            if m.base == x86.X86_REG_RIP:
                target = (insn.address + insn.size + m.disp) & MASK64
                ops.append(("rip", target, m.segment, op.size))
            else:
                scale = m.scale if m.index else 1
                ops.append(("mem", m.segment, m.base, m.index, scale, m.disp & MASK64, op.size))
    ident = x86.X86_INS_MOV if insn.id == x86.X86_INS_MOVABS else insn.id
    if ident == x86.X86_INS_XCHG:
        ops.sort(key=repr)
    has_memory = any(op[0] in ("mem", "rip") for op in ops)
    return (ident, insn.prefix[0], insn.addr_size if has_memory else None, tuple(ops))


def decoded_text(code: bytes, address: int) -> str:
    insn = decode_one(code, address)
    assert insn is not None and insn.size == len(code)
    return f"{insn.mnemonic} {insn.op_str}".strip()


# --------------------------------------------------------------------------------------------
# What Keystone 0.9.2 gets wrong, measured at 0x400000

MIS_ENCODED = [
    # absolute operand: N itself becomes a RIP displacement (another address)
    (
        "mov rcx, qword ptr [0x400100]",
        "48 8b 0d 00 01 40 00",
        "mov rcx, qword ptr [rip + 0x400100]",
    ),
    (
        "mov rcx, qword ptr fs:[0x28]",
        "64 48 8b 0d 28 00 00 00",
        "mov rcx, qword ptr fs:[rip + 0x28]",
    ),
    (
        "mov rcx, qword ptr gs:[0x10]",
        "65 48 8b 0d 10 00 00 00",
        "mov rcx, qword ptr gs:[rip + 0x10]",
    ),
    # absolute operand: RIP-relative to the same address (position-dependent; fs:/gs: too)
    ("add rcx, qword ptr [0x400100]", "48 03 0d f9 00 00 00", "add rcx, qword ptr [rip + 0xf9]"),
    ("lea rax, [0x400100]", "48 8d 05 f9 00 00 00", "lea rax, [rip + 0xf9]"),
    ("jmp qword ptr [0x400100]", "ff 25 fa 00 00 00", "jmp qword ptr [rip + 0xfa]"),
    (
        "sub rdx, qword ptr fs:[0x28]",
        "64 48 2b 15 20 00 c0 ff",
        "sub rdx, qword ptr fs:[rip - 0x3fffe0]",
    ),
    (
        "mov qword ptr fs:[0x28], rcx",
        "64 48 89 0d 20 00 c0 ff",
        "mov qword ptr fs:[rip - 0x3fffe0], rcx",
    ),
    # eip is dropped
    ("mov eax, dword ptr [eip + 0x10]", "8b 40 10", "mov eax, dword ptr [rax + 0x10]"),
    # rel32 out of reach is wrapped silently
    ("call 0x80500000", "e8 fb ff 0f 80", "call 0xffffffff80500000"),
    ("jmp 0x80500000", "e9 fb ff 0f 80", "jmp 0xffffffff80500000"),
    # a reserved prefetch-hint slot (0f 18 /4) for nop; Capstone prints it as nop
    ("nop dword ptr [rax]", "0f 18 20", "nop dword ptr [rax]"),
    # EVEX compressed disp8*N is not scaled: 0x40 becomes 0x40 * 64
    (
        "vmovups zmm1, zmmword ptr [rsi + 0x40]",
        "62 f1 7c 48 10 4e 40",
        "vmovups zmm1, zmmword ptr [rsi + 0x1000]",
    ),
    # same effect, but not what the text says
    ("xchg rax, rax", "48 90", "nop"),
    # malformed text is not always refused
    ("mov rax, qword ptr [rbx +", "48 8b 03", "mov rax, qword ptr [rbx]"),
    ("mov rax, qword ptr [rbx", "48 a1 00 00 00 00 00 00 00 00", "movabs rax, qword ptr [0]"),
]


@pytest.mark.parametrize(("text", "hexbytes", "decoded"), MIS_ENCODED)
def test_known_mis_encodings_are_errors(text: str, hexbytes: str, decoded: str) -> None:
    with pytest.raises(AssemblyError) as info:
        assemble(text, A)
    e = info.value
    assert e.encoding == bytes.fromhex(hexbytes)
    assert e.decoded == decoded
    message = str(e)
    for part in (repr(text), hex(A), hexbytes, repr(decoded)):
        assert part in message


KEYSTONE_REFUSES = [
    "call 0x500000000",  # beyond rel32
    "loop 0x500000",  # beyond rel8
    "jrcxz 0x500000",
    "endbr64",  # unknown mnemonics
    "notrack jmp rax",
    "vpxorq xmm23, xmm23, xmm23",  # AVX-512 registers: "missing CPU feature"
    "mov rax, rbx, rcx",  # syntax
    "mov rax,",
]


@pytest.mark.parametrize("text", KEYSTONE_REFUSES)
def test_keystone_errors_become_assembly_errors(text: str) -> None:
    with pytest.raises(AssemblyError, match="Keystone") as info:
        assemble(text, A)
    assert info.value.encoding is None


@pytest.mark.parametrize("text", ["", "foo:", "nop; nop", "nop\nnop", "h\u00e9llo"])
def test_not_exactly_one_instruction_is_an_error(text: str) -> None:
    with pytest.raises(AssemblyError):
        assemble(text, A)


def test_assembly_error_is_a_translation_error() -> None:
    with pytest.raises(AssemblyError) as info:
        assemble("mov rcx, qword ptr [0x400100]", A)
    assert isinstance(info.value, TranslationError)
    assert isinstance(info.value, LeakDBTError)
    assert info.value.exit_status == 2
    assert info.value.address == A
    assert "rip->0x800107" in info.value.one_line()


SEGMENT_FORMS_KEYSTONE_GETS_RIGHT = [
    ("mov rax, qword ptr fs:[0x28]", "64 48 a1 28 00 00 00 00 00 00 00"),  # moffs
    ("mov qword ptr fs:[0x28], rax", "64 48 a3 28 00 00 00 00 00 00 00"),
    ("mov rax, qword ptr gs:[0]", "65 48 a1 00 00 00 00 00 00 00 00"),
    ("mov rax, qword ptr fs:[rax]", "64 48 8b 00"),
    ("mov eax, dword ptr fs:[rbx + 8]", "64 8b 43 08"),
    ("mov rax, qword ptr fs:[rip + 0x10]", "64 48 8b 05 10 00 00 00"),
    ("mov ecx, dword ptr [0xffffffffffffff00]", "8b 0c 25 00 ff ff ff"),  # SIB absolute
]


@pytest.mark.parametrize(("text", "hexbytes"), SEGMENT_FORMS_KEYSTONE_GETS_RIGHT)
def test_absolute_and_segment_forms_keystone_gets_right(text: str, hexbytes: str) -> None:
    assert assemble(text, A) == bytes.fromhex(hexbytes)


# --------------------------------------------------------------------------------------------
# Correct forms round-trip

ROUND_TRIP = """
add rax, rbx
add eax, 0x7fffffff
sub rsp, 0x18
adc rdx, 0
sbb ecx, ecx
and rsp, 0xfffffffffffffff0
or byte ptr [rdi + 3], 0x80
xor eax, eax
cmp qword ptr [rbp - 0x28], 0
test al, 1
neg rax
not r11
inc dword ptr [rip + 0x1000]
dec r8d
cmovne eax, edx
cmovb rax, qword ptr [rsi + 8]
sete al
setg byte ptr [rsp + 7]
shl eax, 1
shl rax, cl
shr r9, 0x3f
sar edx, 0x1f
rol rax, 0x11
shld rax, rdx, 0xc
imul rax, rbx
imul eax, ebx, 0x10
mul rcx
div r8
idiv dword ptr [rbx]
lea rax, [rbx + rcx*8 + 0x10]
lea rdi, [rip + 0x2fd1]
lea r8, [rip - 0x100]
lea eax, [rdi - 1]
push rbp
push 0x10
push -1
push qword ptr [rip + 0x20]
pop r15
movzx eax, byte ptr [rdi]
movzx ecx, word ptr [rsi + rdx*2]
movsx rax, byte ptr [rdi]
movsxd rax, ecx
mov rax, qword ptr [rbx + rcx*8 + 0x10]
mov qword ptr [rsp + 8], rdi
mov byte ptr [rip + 0x10], 1
mov eax, dword ptr [ebx]
movabs rax, 0x1122334455667788
movabs rax, qword ptr [0x1122334455667788]
movaps xmm0, xmmword ptr [rsp + 0x10]
movdqa xmmword ptr [rsp + 0x10], xmm0
movdqu xmm1, xmmword ptr [rsi]
movq xmm0, rax
movq rax, xmm0
movd xmm0, eax
movsd xmm0, qword ptr [rip + 0x100]
movss dword ptr [rsp], xmm1
pxor xmm0, xmm0
xchg rbx, rax
xchg qword ptr [rbx], rax
lock xadd dword ptr [rdi], eax
lock cmpxchg qword ptr [rdx], rcx
rep stosq qword ptr [rdi], rax
rep movsb byte ptr [rdi], byte ptr [rsi]
jne 0x400010
je 0x401000
jg 0x3ff000
jmp 0x400002
jmp 0x500000
jmp rax
jmp qword ptr [rax*8 + 0x400000]
jrcxz 0x400010
loop 0x400010
call 0x401000
call 0x3f0000
call rax
call qword ptr [rip + 0x100]
ret
ret 8
syscall
nop
cpuid
rdtsc
lfence
cqo
bswap eax
bts qword ptr [rdi], 5
popcnt rax, rbx
""".strip().splitlines()


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_correct_forms_round_trip(text: str) -> None:
    code = assemble(text, A)
    assert canonical_text(text, A, len(code)) == canonical_text(decoded_text(code, A), A, len(code))


def test_branch_size_follows_the_distance() -> None:
    assert assemble("jne 0x400010", A) == bytes.fromhex("75 0e")  # rel8
    assert assemble("jne 0x401000", A) == bytes.fromhex("0f 85 fa 0f 00 00")  # rel32
    assert assemble("jmp 0x400000", A) == bytes.fromhex("eb fe")


def test_xchg_may_come_back_with_its_operands_swapped() -> None:
    assert assemble("xchg rax, rbx", A) == bytes.fromhex("48 93")
    assert decoded_text(bytes.fromhex("48 93"), A) == "xchg rbx, rax"


def test_assemble_many_verifies_each_line_at_its_own_address() -> None:
    lines = ["xor eax, eax", "lea rdx, [rip + 0x10]", "jne 0x400000", "call 0x401000", "ret"]
    code = assemble_many(lines, A)
    address, offset = A, 0
    for line in lines:
        insn = decode_one(code[offset:], address)
        assert insn is not None
        assert canonical_insn(insn) == canonical_text(line, address, insn.size)
        address += insn.size
        offset += insn.size
    assert offset == len(code)
    assert code.startswith(bytes.fromhex("31 c0 48 8d 15 10 00 00 00 75 f5"))


def test_assemble_many_names_the_failing_line_and_its_address() -> None:
    with pytest.raises(AssemblyError) as info:
        assemble_many(["xor eax, eax", "mov rcx, qword ptr [0x400100]"], A)
    assert info.value.address == A + 2
    assert info.value.text == "mov rcx, qword ptr [0x400100]"


# --------------------------------------------------------------------------------------------
# The canonical form


def test_canonical_numbers_spacing_and_case() -> None:
    one = canonical("MOV", "RAX,  QWORD PTR [RBX+RCX*8+16]", A, 5)
    assert one == canonical("mov", "rax, qword ptr [rbx + rcx*8 + 0x10]", A, 5)
    assert one == "mov rax, qword ptr [rbx + rcx*8 + 0x10]"
    assert canonical("add", "rax, 16", A, 4) == canonical("add", "rax, 0x10", A, 4)
    assert canonical("add", "rax, 9", A, 4) == "add rax, 9"
    assert canonical("mov", "eax, dword ptr [rbx + -8]", A, 3) == "mov eax, dword ptr [rbx - 8]"
    assert canonical("mov", "eax, dword ptr [rbx + rcx*1 + 0]", A, 3) == (
        "mov eax, dword ptr [rbx + rcx]"
    )
    # a written sign is kept: -16 and 0xfffffff0 are different texts
    assert canonical("and", "eax, -16", A, 3) != canonical("and", "eax, 0xfffffff0", A, 3)
    # spellings Keystone reads differently (octal, suffixes) are never normalised
    assert canonical("mov", "eax, 010", A, 5) != canonical("mov", "eax, 10", A, 5)
    assert canonical("mov", "eax, 10h", A, 5) != canonical("mov", "eax, 0x10", A, 5)


def test_canonical_rip_relative_is_the_address_reached_but_not_absolute() -> None:
    rip = canonical("mov", "rcx, qword ptr [rip + 0x400100]", A, 7)
    assert rip == "mov rcx, qword ptr [rip->0x800107]"
    assert rip != canonical("mov", "rcx, qword ptr [0x400100]", A, 7)
    assert rip != canonical("mov", "rcx, qword ptr [0x800107]", A, 7)
    assert canonical("lea", "rax, [rip - 0x10]", A, 7) == "lea rax, [rip->0x3ffff7]"
    assert canonical("lea", "rax, [rip]", A, 7) == "lea rax, [rip->0x400007]"
    assert canonical("lea", "eax, [eip - 0x10]", 0, 7) == "lea eax, [eip->0xfffffff7]"
    # absolute addresses wrap at 64 bits, like the hardware
    assert canonical("mov", "ecx, dword ptr [-256]", A, 7) == (
        "mov ecx, dword ptr [0xffffffffffffff00]"
    )


def test_canonical_aliases() -> None:
    assert canonical("movabs", "rax, 0x1122334455667788", A, 10) == "mov rax, 0x1122334455667788"
    assert canonical("xchg", "rbx, rax", A, 2) == canonical("xchg", "rax, rbx", A, 2)
    assert canonical("rep stosq", "qword ptr [rdi], rax", A, 3) == (
        canonical_text("rep   stosq qword ptr [rdi],rax", A, 3)
    )
    assert canonical("sub", "rax, rbx", A, 3) != canonical("sub", "rbx, rax", A, 3)


def test_canonical_insn_sees_the_address_size_prefix() -> None:
    # Capstone prints both as [0xffffffffffffff00]; with 0x67 the address is 0xffffff00
    with_67 = decode_one(bytes.fromhex("67 8b 04 25 00 ff ff ff"), A)
    without = decode_one(bytes.fromhex("8b 04 25 00 ff ff ff"), A)
    assert with_67 is not None and without is not None
    assert with_67.op_str == without.op_str
    assert canonical_insn(with_67) == "mov eax, dword ptr [0xffffff00]"
    assert canonical_insn(without) == "mov eax, dword ptr [0xffffffffffffff00]"


@pytest.mark.parametrize(
    ("hexbytes", "nop"),
    [
        ("0f 1f 00", True),
        ("66 2e 0f 1f 84 00 00 00 00 00", True),
        ("0f 18 20", False),
        ("0f 18 3d 00 00 00 00", False),
        ("0f 1e 38", False),
        ("0f 1f 08", False),
    ],
)
def test_canonical_insn_tells_hint_slots_from_nop(hexbytes: str, nop: bool) -> None:
    insn = decode_one(bytes.fromhex(hexbytes), A)
    assert insn is not None and insn.mnemonic == "nop"
    assert canonical_insn(insn).startswith("nop ") is nop


def test_decode_one() -> None:
    insn = decode_one(bytes.fromhex("48 8b 05 00 01 00 00 c3"), A)
    assert insn is not None
    assert (insn.address, insn.size, insn.mnemonic) == (A, 7, "mov")
    assert decode_one(b"\x06", A) is None  # push es: invalid in 64-bit mode
    assert decode_one(b"\x48", A) is None  # a lone REX prefix
    assert decode_one(b"", A) is None


# --------------------------------------------------------------------------------------------
# Ground truth from a real compiler: the static sha256 (glibc included)

SAMPLE_STRIDE = 16  # every 16th instruction of .text: about 7300 of 117000


@pytest.fixture(scope="module")
def corpus(built: Path) -> list[Any]:
    with open(built / "static" / "sha256", "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        code, base = text.data(), text["sh_addr"]
    lite = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    starts = [(addr, size) for addr, size, _m, _o in lite.disasm_lite(code, base)]
    sample = starts[::SAMPLE_STRIDE]
    return [decode_detail(code[a - base : a - base + n], a) for a, n in sample]


def test_compiled_code_reassembles_to_the_same_meaning_or_is_refused(corpus: list[Any]) -> None:
    """Success must mean what the compiler's instruction meant; refusal is allowed.

    Measured on the whole .text (116916 instructions): 93.9% re-assemble.  The rest:
    4967 `nop dword ptr [rax + rax]` and the like (Keystone's 0f 18 /4 hint slot),
    about 1700 AVX-512 instructions (EVEX registers: "missing CPU feature"; zmm with a
    displacement: disp8*N not scaled), 350 `op reg, qword ptr fs:[N]` other than the
    accumulator's mov (RIP-relative encodings), 39 `endbr64`, 10 `notrack jmp`, and a few
    CET/TSX/XSAVE instructions Keystone does not know.
    """
    assert len(corpus) >= 2000
    refused: collections.Counter[str] = collections.Counter()
    for insn in corpus:
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        try:
            code = assemble(text, insn.address)
        except AssemblyError:
            refused[insn.mnemonic] += 1
            continue
        again = decode_detail(code, insn.address)
        assert meaning(again) == meaning(insn), (text, bytes(insn.bytes).hex(" "), code.hex(" "))
        assert canonical_insn(again) == canonical_insn(insn)
    ok = len(corpus) - sum(refused.values())
    assert ok / len(corpus) >= 0.90, refused.most_common(10)
    assert refused["nop"] > 0  # the padding NOPs are the largest group refused


# --------------------------------------------------------------------------------------------
# Property: random operands either verify or raise, checked against Capstone's details

REG64 = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *[f"r{i}" for i in range(8, 16)]]
REG32 = ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", *[f"r{i}d" for i in range(8, 16)]]
ALU = ["mov", "add", "sub", "cmp", "xor", "and", "or", "adc"]
SETTINGS = settings(max_examples=150, deadline=None)
# near the low 2 GiB (where Keystone turns absolute operands into RIP-relative ones) or anywhere
addresses = st.one_of(st.integers(0x1000, 0x7FFF_FFFF), st.integers(0x1000, 0x7FFF_FFFF_F000))


def number(value: int, style: int) -> str:
    """``value`` written in hex or decimal, sign in front."""
    sign, mag = ("-", -value) if value < 0 else ("", value)
    return sign + (hex(mag) if style else str(mag))


def try_assemble(text: str, address: int) -> Any | None:
    """Capstone's detailed decoding of what assemble produced, or None if it refused."""
    try:
        code = assemble(text, address)
    except AssemblyError:
        return None
    return decode_detail(code, address)


@SETTINGS
@given(
    st.sampled_from(ALU),
    st.sampled_from(REG64),
    st.sampled_from([None, *REG64]),
    st.sampled_from([None, *[r for r in REG64 if r != "rsp"]]),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 1),
    addresses,
)
def test_memory_operands_verify_or_raise(
    op: str,
    dst: str,
    base: str | None,
    index: str | None,
    scale: int,
    disp: int,
    style: int,
    address: int,
) -> None:
    terms = [t for t in (base, f"{index}*{scale}" if index else None) if t]
    if disp or not terms:
        terms.append(
            number(disp, style)
            if not terms
            else ("- " if disp < 0 else "+ ") + number(abs(disp), style)
        )
    inner = terms[0] + "".join(" " + t if t[0] in "+-" else " + " + t for t in terms[1:])
    insn = try_assemble(f"{op} {dst}, qword ptr [{inner}]", address)
    if insn is None:
        return
    md = _detail_decoder()
    assert insn.mnemonic == op or (op, insn.mnemonic) == ("mov", "movabs")
    assert md.reg_name(insn.operands[0].reg) == dst
    m = insn.operands[1].mem
    assert m.base != x86.X86_REG_RIP
    assert (md.reg_name(m.base) if m.base else None) == base
    assert (md.reg_name(m.index) if m.index else None) == index
    if index:
        assert m.scale == scale
    assert m.disp & MASK64 == disp & MASK64


@SETTINGS
@given(
    st.sampled_from([*ALU, "test"]),
    st.sampled_from([(r, 64) for r in REG64] + [(r, 32) for r in REG32]),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(0, 1),
)
def test_immediates_verify_or_raise(op: str, reg: tuple[str, int], imm: int, style: int) -> None:
    name, bits = reg
    insn = try_assemble(f"{op} {name}, {number(imm, style)}", A)
    if insn is None:
        return
    mask = (1 << bits) - 1
    assert insn.mnemonic in (op, "movabs")
    assert _detail_decoder().reg_name(insn.operands[0].reg) == name
    assert insn.operands[1].imm & mask == imm & mask
    if bits == 64:  # the full 64-bit value, not just its low bits
        assert insn.operands[1].imm & MASK64 == imm & MASK64


@SETTINGS
@given(
    st.sampled_from(["jmp", "call", "jne", "jl", "jae", "jrcxz", "loop"]),
    addresses,
    st.one_of(st.integers(-200, 200), st.integers(-(2**33), 2**33)),
)
def test_branch_targets_verify_or_raise(op: str, address: int, offset: int) -> None:
    target = address + offset
    if target < 0:
        return
    insn = try_assemble(f"{op} {hex(target)}", address)
    if insn is None:
        assert not (op in ("jmp", "call", "jne", "jl", "jae") and abs(offset) < 2**30)
        return
    assert insn.mnemonic == op
    assert insn.operands[0].imm & MASK64 == target


@SETTINGS
@given(
    st.sampled_from(["mov", "add", "cmp", "lea"]),
    st.sampled_from(REG64),
    st.sampled_from(["", "fs:", "gs:"]),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    addresses,
)
def test_rip_relative_and_absolute_operands_verify_or_raise(
    op: str, dst: str, segment: str, rip: bool, value: int, address: int
) -> None:
    if op == "lea" and segment:
        return
    ptr = "" if op == "lea" else "qword ptr "
    where = (
        (f"rip - {hex(-value)}" if value < 0 else f"rip + {hex(value)}")
        if rip
        else hex(value & MASK64)
    )
    insn = try_assemble(f"{op} {dst}, {ptr}{segment}[{where}]", address)
    if insn is None:
        assert not rip  # Keystone encodes RIP-relative text correctly; absolute only sometimes
        return
    m = insn.operands[1].mem
    seg = _detail_decoder().reg_name(m.segment) + ":" if m.segment else ""
    assert seg == segment
    if rip:
        assert m.base == x86.X86_REG_RIP and m.disp == value
    else:
        assert m.base == 0 and m.index == 0  # never RIP-relative
        assert m.disp & MASK64 == value & MASK64
