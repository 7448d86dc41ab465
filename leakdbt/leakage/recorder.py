"""A simple leakage recorder: what an attacker could observe of the protected regions.

While the guest runs inside the code of a contract's regions — the original blocks in fast
mode, the hardened copies in hardened mode — it records, in order:

- every basic block the engine enters there (control flow);
- every data access made from there, as ``(kind, address // unit)`` (cache-line or finer
  granularity);
- the operands of every DIV/IDIV executed there (variable latency).

Two runs with different secrets leak through a region exactly when their records differ.
This is the recorder the hardening tests use, scoped to the regions' code ranges;
``leakdbt check`` observes the same things with :mod:`leakdbt.leakage.observe`, scoped to
functions.  Memory hooks make every guest access slower, so it is attached
only when asked for.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as x

from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.dbt.region import merge_ranges
from leakdbt.leakage.observe import LatencySite, latency_site, operand_values
from leakdbt.machine.machine import Machine


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
        self.ranges = merge_ranges(ranges)
        self._starts = [lo for lo, _ in self.ranges]
        self.seen = Observations()
        self._divisions: dict[int, LatencySite | None] = {}
        uc = machine.uc
        for lo, hi in self.ranges:
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
        if address not in self._divisions:
            self._divisions[address] = latency_site(bytes(uc.mem_read(address, size)),
                                                    address, ("int-div",))
        site = self._divisions[address]
        if site is not None:
            rax, rdx, divisor = operand_values(uc, site)
            self.seen.divisions.append((address, rax, rdx, divisor))

    def _on_access(self, uc: Any, access: int, address: int, size: int, value: int,
                   _ud: object) -> None:
        if self.inside(uc.reg_read(x.UC_X86_REG_RIP)):
            kind = "write" if access == UC_MEM_WRITE else "read"
            first, last = address // self.unit, (address + size - 1) // self.unit
            self.seen.accesses += [(kind, u) for u in range(first, last + 1)]
