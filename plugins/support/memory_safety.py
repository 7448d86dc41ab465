"""The memory rule of the predicating passes (if-conversion, bounded-loop): an access the
original makes only on some paths runs on every path once the code is predicated, so it
must be provably valid there and touch the same address whatever the secret
(docs/passes.md, "Memory rule").

Accepted: frame slots at or above the red zone's bottom and RIP-relative data
(:func:`~plugins.support.predication.always_valid`); otherwise an address whose registers
the predicated code does not write, when the same operand (at least as wide) is accessed on
every path, or was accessed where every path starts (``known``), or when its registers are
induction variables (bounded-loop: valid under the contract's bound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from leakdbt.plugin_api import BlockView
from plugins.support.predication import (
    GPR,
    InsnInfo,
    Mem,
    Refused,
    always_valid,
    body,
    covered,
    where,
)

__all__ = ["accessed_at_end", "check_accesses"]

MemKey = tuple[object, ...]


def accessed_at_end(block: BlockView, infos: Mapping[int, InsnInfo]) -> dict[MemKey, int]:
    """The operands ``block`` accesses that still denote the same address at its end (no
    later write to their registers), with the widest width accessed."""
    live: dict[MemKey, int] = {}
    regs_of: dict[MemKey, frozenset[str]] = {}
    for insn in body(block):
        info = infos[insn.address]
        for m in info.mems:
            live[m.key] = max(live.get(m.key, 0), m.width)
            regs_of[m.key] = m.regs
        for k in [k for k in live if regs_of[k] & info.writes]:
            del live[k]
    return live


def check_accesses(blocks: Sequence[BlockView], infos: Mapping[int, InsnInfo], bias: int,
                   start: int, edges: dict[int, list[int]], *, computed_by: str,
                   every_path: str, induction: frozenset[str] = frozenset(),
                   known: Mapping[MemKey, int] | None = None,
                   also_written: frozenset[str] = frozenset(),
                   collect: list[tuple[InsnInfo, Mem, str]] | None = None) -> None:
    """Raise :class:`Refused` for the first access of ``blocks`` (the predicated ones) the
    rule does not accept.  Paths run from ``start`` along ``edges`` (block → successors;
    see :func:`~plugins.support.predication.covered`); ``computed_by`` and ``every_path``
    finish the two refusals ("which {computed_by}", "not every path {every_path}
    accesses"); ``also_written``: registers other predicated code (callee clones) writes;
    ``collect``: instead of raising, append every access the rule does not accept (its
    instruction, operand and the refusal) and go on."""
    written = {r for b in blocks for i in body(b) for r in infos[i.address].writes if r in GPR}
    written |= {GPR[r] for r in also_written if r in GPR}  # other predicated code's writes
    for b in blocks:
        for insn in body(b):
            for m in infos[insn.address].mems:
                if always_valid(m):
                    continue
                bad = sorted(m.regs & written - induction)
                reason = ""
                if bad:
                    reason = (f"{where(insn, bias)}: its address depends on {bad[0]}, "
                              f"which {computed_by}")
                elif m.regs & induction:
                    continue  # valid within `bound` iterations: the contract's precondition
                elif known is not None and known.get(m.key, 0) >= m.width:
                    continue
                elif not covered(start, edges, {c.start for c in blocks for i in body(c)
                                                for o in infos[i.address].mems
                                                if o.key == m.key and o.width >= m.width}):
                    reason = (f"{where(insn, bias)}: accesses memory that not every path "
                              f"{every_path} accesses")
                if reason and collect is None:
                    raise Refused(reason)
                if reason and collect is not None:
                    collect.append((infos[insn.address], m, reason))
