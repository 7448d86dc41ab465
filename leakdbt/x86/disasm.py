"""Decoding x86-64 machine code with Capstone: the one place that imports it.

Kept deliberately small for now; the translator's CFG builder will grow it.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _decoder() -> Any:
    import capstone  # imported lazily: it costs tens of milliseconds

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True  # keep decoding after a byte that is not an instruction
    return md


@lru_cache(maxsize=1)
def strict_decoder() -> Any:
    """A decoder that stops at the first byte that is not an instruction (no skipdata)."""
    import capstone

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def instruction_starts(code: bytes, address: int) -> list[int]:
    """Addresses where instructions start when ``code`` is decoded linearly from ``address``.

    Bytes Capstone cannot decode are skipped and never count as instruction starts.
    """
    starts: list[int] = []
    for insn_address, _size, mnemonic, _ops in _decoder().disasm_lite(code, address):
        if mnemonic != ".byte":
            starts.append(insn_address)
    return starts


def decode_one(code: bytes, address: int) -> Any | None:
    """The first instruction of ``code`` decoded at ``address`` (a Capstone CsInsn), or None.

    None means the leading bytes are not a valid instruction (or ``code`` is too short).
    """
    for insn in strict_decoder().disasm(code, address, 1):
        return insn
    return None


# A byte that may start a rel32 call/jmp (E8/E9) or a two-byte rel32 jcc (0F 80-8F).
_REL32 = re.compile(rb"[\xe8\xe9]|\x0f[\x80-\x8f]", re.S)


def rel32_targets(code: bytes, address: int) -> list[int]:
    """Sorted targets of every rel32 call, jmp or jcc that *could* start at any byte of
    ``code`` — a superset of the real ones (no decoding, so nothing is missed when code
    and data are mixed; a false target is a random address, rarely a real one)."""
    targets = set()
    for m in _REL32.finditer(code):
        at = m.end()
        if at + 4 <= len(code):
            targets.add(address + at + 4 + struct.unpack_from("<i", code, at)[0])
    return sorted(targets)


def direct_targets(code: bytes, address: int) -> set[int]:
    """Targets of the direct jumps, branches and calls found by decoding ``code`` linearly
    from ``address`` (which should be an instruction boundary)."""
    targets: set[int] = set()
    for _addr, _size, mnemonic, op_str in _decoder().disasm_lite(code, address):
        if (mnemonic[0] == "j" or mnemonic.endswith("call") or mnemonic.startswith("loop")
                ) and op_str.startswith("0x"):
            targets.add(int(op_str, 16))
    return targets


def direct_call_targets(code: bytes, address: int) -> set[int]:
    """Targets of the direct calls found by decoding ``code`` linearly."""
    return {int(op, 16) for _a, _s, mnemonic, op in _decoder().disasm_lite(code, address)
            if mnemonic == "call" and op.startswith("0x")}
