"""Counted loops inside an if-converted region (plugins/if_conversion.py): in an arm, and in
the clones of the functions the region calls (plugins/support/clone.py, ``loops=True``).

A branch region whose arm holds a loop cannot run each block once.  Each loop is run as a
real loop of the hardened code, a fixed number of times ``K`` whatever the predicate:
``K`` is the loop's trip count read from its code (a *counted* loop), so it is public by
construction, and the same on both sides of the secret branch.  Each iteration runs the
loop's blocks as predicated blocks (plugins/support/predication.py) under the loop's
*active* mask: the header's predicate when the loop is entered, then the mask of the back
edge.  An edge that leaves the loop ORs its mask into its target's predicate (zeroed
before the loop), so the masks gather over the iterations.  When the arm is off, every
iteration runs off and is undone; when it is on, iterations after an early exit run off.

The region is judged once its calls are replaced by their clones, so a loop may hold
calls (their clones are blocks of the loop), a callee may hold a loop, and a region may
hold several loops: disjoint, or nested (a call inside a loop whose callee loops), each
with its own hidden counter.

Counted loop: one back edge, from a latch ending in a conditional jump to the header; the
header has one predecessor outside the loop (the preheader); a counter register ``c`` (32
or 64 bit) whose only write in the loop (its blocks and the clones it calls) is one step
(``add``/``sub`` of a constant, ``inc``, ``dec``) in the header or the latch, the block
that tests: its jump (``jne``/``je``/``jb``/``jae``/``ja``/``jbe``/``jl``/``jge``/``jg``/
``jle``/``js``/``jns``) reads

- the step's own flags (the step is that block's last flags write), or
- those of ``cmp c, E``, ``test c, c``, or ``cmp c, r`` / ``cmp r, c`` with ``r`` a register
  the loop does not write whose value before the loop is a constant known as ``K0`` is
  (below), its end ``E`` (gcc's ``for (i = 0; i < n; i++)`` once the caller passed a
  constant ``n``), the block's last flags write after the step.

The trip count ``K`` is computed exactly (:func:`trips_of`): the first ``j >= 1`` at which
the jump leaves the loop after ``j`` steps from ``K0`` (the test ends each iteration: at
least one runs), every step and compare evaluated at its width with its wrap, CF, SF and
OF; ``1 <= K <= MAX_TRIPS``.  ``K0``, the counter's start, is a *constant
known before the loop*: the last write to ``c`` before the loop is ``mov c, K0`` or ``xor
c, c``, found by walking back from the preheader through blocks that each have one
predecessor, across a call into its caller (``mov edx, 4; call f``, f counting ``rdx``
down) and across a return into the callee, and through copies (``mov r, r2``, ``movsxd r,
r2d``), passing over the writes of a callee the path crosses whole that provably gives
the register back (``Graph.restores``: ``mov ebx, 8; call g; top: ...``, g saving rbx).
That write is on every path into the loop, so
whenever the loop's active mask is on it really ran.  A start held in a register (an
argument the caller computed, a value loaded) is refused: in an inactive arm the caller's
writes are undone, so it is not the same whether the predicate is on or off.  Every
iteration that goes on runs the stepping block, so the original runs at most ``K``
iterations per entry.  After ``K`` iterations the active mask is 0; if it is not (the
analysis is wrong), a loop of the region's own code restores RFLAGS and jumps to the
original header, which finishes the loop as the original does; a loop of a clone, which
has no original to go back to, stops on ``ud2``.

A write of the counter (or of the end register) inside a clone the loop calls does not
count when that clone instance provably gives the register back before it returns (a
``push r`` ... ``pop r`` pair at the same RSP depth, no store that may touch the slot in
between: ``Graph.restores`` and ``_preserved`` of plugins/support/clone.py), gcc's
callee-saved counter around a call.  Such a loop (not ``pure``) indexes nothing (below).

Indexed accesses (:func:`loop_guards`).  A clone's access ``[base + i*s + d]`` that the
clone memory rule leaves to this module (:class:`~plugins.support.clone.Indexed`) is
accepted when ``i`` is the counter of a pure counted loop around it (or a copy of it made
earlier in the access's block, :func:`_copied`) and its whole reach
over the loop's iterations lies in the clone's frame (base RSP, or a register set before
the loop by ``lea r, [rsp + d]`` / ``mov r, rsp``) or in one sized data object (a register
set by ``lea r, [rip + X]``; no base in a module loaded at its link-time address).  The
counter's value at the access is ``a + b * n`` of the hidden count ``n`` (:meth:`ArmLoop.value`;
a loop whose counter wraps or leaves 0 .. 2**31 - 1 is not ``pure``: it indexes nothing),
so :func:`run` writes it into a slot at each iteration's start and the access runs guarded
(``Guard`` target ``loop``): when its block is off, the index (and a base register) are set
from their slots.  On and off, iteration ``j`` touches the same address.

Refusals (:func:`arm_loops`, :func:`loop_order`; ``HEAD`` is ``the region contains a loop (a
cycle through its blocks): I jumps back to H, the loop's head; `` or, for a loop of a
clone, ``the function at 0xT has a loop: I jumps back to H, the loop's head; ``):

- ``the region contains a loop (...): the cycle is entered at more than one block
  (irreducible flow)``
- ``HEAD the loop's head is the region's entry: ...`` (an iteration region's shape)
- ``HEAD it has N back edges (from A, B): a counted loop has one latch``
- ``HEAD its latch also ends the loop at H2``
- ``HEAD it is entered from more than one block (its counter's start is read from its one
  preheader)``
- ``HEAD it is not a counted loop (...): its trip count need not be public when its arm is
  off`` (no counting test, a counter written elsewhere in the loop or its clones, K < 1)
- ``HEAD its counter R is set by I2, not to a constant known before the loop runs: its trip
  count need not be the same when its arm is off``; likewise ``its counter R is set on no
  path into the loop (no block before B sets it)``, ``its counter R is not set to a
  constant on the one path into the loop (B has N predecessors)``, ``its counter R starts
  at V, outside 0 .. 2**31 - 1`` (``its end R`` for the register of ``cmp c, r``)
- ``HEAD it runs K times, more than 65536`` (an equality exit: K is known exactly),
  ``HEAD its counter R goes from S in steps of D and I never leaves the loop (modulo 2**W it
  never meets its end)``, ``HEAD it runs more than 65536 times (its counter R goes from S in
  steps of D until I and jCC leave the loop)``

and (:func:`loop_guards`) the clone memory rule's refusal of an indexed access, ``I: its
address is neither the clone's own stack nor module data, so it may fault when the
predicate is off``, followed by ``, and `` and:

- ``its index R is not the counter of a counted loop around it (one that nothing in the
  loop but its step writes)``
- ``with its index from A to B (the loop's counter) it reaches [rsp - X] .. [rsp + Y],
  outside the clone's frame (its red zone up to its return address)``
- ``with its index from A to B (the loop's counter) it reaches 0xS .. 0xE, not inside one
  data object of the module``
- ``its base R is written in the loop``
- ``its base R is not set to module data (`lea R, [rip + X]`) or to the clone's stack
  (`lea R, [rsp + d]`) on the one path into the loop``
- ``it has no base register while its module is not loaded at its link-time address``
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from leakdbt.plugin_api import BlockView, DataObject, goto
from plugins.support.clone import Indexed
from plugins.support.loop_nest import dominators
from plugins.support.predication import (
    GPR,
    Engine,
    Guard,
    InsnInfo,
    Mem,
    Pred,
    Refused,
    body,
    slot,
    successors,
    terminator,
    topological,
    where,
)
from plugins.support.trip_count import (
    CARRY,
    CONDITIONS,
    MAX_TRIPS,
    ExitTest,
    Step,
    equal_exit,
    trips_of,
)

__all__ = ["ArmLoop", "LoopAccess", "arm_loops", "back_edges", "loop_guards",
           "loop_order", "run"]

REGION_LOOP = "the region contains a loop (a cycle through its blocks): "


@dataclass(frozen=True)
class ArmLoop:
    """A counted loop of a branch region: its header, latch, blocks and trip count (block
    keys: a clone's blocks have their own, plugins/support/clone.py); ``clone``: it is a
    loop of a callee's clone."""

    header: int
    latch: int
    members: frozenset[int]
    trips: int
    clone: bool = False
    counter: str = ""  # its counter (64-bit name)
    down: bool = True  # counted down to 0 (else up to ``end``)
    start: int = 0  # the counter's value before the first iteration
    end: int = 0  # its value after the last (0 for a loop counting down)
    step: int = 0  # the address of the step (in block ``step_key``)
    step_key: int = 0
    pure: bool = True  # the step is the counter's only write in the loop (none restored)
    # and its values stay in 0 .. 2**31 - 1 (no wrap)
    stride: int = -1  # the counter's change per iteration (``end = start + trips * stride``)

    def value(self, key: int, address: int, order: Sequence[int]) -> tuple[int, int]:
        """The counter's value when instruction ``address`` of loop block ``key`` runs
        (``order``: the addresses of that block's instructions), as ``(a, b)``: ``a + b *
        n`` in the iteration whose hidden count (:func:`run`: ``trips`` down to 1) is
        ``n``.  Iteration ``j`` has ``n = trips - j``; the step runs once in it, so the
        blocks before it (in :func:`loop_order`) see the value ``start + j * stride``, those
        after it one step further (meaningful for a ``pure`` loop: no wrap)."""
        if key == self.step_key:
            before = list(order).index(address) < list(order).index(self.step)
        else:
            before = self.step_key != self.header  # the header runs first, the latch last
        # start + j * stride = end - n * stride before the step, one stride more after it
        return (self.end, -self.stride) if before else (self.end + self.stride, -self.stride)


def back_edges(entry: int, blocks: Sequence[BlockView]) -> frozenset[tuple[int, int]]:
    """The edges ``a -> h`` whose target dominates their source."""
    by = {b.start: b for b in blocks}
    graph = {b.start: [s for s in successors(b) if s in by] for b in blocks}
    dom = dominators(entry, graph)
    return frozenset((a, s) for a in graph for s in graph[a] if s in dom.get(a, ()))


def loop_order(entry: int, blocks: Sequence[BlockView], loops: Sequence[ArmLoop] = ()
               ) -> list[BlockView]:
    """The blocks in a topological order of their edges but the back edges, the blocks of
    each loop together at its header's place (:func:`run` needs both); raises
    :class:`Refused` when the cycles are not all natural loops (irreducible flow)."""
    back = back_edges(entry, blocks)
    order = topological(entry, blocks, lambda a, s: (a, s) in back)
    if order is None:
        raise Refused(f"{REGION_LOOP}the cycle is entered at more than one block (irreducible "
                      "flow)")
    for loop in sorted(loops, key=lambda x: -len(x.members)):
        at = next(n for n, b in enumerate(order) if b.start == loop.header)
        inside = [b for b in order[at:] if b.start in loop.members]
        rest = [b for b in order[at:] if b.start not in loop.members]
        order = [*order[:at], *inside, *rest]  # the others do not reach into the loop
    return order


def arm_loops(entry: int, blocks: Sequence[BlockView], infos: dict[int, InsnInfo],
              bias: int, origin: Mapping[int, BlockView] | None = None,
              function: Mapping[int, int] | None = None,
              restored: Restored | None = None) -> list[ArmLoop]:
    """The region's counted loops (``blocks``: its blocks with its calls replaced by their
    clones; ``origin``/``function``: a clone block's callee block and function, for
    messages; ``restored``: whether a write of a register in a block is undone by a
    callee, called inside the loop, that saves and restores it, ``Graph.restores`` of
    plugins/support/clone.py), or :class:`Refused` naming a loop's head and why it is not
    run."""
    kept: Restored = restored or (lambda key, reg, members: False)
    origin = origin or {}
    function = function or {}
    by = {b.start: b for b in blocks}
    graph = {b.start: [s for s in successors(b) if s in by] for b in blocks}
    preds: dict[int, list[int]] = {k: [] for k in graph}
    for a, succ in graph.items():
        for s in succ:
            preds[s].append(a)
    back = back_edges(entry, blocks)
    loop_order(entry, blocks)  # refuses irreducible flow
    latch_of: dict[int, int] = {}
    loops: list[ArmLoop] = []
    for header in sorted({s for _, s in back}):
        latches = sorted(a for a, s in back if s == header)
        latch = latches[-1]
        if header in origin:
            latch_insn = origin[latch].last if latch in origin else by[latch].last
            head = (f"the function at {function[header] + bias:#x} has a loop: "
                    f"{where(latch_insn, bias)} jumps back to "
                    f"{origin[header].start + bias:#x}, the loop's head; ")
        else:
            head = (f"{REGION_LOOP}{where(by[latch].last, bias)} jumps back to "
                    f"{header + bias:#x}, the loop's head; ")
        if header == entry:
            raise Refused(f"{head}the loop's head is the region's entry: the branch is inside "
                          "the loop and its paths meet only after it, so the branch region "
                          "holds the loop's back edge; if-conversion runs loops only inside an "
                          "arm (the enclosing loop is bounded-loop's region, kind = \"loop\")")
        if len(latches) > 1:
            froms = ", ".join(f"{_address(a, origin) + bias:#x}" for a in latches)
            raise Refused(f"{head}it has {len(latches)} back edges (from {froms}): a counted "
                          "loop has one latch")
        members = {header, latch}
        work = [latch]
        while work:
            n = work.pop()
            if n == header:
                continue
            for p in preds[n]:
                if p not in members:
                    members.add(p)
                    work.append(p)
        if latch in latch_of:
            raise Refused(f"{head}its latch also ends the loop at "
                          f"{_address(latch_of[latch], origin) + bias:#x}")
        latch_of[latch] = header
        outside = [p for p in preds[header] if p not in members]
        if len(outside) != 1:
            raise Refused(f"{head}it is entered from more than one block (its counter's start "
                          "is read from its one preheader)")
        loop = [by[m] for m in sorted(members)]

        def start(reg: str, role: str, pre: int = outside[0], h: int = header) -> int | str:
            return _start(reg, pre, by, preds, infos, bias, origin, role, kept, h)

        trips: _Count | _Endless | str | None = None
        for test in dict.fromkeys((latch, header)):
            trips = _trip_count(by[test], loop, frozenset(members), infos, start, kept)
            if trips is not None:
                break
        if trips is None:
            raise Refused(f"{head}it is not a counted loop (a 32/64-bit register set to a "
                          "constant before it, stepped by a constant once per iteration in its "
                          "header or latch, which ends with a conditional jump on that step's "
                          "flags or on a `cmp`/`test` of it after the step): its trip count "
                          "need not be public when its arm is off")
        if isinstance(trips, str):
            raise Refused(f"{head}{trips}: its trip count need not be the same when its arm "
                          "is off")
        if isinstance(trips, _Endless):
            raise Refused(f"{head}{trips.reason}")
        loops.append(ArmLoop(header, latch, frozenset(members), trips.trips, header in origin,
                             trips.counter, trips.stride < 0, trips.start, trips.end,
                             trips.step, trips.step_key, trips.pure, trips.stride))
    return loops


def _address(key: int, origin: Mapping[int, BlockView]) -> int:
    """The code address of block ``key`` (a clone block's in its callee)."""
    return origin[key].start if key in origin else key


def _imm(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _ops(info: InsnInfo) -> list[str]:
    return [o.strip() for o in info.insn.op_str.split(",")] if info.insn.op_str else []


_WIDE = frozenset(n for n in GPR if n.startswith(("r", "e")) and not n.endswith(("w", "b"))
                  and GPR[n] != "rsp")


Restored = Callable[[int, str, frozenset[int]], bool]
"""(block key, register, loop blocks) -> the write of the register there is undone inside
the loop (a callee's push/pop pair: ``Graph.restores`` of plugins/support/clone.py)."""


@dataclass(frozen=True)
class _Count:
    """How a loop counts (:class:`ArmLoop`'s fields of the same names)."""

    trips: int
    counter: str
    stride: int
    start: int
    end: int
    step: int
    step_key: int
    pure: bool


@dataclass(frozen=True)
class _Endless:
    """A counted loop whose trip count is not in 1 .. MAX_TRIPS: why."""

    reason: str


def _trip_count(test: BlockView, loop: list[BlockView], members: frozenset[int],
                infos: dict[int, InsnInfo], start_of: Callable[[str, str], int | str],
                kept: Restored) -> _Count | _Endless | str | None:
    """How ``test`` (the loop's header or latch) counts the loop (module doc); None when
    it does not; why, when it does but its counter's start is not a known constant
    (``start_of(register, role)``: the register's value before the loop, or why it is not
    a known constant), or its trip count is not in 1 .. MAX_TRIPS (:class:`_Endless`).  A
    write ``kept`` says a callee undoes is not a write."""
    term = terminator(test)
    if term.kind != "branch" or term.taken is None or term.fall is None \
            or term.cc not in CONDITIONS:
        return None
    if term.taken in members and term.fall not in members:
        stays = True
    elif term.fall in members and term.taken not in members:
        stays = False
    else:
        return None
    insns = [infos[i.address] for i in body(test)]
    flagged = [n for n, i in enumerate(insns) if i.flags_write]
    if not flagged:
        return None
    last = insns[flagged[-1]]
    found = _counting(last, insns[:flagged[-1]], term.cc, stays)
    if found is None:
        return None
    stepper, step, how, limit = found
    if how.kind == "step" and how.cc in CARRY and not step.carry:
        return None  # inc/dec keep CF: the jump reads a flag from before the loop
    counter = step.counter
    loop_insns = [(b.start, infos[x.address]) for b in loop for x in body(b)]
    writers = [(k, i) for k, i in loop_insns if counter in i.writes]
    if [i for k, i in writers if i is stepper or not kept(k, counter, members)] != [stepper]:
        return None
    end = 0
    if isinstance(limit, str):  # cmp c, r / cmp r, c: r's value before the loop is the end
        if any(limit in i.writes and not kept(k, limit, members) for k, i in loop_insns):
            return None
        known = start_of(limit, "its end")
        if isinstance(known, str):
            return known
        end = known
    elif limit is not None:
        end = limit
    start = start_of(counter, "its counter")
    if isinstance(start, str):
        return start
    trips = trips_of(start, step, how, end)
    if trips is None:
        exact = equal_exit(start, step, how, end)
        at = f"`{last.insn.text}`"
        if exact is not None:
            return _Endless(f"it runs {exact} times, more than {MAX_TRIPS}")
        if how.cc in ("e", "ne"):
            return _Endless(f"its counter {counter} goes from {start} in steps of "
                            f"{step.stride} and {at} never leaves the loop (modulo "
                            f"2**{min(step.width, how.width)} it never meets its end)")
        return _Endless(f"it runs more than {MAX_TRIPS} times (its counter {counter} goes "
                        f"from {start} in steps of {step.stride} until {at} and `j{how.cc}` "
                        "leave the loop)")
    final = start + trips * step.stride
    pure = len(writers) == 1 and 0 <= final < 1 << 31  # no wrap: an index in 0 .. 2**31 - 1
    return _Count(trips, counter, step.stride, start, final, stepper.insn.address, test.start,
                  pure)


def _step(info: InsnInfo) -> Step | None:
    """``info`` as a counter's step: ``add``/``sub`` of a nonzero immediate, ``inc``,
    ``dec`` of a 32/64-bit register (not RSP)."""
    o = _ops(info)
    mn = info.insn.mnemonic
    if not o or o[0] not in _WIDE:
        return None
    width = 64 if o[0].startswith("r") else 32
    mask = (1 << width) - 1
    if mn in ("inc", "dec") and len(o) == 1:
        return Step(GPR[o[0]], width, 1 if mn == "inc" else mask, False, mn == "dec")
    if mn in ("add", "sub") and len(o) == 2 and (imm := _imm(o[1])) is not None:
        delta = (imm if mn == "add" else -imm) & mask
        return Step(GPR[o[0]], width, delta, True, mn == "sub") if delta else None
    return None


def _counting(last: InsnInfo, before: list[InsnInfo], cc: str, stays: bool
              ) -> tuple[InsnInfo, Step, ExitTest, int | str | None] | None:
    """The counter's step, the test, and its end (an immediate, or the register holding it
    before the loop, 64-bit name; None for the step's own flags and ``test c, c``) when
    ``last`` (the test block's last flags write, after ``before`` in its block) tests a
    counter: ``last`` is the step, or it is ``cmp``/``test`` of a register whose one write
    in ``before`` is its step."""
    own = _step(last)
    if own is not None:
        return last, own, ExitTest("step", own.width, cc, stays), None
    ops = _ops(last)
    mn = last.insn.mnemonic
    if mn not in ("cmp", "test") or len(ops) != 2:
        return None
    for n, c in enumerate(ops):
        if c not in _WIDE:
            continue
        other = ops[1 - n]
        steps = [i for i in before if GPR[c] in i.writes]
        step = _step(steps[0]) if len(steps) == 1 else None
        if step is None or step.counter != GPR[c]:
            continue
        width = 64 if c.startswith("r") else 32
        if mn == "test":
            if other == c:
                return steps[0], step, ExitTest("test", width, cc, stays), None
            continue
        if n == 0 and (end := _imm(other)) is not None:
            return steps[0], step, ExitTest("cmp", width, cc, stays), end
        if other in _WIDE and GPR[other] != GPR[c] and other.startswith(c[0]):
            return steps[0], step, ExitTest("cmp" if n == 0 else "rcmp", width, cc, stays), \
                GPR[other]
    return None


def _start(counter: str, pre: int, by: Mapping[int, BlockView], preds: Mapping[int, list[int]],
           infos: dict[int, InsnInfo], bias: int, origin: Mapping[int, BlockView],
           role: str = "its counter", kept: Restored | None = None, header: int = -1
           ) -> int | str:
    """The constant register ``counter`` holds when control leaves block ``pre`` (the
    preheader) for the loop: its last write, walking back through blocks with one
    predecessor (across calls and returns of clones), when that is ``mov c, K0`` or ``xor
    c, c`` with ``0 <= K0 < 2**31``, possibly through copies (``mov r, r2``, ``movsxd r,
    r2d``: the same value in that range); else why not (module doc; ``role``: how the
    message names the register).  A write in a callee's clone that ``kept`` (``Graph.restores``)
    says is undone before that callee returns is passed over when the path into the loop
    crosses that whole call (its entry and its return site are on it, or its return site
    is the loop's ``header``): after the call the register holds what it held before it.
    (A write it finds is then outside every call crossed that way: inside one, it would
    have been passed over.)"""
    name = f"{role} {counter}"
    reg = counter  # the register holding the value: a copy's source further back
    restored: Restored = kept or (lambda key, r, members: False)
    chain, key = [pre], pre  # the one path into the loop, back from its preheader
    while len(preds[key]) == 1 and preds[key][0] not in chain:
        key = preds[key][0]
        chain.append(key)
    crossed = frozenset(chain) | {header}  # a call crossed has its entry and return site here
    key, seen = pre, set[int]()
    while key not in seen:
        seen.add(key)
        for info in reversed([infos[x.address] for x in body(by[key])]):
            if reg not in info.writes:
                continue
            if restored(key, reg, crossed):
                continue  # the call holding it gives reg back: it holds what it held before
            o = _ops(info)
            if len(o) == 2 and o[0] in _WIDE and o[1] in _WIDE and \
                    info.insn.mnemonic in ("mov", "movsxd"):
                reg = GPR[o[1]]  # a copy (or extension): the same value below 2**31
                continue
            value = None
            if info.insn.mnemonic == "mov" and len(o) == 2 and o[0] in _WIDE:
                value = _imm(o[1])
            elif info.insn.mnemonic == "xor" and len(o) == 2 and o[0] == o[1] and o[0] in _WIDE:
                value = 0
            if value is None:
                return (f"{name} is set by {where(info.insn, bias)}, not to a constant known "
                        "before the loop runs")
            if not 0 <= value < 1 << 31:
                return f"{name} starts at {value:#x}, outside 0 .. 2**31 - 1"
            return value
        if len(preds[key]) != 1:
            at = f"{_address(key, origin) + bias:#x}"
            return (f"{name} is set on no path into the loop (no block before {at} sets it)"
                    if not preds[key] else
                    f"{name} is not set to a constant on the one path into the loop ({at} has "
                    f"{len(preds[key])} predecessors)")
        key = preds[key][0]
    return f"{name} is set on no path into the loop"


@dataclass(frozen=True)
class LoopAccess:
    """A clone's access indexed by loop ``header``'s counter, accepted by
    :func:`loop_guards`: in the iteration with hidden count ``n`` its index is ``a + b *
    n``; ``base``: what its base register holds, when it is not RSP: ``("rip", X)``, the
    module data at link-time X, or ``("rsp", o)``, ``o`` bytes from the region's RSP;
    ``("abs", 0)`` when it has none (a table at its link-time address)."""

    key: int
    address: int
    mem: Mem
    header: int
    a: int
    b: int
    base: tuple[str, int] | None


def loop_guards(loops: Sequence[ArmLoop], accesses: Sequence[Indexed],
                blocks: Sequence[BlockView], infos: dict[int, InsnInfo], bias: int,
                object_at: Callable[[int], DataObject | None],
                depths: Mapping[int, int], deltas: Mapping[int, int]) -> list[LoopAccess]:
    """Each indexed access of a clone (plugins/support/clone.py, :class:`Indexed`) that a
    counted loop makes safe (module doc, "Indexed accesses"; ``depths``/``deltas``: the
    clones' RSP depths, plugins/support/clone.py ``Graph``); :class:`Refused` with the
    memory rule's reason and why not, for the first that none does."""
    by = {b.start: b for b in blocks}
    preds: dict[int, list[int]] = {k: [] for k in by}
    for b in blocks:
        for t in successors(b):
            if t in preds:
                preds[t].append(b.start)
    out: list[LoopAccess] = []
    for x in accesses:
        if x.key not in by:
            continue  # a block no clone keeps (constant_branches.py): it never runs
        m = x.mem
        index = GPR[m.index or ""]
        address = x.info.insn.address
        order = [i.address for i in body(by[x.key])]
        counter, at = _copied(index, x.key, address, order, infos)
        around = sorted((lp for lp in loops if x.key in lp.members and lp.counter == counter
                         and lp.pure), key=lambda lp: len(lp.members))
        if not around:
            raise Refused(f"{x.reason}, and its index {index} is not the counter of a counted "
                          "loop around it (one that nothing in the loop but its step writes)")
        loop = around[0]
        ka, kb = loop.value(x.key, at, order)  # the counter's value where the index got it
        lo, hi = sorted((ka + kb, ka + kb * loop.trips))
        span = f"with its index from {lo} to {hi} (the loop's counter)"
        first, last = m.disp + m.scale * lo, m.disp + m.scale * hi + m.width
        base: tuple[str, int] | None = None
        frame_base: int | None = -x.depth if m.base == "rsp" else None  # vs the region's RSP
        if m.base is None:  # [index*scale + X]: X is the link-time address of a table
            if bias:
                raise Refused(f"{x.reason}, and it has no base register while its module is "
                              "not loaded at its link-time address")
            base = ("abs", 0)
        elif m.base != "rsp":
            reg = GPR[m.base or ""]
            members = [infos[i.address] for k in loop.members for i in body(by[k])]
            if any(reg in i.writes for i in members):
                raise Refused(f"{x.reason}, and its base {reg} is written in the loop")
            pre = next(p for p in preds[loop.header] if p not in loop.members)
            base = _base_value(reg, pre, by, preds, infos, depths, deltas)
            if base is None:
                raise Refused(f"{x.reason}, and its base {reg} is not set to module data "
                              f"(`lea {reg}, [rip + X]`) or to the clone's stack (`lea {reg}, "
                              "[rsp + d]`) on the one path into the loop")
            if base[0] == "rsp":
                frame_base = base[1]
        if frame_base is not None:
            below = frame_base + x.depth  # the base, relative to the clone's RSP there
            if below + first < -128 or frame_base + last > -x.frame:
                raise Refused(f"{x.reason}, and {span} it reaches [rsp {_signed(below + first)}]"
                              f" .. [rsp {_signed(below + last)}], outside the clone's frame "
                              "(its red zone up to its return address)")
        elif base is not None:
            at = base[1]
            obj = object_at(at + first)
            if obj is None or at + last > obj.address + obj.size:
                raise Refused(f"{x.reason}, and {span} it reaches {at + first + bias:#x} .. "
                              f"{at + last + bias:#x}, not inside one data object of the "
                              "module")
        out.append(LoopAccess(x.key, address, m, loop.header, ka, kb, base))
    return out


def _copied(index: str, key: int, address: int, order: Sequence[int],
            infos: dict[int, InsnInfo]) -> tuple[str, int]:
    """The register whose value the index of the access at ``address`` (in block ``key``,
    whose instructions are at ``order``) holds, and where it was read: the index itself
    there, or the source of the copy that last wrote it before the access in the block
    (``mov r, c``, ``mov r32, c32``, ``movsxd r, c32``: the same value for a counter in 0 ..
    2**31 - 1)."""
    for a in reversed(order[:order.index(address)]):
        info = infos[a]
        if index not in info.writes:
            continue
        o = _ops(info)
        if info.insn.mnemonic in ("mov", "movsxd") and len(o) == 2 and o[0] in _WIDE \
                and o[1] in _WIDE and GPR[o[0]] == index:
            if GPR[o[1]] == index:
                continue  # mov esi, esi / movsxd rsi, esi: the same value
            return GPR[o[1]], a
        break
    return index, address


def _signed(value: int) -> str:
    return f"- {-value:#x}" if value < 0 else f"+ {value:#x}"


_LEA_RSP = re.compile(r"\[rsp(?: ([+-]) (0x[0-9a-f]+|\d+))?\]")


def _base_value(reg: str, pre: int, by: Mapping[int, BlockView],
                preds: Mapping[int, list[int]], infos: dict[int, InsnInfo],
                depths: Mapping[int, int], deltas: Mapping[int, int]
                ) -> tuple[str, int] | None:
    """What ``reg`` holds when control leaves ``pre`` for the loop, when its last write,
    walking back through blocks with one predecessor, is ``lea reg, [rip + X]`` (``("rip",
    X)``, X link-time) or, in a clone, ``lea reg, [rsp + d]`` or ``mov reg, rsp`` (``("rsp",
    o)``: the address
    ``o`` bytes from the region's RSP; ``depths``/``deltas``: the clones' RSP depths),
    else None."""
    key, seen = pre, set()
    while key not in seen:
        seen.add(key)
        insns = body(by[key])
        for n in range(len(insns) - 1, -1, -1):
            info = infos[insns[n].address]
            if reg not in info.writes:
                continue
            insn = info.insn
            o = _ops(info)
            if insn.mnemonic not in ("lea", "mov") or len(o) != 2 \
                    or not GPR.get(o[0]) == o[0] == reg:
                return None
            if insn.mnemonic == "lea" and o[1].startswith("[rip ") \
                    and insn.rip_target is not None:
                return "rip", insn.rip_target
            stack = _LEA_RSP.fullmatch(o[1]) if insn.mnemonic == "lea" else \
                _LEA_RSP.fullmatch("[rsp]") if o[1] == "rsp" else None
            if stack is None or key not in depths:
                return None
            d = _imm(stack.group(2) or "0") or 0
            depth = depths[key] + sum(deltas.get(i.address, 0) for i in insns[:n])
            return "rsp", -depth + (-d if stack.group(1) == "-" else d)
        if len(preds[key]) != 1:
            return None
        key = preds[key][0]
    return None


def run(engine: Engine, order: list[BlockView], infos: dict[int, InsnInfo],
        members: frozenset[int], loops: Sequence[ArmLoop],
        unmasked: Callable[[int], frozenset[str]], final_depth: int = 0,
        accesses: Sequence[LoopAccess] = ()) -> list[str]:
    """Like :meth:`Engine.run` (``order`` from :func:`loop_order`; RSP where
    ``engine.entry_depths`` says at each block, ``final_depth`` after), with each loop's blocks run
    ``trips`` times (module doc); ``accesses`` (:func:`loop_guards`) run guarded."""
    back = {(loop.latch, loop.header) for loop in loops}
    starting = {loop.header: loop for loop in loops}
    ending = {loop.latch: loop for loop in loops}

    def inside(a: int, b: int) -> bool:
        return b in members and (a, b) not in back

    npreds: dict[int, int] = {}
    for b in order:
        for s in successors(b):
            if inside(b.start, s):
                npreds[s] = npreds.get(s, 0) + 1
    exits = {loop.header: sorted({s for b in order if b.start in loop.members
                                  for s in successors(b)
                                  if s in members and s not in loop.members})
             for loop in loops}
    for loop in loops:
        for s in exits[loop.header]:
            npreds[s] += 1  # never the one-predecessor shortcut: the masks gather
    slots = {loop.header: (engine.alloc(), engine.alloc(), engine.alloc()) for loop in loops}
    first = len(engine.stubs)
    names = {loop.header: n + first for n, loop in enumerate(sorted(loops, key=lambda x: x.header))}

    def depth(key: int) -> int:
        return engine.entry_depths.get(key, 0)

    # Guarded accesses: per loop, a slot per index form (a + b * n, set at each iteration's
    # start) and per base address (set once before the loop); per block, its guards.
    forms: dict[int, dict[tuple[int, int], int]] = {}
    bases: dict[int, dict[tuple[str, int], int]] = {}
    guards: dict[int, dict[int, Guard]] = {}
    for x in accesses:
        form = forms.setdefault(x.header, {})
        if (x.a, x.b) not in form:
            form[x.a, x.b] = engine.alloc()
        base_slot = None
        if x.base is not None and x.base[0] != "abs":
            held = bases.setdefault(x.header, {})
            base_slot = held.setdefault(x.base, engine.alloc())
        guards.setdefault(x.key, {})[x.address] = Guard(x.mem, "loop", form[x.a, x.b],
                                                        base_slot)

    def special(t: int | None) -> list[str]:
        if t in starting:  # the back edge: its mask is the next iteration's active mask
            return [f"mov {slot(slots[t][0], 'qword', depth(t))}, rax"]
        return []

    out: list[str] = []
    for b in order:
        out += engine.move_to(depth(b.start))
        entering = starting.get(b.start)
        if entering is not None:
            loop = entering
            _nxt, count, active = slots[loop.header]
            out += engine.flags_to_slot()
            engine.live = False
            for s in exits[loop.header]:
                if s not in engine.preds:
                    gathered = engine.preds[s] = Pred(engine.alloc())
                    out.append(f"mov {engine.at(gathered.slot)}, 0")
            entered = engine.preds.get(loop.header)
            mask = ["mov rax, 0xffffffffffffffff"] if entered is None \
                else entered.mask(engine.depth)
            out += [f"mov {engine.at(engine.t1)}, rax", *mask,
                    f"mov {engine.at(active)}, rax",
                    *(line for held, bslot in bases.get(loop.header, {}).items()
                      for line in (f"movabs rax, @{held[1]:#x}" if held[0] == "rip" else
                                   f"lea rax, [rsp {_signed(engine.depth + held[1])}]",
                                   f"mov {engine.at(bslot)}, rax")),
                    f"mov rax, {engine.at(engine.t1)}",
                    f"mov {engine.at(count)}, {loop.trips:#x}",
                    f"arm_loop{names[loop.header]}:"]
            values = forms.get(loop.header)
            if values:  # flags are in their slot here: free
                out.append(f"mov {engine.at(engine.t1)}, rax")
                for (fa, fb), fslot in values.items():
                    scale = ["neg rax"] if fb == -1 else [] if fb == 1 else \
                        [f"imul rax, rax, {fb}"]
                    out += [f"mov rax, {engine.at(count)}", *scale,
                            *([f"add rax, {fa:#x}"] if fa > 0 else
                              [f"sub rax, {-fa:#x}"] if fa < 0 else []),
                            f"mov {engine.at(fslot)}, rax"]
                out.append(f"mov rax, {engine.at(engine.t1)}")
            engine.preds[loop.header] = Pred(active)
        engine.guards.update(guards.get(b.start, {}))
        out += engine.block(b, infos, engine.preds.get(b.start), inside, npreds, special,
                            unmasked(b.start))
        leaving = ending.get(b.start)
        if leaving is not None:
            loop = leaving
            nxt, count, active = slots[loop.header]
            label = names[loop.header]
            out += engine.move_to(depth(loop.header))
            out += engine.flags_to_slot()
            engine.live = False
            out += [f"mov {engine.at(engine.t1)}, rax", f"mov rax, {engine.at(nxt)}",
                    f"mov {engine.at(active)}, rax", f"mov rax, {engine.at(engine.t1)}",
                    f"sub {engine.at(count)}, 1", f"jne arm_loop{label}",
                    f"cmp {engine.at(active)}, 0", f"jne arm_loop_more{label}"]
            # Cannot happen (module doc): a clone has no original to finish it.
            engine.stubs += [f"arm_loop_more{label}:", "ud2",
                             f"jmp arm_loop_more{label}"] if loop.clone else [
                f"arm_loop_more{label}:", *engine.load_flags(engine.fl),
                f"jmp {goto(loop.header)}"]
    return out + engine.move_to(final_depth)
