"""Every refusal of predicated code (plugins/support/predication.py) word for word: the
instruction-level reasons that if-conversion, bounded-loop and callee clones all give.

Each case is one instruction, assembled at 0x10000 and judged with a bias of 0x400000, so
the message names it by its runtime address; the exact text is the contract with the user
(docs/passes.md lists the same reasons).
"""

from __future__ import annotations

import pytest

from leakdbt.plugin_api import Refusal
from leakdbt.x86.asm import assemble_block
from leakdbt.x86.insn import Insn, decode_all
from plugins.if_conversion import PASS as IF_CONVERSION
from plugins.support.predication import (
    Mem,
    Refused,
    analyse,
    control_refusal,
    predicated_refusal,
)
from tests.unit.plugins.ifc_support import harden, view_from_asm

BASE = 0x10000
BIAS = 0x400000


def _one(text: str) -> Insn:
    """The decoded instruction ``text`` at BASE."""
    [insn] = decode_all(assemble_block([text], BASE), BASE)
    return insn


CONTROL = {
    "call rax": "'call rax' at 0x410000 is a call (a callee cannot be predicated)",
    "call 0x10100": "'call 0x10100' at 0x410000 is a call (a callee cannot be predicated)",
    "jmp rax": "'jmp rax' at 0x410000 is an indirect jump",
    "hlt": "'hlt' at 0x410000 stops the program",
    "ud2": "'ud2' at 0x410000 stops the program",
    "ret 8": "'ret 8' at 0x410000 is not a plain ret",
    "jrcxz 0x10000": "'jrcxz 0x10000' at 0x410000: loop/jrcxz branches are not supported",
    "loop 0x10000": "'loop 0x10000' at 0x410000: loop/jrcxz branches are not supported",
    "syscall": "'syscall' at 0x410000 is a system call or software interrupt",
    "int 0x80": "'int 0x80' at 0x410000 is a system call or software interrupt",
    "rep stosb byte ptr [rdi], al":
        "'rep stosb byte ptr [rdi], al' at 0x410000 is a string instruction",
}


@pytest.mark.parametrize("text", sorted(CONTROL))
def test_control_refusals_name_the_instruction(text: str) -> None:
    assert control_refusal(_one(text), BIAS) == CONTROL[text]


@pytest.mark.parametrize("text", ["ret", "jne 0x10000", "jmp 0x10000", "add rax, rbx",
                                  "movsd xmm0, qword ptr [rdi]"])
def test_plain_instructions_pass_the_control_rule(text: str) -> None:
    assert control_refusal(_one(text), BIAS) is None


PREDICATED = {
    "push rax": "'push rax' at 0x410000 writes rsp",
    "mov eax, dword ptr [esi]": "'mov eax, dword ptr [esi]' at 0x410000 uses 32-bit addressing",
    "vpxor ymm0, ymm0, ymm0": "'vpxor ymm0, ymm0, ymm0' at 0x410000 is an AVX instruction "
                              "(ymm/zmm state is not predicated)",
    "fld1": "'fld1' at 0x410000 uses the x87/MMX state, which is not predicated",
    "ldmxcsr dword ptr [rsp + 8]": "'ldmxcsr dword ptr [rsp + 8]' at 0x410000 writes mxcsr, "
                                   "which is not predicated",
    "mov qword ptr fs:[rsi], rdx": "'mov qword ptr fs:[rsi], rdx' at 0x410000 writes through "
                                   "fs: (segment stores are not undone)",
    "div qword ptr [rsp + 8]": "'div qword ptr [rsp + 8]' at 0x410000: a memory divisor in a "
                               "conditional block is not supported",
    "div rdx": "'div rdx' at 0x410000: a divisor in the dividend's registers is not supported",
    "lock add qword ptr [rdi], 1": "'lock add qword ptr [rdi], 1' at 0x410000 is an atomic or "
                                   "compare-and-exchange instruction (not predicated)",
    "xchg qword ptr [rdi], rcx": "'xchg qword ptr [rdi], rcx' at 0x410000 is an atomic or "
                                 "compare-and-exchange instruction (not predicated)",
    "cmpxchg qword ptr [rdi], rcx": "'cmpxchg qword ptr [rdi], rcx' at 0x410000 is an atomic "
                                    "or compare-and-exchange instruction (not predicated)",
    "maskmovdqu xmm0, xmm1": "'maskmovdqu xmm0, xmm1' at 0x410000 stores more memory than its "
                             "operand names (not undone)",
    "vmaskmovps xmmword ptr [rdi], xmm1, xmm2": "'vmaskmovps xmmword ptr [rdi], xmm1, xmm2' at "
                                                "0x410000 is an AVX instruction (ymm/zmm state "
                                                "is not predicated)",
}

# Capstone spells these so that Keystone does not take the text back: given as bytes.
PREDICATED_BYTES = {
    "d7": "'xlatb' at 0x410000 is xlat (its load from [rbx + al] and its write of al are "
          "implicit)",
    "678a07": "'mov al, byte ptr [edi]' at 0x410000 uses 32-bit addressing",
    "0fae27": "'xsave ptr [rdi]' at 0x410000 stores more memory than its operand names "
              "(not undone)",
    "480fc70f": "'cmpxchg16b xmmword ptr [rdi]' at 0x410000 is an atomic or "
                "compare-and-exchange instruction (not predicated)",
    "89042500100000": "'mov dword ptr [0x1000], eax' at 0x410000 writes to an absolute "
                      "address (not undone)",
}


@pytest.mark.parametrize("text", sorted(PREDICATED))
def test_predicated_refusals_name_the_instruction(text: str) -> None:
    insn = _one(text)
    assert predicated_refusal(analyse(insn), BIAS) == PREDICATED[text]


@pytest.mark.parametrize("code", sorted(PREDICATED_BYTES))
def test_predicated_refusals_of_instructions_given_as_bytes(code: str) -> None:
    [insn] = decode_all(bytes.fromhex(code), BASE)
    assert predicated_refusal(analyse(insn), BIAS) == PREDICATED_BYTES[code]


def test_a_store_of_an_odd_width_is_refused() -> None:
    """A 10-byte store (``sgdt``) cannot be undone by a load, select and store back."""
    info = analyse(_one("sgdt [rdi]"))
    assert predicated_refusal(info, BIAS) == ("'sgdt [rdi]' at 0x410000 writes 10 bytes of "
                                              "memory (only 1, 2, 4, 8 or 16 are undone)")


def test_capstone_read_only_stores_are_stores() -> None:
    """stmxcsr stores, cmpxchg reads and writes: what predication and taint rely on."""
    [stm] = analyse(_one("stmxcsr dword ptr [rdi]")).mems
    [cx] = analyse(_one("cmpxchg qword ptr [rdi], rcx")).mems
    assert (stm.read, stm.write) == (False, True) and (cx.read, cx.write) == (True, True)


@pytest.mark.parametrize("text", ["lea edx, [ecx - 1]", "add rax, qword ptr [rdi + 8]",
                                  "mov qword ptr [rsp + 8], rax",
                                  "div rcx", "movdqu xmmword ptr [rdi], xmm1", "cmovne rax, rbx"])
def test_ordinary_instructions_can_run_predicated(text: str) -> None:
    assert predicated_refusal(analyse(_one(text)), BIAS) is None


def test_an_absolute_operand_has_no_register_spelling() -> None:
    """A memory operand with neither base nor index cannot be re-based by the engine."""
    mem = Mem(width=8, read=True, write=False, segment=None, base=None, index=None, scale=1,
              disp=0x1000, rip_target=None)
    with pytest.raises(Refused, match="^absolute memory operand$"):
        mem.address()


def test_if_conversion_refuses_an_atomic_in_an_arm() -> None:
    """Before, ``lock cmpxchg`` passed as a load and ran whatever the predicate: a lock taken
    on the path the original never took."""
    view = view_from_asm(["test dil, 1", "je join", "lock cmpxchg qword ptr [rsi], rcx",
                          "join:", "ret"])
    result = harden(IF_CONVERSION, view)
    assert isinstance(result, Refusal), result
    assert "'lock cmpxchg qword ptr [rsi], rcx' at 0x10006 is an atomic" in result.reason
