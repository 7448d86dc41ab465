"""The plugin API for hardening passes: the only leakdbt module a pass imports.

A pass is a pure function of a region, the contract and the CPU profile: it never touches
the emulator.  It says whether it applies to a region and returns either a :class:`Rewrite`
(instruction sequences, in Capstone's Intel syntax, that replace some of the region's
instructions) or a :class:`Refusal` with the reason.  The translator assembles every line
with Keystone, checks each encoding with Capstone, and lays the result out in the code cache.

A pass module exposes its pass as a module-level ``PASS`` (built-ins live in ``plugins/``;
third-party packages register the same object under the ``leakdbt.passes`` entry-point
group).  See docs/passes.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from leakdbt.dbt.insn import Flow, Insn

if TYPE_CHECKING:
    from leakdbt.contract.model import Contract
    from leakdbt.contract.profiles import Profile

API_VERSION = 1
"""The version of this interface; a pass declaring another one is rejected at load."""

__all__ = ["API_VERSION", "BlockView", "Flow", "HardeningPass", "Insn", "Refusal",
           "RegionView", "Rewrite"]


@dataclass(frozen=True)
class BlockView:
    """One basic block of a region: its instructions and where control goes after it."""

    start: int
    insns: tuple[Insn, ...]
    successors: tuple[int, ...]  # block starts (or addresses outside the region)


@dataclass(frozen=True)
class RegionView:
    """What a pass sees of a region (link-time addresses of its module)."""

    name: str  # as the contract wrote it, e.g. ``modexp+0x40``
    kind: str | None  # the contract's kind: branch, table, divide, loop, float, or None
    entry: int
    blocks: tuple[BlockView, ...]  # by address
    table: tuple[int, int] | None = None  # a table region's bounds: (address, length)

    def instructions(self) -> list[Insn]:
        """Every instruction of the region, by address."""
        return [i for b in self.blocks for i in b.insns]


@dataclass(frozen=True)
class Refusal:
    """Why a pass does not (or cannot) harden a region; shown to the user as is."""

    reason: str


@dataclass(frozen=True)
class Rewrite:
    """Replacement sequences: original instruction address → the lines that run instead.

    Instructions not named run as they are.  Lines may define local labels (``name:``)
    and branch to them; they may not branch out of their sequence.
    """

    replace: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


@runtime_checkable
class HardeningPass(Protocol):
    """What a pass provides.  ``before``/``after`` name other passes it must run
    before/after (unknown names are ignored: that pass is simply not installed)."""

    name: str
    api_version: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    def applies(self, region: RegionView, contract: Contract, profile: Profile
                ) -> bool | Refusal:
        """Whether this pass has work in ``region`` (a Refusal says why it cannot)."""
        ...

    def harden(self, region: RegionView, contract: Contract, profile: Profile
               ) -> Rewrite | Refusal:
        """The hardened replacement for ``region``, or why there is none."""
        ...
