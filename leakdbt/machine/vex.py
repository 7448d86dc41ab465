"""Find VEX-encoded vector instructions, which Unicorn (QEMU 5 TCG) executes with wrong results.

Unicorn decodes the VEX prefix but runs e.g. ``vpxor xmm0, xmm1, xmm2`` as the two-operand SSE
``pxor xmm0, xmm2``, silently.  The guest CPU does not advertise AVX, so correct programs never
pick such code at run time; a program built with ``-mavx`` runs it unconditionally.  We vet each
code page the first time the guest may execute it (the TLB fill of an executable page) with a
linear sweep, and the machine plants a one-instruction hook on every vector VEX instruction
found: the hook stops the guest with a clear error only if that instruction really runs.

EVEX (0x62) needs no hook: it is BOUND in 64-bit mode, so the engine raises #UD and the fault
handler names it.  BMI1/BMI2 use VEX on general-purpose registers and are emulated correctly.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# VEX.0F38 opcodes that are BMI1/BMI2 (andn, blsr/blsmsk/blsi, bzhi/pdep/pext, mulx,
# bextr/shlx/sarx/shrx) and VEX.0F3A F0 (rorx): general-purpose registers only.
_BMI = {(2, 0xF2), (2, 0xF3), (2, 0xF5), (2, 0xF6), (2, 0xF7), (3, 0xF0)}
# Prefixes that may precede VEX: segment overrides and address size.
_VEX_OK_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67))
# First bytes an instruction needs for vector_vex_at to say yes: checked before calling it,
# because a page holds about a thousand instructions and only a few start like this.
_VEX_FIRST_BYTES = _VEX_OK_PREFIXES | {0xC4, 0xC5}
SWEEP_BACK = 32  # bytes decoded before a page so the sweep is in step at the page start


@cache
def _disassembler() -> Any:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def vector_vex_at(code: bytes) -> bool:
    """Whether the instruction at the start of ``code`` is a VEX-encoded vector instruction."""
    i = 0
    while i < len(code) and i < 4 and code[i] in _VEX_OK_PREFIXES:
        i += 1
    if i + 3 >= len(code) or code[i] not in (0xC4, 0xC5):
        return False
    if code[i] == 0xC5:
        return True  # two-byte VEX implies map 0F: SSE/AVX or AVX-512 mask instructions
    return (code[i + 1] & 0x1F, code[i + 3]) not in _BMI


def vector_vex_instructions(code: bytes, address: int, start: int, end: int) -> list[int]:
    """Addresses in [start, end) of vector VEX instructions in ``code`` (which begins at
    ``address``), found by a linear sweep that skips undecodable bytes."""
    if b"\xc4" not in code and b"\xc5" not in code:
        return []
    md = _disassembler()
    found: list[int] = []
    offset = 0
    while offset < len(code):
        pos = offset
        for insn_addr, size, _mn, _ops in md.disasm_lite(code[offset:], address + offset):
            if insn_addr >= end:
                return found
            rel = insn_addr - address
            if (insn_addr >= start and code[rel] in _VEX_FIRST_BYTES
                    and vector_vex_at(code[rel:rel + 16])):
                found.append(insn_addr)
            pos = rel + size
        offset = pos + 1 if pos < len(code) else pos  # skip one undecodable byte
    return found
