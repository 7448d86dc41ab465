"""A simple leakage recorder: what an attacker could observe of the protected regions.

While the guest runs inside the code of a contract's regions — the original blocks in fast
mode, the hardened copies in hardened mode — it records, in order:

- every basic block the engine enters there (control flow);
- every data access made from there, as ``(kind, address // unit)`` (cache-line or finer
  granularity);
- the operands of every DIV/IDIV executed there (variable latency).

Two runs with different secrets leak through a region exactly when their records differ.
This is the recorder the hardening tests use; ``leakdbt check`` (docs/checking.md) builds
on the same observations.  Memory hooks make every guest access slower, so it is attached
only when asked for.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as x

from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.machine.machine import Machine

_DIVIDEND = (x.UC_X86_REG_RAX, x.UC_X86_REG_RDX)
Divisor = tuple[str | None, str | None, str | None, int, int, int]  # reg, base, index, scale,
# displacement, width: how to read a DIV/IDIV's divisor


@dataclass
class Observations:
    """What one run showed, in order of occurrence."""

    blocks: list[int] = field(default_factory=list)
    accesses: list[tuple[str, int]] = field(default_factory=list)  # (read/write, unit)
    divisions: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (rip, rax, rdx, divisor)
    instructions: int = 0  # executed in the regions' code


class LeakageRecorder:
    """Records :class:`Observations` for code in ``ranges`` ([start, end) runtime)."""

    def __init__(self, machine: Machine, ranges: list[tuple[int, int]], unit: int = 64) -> None:
        self.machine = machine
        self.unit = unit
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        self.ranges = merged
        self._starts = [lo for lo, _ in merged]
        self.seen = Observations()
        self._divisor: dict[int, Divisor | None] = {}
        uc = machine.uc
        for lo, hi in merged:
            uc.hook_add(UC_HOOK_BLOCK, self._on_block, None, lo, hi - 1)
            uc.hook_add(UC_HOOK_CODE, self._on_insn, None, lo, hi - 1)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access)

    @classmethod
    def for_regions(cls, machine: Machine, dispatcher: Dispatcher, unit: int = 64
                    ) -> LeakageRecorder:
        """A recorder for every region the dispatcher installed: its original code and its
        copy (each run uses one of them, by mode)."""
        ranges: list[tuple[int, int]] = []
        for site in dispatcher.sites:
            t = site.translation
            ranges.append((t.base, t.end))
            ranges += [(address, address + len(raw)) for address, raw in t.source]
        return cls(machine, ranges, unit)

    def inside(self, address: int) -> bool:
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address < self.ranges[i][1]

    def _on_block(self, uc: Any, address: int, size: int, _ud: object) -> None:
        self.seen.blocks.append(address)

    def _on_insn(self, uc: Any, address: int, size: int, _ud: object) -> None:
        self.seen.instructions += 1
        if address not in self._divisor:
            self._divisor[address] = _divisor_of(bytes(uc.mem_read(address, size)), address)
        how = self._divisor[address]
        if how is not None:
            rax, rdx = (uc.reg_read(r) for r in _DIVIDEND)
            self.seen.divisions.append((address, rax, rdx, _read_divisor(uc, how)))

    def _on_access(self, uc: Any, access: int, address: int, size: int, value: int,
                   _ud: object) -> None:
        if self.inside(uc.reg_read(x.UC_X86_REG_RIP)):
            kind = "write" if access == UC_MEM_WRITE else "read"
            first, last = address // self.unit, (address + size - 1) // self.unit
            self.seen.accesses += [(kind, u) for u in range(first, last + 1)]


def _divisor_of(code: bytes, address: int) -> Divisor | None:
    """How to read the divisor of the DIV/IDIV in ``code`` (None: not a division)."""
    import capstone
    from capstone import x86 as cx

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    for ci in md.disasm(code, address, 1):
        if ci.mnemonic not in ("div", "idiv"):
            return None
        op = ci.operands[0]
        if op.type == cx.X86_OP_REG:
            return (ci.reg_name(op.reg), None, None, 1, 0, op.size)
        mem = op.mem
        base = ci.reg_name(mem.base) if mem.base else None
        disp = mem.disp + (address + ci.size if base == "rip" else 0)
        return (None, None if base == "rip" else base,
                ci.reg_name(mem.index) if mem.index else None, mem.scale, disp, op.size)
    return None


def _read_divisor(uc: Any, how: Divisor) -> int:
    reg, base, index, scale, disp, width = how
    if reg is not None:
        return int(uc.reg_read(getattr(x, f"UC_X86_REG_{reg.upper()}")))
    address = disp
    if base:
        address += uc.reg_read(getattr(x, f"UC_X86_REG_{base.upper()}"))
    if index:
        address += scale * uc.reg_read(getattr(x, f"UC_X86_REG_{index.upper()}"))
    return int.from_bytes(uc.mem_read(address & ((1 << 64) - 1), width), "little")
