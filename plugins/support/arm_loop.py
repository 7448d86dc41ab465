"""A counted loop inside an if-converted arm (plugins/if_conversion.py).

A branch region whose arm holds a loop cannot run each block once.  The loop is run as a
real loop of the hardened code, a fixed number of times ``K`` whatever the predicate:
``K`` is the loop's trip count read from its code (a *counted* loop), so it is public by
construction, and the same on both sides of the secret branch.  Each iteration runs the
loop's blocks as predicated blocks (plugins/support/predication.py) under the loop's
*active* mask: the header's predicate when the loop is entered, then the mask of the back
edge.  An edge that leaves the loop ORs its mask into its target's predicate (zeroed
before the loop), so the masks gather over the iterations.  When the arm is off, every
iteration runs off and is undone; when it is on, iterations after an early exit run off.

Counted loop: one back edge, from a latch ending in ``jne`` to the header; the header has
one predecessor outside the loop (the preheader); a counter
register ``c`` (32 or 64 bit) whose last write in the preheader is ``mov c, K0`` or
``xor c, c``, and whose only write in the loop is one step in the latch:

- ``sub c, 1`` / ``add c, -1`` / ``dec c`` as the latch's last flags write (``K = K0``), or
- ``add c, 1`` / ``inc c``, then ``cmp c, E`` as its last flags write (``K = E - K0``);

with ``0 <= K0``, ``1 <= K <= MAX_TRIPS``.  Every iteration that goes on runs the latch, so
the original runs at most ``K`` iterations per entry.  After ``K`` iterations the active
mask is 0; if it is not (the analysis is wrong), the code restores RFLAGS and jumps to the
original header, which finishes the loop as the original does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leakdbt.plugin_api import BlockView, Flow, goto
from plugins.support.loop_nest import dominators
from plugins.support.predication import (
    GPR,
    Engine,
    InsnInfo,
    Pred,
    Refused,
    body,
    dead_end,
    slot,
    successors,
    terminator,
    where,
)

__all__ = ["MAX_TRIPS", "ArmLoop", "arm_loop", "contiguous", "run"]

MAX_TRIPS = 1 << 16
"""The largest trip count a loop in an arm may have (each iteration runs every time)."""


@dataclass(frozen=True)
class ArmLoop:
    """A counted loop of a branch region: its header, latch, blocks and trip count."""

    header: int
    latch: int
    members: frozenset[int]
    trips: int


def arm_loop(entry: int, blocks: Sequence[BlockView], infos: dict[int, InsnInfo],
             bias: int) -> ArmLoop:
    """The region's one counted loop, or :class:`Refused` naming the loop's head and why."""
    by = {b.start: b for b in blocks}
    graph = {b.start: [s for s in successors(b) if s in by] for b in blocks}
    dom = dominators(entry, graph)
    back = [(a, s) for a in graph for s in graph[a] if s in dom.get(a, ())]
    if not back:
        raise Refused("the cycle is entered at more than one block (irreducible flow)")
    to_entry = [a for a, s in back if s == entry]
    latch, header = (max(to_entry), entry) if to_entry else back[0]
    head = (f"{where(by[latch].last, bias)} jumps back to {header + bias:#x}, the loop's "
            "head; ")
    if header == entry:
        raise Refused(f"{head}the loop's head is the region's entry: the branch is inside "
                      "the loop and its paths meet only after it, so the branch region holds "
                      "the loop's back edge; if-conversion runs loops only inside an arm (the "
                      "enclosing loop is bounded-loop's region, kind = \"loop\")")
    if len(back) > 1:
        heads = ", ".join(sorted({f"{s + bias:#x}" for _, s in back}))
        raise Refused(f"{head}the region holds more than one back edge (loop heads "
                      f"{heads}): if-conversion runs one counted loop, with one latch, in an "
                      "arm")
    members = {header, latch}
    work = [latch]
    while work:
        n = work.pop()
        for p, succ in graph.items():
            if n in succ and p not in members and n != header:
                members.add(p)
                work.append(p)
    for m in members:
        b = by[m]
        if dead_end(b) or any(i.flow in (Flow.CALL, Flow.INDIRECT_CALL) for i in b.insns):
            raise Refused(f"{head}its block {m + bias:#x} calls a function (a loop in an "
                          "arm does not clone callees)")
    outside = [p for p, succ in graph.items() if header in succ and p not in members]
    if len(outside) != 1:
        raise Refused(f"{head}it is entered from more than one block (its counter's start "
                      "is read from its one preheader)")
    loop = [by[m] for m in sorted(members)]
    trips = None
    for test in dict.fromkeys((latch, header)):
        trips = _trip_count(by[outside[0]], by[test], loop, frozenset(members), infos)
        if trips is not None:
            break
    if trips is None:
        raise Refused(f"{head}it is not a counted loop (a 32/64-bit register set to a constant "
                      "before it, stepped by 1 once per iteration in its header or latch, "
                      "which ends with a `jne`/`je` on it that stays in the loop while it has "
                      "not reached its end): its trip count need not be public when its arm is "
                      "off")
    if trips > MAX_TRIPS:
        raise Refused(f"{head}it runs {trips} times, more than {MAX_TRIPS}")
    return ArmLoop(header, latch, frozenset(members), trips)


def _imm(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _ops(info: InsnInfo) -> list[str]:
    return [o.strip() for o in info.insn.op_str.split(",")] if info.insn.op_str else []


_WIDE = frozenset(n for n in GPR if n.startswith(("r", "e")) and not n.endswith(("w", "b")))


def _trip_count(pre: BlockView, test: BlockView, loop: list[BlockView],
                members: frozenset[int], infos: dict[int, InsnInfo]) -> int | None:
    """``K`` when ``test`` (the loop's header or latch) counts the loop (module doc)."""
    term = terminator(test)
    if term.kind != "branch" or term.taken is None or term.fall is None:
        return None
    if term.cc == "ne" and term.taken in members and term.fall not in members:
        pass  # goes on while the counter is not at its end
    elif term.cc == "e" and term.fall in members and term.taken not in members:
        pass
    else:
        return None
    insns = [infos[i.address] for i in body(test)]
    flagged = [n for n, i in enumerate(insns) if i.flags_write]
    if not flagged:
        return None
    last = insns[flagged[-1]]
    ops = _ops(last)
    mn = last.insn.mnemonic
    step: InsnInfo
    if mn in ("sub", "add", "dec") and ops and ops[0] in _WIDE and (
            mn == "dec" or (mn == "sub" and _imm(ops[1]) == 1)
            or (mn == "add" and _imm(ops[1]) in (-1, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF))):
        counter, step, end, down = GPR[ops[0]], last, 0, True
    elif mn == "cmp" and len(ops) == 2 and ops[0] in _WIDE and _imm(ops[1]) is not None:
        counter, end, down = GPR[ops[0]], _imm(ops[1]) or 0, False
        steps = [i for i in insns[:flagged[-1]] if counter in i.writes]
        if len(steps) != 1:
            return None
        step = steps[0]
        sops = _ops(step)
        if not (sops and sops[0] in _WIDE and GPR[sops[0]] == counter and (
                step.insn.mnemonic == "inc"
                or (step.insn.mnemonic == "add" and _imm(sops[1]) == 1))):
            return None
    else:
        return None
    writers = [i for b in loop for i in (infos[x.address] for x in body(b))
               if counter in i.writes]
    if writers != [step]:
        return None
    start = None
    for i in (infos[x.address] for x in body(pre)):
        if counter in i.writes:
            o = _ops(i)
            if i.insn.mnemonic == "mov" and len(o) == 2 and o[0] in _WIDE:
                start = _imm(o[1])
            elif i.insn.mnemonic == "xor" and len(o) == 2 and o[0] == o[1] and o[0] in _WIDE:
                start = 0
            else:
                start = None
    if start is None or not 0 <= start < 1 << 31 or not 0 <= end < 1 << 31:
        return None
    trips = start if down else end - start
    return trips if trips >= 1 else None


def contiguous(order: list[BlockView], loop: ArmLoop) -> list[BlockView]:
    """``order`` (topological, back edge left out) with the loop's blocks moved together
    at its header's place: the blocks between them do not reach into the loop (it is
    entered only at its header), so moving them after it keeps the order topological."""
    at = next(n for n, b in enumerate(order) if b.start == loop.header)
    inside = [b for b in order[at:] if b.start in loop.members]
    rest = [b for b in order[at:] if b.start not in loop.members]
    return [*order[:at], *inside, *rest]


def run(engine: Engine, order: list[BlockView], infos: dict[int, InsnInfo],
        members: frozenset[int], loop: ArmLoop, unmasked: frozenset[str]) -> list[str]:
    """Like :meth:`Engine.run` (RSP never moves), with the loop's blocks run ``trips``
    times (module doc)."""
    back = (loop.latch, loop.header)

    def inside(a: int, b: int) -> bool:
        return b in members and (a, b) != back

    npreds: dict[int, int] = {}
    for b in order:
        for s in successors(b):
            if inside(b.start, s):
                npreds[s] = npreds.get(s, 0) + 1
    exits = sorted({s for b in order if b.start in loop.members for s in successors(b)
                    if s in members and s not in loop.members})
    for s in exits:
        npreds[s] += 1  # never the one-predecessor shortcut: the masks gather
    nxt, count, active = engine.alloc(), engine.alloc(), engine.alloc()
    label, stub = f"arm_loop{len(engine.stubs)}", f"arm_loop_more{len(engine.stubs)}"

    def special(t: int | None) -> list[str]:
        return [f"mov {slot(nxt)}, rax"] if t == loop.header else []

    last = max(n for n, b in enumerate(order) if b.start in loop.members)
    out: list[str] = []
    for n, b in enumerate(order):
        if b.start == loop.header:
            out += engine.flags_to_slot()
            engine.live = False
            for s in exits:
                if s not in engine.preds:
                    gathered = engine.preds[s] = Pred(engine.alloc())
                    out.append(f"mov {slot(gathered.slot)}, 0")
            entered = engine.preds[loop.header]
            assert entered is not None  # the header is in an arm
            out += [f"mov {slot(engine.t1)}, rax", *entered.mask(),
                    f"mov {slot(active)}, rax", f"mov rax, {slot(engine.t1)}",
                    f"mov {slot(count)}, {loop.trips:#x}", f"{label}:"]
            engine.preds[loop.header] = Pred(active)
        out += engine.block(b, infos, engine.preds.get(b.start), inside, npreds, special,
                            unmasked)
        if n == last:
            out += engine.flags_to_slot()
            engine.live = False
            out += [f"mov {slot(engine.t1)}, rax", f"mov rax, {slot(nxt)}",
                    f"mov {slot(active)}, rax", f"mov rax, {slot(engine.t1)}",
                    f"sub {slot(count)}, 1", f"jne {label}",
                    f"cmp {slot(active)}, 0", f"jne {stub}"]
            engine.stubs += [f"{stub}:", *engine.load_flags(engine.fl),
                             f"jmp {goto(loop.header)}"]
    return out
