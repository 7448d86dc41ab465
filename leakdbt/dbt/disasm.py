"""Decoding x86-64 machine code with Capstone: the one place that imports it.

Kept deliberately small for now; the translator's CFG builder will grow it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _decoder() -> Any:
    import capstone  # imported lazily: it costs tens of milliseconds

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True  # keep decoding after a byte that is not an instruction
    return md


@lru_cache(maxsize=1)
def _strict_decoder() -> Any:
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
    for insn in _strict_decoder().disasm(code, address, 1):
        return insn
    return None


def direct_targets(code: bytes, address: int) -> set[int]:
    """Targets of the direct jumps, branches and calls found by decoding ``code`` linearly.

    A linear sweep may misread data as code; the extra targets it then reports only make
    callers more careful.
    """
    targets: set[int] = set()
    for _addr, _size, mnemonic, op_str in _decoder().disasm_lite(code, address):
        if (mnemonic[0] == "j" or mnemonic.endswith("call") or mnemonic.startswith("loop")
                ) and op_str.startswith("0x"):
            targets.add(int(op_str, 16))
    return targets
