"""A loop's *run-time* bound: ``bound = "(END - START) / STEP + C"`` in a loop region.

A constant ``bound`` is a trip count measured on one input; a loop whose other exit is a
comparison of a pointer the loop steps against a limit that does not change (``p == end``)
has at most ``(end - p) / step`` iterations, known when the loop is entered, and one that
counts a register down to zero (``n--``) at most ``n``.  The contract may give that
instead: two general registers read at the loop's entry, their difference divided by a
power of two, or one register, plus a constant.  The registers must hold *public* values (the
contract says so, as it does for a constant bound): the trip count then depends on public
values only.  bounded-loop computes it when the region is entered (docs/passes.md).

Grammar (spaces free): ``R1 - R2``, ``(R1 - R2) / S`` or ``R1``, each optionally followed
by ``+ C`` or ``- C``; R1, R2 64-bit general registers other than RSP, S a power of two up
to 2^16, C a decimal or hex integer below 2^31.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RunTimeBound", "parse_bound"]

_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
         "r13", "r14", "r15")
_REG = "(" + "|".join(_REGS) + ")"
_NUM = r"(0x[0-9a-fA-F]+|\d+)"
_FORMS = (re.compile(rf"\s*{_REG}\s*(?:-\s*{_REG}\s*)?(?:([+-])\s*{_NUM})?\s*"),
          re.compile(rf"\s*\(\s*{_REG}\s*-\s*{_REG}\s*\)\s*(?:/\s*{_NUM})?\s*"
                     rf"(?:([+-])\s*{_NUM})?\s*"))
MAX_CONSTANT = (1 << 31) - 1
MAX_STEP = 1 << 16


@dataclass(frozen=True)
class RunTimeBound:
    """``(end - start) >> shift + add``, from the registers at the loop's entry (``start``
    None: ``end + add``)."""

    end: str
    start: str | None
    shift: int = 0
    add: int = 0

    def __str__(self) -> str:
        text = self.end if self.start is None else f"{self.end} - {self.start}"
        if self.shift:
            text = f"({text}) / {1 << self.shift}"
        if self.add:
            text += f" {'+' if self.add > 0 else '-'} {abs(self.add)}"
        return text


def parse_bound(text: str) -> RunTimeBound | str:
    """The run-time bound ``text`` names, or why it names none (one line)."""
    m = _FORMS[0].fullmatch(text)
    step = "1"
    if m is not None:
        end, start, sign, add = m.groups()
    else:
        m = _FORMS[1].fullmatch(text)
        if m is None:
            return (f"'{text}' is not a run-time bound: write \"END - START\", "
                    "\"(END - START) / STEP\" or \"COUNT\", optionally \"+ C\" (END, START, "
                    "COUNT: 64-bit registers other than rsp)")
        end, start, step, sign, add = m.groups()
        step = step or "1"
    if end == start:
        return f"'{text}': the two registers must differ"
    s = int(step, 0)
    if s < 1 or s > MAX_STEP or s & (s - 1):
        return f"'{text}': the step {s} must be a power of two up to {MAX_STEP}"
    c = int(add, 0) if add else 0
    if c > MAX_CONSTANT:
        return f"'{text}': the constant {c} is too large (at most {MAX_CONSTANT})"
    return RunTimeBound(end, start, s.bit_length() - 1, -c if sign == "-" else c)
