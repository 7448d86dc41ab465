"""If-conversion: a secret-dependent branch region becomes straight-line predicated code.

Applies to regions the translator formed as ``branch`` (contract kind ``branch`` or none):
a block ending in a conditional branch up to the branch's immediate post-dominator (the
*join*), or up to the returns when the paths only meet by returning.  Diamonds, triangles
and nested acyclic branches are supported.

Method.  Every block of the region runs, in a topological order, whatever the secret
(plugins/predication.py).  The entry block runs as is.  Each other block has a predicate
slot, all-ones when the original would run it; a block's conditional branch ORs
``P & cond`` into its taken successor's predicate and ``P & ~cond`` into the fall-through's
(``cond`` from ``setcc`` on the block's own flags).  A block whose predicate is off is
undone after it ran: its registers (general and xmm), MXCSR, RFLAGS and the memory it
stored to get their old values back with ``cmov`` (stores: load, select, store to the same
address whichever way).  Divisions in a conditional block divide 0 by 1 when the block is
off (RAX = RDX = 0 and the divisor register = 1, restored afterwards), so they cannot fault;
their instructions stay ``.insn`` lines, so ct-division replaces them by its constant-time
sequence.  Every original non-control instruction is emitted as ``.insn`` (RIP-relative
operands are relocated, other passes' replacements composed); the branches are not.  The
code ends with ``jmp`` to the join, or with one ``ret`` when the arms only meet by
returning.  Registers, flags and memory after the region are those of the path the original
takes.  Scratch: slots below ``[rsp - REGION_SCRATCH]``.

Memory-safety rule.  A conditional block's memory accesses run on every path, so each must
be valid, and at an address independent of the path, even when the original would not run
the block.  Accepted: ``[rsp + d]`` with ``d >= -128`` and no index (the frame; RSP does not
change in conditional code); RIP-relative operands (module data); and an address computed
only from registers that no conditional block writes, when the same operand (same registers,
scale and displacement, at least as wide) is also accessed by the entry block after its last
write to those registers, or on every path through the region.  Anything else is refused:
the original may never touch it (``if (p) x = *p;``).  Precondition: memory that the
original reads at an address on every path is also writable there if a conditional block
stores to it (true of the stack and of data objects).  A store of an inactive block writes
its value and restores the old one a few instructions later: another thread reading that
location meanwhile could see the transient value.  An original that faults (a bad
pointer on the path it takes) still faults, but possibly at another instruction of the
hardened code (e.g. the load of a store's old value) and with glue state in the scratch
slots.

Leakage.  The instruction sequence does not depend on the branch.  Memory accesses: the
same addresses on every path (the rule above), in the same order.  A division's time is
only constant once ct-division replaced it (the pass order runs it after this one).

Cost.  Entry block: 14 instructions for its branch.  Each other block with ``w`` written
general registers and ``s`` stores: about ``2 w + 13 s + 30`` instructions (snapshot, two
``pushfq``/one ``popfq`` with their RSP moves, edge masks, commit), plus 10 per xmm register
written, 7 when it uses SSE (MXCSR), 8 per division.  Plus one ``mov`` per block and 3
constants at the start.

Refusals (the Refusal's reason, where ``I`` names the instruction as ``'text' at 0xADDR``):

- ``region shape is S, not a branch region``
- ``I is a call (a callee cannot be predicated)``
- ``I is a system call or software interrupt``
- ``I is an indirect jump``
- ``I stops the program``, ``I is not a plain ret``
- ``I: loop/jrcxz branches are not supported``
- ``I is a string instruction``
- ``the region contains a loop (a cycle through its blocks)``
- ``the region has more than one exit (A, B)``, ``the region both returns and leaves to A``
- in a conditional block: ``I writes rsp``; ``I uses 32-bit addressing``; ``I is an AVX
  instruction (ymm/zmm state is not predicated)``; ``I uses the x87/MMX state, which is not
  predicated``; ``I writes R, which is not predicated``; ``I writes N bytes of memory (only
  1, 2, 4, 8 or 16 are undone)``; ``I writes through fs: (segment stores are not undone)``;
  ``I writes to an absolute address (not undone)``; ``I: a memory divisor in a conditional
  block is not supported``; ``I: a divisor in the dividend's registers is not supported``
- memory: ``I: its address depends on R, which the conditional code computes``; ``I:
  accesses memory that not every path of the original accesses``
- ``the region needs more than 4096 bytes of scratch memory``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leakdbt.plugin_api import API_VERSION, BlockView, Refusal, RegionView, Rewrite, goto
from plugins.predication import (
    GPR,
    Engine,
    InsnInfo,
    Refused,
    always_valid,
    analyse,
    body,
    control_refusal,
    covered,
    predicated_refusal,
    slot,
    successors,
    terminator,
    topological,
    where,
)

if TYPE_CHECKING:
    from leakdbt.contract.model import Contract
    from leakdbt.contract.profiles import Profile

__all__ = ["PASS", "IfConversion", "if_convert"]


def if_convert(region: RegionView) -> list[str]:
    """The straight-line code for a branch region (see the module doc); raises
    :class:`~plugins.predication.Refused` with the reason when it cannot."""
    if region.shape != "branch":
        raise Refused(f"region shape is {region.shape}, not a branch region")
    bias = region.bias
    for insn in region.instructions():
        reason = control_refusal(insn, bias)
        if reason:
            raise Refused(reason)
    order = topological(region.entry, region.blocks, lambda a, b: False)
    if order is None:
        raise Refused("the region contains a loop (a cycle through its blocks)")
    exits = region.exits()
    if len(exits) > 1:
        raise Refused("the region has more than one exit ("
                      + ", ".join(f"{e + bias:#x}" for e in exits) + ")")
    if exits and any(terminator(b).kind == "ret" for b in region.blocks):
        raise Refused(f"the region both returns and leaves to {exits[0] + bias:#x}")
    infos = {i.address: analyse(i) for i in region.instructions()}
    entry, conditional = order[0], order[1:]
    for b in conditional:
        for insn in body(b):
            reason = predicated_refusal(infos[insn.address], bias)
            if reason:
                raise Refused(reason)
    _check_memory(region, order, infos)

    engine = Engine(bias)
    preds = {b.start: engine.alloc() for b in conditional}

    def edge(target: int | None) -> list[str]:
        # An edge to the join (or a return) needs nothing: the code ends there anyway.
        return [f"or {slot(preds[target])}, rax"] if target in preds else []

    init = engine.init() + [f"mov {slot(p)}, 0" for p in preds.values()]
    lines = engine.block(entry, infos, None, edge, after_body=init)
    for b in conditional:
        lines += engine.block(b, infos, preds[b.start], edge)
    lines.append(f"jmp {goto(exits[0])}" if exits else "ret")
    return lines


def _check_memory(region: RegionView, order: list[BlockView], infos: dict[int, InsnInfo]) -> None:
    """The memory-safety rule of the module doc, for every conditional block's access."""
    bias = region.bias
    entry, conditional = order[0], order[1:]
    written = {r for b in conditional for i in body(b) for r in infos[i.address].writes
               if r in GPR}
    # Operands the entry block accesses that still denote the same address at its end.
    live: dict[tuple[object, ...], int] = {}
    regs_of: dict[tuple[object, ...], frozenset[str]] = {}
    for insn in body(entry):
        info = infos[insn.address]
        for m in info.mems:
            live[m.key] = max(live.get(m.key, 0), m.width)
            regs_of[m.key] = m.regs
        for k in [k for k in live if regs_of[k] & info.writes]:
            del live[k]
    members = {b.start for b in region.blocks}
    edges = {b.start: [s for s in successors(b) if s in members] for b in region.blocks}
    for b in region.blocks:
        if terminator(b).kind != "ret":
            edges[b.start] += [-1] if any(s not in members for s in successors(b)) else []
    for b in conditional:
        for insn in body(b):
            for m in infos[insn.address].mems:
                if always_valid(m):
                    continue
                bad = sorted(m.regs & written)
                if bad:
                    raise Refused(f"{where(insn, bias)}: its address depends on {bad[0]}, "
                                  "which the conditional code computes")
                if live.get(m.key, 0) >= m.width:
                    continue
                cover = {c.start for c in conditional for i in body(c)
                         for o in infos[i.address].mems
                         if o.key == m.key and o.width >= m.width}
                if not covered(entry.start, edges, cover):
                    raise Refused(f"{where(insn, bias)}: accesses memory that not every path "
                                  "of the original accesses")


class IfConversion:
    """The ``if-conversion`` pass (see the module doc)."""

    name = "if-conversion"
    api_version = API_VERSION
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def applies(self, region: RegionView, contract: Contract, profile: Profile
                ) -> bool | Refusal:
        """Branch regions (kind ``branch`` or none); a ``branch`` region of another shape is
        refused."""
        if region.kind not in (None, "branch"):
            return False
        if region.shape != "branch":
            return (Refusal(f"region shape is {region.shape}, not a branch region")
                    if region.kind == "branch" else False)
        return True

    def harden(self, region: RegionView, contract: Contract, profile: Profile
               ) -> Rewrite | Refusal:
        """The region's straight-line code, or why there is none."""
        try:
            return Rewrite(code=tuple(if_convert(region)))
        except Refused as e:
            return Refusal(str(e))


PASS = IfConversion()
