"""The x86-64 registers leakdbt names: the one architectural table.

Names are Capstone's (lower case).  :data:`REGS64` says which 64-bit general register a
general register name is part of; :data:`WIDTH` gives every register name leakdbt reads or
writes on a machine, with its size in bytes.  The machine (``leakdbt.machine``) is the only
place that maps these names to engine register numbers.
"""

from __future__ import annotations

# The 16 general registers, in encoding order.
GENERAL = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# The legacy registers' 32/16/8-bit names (and the high byte where there is one).
_LEGACY = {"rax": ("eax", "ax", "al", "ah"), "rcx": ("ecx", "cx", "cl", "ch"),
           "rdx": ("edx", "dx", "dl", "dh"), "rbx": ("ebx", "bx", "bl", "bh"),
           "rsp": ("esp", "sp", "spl", None), "rbp": ("ebp", "bp", "bpl", None),
           "rsi": ("esi", "si", "sil", None), "rdi": ("edi", "di", "dil", None)}


def _sub_registers(reg: str) -> dict[str, int]:
    """The names of ``reg`` (a 64-bit general register) and of its parts -> size in bytes."""
    e, w, b, h = _LEGACY.get(reg, (f"{reg}d", f"{reg}w", f"{reg}b", None))
    return {reg: 8, e: 4, w: 2, b: 1, **({h: 1} if h else {})}


REGS64: dict[str, str] = {  # every general register name (8 to 64 bits) -> its 64-bit register
    name: reg for reg in GENERAL for name in _sub_registers(reg)}

XMM = tuple(f"xmm{n}" for n in range(16))
YMM = tuple(f"ymm{n}" for n in range(16))

WIDTH: dict[str, int] = {  # every register name a machine reads or writes -> bytes
    **{name: size for reg in GENERAL for name, size in _sub_registers(reg).items()},
    "rip": 8, "rflags": 8, "eflags": 4, "fs_base": 8, "gs_base": 8, "mxcsr": 4,
    **dict.fromkeys(XMM, 16), **dict.fromkeys(YMM, 32),
}
