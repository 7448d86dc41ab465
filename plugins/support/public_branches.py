"""Public branches in predicated code: a branch whose condition is public and the same on
every path stays a branch (docs/passes.md, "Public branches in predicated code").

The predicated-block engine (plugins/support/predication.py) runs every block of a region in
one linear order, each under its predicate, and undoes an inactive block when it commits.
So at any point of that code a register holds one of two kinds of value:

- *clean*: computed, by instructions that ran for real on every path, only from the
  registers the contract declares public at the region's entry (``public``,
  docs/contracts.md), RSP and constants; it is the same whatever the predicates are, and
  public;
- anything else: it may depend on a predicate (a predicated block's write, which its
  commit keeps or undoes), on memory (a load: the translator has no taint facts about
  memory) or on a guard (a guard or a division guard changes registers only when its block
  is off).

A branch ending a predicated block whose flags are clean decides the same way whether the
block is on or off, on public values.  Jumping on it tells an observer nothing about the
secret, and the blocks on the side the branch does not take have their predicates off
anyway: running them would change nothing.  So the code lays out each side (the blocks
every path to which crosses that edge: the edge *dominates* them) right after the branch's
block and jumps over it when the edge is not taken (:class:`Span`, ``skip``).

Calls.  A clone's branches mostly test the callee's arguments, which the arm sets just
before the call (``mov rdx, r12; call f``): a predicated write, undone when the arm is off,
so never clean.  A clean value the call's block writes is therefore *kept* on every path
until the call's clone (and everything else only reached through the call) has run, and
undone only then: the span of the call edge (``regs``).  Inside it every block's
predicate implies the call block's, so those blocks cannot tell; after it nothing can see
the value.

Everything here is a layout decision: which blocks go where, which spans the engine opens
and closes (:meth:`~plugins.support.predication.Engine.run`).  The order stays
topological, and every mask is computed as before, so a skipped block is one whose
predicate is off, and a mistaken decision here would cost time, never correctness of the
values; it could only leak when ``public`` names a register that holds a secret, which
``check`` shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from leakdbt.plugin_api import BlockView, detail, detail_constants
from plugins.support.predication import (
    GPR,
    Guard,
    InsnInfo,
    Layout,
    Span,
    body,
    dead_end,
    successors,
    terminator,
)

__all__ = ["plan", "public_registers"]

_MOVES = frozenset({"mov", "movzx", "movsx", "movsxd", "movabs", "lea"})  # dest not read
_ZEROING = frozenset({"xor", "sub"})  # ``xor r, r``: 0 whatever r holds
# Results that are not a function of the registers read.
_UNPREDICTABLE = frozenset({"rdtsc", "rdtscp", "rdrand", "rdseed", "rdpid", "rdpmc", "cpuid",
                            "xgetbv"})


def public_registers(params: Mapping[str, int | str | bool]) -> frozenset[str]:
    """The registers the contract declares public at the region's entry (``public``)."""
    value = params.get("public", "")
    return frozenset(r for r in str(value).split(",") if r in GPR.values())


def _dominated(entry: int, edges: Mapping[int, Sequence[int]], head: int, first: int
               ) -> frozenset[int]:
    """The blocks (of ``edges``: not the exits) every path from ``entry`` to which crosses
    the edge ``head -> first``."""
    def reach(start: int, skip_edge: bool) -> set[int]:
        seen, todo = {start}, [start]
        while todo:
            b = todo.pop()
            for s in edges.get(b, ()):
                if skip_edge and (b, s) == (head, first):
                    continue
                if s not in seen:
                    seen.add(s)
                    todo.append(s)
        return seen
    return frozenset(b for b in reach(first, False) - reach(entry, True) if b in edges)


def _gather(order: list[BlockView], head: int, blocks: frozenset[int]) -> list[BlockView]:
    """``order`` with ``blocks`` moved right after ``head`` (each group keeps its order):
    still topological, since only ``head`` and blocks of the group lead into the group."""
    at = next(n for n, b in enumerate(order) if b.start == head) + 1
    rest = order[at:]
    return [*order[:at], *(b for b in rest if b.start in blocks),
            *(b for b in rest if b.start not in blocks)]


class _Clean:
    """The linear scan: which branches end a predicated block with clean flags."""

    def __init__(self, public: frozenset[str], infos: Mapping[int, InsnInfo],
                 guards: Mapping[int, Guard]) -> None:
        self.public = public | {"rsp"}
        self.infos = infos
        self.guards = guards
        self.facts: dict[int, tuple[frozenset[str] | None, frozenset[str], frozenset[str],
                                    frozenset[str]]] = {}

    def candidates(self, order: list[BlockView], calls: Mapping[int, Span],
                   ancestors: Mapping[int, frozenset[int]]) -> set[int]:
        """The branches that are clean when only the blocks that can reach them run before
        them: those a good order can keep (a block on another path that writes the
        condition's register, run before, would make it unclean)."""
        return {b.start for b in order[1:] if terminator(b).kind == "branch"
                and b.start in self.run(order, calls, ancestors[b.start])[0]}

    def run(self, order: list[BlockView], calls: Mapping[int, Span],
            only: frozenset[int] | None = None) -> tuple[set[int], dict[int, tuple[str, ...]]]:
        """(blocks ending in a branch on clean flags, per call block the clean registers
        it writes) when the blocks of ``order`` run in that order (``only``: just those)."""
        clean = set(self.public)
        flags: frozenset[str] = frozenset()
        kept: set[int] = set()
        regs: dict[int, tuple[str, ...]] = {}
        active: list[Span] = []
        for n, b in enumerate(b for b in order if only is None or b.start in only):
            while active and b.start not in active[-1].blocks:
                clean -= set(regs[active.pop().head])
            if dead_end(b):
                continue
            written: set[str] = set()
            flags_written = False
            for insn in body(b):
                info = self.infos[insn.address]
                flags = self._step(info, clean, flags)
                written |= {r for r in info.writes if r in GPR.values()}
                flags_written |= info.flags_write
            written |= set().union(*(self.guards[i.address].regs for i in body(b)
                                     if i.address in self.guards))
            term = terminator(b)
            if n and term.kind == "branch" and term.cc in _CONDITION_FLAGS \
                    and set(_CONDITION_FLAGS[term.cc].split()) <= flags:
                kept.add(b.start)
            if not n:
                continue  # always on: nothing is undone
            span = calls.get(b.start)
            keep = {r for r in written if r in clean and r != "rsp"} if span else set()
            if span:
                regs[b.start] = tuple(sorted(keep))
                active.append(span)
            clean -= written - keep - {"rsp"}
            flags = frozenset() if flags_written else flags
        return kept, regs

    def _step(self, info: InsnInfo, clean: set[str], flags: frozenset[str]) -> frozenset[str]:
        """``clean`` after ``info`` (in place); returns the clean arithmetic flags."""
        address = info.insn.address
        guard = self.guards.get(address)
        if guard is not None:
            clean -= guard.regs  # redirected when the block is off
        if info.divisor is not None:
            clean -= {"rax", "rdx", *([GPR[info.divisor]] if info.divisor in GPR else [])}
        facts = self.facts.get(address)
        if facts is None:
            facts = self.facts[address] = _facts(info)
        reads, tests, defines, spoils = facts
        ok = reads is not None and reads <= clean and tests <= flags
        for r in info.writes:
            if r in GPR.values() and r != "rsp":
                (clean.add if ok else clean.discard)(r)
        return (flags - defines - spoils) | (defines if ok else frozenset())


def _facts(info: InsnInfo) -> tuple[frozenset[str] | None, frozenset[str], frozenset[str],
                                     frozenset[str]]:
    """What an instruction's results depend on: (the registers, None when they are not a
    function of registers: a load; the flags), and the flags it defines and spoils."""
    insn = info.insn
    ci = detail(insn)
    ops = ci.operands
    tests, defines, spoils = _flags_of(ci.eflags)
    if insn.mnemonic in _VARIABLE_COUNT and not (ops and ops[-1].type != ops[0].type):
        tests |= defines  # a count in CL (or of 1 written out) of 0 leaves them as they were
    if insn.mnemonic in _ZEROING and len(ops) == 2 and not info.mems \
            and insn.op_str.split(", ")[0] == insn.op_str.split(", ")[-1]:
        return frozenset(), frozenset(), defines, spoils  # ``xor edx, edx``: a constant
    if insn.mnemonic in _UNPREDICTABLE or any(m.read for m in info.mems):
        return None, tests, defines, spoils
    reads = info.reads
    if not (insn.mnemonic in _MOVES and ops and ops[0].size >= 4):
        reads |= info.writes  # partial or conditional writes keep old bits
    return reads, tests, defines, spoils


_CONDITION_FLAGS = {
    "e": "ZF", "ne": "ZF", "b": "CF", "ae": "CF", "be": "CF ZF", "a": "CF ZF", "s": "SF",
    "ns": "SF", "o": "OF", "no": "OF", "p": "PF", "np": "PF", "l": "SF OF", "ge": "SF OF",
    "le": "ZF SF OF", "g": "ZF SF OF"}
"""The flags each ``j<cc>`` reads (Capstone's spelling of the condition)."""
_ARITH = ("CF", "PF", "AF", "ZF", "SF", "OF")
_VARIABLE_COUNT = frozenset({"shl", "shr", "sar", "sal", "rol", "ror", "rcl", "rcr", "shld",
                             "shrd"})


def _flags_of(eflags: int) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(arithmetic flags read, defined from the operands, left undefined or changed
    otherwise) by an instruction, from Capstone's eflags bits."""
    bits = detail_constants().eflags

    def having(*kinds: str) -> frozenset[str]:
        return frozenset(f for f in _ARITH if any(eflags & bits.get(f"{k}_{f}", 0)
                                                  for k in kinds))
    return having("TEST", "PRIOR"), having("MODIFY", "SET", "RESET"), having("UNDEFINED",
                                                                             "PRIOR")


def plan(order: list[BlockView], infos: Mapping[int, InsnInfo],
         inside: Callable[[int, int], bool], public: frozenset[str],
         guards: Mapping[int, Guard], calls: Mapping[int, int]) -> Layout | None:
    """The layout keeping ``order``'s public branches (None: no branch qualifies).
    ``calls``: call block -> the entry of its clone."""
    if not order:
        return None
    entry = order[0].start
    edges = {b.start: [s for s in successors(b) if inside(b.start, s)] for b in order}
    spans = {a: Span(a, e, _dominated(entry, edges, a, e), skip=False)
             for a, e in calls.items() if e in edges.get(a, ())}
    scan = _Clean(public, infos, guards)
    ancestors = _ancestors(order, edges)
    candidates = scan.candidates(order, spans, ancestors)
    if not candidates:
        return None
    order = _prefer(order, edges, candidates, ancestors)
    for span in sorted(spans.values(), key=lambda s: _position(order, s.head)):
        order = _gather(order, span.head, span.blocks)
    kept, regs = scan.run(order, spans)
    if not kept:
        return None
    sides: list[Span] = []
    for b in order:
        if b.start not in kept:
            continue
        term = terminator(b)
        if term.taken == term.fall:
            continue  # ``jcc`` to the next instruction: one edge, nothing to skip
        for target, taken in ((term.taken, True), (term.fall, False)):
            if target is None or not inside(b.start, target):
                continue
            blocks = _dominated(entry, edges, b.start, target)
            joins = {s for x in blocks for s in edges[x] if s not in blocks}
            # An exit the side leads to (an iteration region's) may share the predicate of
            # a block in it (the engine's jump edges), which a skip leaves stale: not kept.
            if blocks and all(j in edges for j in joins):
                sides.append(Span(b.start, target, blocks, skip=True, taken=taken,
                                  joins=tuple(sorted(joins))))
    for side in sorted(sides, key=lambda s: (_position(order, s.head), not s.taken)):
        order = _gather(order, side.head, side.blocks) if side.taken else _after(
            order, side, sides)
    # The moves may have put blocks before a branch that were after it: scan again, and
    # keep only branches (and the calls' regs) that are still clean.
    kept, regs = scan.run(order, spans)
    sides = [s for s in sides if s.head in kept]
    if not sides:
        return None
    layout = Layout(order)
    used = [s for s in spans.values()
            if any(k in s.blocks for k in kept) and regs.get(s.head)]
    for span in [*(Span(s.head, s.first, s.blocks, False, regs=regs[s.head]) for s in used),
                 *sides]:
        first = next(b.start for b in order if b.start in span.blocks)
        layout.spans.setdefault(first, []).append(span)
        if not span.skip:
            layout.calls[span.head] = span
    for group in layout.spans.values():
        group.sort(key=lambda s: -len(s.blocks))
    if not _contiguous(order, layout):
        return None
    return layout


def _ancestors(order: list[BlockView], edges: Mapping[int, Sequence[int]]
               ) -> dict[int, frozenset[int]]:
    """Each block with the blocks that can reach it (itself included)."""
    preds: dict[int, list[int]] = {}
    for a, targets in edges.items():
        for t in targets:
            preds.setdefault(t, []).append(a)
    out: dict[int, frozenset[int]] = {}
    for b in order:  # topological: every predecessor is done first
        out[b.start] = frozenset({b.start}).union(*(out.get(p, frozenset())
                                                   for p in preds.get(b.start, ())))
    return out


def _prefer(order: list[BlockView], edges: Mapping[int, Sequence[int]], targets: set[int],
            ancestors: Mapping[int, frozenset[int]]) -> list[BlockView]:
    """A topological order that runs each target branch (earliest first) as soon as the
    blocks that can reach it have run: blocks of other paths, whose predicated writes
    would make its condition unclean, wait until after it where they can."""
    position = {b.start: n for n, b in enumerate(order)}
    by_start = {b.start: b for b in order}
    waiting = {b.start: 0 for b in order}
    for a in waiting:
        for t in edges.get(a, ()):
            if t in waiting:
                waiting[t] += 1
    ready = [b.start for b in order if not waiting[b.start]]
    pending = sorted(targets, key=position.__getitem__)
    out: list[BlockView] = []
    while ready:
        pending = [t for t in pending if t in waiting]
        near = ancestors[pending[0]] if pending else frozenset()
        choice = min(ready, key=lambda s: (s not in near, position[s]))
        ready.remove(choice)
        del waiting[choice]
        out.append(by_start[choice])
        for t in edges.get(choice, ()):
            if t in waiting:
                waiting[t] -= 1
                if not waiting[t]:
                    ready.append(t)
    return out if len(out) == len(order) else order  # (``order`` is acyclic: always so)


def _position(order: list[BlockView], start: int) -> int:
    return next(n for n, b in enumerate(order) if b.start == start)


def _after(order: list[BlockView], side: Span, sides: list[Span]) -> list[BlockView]:
    """``order`` with the fall side's blocks right after its taken side's (or after the
    head when the taken edge has no side)."""
    taken = next((s for s in sides if s.head == side.head and s.taken), None)
    if taken is None:
        return _gather(order, side.head, side.blocks)
    last = max(_position(order, b) for b in taken.blocks)
    at = last + 1
    rest = order[at:]
    return [*order[:at], *(b for b in rest if b.start in side.blocks),
            *(b for b in rest if b.start not in side.blocks)]


def _contiguous(order: list[BlockView], layout: Layout) -> bool:
    """Every span's blocks are consecutive in ``order`` (a call's right after its block):
    the moves keep them so; checked, since the engine's jumps and restores rely on it."""
    where = {b.start: n for n, b in enumerate(order)}
    for first, group in layout.spans.items():
        for span in group:
            at = sorted(where[b] for b in span.blocks)
            if at != list(range(where[first], where[first] + len(at))):
                return False
            if not span.skip and where[span.head] + 1 != where[first]:
                return False  # nothing may run between the call block and its span
    return True
