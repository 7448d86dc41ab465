"""Bounded loop: a loop whose exit depends on a secret runs a fixed, public number of times.

Applies to regions the translator formed as ``loop`` (contract kind ``loop`` or none): a
natural loop, header at the region's entry, possibly with several exits
(``memcmp``-style early exits, ``strlen``-style scans).  The contract gives the public
maximum trip count, ``bound = N``.

Method.  The loop body's blocks run as predicated blocks (plugins/support/predication.py) in a
topological order of the body without its back edges, exactly ``bound`` times, counted by a
hidden counter in a scratch slot.  The header's predicate is the *active* flag: all-ones
until the loop leaves.  An edge back to the header ORs its mask into the next iteration's
active flag; an edge to an exit clears it (nothing ORs into it) and ORs ``mask & number``
into the recorded exit number (at most one exit edge is ever taken, so the slot, zeroed
before the loop, ends up with that exit's number or 0).  Once the loop has left, every later
block and iteration runs inactive and is undone, so registers, flags and memory stay what
they were when the original left.  After ``bound`` iterations a dispatch jumps to the
recorded exit: the target address is selected with ``cmov`` and reached by one indirect
``jmp`` through a scratch slot, so the region runs the same instructions whichever exit it
takes; RFLAGS are restored before that jump, so the flags the loop left are those after the
region.

Induction variables.  A register whose only write in the loop is one ``add``/``sub`` of a
constant, ``inc``, ``dec`` or ``lea r, [r +/- c]`` (64- or 32-bit), in a block that every
iteration that goes on runs and that dominates the blocks after it in the order, is an
induction variable: its update is *not* undone, so in the iterations after the exit it
keeps advancing as if the loop went on, and the addresses computed from it step through the
buffer exactly like the original's would (no repeated address gives the exit away).  Its
value when the loop left is recorded at the exit edge (ORed under the edge's mask into a
zeroed slot) and put back by the dispatch.

Memory-safety rule.  Every access of the body runs in every one of the ``bound`` iterations.
Accepted: ``[rsp + d]`` with ``d >= -128`` and no index, RIP-relative operands; addresses
computed from registers the loop does not write, when the same operand (at least as wide) is
accessed on every path through an iteration (the original runs at least one); and addresses
computed from induction variables (and registers the loop does not write).  PRECONDITION
for the latter: the contract's bound must not exceed the length of any buffer the loop walks
— every access the original would make in iterations 1..``bound``, whatever path each takes,
must be valid.  Addresses depending on any other register the loop computes are refused.

Leakage.  The instruction sequence and the memory lines touched are the same for every exit
point: ``bound`` identical iterations with addresses that only depend on the iteration
number.  Which exit was taken (not when) shows only after the region, in the original code
it jumps to: that is the loop's result, which the code after it branches on anyway.  If
the loop is still active after ``bound`` iterations (the contract's bound is wrong),
correctness comes first: the code jumps to the original loop's header, which runs the
remaining iterations unprotected (a leak, and a contract error the checker reveals).

Cost.  Per iteration: the predicated blocks (about ``2 w + 10 s + 12`` instructions per block
that writes ``w`` registers and ``s`` stores, plus its edges, see predication.py; the flags
stay in their slot between blocks, ``popfq`` only for a block that reads them), 3 per exit
edge plus 3 per induction variable at each exit edge, 1 per back edge, 2 to move the next
iteration's active flag, and 2 for the counter (``sub``/``jne``, the flags being in their
slot).  Before: 6 + 1 per induction variable + 3 (``pushfq``).  The dispatch: 3 per exit, 10
more, one ``cmov`` per induction variable and 4 (``popfq``, ``jmp``).

Refusals (``I`` names the instruction as ``'text' at 0xADDR``):

- ``region shape is S, not a loop region``
- ``needs the contract's `bound``` (missing, not a positive integer), ``bound N is too large``
- ``I is a call (a callee cannot be predicated)``, ``I is a system call or software
  interrupt``, ``I is an indirect jump``, ``I stops the program``, ``I is not a plain
  ret``, ``I: loop/jrcxz branches are not supported``, ``I is a string instruction``
- ``I returns from inside the loop``; ``the loop contains an inner loop``; ``the loop has
  more than 8 exits``
- the conditional-block refusals of if-conversion (``I writes rsp``, AVX, x87/MMX, mxcsr,
  32-bit addressing, store widths, segment or absolute stores, memory or dividend-register
  divisors)
- memory: ``I: its address depends on R, which the loop computes (not an induction
  variable)``; ``I: accesses memory that not every path through an iteration accesses``
- ``the region needs more than 4096 bytes of scratch memory``
"""

from __future__ import annotations

import re

from leakdbt.plugin_api import BlockView, Flow, RegionView, goto
from plugins.support.memory_safety import check_accesses
from plugins.support.predication import (
    GPR,
    GPR32,
    INIT,
    INSN_PASSES,
    Engine,
    InsnInfo,
    Pred,
    Refused,
    WholeRegionPass,
    analyse,
    body,
    control_refusal,
    predicated_refusal,
    slot,
    successors,
    topological,
    where,
)

__all__ = ["PASS", "bound_loop", "induction_variables"]

MAX_EXITS = 8
MAX_BOUND = (1 << 31) - 1
_LEA = re.compile(r"\w+, \[(\w+) [+-] (0x[0-9a-f]+|\d+)\]$")


def bound_loop(region: RegionView) -> list[str]:
    """The fixed-trip-count code for a loop region (see the module doc); raises
    :class:`~plugins.support.predication.Refused` with the reason when it cannot."""
    if region.shape != "loop":
        raise Refused(f"region shape is {region.shape}, not a loop region")
    bound = region.params.get("bound")
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise Refused("needs the contract's `bound`")
    if bound > MAX_BOUND:
        raise Refused(f"bound {bound} is too large")
    bias = region.bias
    header = region.entry
    for insn in region.instructions():
        reason = control_refusal(insn, bias)
        if reason:
            raise Refused(reason)
    for b in region.blocks:
        if b.last.flow is Flow.RETURN:
            raise Refused(f"{where(b.last, bias)} returns from inside the loop")
    order = topological(header, region.blocks, lambda a, b: b == header)
    if order is None:
        raise Refused("the loop contains an inner loop")
    exits = region.exits()
    if len(exits) > MAX_EXITS:
        raise Refused(f"the loop has more than {MAX_EXITS} exits")
    infos = {i.address: analyse(i) for i in region.instructions()}
    for b in order:
        for insn in body(b):
            reason = predicated_refusal(infos[insn.address], bias)
            if reason:
                raise Refused(reason)
    ivs = induction_variables(region, order, infos)
    _check_memory(region, order, infos, frozenset(ivs))

    engine = Engine(bias)
    active, nxt, exit_id, count = (engine.alloc() for _ in range(4))
    recorded = {r: engine.alloc() for r in sorted(ivs)}  # induction variables at the exit
    ids = {e: n + 1 for n, e in enumerate(exits)}
    engine.preds[header] = Pred(active)
    back = [f"mov {slot(nxt)}, rax"]  # the first edge back writes, the others OR

    def special(target: int | None) -> list[str]:
        if target == header:
            out = [back[0]]
            back[0] = f"or {slot(nxt)}, rax"
            return out
        # An exit: at most one edge ever leaves (the loop is then inactive), so its number
        # and the induction variables are ORed into zeroed slots.
        assert target is not None
        out = ["mov rcx, rax", f"and rcx, {ids[target]:#x}", f"or {slot(exit_id)}, rcx"]
        for r, at in recorded.items():
            out += [f"mov rcx, {engine.value_of(r)}", "and rcx, rax", f"or {slot(at)}, rcx"]
        return out

    lines = [INIT, f"mov {slot(active)}, 0xffffffffffffffff", f"mov {slot(exit_id)}, 0",
             *(f"mov {slot(at)}, 0" for at in recorded.values()),
             f"mov {slot(count)}, {bound:#x}", *engine.flags_to_slot()]
    engine.live = False  # every iteration starts with the flags in their slot
    lines.append("bl_top:")
    members = {b.start for b in order}
    lines += engine.run(order, infos, lambda a, b: b != header and b in members, special,
                        lambda b: frozenset(r for r, at in ivs.items() if at == b),
                        [f"mov rax, {slot(nxt)}", f"mov {slot(active)}, rax"])
    assert engine.saved and not engine.live
    # The public counter decides the branch; the logical flags stay in their slot.
    lines += [f"sub {slot(count)}, 1", "jne bl_top"]
    # The dispatch selects the way out without a branch: the original header if the loop
    # is still active after `bound` iterations (the bound was wrong: finish in the
    # original), else the recorded exit; induction variables get their values at the exit.
    target = engine.alloc()
    t1 = slot(engine.t1)
    lines += [f"mov {t1}, rax", f"mov {slot(engine.t2)}, rcx", f"movabs rax, {goto(header)}"]
    for e in exits:
        lines += [f"movabs rcx, {goto(e)}", f"cmp {slot(exit_id)}, {ids[e]:#x}",
                  "cmove rax, rcx"]
    lines += [f"mov {slot(target)}, rax", f"mov rcx, {slot(engine.t2)}", f"mov rax, {t1}",
              f"cmp {slot(exit_id)}, 0"]
    lines += [f"cmovne {r}, {slot(at)}" for r, at in recorded.items()]
    lines += [*engine.load_flags(engine.fl), f"jmp {slot(target)}"]
    return engine.finish(lines)


def _reaches(start: int, edges: dict[int, list[int]], avoid: int, goal: set[int]) -> bool:
    """Is a node of ``goal`` reachable from ``start`` without passing ``avoid``?"""
    seen, stack = {start}, [start]
    while stack:
        n = stack.pop()
        if n in goal:
            return True
        for s in edges.get(n, []):
            if s != avoid and s not in seen:
                seen.add(s)
                stack.append(s)
    return False


def _step(info: InsnInfo, reg: str) -> bool:
    """Does the instruction add a constant to ``reg`` (64- or 32-bit) and nothing else?"""
    insn = info.insn
    ops = insn.op_str.split(", ")
    if ops[0] not in (reg, GPR32[reg]):
        return False
    if insn.mnemonic in ("inc", "dec"):
        return len(ops) == 1
    if insn.mnemonic in ("add", "sub"):
        return len(ops) == 2 and re.fullmatch(r"0x[0-9a-f]+|\d+", ops[1]) is not None
    if insn.mnemonic == "lea":
        m = _LEA.match(insn.op_str)
        return m is not None and GPR.get(m.group(1)) == reg
    return False


def induction_variables(region: RegionView, order: list[BlockView],
                        infos: dict[int, InsnInfo]) -> dict[str, int]:
    """Induction variables (see the module doc) -> the block that updates them."""
    header = region.entry
    members = {b.start for b in order}
    edges = {b.start: [s for s in successors(b) if s in members and s != header]
             for b in order}
    latches = {b.start for b in order if header in successors(b)}
    writers: dict[str, list[tuple[BlockView, InsnInfo]]] = {}
    for b in order:
        for insn in body(b):
            for r in infos[insn.address].writes:
                if r in GPR:
                    writers.setdefault(r, []).append((b, infos[insn.address]))
    out: dict[str, int] = {}
    for r, ws in writers.items():
        if len(ws) != 1 or not _step(ws[0][1], r):
            continue
        b = ws[0][0]
        position = [x.start for x in order].index(b.start)
        if b.start != header and (
                _reaches(header, edges, b.start, latches)  # an iteration may skip it
                or any(_reaches(header, edges, b.start, {later.start})
                       for later in order[position + 1:])):  # it does not dominate
            continue
        out[r] = b.start
    return out


def _check_memory(region: RegionView, order: list[BlockView], infos: dict[int, InsnInfo],
                  ivs: frozenset[str]) -> None:
    """The memory-safety rule of the module doc, for every access of the body."""
    header = region.entry
    members = {b.start for b in order}
    edges: dict[int, list[int]] = {}
    for b in order:
        succ = successors(b)
        edges[b.start] = [s for s in succ if s in members and s != header]
        if any(s == header or s not in members for s in succ):
            edges[b.start].append(-1)  # the iteration ends here
    check_accesses(order, infos, region.bias, header, edges,
                   computed_by="the loop computes (not an induction variable)",
                   every_path="through an iteration", induction=ivs)


PASS = WholeRegionPass("bounded-loop", "loop", bound_loop, before=INSN_PASSES)
"""The ``bounded-loop`` pass (see the module doc)."""
