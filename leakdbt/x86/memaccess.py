"""Whether an instruction's memory operand is read and/or written, Capstone's answer
corrected: Capstone 5 marks the memory destination of several stores read-only (movnti,
movntdq/movntps/movntpd, movups/movupd, movq/movd/movlps/movhps [mem], xmm, pextr*,
extractps, stmxcsr) and that of cmpxchg/cmpxchg8b/cmpxchg16b, which it writes, read-only
too, so code that trusts ``op.access`` would take those stores for loads — a predicated arm
would store unconditionally, taint would not reach memory."""

from __future__ import annotations

import re

# With a memory first operand, these write it and do not read it (Intel SDM: the mov*
# family's destination, pextr*/extractps's r/m32 destination), whatever Capstone says.
_PURE_STORE = re.compile(r"v?(mov|pextr[bwdq]$|extractps$|stmxcsr$)")
# These read and write their memory operand, which Capstone marks read-only.
_READ_WRITE = re.compile(r"cmpxchg(8b|16b)?$")
ACCESS_READ, ACCESS_WRITE = 1, 2  # Capstone's CS_AC_READ, CS_AC_WRITE


def memory_access(mnemonic: str, operand_index: int, access: int) -> tuple[bool, bool]:
    """(read, written) of memory operand ``operand_index`` (0: the first) with Capstone's
    ``access`` bits; an operand with no bits counts as read, as Capstone leaves implicit
    ones unmarked."""
    if operand_index == 0 and _PURE_STORE.match(mnemonic):
        return False, True
    if operand_index == 0 and _READ_WRITE.match(mnemonic):
        return True, True
    return bool(access & ACCESS_READ) or not access, bool(access & ACCESS_WRITE)
