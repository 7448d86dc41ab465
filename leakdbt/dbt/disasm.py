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


def instruction_starts(code: bytes, address: int) -> list[int]:
    """Addresses where instructions start when ``code`` is decoded linearly from ``address``.

    Bytes Capstone cannot decode are skipped and never count as instruction starts.
    """
    starts: list[int] = []
    for insn_address, _size, mnemonic, _ops in _decoder().disasm_lite(code, address):
        if mnemonic != ".byte":
            starts.append(insn_address)
    return starts
