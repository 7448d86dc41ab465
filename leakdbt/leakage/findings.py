"""The result of a leakage check: findings (leak points) with their witnesses, as data.

Reports (text, JSON, SARIF) are renderings of a :class:`CheckReport`; nothing here runs
the guest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from leakdbt.loader.dwarf import SourceLine


class LeakKind(enum.StrEnum):
    """What an adversary observes differ at a leak point.  The values are the one spelling
    of each kind: observer names (leakdbt.leakage.observe), findings, JSON, SARIF rule ids."""

    CONTROL_FLOW = "control-flow"  # which way a branch goes (the executed block sequence)
    MEMORY_ACCESS = "memory-access"  # which cache line (page, byte) an access touches
    VARIABLE_LATENCY = "variable-latency"  # operand properties that change an instruction's time


KIND_TEXT: dict[LeakKind, str] = {
    LeakKind.CONTROL_FLOW: "the branch taken depends on the secret",
    LeakKind.MEMORY_ACCESS: "the memory location accessed depends on the secret",
    LeakKind.VARIABLE_LATENCY: "an instruction whose latency depends on its operands runs on "
                               "secret-dependent operands",
}


@dataclass(frozen=True)
class Trial:
    """One run's secret values: secret name → the bytes as hex."""

    index: int
    secrets: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.secrets)


@dataclass(frozen=True)
class Witness:
    """Two trials whose observations differ at a leak point, and what each observed."""

    first: Trial
    second: Trial
    observed: tuple[str, str]  # what each trial observed there, rendered for people


@dataclass(frozen=True)
class LeakPoint:
    """An instruction where the secrets become observable: what every finding says, however
    it was found (trials: :class:`Finding`; taint: leakdbt.analysis.findings)."""

    kind: LeakKind
    address: int  # runtime address of the instruction
    location: str  # module:symbol+offset (symbol+offset in the main program)
    module: str  # file name of the module (the binary's or a library's)
    link_address: int  # the instruction's address in the module's own numbering
    instruction: str  # Capstone's text
    source: SourceLine | None


@dataclass(frozen=True)
class Finding(LeakPoint):
    """One leak point of a check report."""

    mode: str  # "original" or "hardened": which code was checked
    module_path: str
    distinct: int  # distinct observations at this point over the trials (0: no trials)
    trials: int  # trials the check ran (0: found by taint tracking)
    witness: Witness | None  # None: found by taint tracking (leakdbt analyze), not by trials
    suggestion: str | None = None  # a [[protect.region]] entry that would cover it


@dataclass(frozen=True)
class DerivedTrial:
    """A directed trial (leakdbt.leakage.directed): a parent trial's secret with the other
    operand of one of its comparisons copied in, so that it takes that comparison's other
    outcome."""

    index: int  # the derived trial's number
    parent: int  # the trial it was derived from
    secret: str  # the secret changed
    offset: int  # bytes [offset, offset + length) of it were replaced
    length: int
    location: str  # the comparison: symbol+offset (lib.so:symbol+offset in a library)
    instruction: str

    def describe(self) -> str:
        return (f"trial {self.index} from trial {self.parent}: {self.secret}"
                f"[{self.offset}:{self.offset + self.length}] set to the other operand of "
                f"{self.instruction} at {self.location}")


@dataclass
class ModeSummary:
    """Figures for one checked mode."""

    mode: str
    trials: int
    instructions: int = 0  # guest instructions of the first trial in scope
    cost: int = 0  # the cost model's estimate for the first trial (profile latencies)
    distinct_traces: dict[str, int] = field(default_factory=dict)  # observer -> digests
    declassification: str = ""  # how declassified values grouped the trials ("": not at all)


@dataclass
class CheckReport:
    """Everything ``leakdbt check`` found."""

    binary: str
    args: tuple[str, ...]
    contract: str
    profile: str
    adversary: str
    observers: tuple[str, ...]  # observer names checked
    granularity: str  # "line", "page" or "byte"
    seed: int
    modes: list[ModeSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # outputs that leak, not declassified
    derived: list[DerivedTrial] = field(default_factory=list)  # directed trials added
    seconds: float = 0.0

    @property
    def leaks(self) -> bool:
        return bool(self.findings or self.outputs)
