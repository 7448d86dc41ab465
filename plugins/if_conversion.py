"""If-conversion: a secret-dependent branch region becomes straight-line predicated code.

Applies to regions the translator formed as ``branch`` (contract kind ``branch`` or none):
a block ending in a conditional branch up to the branch's immediate post-dominator (the
*join*), or up to the returns when the paths only meet by returning.  Diamonds, triangles,
nested acyclic branches and DAGs (a tail both arms share) are supported, and *counted*
loops (a trip count written in the code, its start a constant known before the loop:
plugins/support/arm_loop.py) inside an arm or inside the clone of a function the region
calls, several per region, nested ones included, each run that many times whatever the
secret, each iteration's blocks predicated.  Blocks that are
also entered from outside the region (side entries, ``RegionView`` does not show them) are
no concern: the translator's copy holds its own duplicate of each block and is entered only
at the region's start, while those entries keep running the untouched original
(leakdbt/dbt/region.py); shapes are judged on the region as the copy sees it.  A direct
call in the region runs as an inline, predicated clone of its callee
(plugins/support/clone.py, with ``loops=True``; the region then always uses the
predicated-block scheme), also inside a loop of an arm; the clone runs below where the
call is made, which the arm's own code may have moved (gcc's ``sub rsp, 8`` or a
shrink-wrapped ``push rbx`` before a call: :func:`_stack`).
A block that ends the program's path (a call that does not return, such as
``__assert_fail``, or ``hlt``/``ud2``: a *dead end*, plugins/support/predication.py) is not
run predicated: where its predicate is on, control leaves for the original code, which
ends the program as the original does; the region then uses the predicated-block scheme.
That exit is the one secret-dependent jump of the hardened code, taken only on the path
where the program stops (or unwinds, for ``longjmp``/``__cxa_throw``) at that point.

Method.  Every block of the region runs, whatever the secret, and the registers, flags and
memory of the path the original takes are selected with ``cmov``.  Two schemes:

- *Fork* (regions shaped as a tree: every block but the entry has one predecessor, and no
  conditional block stores to memory or touches xmm registers -- diamonds, triangles,
  nested and return-joined branches; also a DAG, made a tree by duplicating each block
  reached from several blocks once per path to it, when that gives at most
  ``MAX_FORK_BLOCKS`` blocks and no duplicated block holds an instruction a per-instruction
  pass may replace: a division, or a memory access through a register other than RSP,
  since the translator lays each replacement out once).  At each branch the condition goes
  to a byte slot (``setcc``), and the two arms run one after the other on the branch's
  state: registers the first arm writes are snapshotted, saved after it (when the second
  arm reads or writes them) and restored; then each register is selected once, ``cmov`` on
  the condition.  When
  neither arm writes flags the cmovs use the branch's own live flags (no ``cmp``, no
  ``pushfq``); otherwise one ``cmp`` on the byte, and the arms' flags (``pushfq`` slots)
  are selected like a register.  The arm that needs the branch's flags runs first, so the
  second does not ``popfq`` them back when it defines its own.
- *Predicated blocks* (any other acyclic region, e.g. with a shared tail, which runs once
  under the OR of its predecessors' masks; plugins/support/predication.py): in a topological
  order, each block but the entry under a predicate slot, all-ones when the original would
  run it (``P & cond`` / ``P & ~cond`` of its predecessor's branch); an inactive block is
  undone after it ran: its registers (general and xmm), MXCSR, RFLAGS and the memory it
  stored to get their old values back with ``cmov`` (stores: load, select, store to the same
  address whichever way).  A branch there whose condition is computed only from registers
  the contract declares public at the region's entry (``public``) and constants stays a
  branch: the code jumps over the side its edge does not take
  (plugins/support/public_branches.py).

In both, divisions in a conditional block divide 0 by 1 when the block is off (RAX = RDX = 0
and the divisor register = 1, restored afterwards), so they cannot fault; their instructions
stay ``.insn`` lines, so ct-division replaces them by its constant-time sequence.  Every
original non-control instruction is emitted as ``.insn`` (RIP-relative operands are
relocated, other passes' replacements composed); the branches are not.  The code ends with
``jmp`` to the join, or with one ``ret`` when the arms only meet by returning.  Registers,
flags and memory after the region are those of the path the original takes.  Scratch: slots
below ``[rsp - REGION_SCRATCH]``; no slot is chosen by a secret (only cmov'ed values differ).

Memory-safety rule.  A conditional block's memory accesses run on every path, so each must
be valid, and at an address independent of the path, even when the original would not run
the block.  Accepted: ``[rsp + d]`` with ``d >= -128`` and no index (the frame; where
conditional code moves RSP it does so by amounts known before it runs, the same on every
path, and an inactive block moves it too: :func:`_stack`); RIP-relative operands (module
data); a read of ``fs:[d]``, no base or index, inside glibc's TCB header (``d + width <=
0x40``: the stack-protector canary ``fs:[0x28]``); and an address computed
only from registers that no conditional block writes, when the same operand (same registers,
scale and displacement, at least as wide) is also accessed by the entry block after its last
write to those registers, or on every path through the region.  Anything else (the original
may never touch it: ``if (p) x = *p;``) runs *guarded* in the predicated-block scheme: when
its block is off, its address registers are redirected to a known-valid place first
(:class:`~plugins.support.predication.Guard`, :func:`_guards`; a bounded-index load through
a base the region does not write keeps its base when that is readable, the ``keep`` target
oblivious-table's value-range scan starts from); it is refused where no guard can be placed
(see Refusals).  Precondition: memory that the
original reads at an address on every path is also writable there if a conditional block
stores to it (true of the stack and of data objects).  A store of an inactive block writes
its value and restores the old one a few instructions later: another thread reading that
location meanwhile could see the transient value.  An original that faults (a bad
pointer on the path it takes) still faults, but possibly at another instruction of the
hardened code (e.g. the load of a store's old value) and with glue state in the scratch
slots.

Iterations.  A branch inside a loop whose paths meet only by leaving the function (an
error return in the loop body) forms a region that holds the loop's back edge to its own
start: it runs one iteration at a time (:func:`_iteration`), ending with a jump to the exit
the original takes (:func:`_leave`): back to the start, which enters the copy again, or to
the original code after the loop or of the early return.

Leakage.  The instruction sequence does not depend on the branch.  Memory accesses: the
same addresses on every path (the rule above), in the same order, except a guarded access,
which touches its own address where its block runs and the safe slot (or its table's first
element) where it does not.  An iteration region shows which group of exits it leaves by
(the loop's trip count and how it ends).  A division's time is
only constant once ct-division replaced it (this pass declares it runs before that one).

Cost (instructions run per entry, besides the original instructions of every block).  Fork,
per branch: 1 ``setcc`` (only when the byte is tested); per register an arm writes, 2
(snapshot, cmov; none when its value is already in a slot), 4 when both arms write it or the
second reads it (save, restore too); when an arm writes flags: 1 ``cmp``, 3 per ``pushfq``
of an arm's or the branch's flags, 5 for their select, and a final ``popfq`` (3) at the end
of the region.  A division in an arm: 4 per enclosing branch + 3 (``popfq``; and a ``pushfq``
unless the flags are already in a slot) + 2 constants.  E.g. tiny_region of
test_binaries/region_loop.c (one arm of one ``lea``, no flags): 7 instead of 5 or 6.  The
predicated-block scheme: see plugins/support/predication.py (about ``2 w + 10 s + 12`` per block,
plus edges), the entry's edges ``setcc`` only, or 6 with the mask of a successor that has
several predecessors.

Refusals (the Refusal's reason, where ``I`` names the instruction as ``'text' at 0xADDR``):

- ``region shape is S, not a branch region``
- the refusals of predicated calls (plugins/support/clone.py)
- ``I is a system call or software interrupt``
- ``I is an indirect jump``
- ``I is not a plain ret`` (``hlt``/``ud2`` end a dead end: not a refusal)
- ``I: loop/jrcxz branches are not supported``
- ``I is a string instruction``
- ``the region contains a loop (a cycle through its blocks): I jumps back to H, the
  loop's head; R`` (``the function at 0xT has a loop: I jumps back to H, the loop's head;
  R`` for a loop in a callee's clone) with R the reason plugins/support/arm_loop.py gives:
  more than one back edge, a latch shared with another loop, more than one block entering
  it, not a counted loop, a counter whose start is not a constant known before the loop
  (set from a register or memory, set on no path, or not on the loop's one path), too many
  iterations; or, for a cycle with no head, ``the region contains a loop (...): the cycle
  is entered at more than one block (irreducible flow)``
- iterations: ``the region contains a loop (a cycle through its blocks): its branch 'J' at
  A leaves the loop for B (a secret exit: ...)``; ``the region contains a loop (...): the
  loop iteration from A holds another loop (an iteration region runs no inner loop)``,
  ``I moves rsp at
  the start of a loop iteration (...)``, ``I is a call in a loop iteration (an iteration
  region does not clone its calls)``
- in a conditional block that moves RSP (``push``/``pop``, ``add``/``sub rsp, imm``, ``lea
  rsp, [rsp + d]`` are accepted, :func:`_stack`): ``I writes rsp (conditional code may
  only move it by a fixed amount: ...)``, ``I pushes or pops the flags in conditional code
  (not predicated)``, ``I pops into memory in conditional code (not predicated)``,
  ``rsp differs between the paths into B``,
  ``rsp differs between the paths that leave the region for A``, ``rsp differs between
  the region's returns``, ``I is made with rsp N bytes above the region's (a clone runs
  below the region's scratch frame)`` (a call after the arm popped above the entry's RSP)
- ``the region has more than one exit (A, B)``, ``the region both returns and leaves to A``
- in a conditional block: ``I uses 32-bit addressing``; ``I is an AVX
  instruction (ymm/zmm state is not predicated)``; ``I uses the x87/MMX state, which is not
  predicated``; ``I writes R, which is not predicated``; ``I writes N bytes of memory (only
  1, 2, 4, 8 or 16 are undone)``; ``I writes through fs: (segment stores are not undone)``;
  ``I writes to an absolute address (not undone)``; ``I is an atomic or compare-and-exchange
  instruction (not predicated)``; ``I stores more memory than its operand names (not
  undone)``; ``I: a memory divisor in a conditional
  block is not supported``; ``I: a divisor in the dividend's registers is not supported``
- memory, where no guard can be placed: ``I: its address depends on R, which the
  conditional code computes`` or ``I: accesses memory that not every path of the original
  accesses``, then ``, and`` and why (:func:`_unguardable`): no base register, base = index,
  below the red zone, segment-relative, wider than 8 bytes, a huge displacement, a second
  operand; alone in a region with an arm loop or callee clones.  A read of ``fs:[d]`` in
  glibc's TCB header (the stack-protector canary ``fs:[0x28]``,
  :func:`plugins.support.clone.tcb_read`) is accepted: valid and the same on every path
- ``the region needs more than 4096 bytes of scratch memory``
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from leakdbt.plugin_api import (
    BlockView,
    Flow,
    Insn,
    RegionView,
    goto,
    original,
)
from plugins.support.arm_loop import ArmLoop, arm_loops, loop_guards, loop_order
from plugins.support.arm_loop import run as arm_loop_run
from plugins.support.clone import expand_calls, stack_change, tcb_read
from plugins.support.memory_safety import accessed_at_end, check_accesses
from plugins.support.predication import (
    GPR,
    INIT,
    INSN_PASSES,
    XMM,
    Engine,
    Guard,
    InsnInfo,
    Mem,
    Pred,
    Refused,
    WholeRegionPass,
    analyse,
    body,
    control_refusal,
    dead_end,
    keeps_base,
    needs_flags,
    predicated_refusal,
    slot,
    successors,
    terminator,
    topological,
    where,
    writes_flags,
)
from plugins.support.public_branches import plan, public_registers

__all__ = ["PASS", "if_convert"]


def if_convert(region: RegionView) -> list[str]:
    """The straight-line code for a branch region (see the module doc); raises
    :class:`~plugins.support.predication.Refused` with the reason when it cannot."""
    if region.shape != "branch":
        raise Refused(f"region shape is {region.shape}, not a branch region")
    bias = region.bias
    ends = {b.last.address for b in region.blocks if dead_end(b)}
    for insn in region.instructions():
        if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL) or insn.address in ends:
            continue  # cloned (plugins/support/clone.py), or the end of a dead end
        reason = control_refusal(insn, bias)
        if reason:
            raise Refused(reason)
    whole = region
    region, order, exits = _iteration(region)
    cyclic = order is None
    if order is None:  # loops in the arms: judged once the calls are cloned (arm_loop.py)
        order = loop_order(region.entry, region.blocks)
    if exits is None:
        exits = region.exits()
    if len(exits) > 1 and region.entry not in exits:
        raise Refused("the region has more than one exit ("
                      + ", ".join(f"{e + bias:#x}" for e in exits) + ")")
    if exits and any(terminator(b).kind == "ret" for b in region.blocks):
        raise Refused(f"the region both returns and leaves to {exits[0] + bias:#x}")
    infos = {i.address: analyse(i) for i in region.instructions()}
    stack = _stack(order, infos, bias)
    pushes = {a: _with_push_store(infos[a]) for a in stack.deltas
              if infos[a].insn.mnemonic == "push"}
    infos.update(pushes)
    for b in order[1:]:
        for insn in body(b):
            if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                continue  # cloned, or refused by expand_calls
            info = infos[insn.address]
            if insn.address in stack.deltas:  # moves RSP by a fixed amount: see _stack
                info = dataclasses.replace(info, writes=info.writes - {"rsp"})
            reason = predicated_refusal(info, bias)
            if reason:
                raise Refused(reason)
    calls = any(b.last.flow in (Flow.CALL, Flow.INDIRECT_CALL) and not dead_end(b)
                for b in region.blocks)
    if calls and region.entry in exits:
        call = next(b.last for b in order if b.last.flow in (Flow.CALL, Flow.INDIRECT_CALL))
        raise Refused(f"{where(call, bias)} is a call in a loop iteration (an iteration "
                      "region does not clone its calls)")
    graph = expand_calls(region, list(region.blocks), loops=True,
                         rsp=_call_depths(order, stack)) if calls else None
    clone_writes = frozenset() if graph is None else frozenset(
        r for i in graph.infos.values() for r in i.writes)
    loops: list[ArmLoop] = []
    if cyclic or (graph is not None and graph.cyclic):
        every = list(region.blocks) if graph is None else graph.blocks
        loops = arm_loops(region.entry, every, {**infos, **(graph.infos if graph else {})},
                          bias, graph.origin if graph else None,
                          graph.function if graph else None,
                          graph.restores if graph else None)
    accesses = [] if graph is None else loop_guards(
        loops, graph.indexed, graph.blocks, {**infos, **graph.infos}, bias, region.object_at,
        graph.depths, graph.deltas)
    guards = _guards(region, order, infos, clone_writes, graph is None and not loops)

    engine = Engine(bias, stack.floor)
    engine.entry_depths, engine.deltas = stack.depths, stack.deltas  # RSP: see _stack
    if guards:
        engine.guards = guards
        engine.safe = engine.alloc(16)
    if graph is not None:  # RSP: the region's own moves (_stack) and the clones'
        infos.update(graph.infos)
        infos.update(pushes)  # a recursive clone's instructions share the region's addresses
        engine.entry_depths = {**stack.depths, **graph.depths}
        engine.deltas = {**stack.deltas, **graph.deltas}
        engine.rebased = frozenset(graph.deltas)
    if loops:
        every = list(region.blocks) if graph is None else graph.blocks
        lines = arm_loop_run(engine, loop_order(region.entry, every, loops), infos,
                             frozenset(b.start for b in every), loops, lambda b: _RSP,
                             stack.final, accesses)
    elif graph is not None:
        members = {b.start for b in graph.blocks}
        expanded = topological(graph.entry, graph.blocks, lambda a, b: False)
        assert expanded is not None  # clones are acyclic and sit between region blocks
        call_edges = {b.start: s for b in graph.blocks for s in successors(b)
                      if s in graph.entries.values()}
        layout = plan(expanded, infos, lambda a, b: b in members,
                      public_registers(region.params), engine.guards, call_edges)
        lines = engine.run(expanded, infos, lambda a, b: b in members, lambda t: [],
                           lambda b: _RSP, final_depth=stack.final, layout=layout)
    elif len(exits) < 2 and not ends and not stack.deltas and not guards \
            and _is_tree(order, infos):
        tree = _fork_tree(order, infos)
        assert tree is not None
        lines = _Fork(engine, tree, infos).run()
    else:
        # An iteration's exits get predicates like blocks (for _leave).
        members = {b.start for b in region.blocks} | (set(exits) if len(exits) > 1 else set())
        engine.entry_depths, engine.deltas = stack.depths, stack.deltas
        layout = plan(order, infos, lambda a, b: b in members,
                      public_registers(region.params), engine.guards, {})
        lines = engine.run(order, infos, lambda a, b: b in members, lambda t: [],
                           lambda b: _RSP, final_depth=stack.final, layout=layout)
    if len(exits) > 1:
        return engine.finish(lines + _leave(engine, _same_exits(whole, exits)))
    lines += engine.flags_to_reg()
    lines.append(f"jmp {goto(exits[0])}" if exits else "ret")
    return engine.finish(lines)


def _iteration(region: RegionView
               ) -> tuple[RegionView, list[BlockView] | None, list[int] | None]:
    """The region as if-conversion runs it, its blocks in a topological order (None: a
    cycle, see arm_loop) and, for an iteration region, its exits.

    A branch inside a loop whose paths meet only by leaving the function (an error return
    inside the loop body) forms a region that runs to the returns and so holds the loop's
    back edge to its own start: the cycle's head is the region's entry.  Such a region is
    run one *iteration* at a time: its blocks are the entry and those from which an edge
    back to the entry can be reached without passing through it (the loop body as seen
    from the entry); the back edges and every edge from those blocks to another block (the
    loop's exits, the error returns) are the iteration's exits.  The copy ends with a jump
    to the exit the original takes (:func:`_leave`): back to the region's start, which
    runs the next iteration in the copy again, or to the original code after the loop.
    So the loop's trip count and the exit it leaves by show, as in the original: they are
    public in a public loop; the branches inside one iteration do not.  A region whose own
    branch leaves the loop (one successor cannot lead back to the start: an early exit on
    the secret, ``if (a[i] != b[i]) return 0;``) is refused: that exit is the leak, and
    bounded-loop's loop region is what removes it."""
    entry = region.entry
    if not any(entry in successors(b) for b in region.blocks):
        return region, topological(entry, region.blocks, lambda a, b: False), None
    by_start = {b.start: b for b in region.blocks}
    preds: dict[int, list[int]] = {b.start: [] for b in region.blocks}
    for b in region.blocks:
        for t in successors(b):
            if t in preds:
                preds[t].append(b.start)
    members = {entry}
    stack = list(preds[entry])
    while stack:
        n = stack.pop()
        if n not in members:
            members.add(n)
            stack += preds[n]
    blocks = tuple(b for b in region.blocks if b.start in members)
    exits = sorted({t for b in blocks for t in successors(b) if t not in members} | {entry})
    entry_block = by_start[entry]
    leaves = next((t for t in successors(entry_block) if t not in members), None)
    if leaves is not None:
        raise Refused(f"the region contains a loop (a cycle through its blocks): its branch "
                      f"'{entry_block.last.text}' at {entry_block.last.address + region.bias:#x}"
                      f" leaves the loop for {leaves + region.bias:#x} (a secret exit: the "
                      "enclosing loop is bounded-loop's region, kind = \"loop\")")
    moves = next((i for i in body(entry_block) if "rsp" in analyse(i).writes), None)
    if moves is not None:
        raise Refused(f"{where(moves, region.bias)} moves rsp at the start of a loop "
                      "iteration (the iteration's copy starts where the entry leaves rsp)")
    order = topological(entry, blocks, lambda a, b: b == entry)
    if order is None:
        raise Refused("the region contains a loop (a cycle through its blocks): the loop "
                      f"iteration from {entry + region.bias:#x} holds another loop (an "
                      "iteration region runs no inner loop)")
    return dataclasses.replace(region, blocks=blocks), order, exits


def _same_exits(region: RegionView, exits: list[int]) -> list[list[int]]:
    """The exits of an iteration region in groups that compute the same: each group's
    targets are blocks of the region with the same instructions (same text, so the same
    absolute branch targets; none RIP-relative) that end in ``ret`` or ``jmp`` (gcc's
    duplicated epilogues: ``pop rbx; ret`` at the end of each arm).  Jumping to one of a
    group instead of another is the same computation, and the copy then does not show
    which of them the original took."""
    by_start = {b.start: b for b in region.blocks}
    groups: dict[object, list[int]] = {}
    for t in exits:
        b = by_start.get(t)
        key: object = t
        if b is not None and b.last.flow in (Flow.RETURN, Flow.JUMP) and not any(
                "rip" in i.op_str for i in b.insns):
            key = tuple(i.text for i in b.insns)
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def _leave(engine: Engine, groups: list[list[int]]) -> list[str]:
    """The end of an iteration region (:func:`_iteration`): a jump to the exit whose edge
    the original took.  Every block after that edge was off, so the state is the one the
    original has on the edge.  Each group of exits (:func:`_same_exits`) but the last is
    tested (the OR of its exits' predicates) and left for, to its first target, through a
    stub that puts the flags back; the last is where control goes when no other is taken.
    The one data-dependent jump of the copy: which group of exits."""
    out = [*engine.flags_to_slot()]
    stubs: list[str] = []
    for n, group in enumerate(groups[:-1]):
        preds = [engine.preds[t] for t in group if t in engine.preds]
        if not preds:
            continue  # no edge of the copy goes there
        if any(p is None for p in preds):  # always taken
            return out + engine.load_flags(engine.fl) + [f"jmp {goto(group[0])}"] + stubs
        label = f"ic_exit{n}"
        if len(preds) == 1:
            assert preds[0] is not None
            out.append(preds[0].test(engine.depth))
            on = preds[0].on
        else:
            either = engine.alloc()
            out.append(f"mov {engine.at(engine.t1)}, rax")
            for k, p in enumerate(preds):
                assert p is not None
                out += p.mask(engine.depth)
                out.append(f"{'mov' if k == 0 else 'or'} {engine.at(either)}, rax")
            out += [f"mov rax, {engine.at(engine.t1)}", f"cmp {engine.at(either)}, 0"]
            on = "ne"
        out.append(f"j{on} {label}")
        stubs += [f"{label}:", *engine.load_flags(engine.fl), f"jmp {goto(group[0])}"]
    return out + engine.load_flags(engine.fl) + [f"jmp {goto(groups[-1][0])}"] + stubs


def _call_depths(order: list[BlockView], stack: _Stack) -> dict[int, int]:
    """How far below the region's RSP each block's final call is made (by block start)."""
    return {b.start: stack.depths.get(b.start, 0)
            + sum(stack.deltas.get(i.address, 0) for i in b.insns[:-1])
            for b in order if b.last.flow in (Flow.CALL, Flow.INDIRECT_CALL)}


@dataclass(frozen=True)
class _Stack:
    """How the region's conditional code moves RSP: how far below the region's RSP (where
    the entry block leaves it) each block starts, what each instruction adds, where RSP is
    when the region ends, and the lowest it goes (``floor``, 0 or more)."""

    depths: dict[int, int]
    deltas: dict[int, int]
    final: int = 0
    floor: int = 0


_STACK_MOVES = ("add", "sub", "lea", "pop", "push")


def _with_push_store(info: InsnInfo) -> InsnInfo:
    """``info`` of a ``push`` with its implicit store, the 8 bytes at ``[rsp - 8]`` (RSP
    before the push), as a memory operand: Capstone names none, and the engine records and
    undoes a conditional block's stores by their operands, so an inactive ``push`` leaves
    the bytes it wrote as they were (they may be live: the red zone of a leaf function, or
    a slot another path reads)."""
    store = Mem(8, False, True, None, "rsp", None, 1, -8, None)
    return dataclasses.replace(info, mems=(*info.mems, store))


def _stack_change(insn: Insn) -> int | None:
    """:func:`~plugins.support.clone.stack_change`, and 8 for a ``push`` of a memory
    operand addressed from RSP (``push qword ptr [rsp + 8]``: its load uses RSP before the
    push)."""
    if insn.mnemonic == "push" and "[" in insn.op_str and insn.op_str.startswith("qword"):
        return 8
    return stack_change(insn)


def _rsp_refusal(insn: Insn, info: InsnInfo, bias: int) -> str | None:
    """Why a conditional instruction that writes RSP cannot run predicated, or None when
    it moves RSP by a fixed amount the engine follows (see :func:`_stack`)."""
    w = where(insn, bias)
    if insn.mnemonic in ("pushfq", "popfq", "pushf", "popf"):
        return f"{w} pushes or pops the flags in conditional code (not predicated)"
    if insn.mnemonic == "pop" and info.mems:
        return f"{w} pops into memory in conditional code (not predicated)"
    if insn.mnemonic not in _STACK_MOVES or _stack_change(insn) is None:
        return (f"{w} writes rsp (conditional code may only move it by a fixed amount: "
                "push/pop of a 64-bit register, immediate or memory, add/sub rsp, imm, "
                "lea rsp, [rsp + d])")
    return None


def _stack(order: list[BlockView], infos: dict[int, InsnInfo], bias: int) -> _Stack:
    """The RSP depths of the region's conditional blocks.  gcc -O2 shrink-wraps a
    function's prologue into the arm that needs it (``push rbx`` ... ``pop rbx``, ``sub
    rsp, N`` ... ``add rsp, N`` inside one arm), duplicates its epilogue (``add rsp, N``;
    ``pop rbx``; ``ret``) into each arm that returns, and puts ``sub rsp, 8`` on the paths
    that call: a conditional block may move RSP by a fixed amount (``push``/``pop``,
    ``add``/``sub rsp, imm``, ``lea rsp, [rsp + d]``) when every path into each block,
    every path to the join and every return agree on where RSP is.  The hardened code then
    runs each block, on or off, with RSP where the original has it at that block: RSP is
    not masked, an inactive block moves it exactly as an active one (the engine puts RSP
    back for the next block with ``lea``), so the block's ``[rsp + d]`` operands name the
    same addresses on every path, and ``add``/``sub rsp, imm`` set the flags the original
    does (RSP has the original's value).  A ``push``'s implicit store is recorded and
    undone like any predicated store (:func:`_with_push_store`); a ``pop``'s register
    write is masked like any other.  The scratch frame starts ``floor`` bytes deeper (see
    :class:`~plugins.support.predication.Engine`), below everything the arms push and
    their red zones."""
    depths: dict[int, int] = {order[0].start: 0}
    deltas: dict[int, int] = {}
    ends: dict[str, int] = {}
    low = 0
    starts = {c.start for c in order}
    for b in order:
        d = depths.get(b.start, 0)
        for insn in body(b) if b is not order[0] else ():  # the entry's moves set depth 0
            if "rsp" not in infos[insn.address].writes or insn.flow in (Flow.CALL,
                                                                         Flow.INDIRECT_CALL):
                continue  # a call's clone keeps its own depth (plugins/support/clone.py)
            reason = _rsp_refusal(insn, infos[insn.address], bias)
            if reason:
                raise Refused(reason)
            change = _stack_change(insn)
            assert change is not None
            deltas[insn.address] = change
            d += change
            low = max(low, d)
        for s in successors(b):
            if s in starts:
                if depths.setdefault(s, d) != d:
                    raise Refused(f"rsp differs between the paths into {s + bias:#x} "
                                  f"({depths[s]} and {d} bytes below the region's)")
            elif ends.setdefault("exit", d) != d:
                raise Refused(f"rsp differs between the paths that leave the region for "
                              f"{s + bias:#x}")
        if terminator(b).kind == "ret" and ends.setdefault("exit", d) != d:
            raise Refused(f"rsp differs between the region's returns ('{b.last.text}' at "
                          f"{b.last.address + bias:#x})")
    if not deltas:
        return _Stack({}, {})
    return _Stack(depths, deltas, ends.get("exit", 0), (low + 15) & -16)


MAX_FORK_BLOCKS = 64
"""The most blocks the fork scheme's tree may hold once shared tails are duplicated."""


def _is_tree(order: list[BlockView], infos: dict[int, InsnInfo]) -> bool:
    """Can the fork scheme run the region: no conditional block stores to memory or
    touches xmm registers, and the region is a tree once each block reached from several
    of its blocks is duplicated (see :func:`_fork_tree`)?  Entries from outside the region
    do not count: the copy is entered only at its start."""
    for b in order[1:]:
        for insn in body(b):
            info = infos[insn.address]
            if any(m.write for m in info.mems) or (info.reads | info.writes) & XMM:
                return False
    return _fork_tree(order, infos) is not None


def _replaceable(info: InsnInfo) -> bool:
    """May a per-instruction pass replace this instruction (ct-division a division,
    oblivious-table an access through a register other than RSP)?  The translator lays
    each replacement out once, so such an instruction is not duplicated."""
    return info.divisor is not None or any(m.regs - {"rsp"} for m in info.mems)


@dataclass(frozen=True)
class _Tree:
    """The region as the fork scheme runs it: node 0 is the entry; each node is a block of
    the region (``views``) and its children by successor address (``kids``).  A block
    reached from several blocks (a shared tail) is one node per path to it: a duplicate
    with its own key, whose ``.insn`` lines repeat the block's instructions."""

    views: tuple[BlockView, ...]
    kids: tuple[dict[int, int], ...]


def _fork_tree(order: list[BlockView], infos: dict[int, InsnInfo]) -> _Tree | None:
    """The region (acyclic, ``order`` topological) as a :class:`_Tree`, or None when it
    would hold more than MAX_FORK_BLOCKS nodes or a duplicated block holds an instruction
    another pass may replace (:func:`_replaceable`)."""
    by_start = {b.start: b for b in order}
    paths = dict.fromkeys(by_start, 0)
    paths[order[0].start] = 1
    for b in order:
        for t in successors(b):
            if t in by_start:
                paths[t] += paths[b.start]
    if sum(paths.values()) > MAX_FORK_BLOCKS:
        return None
    for b in order:
        if paths[b.start] > 1 and any(_replaceable(infos[i.address]) for i in body(b)):
            return None
    views: list[BlockView] = []
    kids: list[dict[int, int]] = []

    def add(block: BlockView) -> int:
        key = len(views)
        views.append(block)
        kids.append({})
        for t in successors(block):
            if t in by_start:
                kids[key][t] = add(by_start[t])
        return key

    add(order[0])
    return _Tree(tuple(views), tuple(kids))


class _Fork:
    """Tree-shaped regions (every block but the entry has one predecessor once shared
    tails are duplicated, :class:`_Tree`; no stores, no xmm): the arms of each branch run
    one after the other on the branch's state, and each register is then selected once
    with ``cmov`` on the saved condition.  A duplicated tail runs once per arm, each copy
    on its arm's state, like any other block of the arm.

    At a branch with condition byte ``c`` (``setcc``) and arms X (run first) and Y:
    registers X writes are snapshotted; after X, those Y reads or writes are saved as X's
    values and restored; Y runs; then one ``cmov`` per register picks X's value (saved, or
    still in the register when Y does not touch it) or Y's.  An empty arm runs nothing: the
    other's registers are selected against their snapshots.  When neither arm writes flags,
    the branch's own flags are still live and the ``cmov``s use its condition code directly;
    otherwise ``cmp c, 0`` and the flags of the two arms (``pushfq`` slots) are selected
    like a register.  Flags values are tracked by identity: ``popfq`` only runs where code
    reads flags that are not in the register.
    """

    def __init__(self, engine: Engine, tree: _Tree, infos: dict[int, InsnInfo]) -> None:
        self.e = engine
        self.views = tree.views  # by node key
        self.kids = tree.kids
        self.infos = infos
        self.cur = 0  # the logical flags (a value identity)
        self.reg: int | None = 0  # the flags value in the register (None: unknown)
        self.slots: dict[int, int] = {}  # flags value -> the slot holding it
        self.ids = 0
        self.conds: list[Pred] = []  # the predicates of the arms being emitted
        self.copy: dict[str, int] = {}  # register -> a slot holding its current value
        self.out: list[str] = []

    def run(self) -> list[str]:
        self.node(0, first=True)
        self.to_reg(self.cur)
        # A condition byte nothing tests (the cmovs used the branch's flags) is not set.
        used = {_operand(line) for line in self.out if line.startswith("cmp byte ptr")}
        return [line for line in self.out
                if not line.startswith("set") or _operand(line) in used]

    # -- analysis of subtrees ------------------------------------------------------------

    def insns(self, start: int) -> list[InsnInfo]:
        return [self.infos[i.address] for i in body(self.views[start])]

    def children(self, start: int) -> list[int]:
        return list(self.kids[start].values())

    def subtree(self, start: int) -> list[int]:
        out = [start]
        for c in self.children(start):
            out += self.subtree(c)
        return out

    def written(self, start: int) -> set[str]:
        return {r for b in self.subtree(start) for i in self.insns(b) for r in i.writes
                if r in GPR}

    def read(self, start: int) -> set[str]:
        return {r for b in self.subtree(start) for i in self.insns(b) for r in i.reads
                if r in GPR}

    def writes_flags(self, start: int) -> bool:
        return any(writes_flags(self.insns(b)) for b in self.subtree(start))

    def needs_flags(self, start: int) -> bool:
        """Does the subtree read the flags it starts with?"""
        insns = self.insns(start)
        branch = terminator(self.views[start]).kind == "branch"
        if needs_flags(insns, branch):
            return True
        if writes_flags(insns) or branch:
            return False
        return any(self.needs_flags(c) for c in self.children(start))

    # -- flags ---------------------------------------------------------------------------

    def new_flags(self) -> int:
        self.ids += 1
        return self.ids

    def to_reg(self, value: int) -> None:
        if self.reg != value:
            self.out += self.e.load_flags(self.slots[value])
            self.reg = value

    def to_slot(self, value: int) -> int:
        if value not in self.slots:
            assert self.reg == value
            self.slots[value] = self.e.alloc()
            self.out += self.e.save_flags(self.slots[value])
        return self.slots[value]

    # -- emission ------------------------------------------------------------------------

    def node(self, start: int, first: bool = False) -> None:
        block = self.views[start]
        term = terminator(block)
        insns = self.insns(start)
        if needs_flags(insns, term.kind == "branch"):
            self.to_reg(self.cur)
        for info in insns:
            if info.divisor is not None and self.conds:
                self.div_guard(info)
            self.out.append(original(info.insn.address))
            for r in info.writes:
                self.copy.pop(r, None)
            if info.flags_write:
                self.cur = self.reg = self.new_flags()
        if first:
            self.out.append(INIT)
        kids = self.children(start)
        if term.kind != "branch":
            for k in kids:
                self.node(k)
            return
        taken = self.kids[start].get(term.taken) if term.taken is not None else None
        fall = self.kids[start].get(term.fall) if term.fall is not None else None
        if taken is None and fall is None:
            return
        c = self.e.alloc()
        self.out.append(f"set{term.cc} {slot(c, 'byte')}")
        self.fork(c, term.cc, taken, fall)

    def div_guard(self, info: InsnInfo) -> None:
        """RAX = RDX = 0, divisor = 1 when an enclosing arm is off (flags kept)."""
        d = info.divisor
        assert d is not None and d in GPR
        e = self.e
        one = e.high_one if d in ("bh", "ch", "dh") else e.one
        e.consts |= {e.zero, one}
        keep = None
        if self.reg is not None:
            keep = self.to_slot(self.reg)
        for p in self.conds:
            self.out += [p.test(), f"cmov{p.off} rax, {slot(e.zero)}",
                         f"cmov{p.off} rdx, {slot(e.zero)}", f"cmov{p.off} {GPR[d]}, {slot(one)}"]
        if keep is not None:
            self.out += e.load_flags(keep)

    def fork(self, c: int, cc: str, taken: int | None, fall: int | None) -> None:
        e, out = self.e, self.out
        if taken is None or fall is None:
            x, y = (taken, None) if fall is None else (fall, None)
        elif self.needs_flags(taken) and not self.needs_flags(fall):
            x, y = taken, fall
        elif self.needs_flags(fall) and not self.needs_flags(taken):
            x, y = fall, taken
        else:
            x, y = taken, fall
        assert x is not None
        px = Pred(c, "byte" if x == taken else "nbyte")  # on: X is the arm taken
        py = Pred(c, "nbyte" if x == taken else "byte")
        on_cc = cc if x == taken else _negate(cc)  # X on, in the branch's own flags
        flags_n = self.cur
        wx, fwx = self.written(x), self.writes_flags(x)
        wy = self.written(y) if y is not None else set()
        ry = self.read(y) if y is not None else set()
        fwy = self.writes_flags(y) if y is not None else False
        ny = self.needs_flags(y) if y is not None else False
        both = sorted(wx & (wy | ry))  # saved after X, restored for Y
        only_x = sorted(wx - wy - ry)  # Y leaves X's value in the register
        only_y = sorted(wy - wx)
        snaps: dict[str, int] = {}
        for r in (*both, *only_x, *only_y):
            if r not in self.copy:
                self.copy[r] = e.alloc()
                out.append(f"mov {slot(self.copy[r])}, {r}")
            snaps[r] = self.copy[r]
        if (fwx or fwy) and ((fwx and ny) or not fwx or not fwy):
            self.to_slot(flags_n)
        self.conds.append(px)
        self.node(x)
        self.conds.pop()
        flags_x = self.cur
        if y is not None:
            xvals = {r: self.copy.get(r) or e.alloc() for r in both}
            out += [f"mov {slot(xvals[r])}, {r}" for r in both if r not in self.copy]
            out += [f"mov {r}, {slot(snaps[r])}" for r in both]
            self.copy.update((r, snaps[r]) for r in both)
            if flags_x != flags_n:
                self.to_slot(flags_x)
            self.cur = flags_n
            if ny:
                self.to_reg(flags_n)
            self.conds.append(py)
            self.node(y)
            self.conds.pop()
        else:
            xvals = {}
            self.cur = flags_n
        flags_y = self.cur
        # The selection: X's registers when X is on.
        direct = flags_x == flags_y == flags_n and self.reg == flags_n
        if direct:
            on, off = on_cc, _negate(on_cc)
        else:
            self.to_slot(flags_y)
            if flags_x != flags_y:
                self.to_slot(flags_x)
            out.append(px.test())
            self.reg = None
            on, off = px.on, px.off
        out += [f"cmov{on} {r}, {slot(xvals[r])}" for r in both]
        if y is None:
            out += [f"cmov{off} {r}, {slot(snaps[r])}" for r in only_x]
        else:
            out += [f"cmov{off} {r}, {slot(snaps[r])}" for r in only_x]
            out += [f"cmov{on} {r}, {slot(snaps[r])}" for r in only_y]
        for r in snaps:
            self.copy.pop(r, None)
        if flags_x != flags_y:
            new = self.new_flags()
            self.slots[new] = e.alloc()
            out += [f"mov {slot(e.t1)}, rax", f"mov rax, {slot(self.slots[flags_y])}",
                    f"cmov{on} rax, {slot(self.slots[flags_x])}",
                    f"mov {slot(self.slots[new])}, rax", f"mov rax, {slot(e.t1)}"]
            self.cur = new
        else:
            self.cur = flags_x


def _operand(line: str) -> str:
    """The memory operand of a line (``[rsp - 0x2c0]``)."""
    return line[line.index("["):line.index("]") + 1]


_NEGATE = {"a": "be", "ae": "b", "b": "ae", "be": "a", "e": "ne", "ne": "e", "g": "le",
           "ge": "l", "l": "ge", "le": "g", "o": "no", "no": "o", "p": "np", "np": "p",
           "s": "ns", "ns": "s"}


def _negate(cc: str) -> str:
    return _NEGATE[cc]


_RSP = frozenset({"rsp"})  # a clone's RSP moves the same whether its block is on or off


def _guards(region: RegionView, order: list[BlockView], infos: dict[int, InsnInfo],
            clone_writes: frozenset[str], guarded: bool) -> dict[int, Guard]:
    """The accesses of conditional blocks that the memory rule does not accept, each with
    its :class:`~plugins.support.predication.Guard` (by instruction address); refused when
    one cannot be guarded, or when ``guarded`` is false (a loop in an arm, callee clones:
    those schemes do not guard accesses): the rule's own refusal then."""
    failing: list[tuple[InsnInfo, Mem, str]] = []
    _check_memory(region, order, infos, clone_writes, failing)
    failing = [f for f in failing if not tcb_read(f[1])]  # the canary: valid on every path
    if failing and not guarded:
        raise Refused(failing[0][2])
    guards: dict[int, Guard] = {}
    blocks = {i.address: b for b in order for i in body(b)}
    for info, m, reason in failing:
        block = blocks[info.insn.address]
        at = next(k for k, i in enumerate(block.insns) if i.address == info.insn.address)
        if _module_base(block, info, m):
            target = "base"
        elif keeps_base(region, block, at) == m:
            target = "keep"  # oblivious-table scans it from base + disp (Guard)
        elif region.bias == 0 and m.base != "rip" and region.object_at(m.disp) is not None:
            target = "data"
        else:
            target = "slot"
        why = _unguardable(info, m, guards, target)
        if why:
            raise Refused(f"{reason}, and {why}")
        guards[info.insn.address] = Guard(m, target)
    return guards


def _unguardable(info: InsnInfo, m: Mem, guards: dict[int, Guard], target: str) -> str:
    """Why an access cannot run guarded (see Guard; ``target`` as chosen), or ''."""
    base = GPR.get(m.base or "")
    index = GPR.get(m.index or "")
    if info.insn.address in guards:
        return "it is the instruction's second such operand (one guard per instruction)"
    if base is None and target == "slot":
        return "it has no base register to redirect"
    if "rsp" in (base, index):
        return "it is on the stack below the red zone (not redirected)"
    if base == index and target != "data":
        return "its base register is also its index"
    if m.segment:
        return f"it is relative to {m.segment}: (not redirected)"
    if m.width > 8:
        return f"it accesses {m.width} bytes (a guard redirects at most 8)"
    if not -(1 << 30) < m.disp < 1 << 30:
        return "its displacement is too large to redirect"
    return ""


def _module_base(block: BlockView, info: InsnInfo, m: Mem) -> bool:
    """Did ``block`` itself set the access's base to module data (``lea base, [rip + X]``,
    no later write to it before the access)?  The guard then keeps the base."""
    base = GPR.get(m.base or "")
    if base is None or base == "rsp":
        return False
    last: Insn | None = None
    for insn in body(block):
        if insn.address == info.insn.address:
            break
        if base in analyse(insn).writes:
            last = insn
    return (last is not None and last.mnemonic == "lea" and "[rip" in last.op_str
            and last.rip_target is not None)


def _check_memory(region: RegionView, order: list[BlockView], infos: dict[int, InsnInfo],
                  clone_writes: frozenset[str] = frozenset(),
                  collect: list[tuple[InsnInfo, Mem, str]] | None = None) -> None:
    """The memory-safety rule of the module doc, for every conditional block's access
    (registers the clones write count as computed by the conditional code); ``collect``:
    gather the accesses it does not accept instead of refusing the first."""
    entry, conditional = order[0], order[1:]
    members = {b.start for b in region.blocks} - {entry.start}  # a back edge leaves
    edges = {b.start: [s for s in successors(b) if s in members] for b in region.blocks}
    for b in region.blocks:
        if terminator(b).kind != "ret":
            edges[b.start] += [-1] if any(s not in members for s in successors(b)) else []
    check_accesses(conditional, infos, region.bias, entry.start, edges,
                   computed_by="the conditional code computes", every_path="of the original",
                   known=accessed_at_end(entry, infos), also_written=clone_writes,
                   collect=collect)


PASS = WholeRegionPass("if-conversion", "branch", if_convert, before=INSN_PASSES)
"""The ``if-conversion`` pass (see the module doc)."""
