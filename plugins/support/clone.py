"""Predicated calls: a region's calls become inline clones of their callees, so that the
predicated-block engine (plugins/support/predication.py) runs them under the caller's
predicate like any other block (docs/passes.md, "Predicated calls").

:func:`expand_calls` turns a region into a *graph* of blocks in which every direct ``call F``
is replaced by the blocks of ``F`` (and, recursively, of the functions ``F`` calls), each
instance under its own block keys: ``address + n * 2**48`` for the n-th clone.  Each clone
block ends with a synthetic terminator (:func:`_jump`, :func:`_branch`: decoded-instruction
records that are never emitted, since the engine spells out all control flow): a ``ret``
becomes a jump to the call's return site, a ``call`` a jump to the callee's entry.

The stack.  A clone runs on the guest's stack with RSP moved below the region's whole
scratch frame (:data:`CLONE_BASE` below the RSP the original call has, which the region's
own code may have moved down before it, plus 8 for the return address a call would push,
so the callee sees the same alignment), so nothing the callee pushes or
keeps in its red zone can touch the predicates and snapshots in the frame.  Every change a
callee makes to RSP must be known before it runs (``push``, ``pop``, ``sub``/``add rsp,
imm``, ``lea rsp, [rsp + d]``) and the same on every path to a block, so the depth of RSP
below the region's is known at every instruction; the engine renders its slots relative to
it, and puts RSP where each block expects it (``lea``, flags untouched).  RSP itself is not
masked: an inactive clone block moves it exactly as an active one.  A callee's ``add``/``sub
rsp, imm`` runs with RSP moved back by :data:`CLONE_BASE` (where the original call has it),
so that the flags it sets from RSP's value are the original's (the engine's ``original``).

What a clone may touch.  Its blocks run even when the caller's predicate is off, when the
original makes no call at all, so every access must be valid whatever the path: its own
stack frame (below its return address), RIP-relative module data, and reads of the thread
control block's header (``fs:[0x28]``, the stack-protector canary: :func:`tcb_read`).
Reading the caller's
stack (stack arguments, its return address) and any other address are refused.  A callee's
stores to its frame lie below the region's RSP minus :data:`CLONE_BASE`: memory the ABI
already treats as dead.

Loops.  By default a callee with a cycle is refused, and the graph is acyclic (bounded-loop
relies on that).  With ``expand_calls(..., loops=True)`` (if-conversion) the callee's blocks
are cloned with their cycle, the graph is marked ``cyclic``, and the client judges each
loop: plugins/support/arm_loop.py runs a *counted* loop, a fixed public number of times,
and refuses any other, naming it.  Each call still gets its own instance, so a loop's
instance has one call site, and the counter's start the caller sets before it (``mov esi,
5; call f``) can be read along the instance's one path (``origin``, ``function``: which
callee block and function each clone block stands for, for messages).

Saved registers.  For each instance, ``Graph.preserves`` holds the registers it provably
gives back (:func:`_preserved`: ``push r`` ... ``pop r`` at the same RSP depth with no
store that may touch the slot in between), so that a loop calling it does not count its
writes of them (arm_loop.py, ``Graph.restores``).

Calls through the GOT.  ``call [rip + X]`` and a call to a PLT stub (``endbr64``, ``bnd
jmp [rip + X]``) are cloned as calls to the function the GOT slot X is bound to, which the
translator resolves when it hardens the region (:func:`resolve_call`); that function may
lie in another module.  Its blocks then have addresses in the region's module's terms
(runtime minus the region's bias), so every rule here, the memory rule included, applies
unchanged: its RIP-relative operands denote its own module's data.

Refusals (``I`` names the instruction as ``'text' at 0xADDR``; each is the Refusal reason):

- ``I is an indirect call (its callee is known only when it runs)`` (through a register)
- ``I is an indirect call through a memory slot that cannot be resolved: WHY``
- ``I calls 0xT, which is not a function the translator can decode``
- ``I calls the function at 0xT through I2, whose target cannot be resolved: WHY`` (a PLT
  stub whose GOT slot the translator cannot resolve; WHY is RegionView.resolve_indirect's)
- ``I calls the PLT stub at 0xT, which jumps to 0xU, not a function the translator can
  decode``
- ``F leaves through I2 (an indirect jump: a jump table or a tail call through a
  pointer), which is not cloned``
- ``I: the call is nested deeper than the clone budget (clone_depth = N)``
- ``I: F calls itself (recursion is not cloned)``
- ``the clones of the region's callees would run more than N instructions (clone_insns)``
- ``F has a loop (I jumps back to 0xB): loops in callees are not cloned`` (without
  ``loops=True``; with it, arm_loop.py's refusals for each loop that is not counted)
- ``I is made with rsp N bytes above the region's (a clone runs below the region's scratch
  frame)``: a call after the region's own code popped above its starting RSP
- ``I ends the program's path in F (a dead end in a callee is not cloned)``: a call that
  does not return, or a stop, inside a callee (in the region itself it is an exit:
  plugins/if_conversion.py)
- ``I leaves F for 0xT (a tail call or a jump out of the function is not cloned)``
- ``I changes rsp by an amount not known before it runs``
- ``RSP differs between the paths into 0xB of F``
- ``I returns with rsp N bytes away from its return address``
- ``I accesses the caller's stack (stack arguments are not cloned)``
- ``I: its address is neither the clone's own stack nor module data, so it may fault
  when the predicate is off`` (a read of ``fs:[d]`` with no base or index and ``0 <= d``,
  ``d + width <= 0x40``, glibc's TCB header, is accepted; with ``loops=True`` an indexed
  access, not RIP-relative, no segment, is left in ``Graph.indexed`` for
  plugins/support/arm_loop.py's ``loop_guards``, which accepts it or refuses with this
  reason and why)
- any control-flow or predication refusal of if-conversion, for the callee's instruction.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from leakdbt.plugin_api import BlockView, Flow, Insn, RegionView, detail
from plugins.support.constant_branches import fold_constant_branches
from plugins.support.predication import (
    CLONE_BASE,
    GPR,
    InsnInfo,
    Mem,
    Refused,
    analyse,
    body,
    control_refusal,
    dead_end,
    predicated_refusal,
    successors,
    topological,
    where,
)

__all__ = ["CLONE_BASE", "DEFAULT_DEPTH", "DEFAULT_INSNS", "TCB_HEADER", "Graph", "Indexed",
           "cloned_instructions", "expand_calls", "resolve_call", "tcb_read"]

DEFAULT_DEPTH = 2
"""Nesting of calls cloned when the contract sets no ``clone_depth``."""
DEFAULT_INSNS = 1000
"""Instructions of all clones together when the contract sets no ``clone_insns``."""
_INSTANCE = 1 << 48  # block keys of the n-th clone: address + n * _INSTANCE


@dataclass
class Graph:
    """A region with its calls replaced by clones: blocks by key, what the engine needs."""

    entry: int
    blocks: list[BlockView] = field(default_factory=list)
    depths: dict[int, int] = field(default_factory=dict)  # clone block key -> RSP depth
    deltas: dict[int, int] = field(default_factory=dict)  # insn address -> depth change
    clones: set[int] = field(default_factory=set)  # keys of clone blocks
    infos: dict[int, InsnInfo] = field(default_factory=dict)  # clone instructions
    insns: int = 0  # instructions in all clones
    origin: dict[int, BlockView] = field(default_factory=dict)  # clone key -> callee block
    function: dict[int, int] = field(default_factory=dict)  # clone key -> its callee
    cyclic: bool = False  # some clone has a loop (only with ``loops=True``)
    parent: dict[int, int] = field(default_factory=dict)  # instance -> its caller's (0: region)
    entries: dict[int, int] = field(default_factory=dict)  # instance -> its entry block's key
    returns: dict[int, int] = field(default_factory=dict)  # instance -> its return site's key
    preserves: dict[int, frozenset[str]] = field(default_factory=dict)  # see :func:`_preserved`
    indexed: list[Indexed] = field(default_factory=list)  # accesses left to the loop analysis

    def restores(self, key: int, reg: str, members: frozenset[int]) -> bool:
        """Is a write of ``reg`` in block ``key`` undone, as seen from a loop whose blocks
        are ``members``: does the clone instance holding it, or one of its callers', called
        inside the loop (its entry and return site are loop blocks), provably restore
        ``reg`` before it returns (a push/pop pair, :func:`_preserved`)?"""
        n = key // _INSTANCE
        while n:
            if reg in self.preserves.get(n, ()) and self.entries[n] in members \
                    and self.returns[n] in members:
                return True
            n = self.parent[n]
        return False


@dataclass(frozen=True)
class Indexed:
    """An access of a clone ``[base + index*scale + d]`` (base RSP, a register or none; no
    segment) that the memory rule leaves to the loop analysis (``loops=True``): it is
    accepted when ``index`` is the counter of a counted loop around it and the addresses
    it can then reach lie in the clone's frame or in one data object
    (plugins/support/arm_loop.py, :func:`~plugins.support.arm_loop.loop_guards`).
    ``depth``: RSP's depth below the region's at the access; ``frame``: the depth of the
    clone's return address (its frame lies below); ``reason``: the memory rule's refusal."""

    key: int  # the clone block holding it
    info: InsnInfo
    mem: Mem
    depth: int
    frame: int
    reason: str


def budget(region: RegionView) -> tuple[int, int]:
    """(clone_depth, clone_insns) from the contract's mapping, or the defaults."""
    depth = region.params.get("clone_depth", DEFAULT_DEPTH)
    insns = region.params.get("clone_insns", DEFAULT_INSNS)
    return int(depth), int(insns)


def expand_calls(region: RegionView, blocks: list[BlockView],
                 vouched: frozenset[int] = frozenset(), loops: bool = False,
                 rsp: Mapping[int, int] | None = None) -> Graph:
    """``blocks`` (the region's) with each direct call replaced by a clone of its callee;
    raises :class:`Refused` (see the module doc).  ``vouched``: callee instructions whose
    memory operands the caller makes safe itself (bounded-loop's table loads,
    plugins/support/loop_table.py): the memory rule does not apply to them.  ``loops``: a
    callee with a loop is cloned with its cycle (the graph is then ``cyclic``) for a
    client that runs loops and judges each one (if-conversion, plugins/support/arm_loop.py);
    without it such a callee is refused.  ``rsp``: how far below the region's RSP the call
    ending each block (by start) is made, when the region's own code moved RSP before it
    (0 otherwise): its clone runs that much deeper too, so that its RSP stays exactly
    :data:`CLONE_BASE` below the original's."""
    max_depth, max_insns = budget(region)
    graph = _Builder(region, max_depth, max_insns)
    graph.loops = loops
    graph.vouched = vouched
    out = Graph(region.entry)
    for b in blocks:
        last = b.last
        if last.flow not in (Flow.CALL, Flow.INDIRECT_CALL) or dead_end(b):
            out.blocks.append(b)  # a dead end's call is not cloned: it never returns
            continue
        below = (rsp or {}).get(b.start, 0)
        if below < 0:
            raise Refused(f"{where(last, region.bias)} is made with rsp {-below} bytes above "
                          "the region's (a clone runs below the region's scratch frame)")
        entry = graph.clone(last, last.next, CLONE_BASE + 8 + below, (), out)
        out.blocks.append(dataclasses.replace(b, insns=(*b.insns[:-1], _jump(last, entry)),
                                              successors=(entry,)))
    fold_constant_branches(out)  # clone branches decided by constants (constant_branches.py)
    return out


def cloned_instructions(region: RegionView) -> list[Insn]:
    """Every instruction of the functions the region's calls reach within the clone depth
    budget (each once) that some clone keeps: what a per-instruction pass must also
    rewrite."""
    max_depth, _ = budget(region)
    seen: set[int] = set()
    out: list[Insn] = []

    def callees(insns: list[Insn] | tuple[Insn, ...]) -> list[tuple[BlockView, ...]]:
        found = []
        for i in insns:
            if i.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                resolved = resolve_call(region, i)
                if not isinstance(resolved, str):
                    found.append(resolved[1])
        return found

    frontier = callees([i for b in region.blocks if not dead_end(b) for i in b.insns])
    for _level in range(max_depth):
        nxt: list[tuple[BlockView, ...]] = []
        for blocks in frontier:
            if blocks[0].start in seen:
                continue
            seen.add(blocks[0].start)
            for b in blocks:
                out += b.insns
                nxt += callees(b.insns)
        frontier = nxt
    try:  # less the blocks no clone keeps (constant_branches.py: untaken edges)
        graph = expand_calls(region, list(region.blocks), loops=True)
    except Refused:
        return out  # the region's calls are refused: nothing is dropped
    kept = {i.address for k in graph.clones for i in graph.origin[k].insns}
    return [i for i in out if i.address in kept]


def resolve_call(region: RegionView, call: Insn) -> tuple[int, tuple[BlockView, ...]] | str:
    """The function ``call`` enters and its blocks (by address), or why it is not cloned.

    A direct call's target is the function; ``call [rip + X]`` (``-fno-plt``) goes where
    the GOT slot X points, and a call to a PLT stub (a function that is only ``endbr64``
    and ``jmp [rip + X]``) where the stub's slot points: the translator resolves both as
    the dynamic linker binds them (``RegionView.resolve_indirect``)."""
    w = where(call, region.bias)
    if call.flow is Flow.INDIRECT_CALL:
        if call.rip_target is None:
            return f"{w} is an indirect call (its callee is known only when it runs)"
        resolved = region.resolve_indirect(call)
        if isinstance(resolved, str):
            return f"{w} is an indirect call through a memory slot that cannot be resolved: " \
                   f"{resolved}"
        target = resolved
    else:
        assert call.target is not None
        target = call.target
    blocks = region.callee(target)
    if not blocks:
        return f"{w} calls {target + region.bias:#x}, which is not a function the " \
               "translator can decode"
    stub = _stub_jump(blocks)
    if stub is not None:
        resolved = region.resolve_indirect(stub)
        if isinstance(resolved, str):
            return f"{w} calls the function at {target + region.bias:#x} through " \
                   f"{where(stub, region.bias)}, whose target cannot be resolved: {resolved}"
        stub_at, target = target, resolved
        blocks = region.callee(target)
        if not blocks:
            return f"{w} calls the PLT stub at {stub_at + region.bias:#x}, which jumps to " \
                   f"{target + region.bias:#x}, not a function the translator can decode"
    return target, blocks


def _stub_jump(blocks: tuple[BlockView, ...]) -> Insn | None:
    """The ``jmp [rip + X]`` of a PLT stub (one block: ``endbr64``, nops, the jump)."""
    last = blocks[0].last
    if len(blocks) != 1 or last.flow is not Flow.INDIRECT_JUMP or last.rip_target is None:
        return None
    if any(i.mnemonic not in ("endbr64", "nop") for i in blocks[0].insns[:-1]):
        return None
    return last


class _Builder:
    def __init__(self, region: RegionView, max_depth: int, max_insns: int) -> None:
        self.region = region
        self.bias = region.bias
        self.max_depth = max_depth
        self.max_insns = max_insns
        self.instances = 0
        self.loops = False  # clone callees with loops (expand_calls)
        self.vouched: frozenset[int] = frozenset()
        self.current = 0  # the instance being built (0: the region's own code)

    def clone(self, call: Insn, ret: int, depth: int, chain: tuple[int, ...], out: Graph
              ) -> int:
        """Add a clone of ``call``'s callee entered at RSP ``depth`` and returning to block
        key ``ret``; its entry's key."""
        w = where(call, self.bias)
        if len(chain) >= self.max_depth:
            raise Refused(f"{w}: the call is nested deeper than the clone budget "
                          f"(clone_depth = {self.max_depth})")
        resolved = resolve_call(self.region, call)
        if isinstance(resolved, str):
            raise Refused(resolved)
        target, blocks = resolved
        if target in chain:
            raise Refused(f"{w}: {target + self.bias:#x} calls itself (recursion is not "
                          "cloned)")
        fname = f"the function at {target + self.bias:#x}"
        for b in blocks:
            if b.last.flow is Flow.INDIRECT_JUMP:
                raise Refused(f"{fname} leaves through {where(b.last, self.bias)} (an "
                              "indirect jump: a jump table or a tail call through a pointer), "
                              "which is not cloned")
        self.instances += 1
        n = self.instances
        out.parent[n] = self.current
        out.entries[n] = target + n * _INSTANCE
        out.returns[n] = ret
        caller, self.current = self.current, n
        starts = {b.start for b in blocks}

        def key(address: int) -> int:
            return address + n * _INSTANCE

        order = topological(target, blocks, lambda a, b: False)
        if order is None and not self.loops:
            raise Refused(f"{fname} has a loop ({self._loop(target, blocks, self.bias)}): "
                          "loops in callees are not cloned")
        if order is None:
            order = _reverse_postorder(target, blocks)  # each block after a predecessor
            out.cyclic = True
        at: dict[int, int] = {target: depth}
        for b in order:
            d = at.get(b.start)
            if d is None:
                continue  # unreachable from the entry (cannot happen in a decoded CFG)
            if dead_end(b):
                raise Refused(f"{where(b.last, self.bias)} ends the program's path in {fname} "
                              "(a dead end in a callee is not cloned)")
            for insn in body(b):
                if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                    continue
                reason = control_refusal(insn, self.bias)
                if reason:
                    raise Refused(reason)
                info = analyse(insn)
                delta = self.check(info, d, depth, out, key(b.start))
                out.infos[insn.address] = info
                out.deltas[insn.address] = delta
                d += delta
                out.insns += 1
            last = b.last
            if out.insns > self.max_insns:
                raise Refused(f"the clones of the region's callees would run more than "
                              f"{self.max_insns} instructions (clone_insns)")
            out.depths[key(b.start)] = at[b.start]
            out.clones.add(key(b.start))
            out.origin[key(b.start)] = b
            out.function[key(b.start)] = target
            succ: list[int] = []
            calls = last.flow in (Flow.CALL, Flow.INDIRECT_CALL)
            if not calls:
                reason = control_refusal(last, self.bias)
                if reason:
                    raise Refused(reason)
            if last.flow is Flow.RETURN:
                if d != depth:
                    raise Refused(f"{where(last, self.bias)} returns with rsp {depth - d} "
                                  "bytes away from its return address")
                insns = (*body(b), _jump(last, ret))
            elif calls:
                entry = self.clone(last, key(last.next), d + 8, (*chain, target), out)
                insns = (*b.insns[:-1], _jump(last, entry))
                succ = [last.next]
            elif last.flow is Flow.BRANCH:
                assert last.target is not None
                succ = [last.target, last.next]
                insns = (*body(b), _branch(last, key(last.target), key(last.next)))
            elif last.flow is Flow.JUMP:
                assert last.target is not None
                succ = [last.target]
                insns = (*body(b), _jump(last, key(last.target)))
            else:
                succ = [last.next]
                insns = (*b.insns, _jump(last, key(last.next)))
            for s in succ:
                if s not in starts:
                    raise Refused(f"{where(last, self.bias)} leaves {fname} for "
                                  f"{s + self.bias:#x} (a tail call or a jump out of the "
                                  "function is not cloned)")
                if at.setdefault(s, d) != d:
                    raise Refused(f"RSP differs between the paths into {s + self.bias:#x} of "
                                  f"{fname}")
            end = insns[-1]
            nexts = (end.target, end.next) if end.flow is Flow.BRANCH else (end.target,)
            out.blocks.append(BlockView(key(b.start), insns,
                                        tuple(t for t in nexts if t is not None)))
        self.current = caller
        out.preserves[n] = _preserved(out, n, self.instances)
        return key(target)

    def check(self, info: InsnInfo, d: int, entry: int, out: Graph, key: int) -> int:
        """Refuse what a clone instruction (in block ``key``) cannot do at depth ``d``
        (entered at ``entry``); the change it makes to the depth.  With ``loops``, an
        indexed access is left to the loop analysis (:class:`Indexed`)."""
        insn = info.insn
        w = where(insn, self.bias)
        delta = 0
        if "rsp" in info.writes:
            change = stack_change(insn)
            if change is None:
                raise Refused(f"{w} changes rsp by an amount not known before it runs")
            delta = change
            info = dataclasses.replace(info, writes=info.writes - {"rsp"})
        reason = predicated_refusal(info, self.bias)
        if reason:
            raise Refused(reason)
        for m in info.mems:
            if m.base == "rip" and m.index is None or insn.address in self.vouched:
                continue
            if tcb_read(m):
                continue
            if m.base == "rsp" and m.index is None and m.segment is None:
                if m.disp - d + m.width > -entry:
                    raise Refused(f"{w} accesses the caller's stack (stack arguments are "
                                  "not cloned)")
                continue
            reason = (f"{w}: its address is neither the clone's own stack nor module data, so "
                      "it may fault when the predicate is off")
            if (self.loops and m.index is not None and m.segment is None and m.base != "rip"
                    and GPR.get(m.base or "") != GPR.get(m.index)):
                out.indexed.append(Indexed(key, info, m, d, entry, reason))
                continue
            raise Refused(reason)
        return delta

    @staticmethod
    def _loop(entry: int, blocks: tuple[BlockView, ...], bias: int) -> str:
        """'I jumps back to 0xB' for a back edge found by a depth-first walk."""
        by = {b.start: b for b in blocks}
        on_path: set[int] = set()
        done: set[int] = set()

        def walk(n: int) -> str | None:
            on_path.add(n)
            for s in by[n].successors:
                if s in on_path:
                    return f"{where(by[n].last, bias)} jumps back to {s + bias:#x}"
                if s in by and s not in done:
                    found = walk(s)
                    if found:
                        return found
            on_path.discard(n)
            done.add(n)
            return None

        return walk(entry) or "a cycle"


TCB_HEADER = 0x40
"""Bytes of glibc's thread control block header (``tcbhead_t``: tcb, dtv, self,
multiple_threads, gscope_flag, sysinfo, stack_guard at 0x28, pointer_guard at 0x30) that
:func:`tcb_read` accepts."""


def tcb_read(m: Mem) -> bool:
    """A read of ``fs:[d]`` (no base, no index) inside the first :data:`TCB_HEADER` bytes
    of the thread control block: gcc's stack-protector canary ``mov r, qword ptr
    fs:[0x28]``.  FS points at the running thread's TCB in every thread (glibc sets it up
    before any code runs), so the read cannot fault, and the predicated code stores
    nothing through ``fs:`` (refused), so it reads the same whichever path runs: safe
    whether its block is on or off."""
    return (m.segment == "fs" and m.base is None and m.index is None and not m.write
            and m.disp >= 0 and m.disp + m.width <= TCB_HEADER)


def _preserved(out: Graph, n: int, last: int) -> frozenset[str]:
    """The registers clone instance ``n`` provably gives back unchanged when it returns:
    each register ``r`` it pushes (``push r``) such that on every path from its entry to
    a ``ret``, the last write of ``r`` is a ``pop r`` that reads back a slot a ``push r``
    filled while ``r`` still held its entry value, at the same RSP depth, with no store
    in between that may touch the slot (a store through RSP with an overlapping range, or
    one whose address is not RSP- or RIP-relative) and RSP never above the slot meanwhile.
    Instances ``n + 1 .. last`` are the ones it calls (built while it was); their
    instructions count like its own."""
    blocks = {b.start: b for b in out.blocks if n <= b.start // _INSTANCE <= last}
    own = [b for k, b in blocks.items() if k // _INSTANCE == n]
    candidates = {i.op_str for b in own for i in body(b)
                  if i.mnemonic == "push" and GPR.get(i.op_str) == i.op_str != "rsp"}
    return frozenset(r for r in candidates if _restores(out, blocks, n, r))


State = tuple[bool, frozenset[int]]  # (r holds its entry value, depths of slots holding it)


def _restores(out: Graph, blocks: Mapping[int, BlockView], n: int, r: str) -> bool:
    """Does every return of instance ``n`` give ``r`` back (:func:`_preserved`)?"""
    entry = out.entries[n]
    states: dict[int, State] = {entry: (True, frozenset())}
    work = [entry]
    ends: dict[int, bool] = {}  # return block -> r given back (its last, final, visit)
    while work:
        k = work.pop()
        clean, saved = states[k]
        d = out.depths[k]
        for insn in body(blocks[k]):
            delta = out.deltas[insn.address]
            if insn.mnemonic in ("push", "pushfq"):
                slot = d + 8
                saved = saved | {slot} if insn.op_str == r and clean else saved - {slot}
            elif insn.mnemonic == "pop" and insn.op_str == r:
                clean = d in saved
            else:
                info = out.infos[insn.address]
                if r in info.writes:
                    clean = False
                for m in info.mems:
                    if not m.write or (m.base == "rip" and m.index is None):
                        continue
                    if m.base == "rsp" and m.index is None and m.segment is None:
                        lo = m.disp - d  # the bytes written, relative to the region's RSP
                        saved = frozenset(s for s in saved
                                          if lo + m.width <= -s or -s + 8 <= lo)
                    else:
                        saved = frozenset()
            d += delta
            saved = frozenset(s for s in saved if s <= d)  # at or above RSP
        origin = out.origin.get(k)
        if k // _INSTANCE == n and origin is not None and origin.last.flow is Flow.RETURN:
            ends[k] = clean
            continue
        for s in blocks[k].successors:
            if s not in blocks:
                continue
            old = states.get(s)
            new = (clean, saved) if old is None else (old[0] and clean, old[1] & saved)
            if new != old:
                states[s] = new
                work.append(s)
    return bool(ends) and all(ends.values())


def _reverse_postorder(entry: int, blocks: tuple[BlockView, ...]) -> list[BlockView]:
    """The blocks reachable from ``entry`` in reverse postorder of a depth-first walk: each
    block but the entry comes after one of its predecessors (its depth is then known)."""
    by = {b.start: b for b in blocks}
    seen = {entry}
    post: list[int] = []
    stack = [(entry, iter(successors(by[entry])))]
    while stack:
        n, it = stack[-1]
        for s in it:
            if s in by and s not in seen:
                seen.add(s)
                stack.append((s, iter(successors(by[s]))))
                break
        else:
            post.append(n)
            stack.pop()
    return [by[n] for n in reversed(post)]


_ADJUST = re.compile(r"rsp, (0x[0-9a-f]+|\d+)$")
_LEA = re.compile(r"rsp, \[rsp(?: ([+-]) (0x[0-9a-f]+|\d+))?\]$")


def stack_change(insn: Insn) -> int | None:
    """How far below its old value ``insn`` moves RSP, when that is fixed (push, pop,
    ``sub``/``add rsp, imm``, ``lea rsp, [rsp + d]``); None otherwise."""
    m, ops = insn.mnemonic, insn.op_str
    if m in ("pushfq", "popfq"):
        return 8 if m == "pushfq" else -8
    if m in ("push", "pop"):
        if "rsp" in ops or detail(insn).operands[0].size != 8:
            return None  # pop rsp; 16-bit push/pop
        return 8 if m == "push" else -8
    if m in ("sub", "add") and (a := _ADJUST.fullmatch(ops)):
        amount = int(a.group(1), 0)
        return amount if m == "sub" else -amount
    if m == "lea" and (a := _LEA.fullmatch(ops)):
        amount = int(a.group(2), 0) if a.group(2) else 0
        return amount if a.group(1) == "-" else -amount
    return None


def _jump(at: Insn, target: int) -> Insn:
    """A synthetic ``jmp`` to block key ``target`` (terminates a graph block; not emitted)."""
    return Insn(at.address, b"", "jmp", "", f"{target:#x}", Flow.JUMP, target)


def _branch(at: Insn, taken: int, fall: int) -> Insn:
    """A synthetic ``jcc`` (``at``'s condition) to block keys ``taken`` / ``fall``: its
    ``next`` is ``fall`` (it has no bytes)."""
    return Insn(fall, b"", at.mnemonic, "", f"{taken:#x}", Flow.BRANCH, taken)
