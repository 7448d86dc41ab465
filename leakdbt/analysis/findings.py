"""The result of ``leakdbt analyze`` as data: the instructions the secrets reach, and the
contract regions suggested for them (:mod:`leakdbt.analysis.analyze` makes it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from leakdbt.analysis.grow import Growth
from leakdbt.contract.edit import RegionEntry
from leakdbt.leakage.findings import LeakPoint


@dataclass(frozen=True)
class TableObject:
    """A sized ELF data object a secret-indexed memory access touched (link-time bounds)."""

    name: str  # as a contract names it (``lib.so:name`` outside the main program); "": it
    # cannot be named (a local symbol another one shares the name of, in a PIE or library)
    module: str | None  # None: the main program
    start: int
    size: int
    segment: int  # the link-time start of the PT_LOAD segment holding it (-1: none)
    symbol: str = ""  # its symbol's name, for messages

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class AnalysisFinding(LeakPoint):
    """An instruction the secrets reach in an observable way (found by taint tracking)."""

    secrets: tuple[str, ...]  # the secrets it depends on
    count: int  # how often it ran tainted
    confirmed: str = ""  # with --confirm: the checker's witness, when it saw the leak too
    table: str | None = None  # memory accesses: the data object they hit, when one
    # memory accesses: every data object they hit, and whether some hit none (heap, stack)
    tables: tuple[TableObject, ...] = ()
    untabled: bool = False


@dataclass
class AnalysisReport:
    """What ``leakdbt analyze`` found."""

    binary: str
    contract: str
    findings: list[AnalysisFinding] = field(default_factory=list)
    regions: list[RegionEntry] = field(default_factory=list)
    covering: dict[str, RegionEntry] = field(default_factory=dict)  # location -> its region
    growth: list[Growth] = field(default_factory=list)  # per suggested region: what was tried
    instructions: int = 0
    default_rule: dict[str, int] = field(default_factory=dict)  # mnemonic -> instructions
    seconds: float = 0.0
    within_line: int = 0  # memory accesses moved only within a line, not seen: dropped
    taint_seconds: float = 0.0  # host time in the taint hook (the tracker's own speed)
    runs: int = 1  # guest runs: the tainted ones, then for function regions and loop bounds
