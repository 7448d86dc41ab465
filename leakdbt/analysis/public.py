"""The ``public`` registers ``leakdbt analyze --write`` puts on the branch regions it writes:
the general registers (every GPR but rsp) that no secret had reached when the region's first
instruction ran, in every execution of it in analyze's tainted run(s).

The tracker records the register taint at every block start it runs
(:meth:`leakdbt.analysis.taint.TaintTracker.block_taint`); this module merges the runs and
reads it at each region's entry.  A region whose entry never ran, or ran without every
execution being recorded, gets no ``public`` (its taint there is unknown).  What a run
observed is not a proof: the list is an assertion, which the contract says and which
``leakdbt check --mode hardened`` tests (docs/contracts.md, "Public registers").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from leakdbt.analysis.taint import CALLER_SAVED, ENTRY_REGISTERS, ENTRY_SET, Join, TaintTracker
from leakdbt.contract.edit import RegionEntry
from leakdbt.contract.load import parse_location
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.region import branch_extent
from leakdbt.loader.modules import ModuleMap
from leakdbt.x86.insn import Flow, written_registers

WHY = ("; public: the registers no secret had reached at its entry in the analyze run(s), "
       "through data or through the path taken, an assertion `leakdbt check --mode hardened` "
       "tests")
"""What ``why`` says of a written ``public`` list."""


@dataclass
class EntryTaint:
    """The GPR taint the tainted run(s) saw at block starts (run-time addresses: every run
    loads the same binary the same way)."""

    tainted: dict[int, int] = field(default_factory=dict)  # address -> ENTRY_REGISTERS mask
    unknown: set[int] = field(default_factory=set)  # ran, but not every execution recorded

    def add(self, tracker: TaintTracker) -> None:
        """Merge one run: a register tainted in any execution of any run is tainted."""
        known, unknown = tracker.block_taint()
        for address, mask in known.items():
            self.tainted[address] = self.tainted.get(address, 0) | mask
        self.unknown |= unknown

    def public_at(self, address: int) -> tuple[str, ...] | None:
        """The registers never tainted at ``address`` (ENTRY_REGISTERS order); None when
        that is unknown: it never ran, or some execution went unrecorded."""
        if address in self.unknown or address not in self.tainted:
            return None
        mask = self.tainted[address]
        return tuple(r for i, r in enumerate(ENTRY_REGISTERS) if not mask >> i & 1)


def runtime_address(at: str, modules: ModuleMap) -> int | None:
    """Where the block ``at`` (as contracts write it) was in the run, found as the contract
    binding finds it (the symbol's value plus the offset, in the named module), or None."""
    loc = parse_location(at)
    if isinstance(loc, str):
        return None
    mod = next((m for m in modules.modules() if m.is_named(loc.library)
                and m.image is not None), None)
    if mod is None or mod.image is None:
        return None
    if loc.absolute is not None:
        return loc.absolute + mod.base
    sym = mod.image.symbol(loc.symbol or "")
    if sym is None or sym.value == 0:
        return None
    return sym.value + loc.offset + mod.base


def with_public(entry: RegionEntry, taint: EntryTaint, modules: ModuleMap) -> RegionEntry:
    """``entry`` with ``public`` when it is a branch region whose entry's register taint the
    run(s) know and some register stayed clean there (its ``why`` then says so)."""
    if entry.kind != "branch" or entry.public:
        return entry
    address = runtime_address(entry.at, modules)
    public = taint.public_at(address) if address is not None else None
    if not public:
        return entry
    return replace(entry, public=public, why=entry.why + WHY)


class JoinOracle:
    """For :attr:`TaintTracker.joins`: where a conditional branch's paths meet and the
    registers any of them may write, from the static CFG of the function holding it (as
    the translator forms a branch region: leakdbt.dbt.region).  Unknown (None) where the
    branch lies in no function symbol or its CFG has no join for it."""

    def __init__(self, modules: ModuleMap) -> None:
        self.modules = modules
        self._known: dict[int, Join | None] = {}

    def __call__(self, address: int) -> Join | None:
        if address not in self._known:
            self._known[address] = self._find(address)
        return self._known[address]

    def _find(self, address: int) -> Join | None:
        mod = self.modules.find(address)
        if mod is None or mod.image is None:
            return None
        link = address - mod.base
        func = mod.image.function_containing(link)
        if func is None:
            return None
        cfg = function_cfg(mod.image, func)
        block = cfg.block_at(link)
        if block is None or block.last.address != link or block.start not in cfg.postdominators:
            return None
        join, members = branch_extent(cfg, block.start)
        regs: set[str] = set()
        for insn in (i for b in members for i in cfg.blocks[b].insns):
            regs |= written_registers(insn)
            if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                regs |= CALLER_SAVED
        if join is None:  # the paths meet by returning: the ABI restores the others
            return None, frozenset(regs & CALLER_SAVED)
        return join + mod.base, frozenset(regs & ENTRY_SET)

