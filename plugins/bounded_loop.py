"""Bounded loop: a loop whose exit depends on a secret runs a fixed, public number of times.

Applies to regions the translator formed as ``loop`` (contract kind ``loop`` or none): a
natural loop, header at the region's entry, possibly with several exits
(``memcmp``-style early exits, ``strlen``-style scans).  The contract gives the public
maximum trip count, ``bound = N``, or a run-time bound (below).

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

Run-time bounds (``bound = "r8 - rdi"``, leakdbt/contract/bound.py).  A loop whose other
exit compares a pointer it steps with a fixed end (``while (p != end)``), or counts a
register down to zero, has at most ``N = (END - START) >> k + C`` (or ``COUNT + C``) full
iterations from its entry, whatever the input's length.  The pass checks the shape: one of
the bound's registers is an induction variable stepping by the bound's step towards the
other (``START`` up, ``END`` or ``COUNT`` down), which the loop does not write, and the
loop leaves on a test of them (``cmp END, START``; for ``COUNT``: ``test R, R``, ``cmp R,
0`` or the step itself) that ends the header or the block of the step (after it).  The
counter is computed when the region is entered.  Header test: ``N + 1`` iterations, the
last one *peeled* (the counter is 1 after the header: only the header runs, then the
dispatch), so the loop reads exactly what the original reads when its secret exit is never
taken (no access past the buffer's end).  Latch test: ``N`` iterations, the last one's
test leaves.  ``N`` out of range (below 0 for a header test, below 1 for a latch test, or
over ``MAX_BOUND``): one peeled iteration, then where the original goes (its exit, or the
header's successor in the original loop: correct, it leaks; a contract error).  The
registers must hold public values at the entry (the contract says so, as for a constant):
the trip count depends on them and shows.

Computed loads (plugins/support/loop_table.py).  A load at ``[B + I*s + d]`` with B a
register the loop does not write and I one it computes (not an induction variable) — a
decoder's character table — is replaced by a scan of the memory holding B's value (its
bounds learnt at run time, once before the loop) that reads the same lines whatever I is,
and never reads memory when its block is off; the memory rule does not apply to it.

Inner loops (plugins/support/loop_nest.py).  The body may hold inner loops, nested up to
``MAX_DEPTH`` (4) levels deep, the region's loop the first, each with its own bound ``M``
from the contract's ``inner_bounds`` (params ``inner_bound+0xD``: the header ``D`` bytes
after the region's entry).  What follows describes an inner loop of the region's loop;
deeper ones apply it recursively, "outer" meaning the *parent* (the smallest loop holding
it), below.  The body's order
treats each inner loop as one node; where it comes, the inner loop runs as a loop of its
own: its blocks, in their order, exactly ``M`` times per outer iteration, counted by its
own hidden counter, its header's predicate being its own *active* flag.  That flag is
zeroed at the top of each outer iteration and the edges entering the inner loop OR their
masks into it, so it is (outer active) & (the path enters the inner loop); an edge back to
the inner header carries it to the next inner iteration.  The edges leaving the inner loop
(to the outer body, to the outer header, to an exit of the region) OR their masks into
their targets' predicates, which are zeroed at the top of each outer iteration and gather
over the ``M`` iterations (at most one of those edges is taken per entry).  If the inner
loop is still active after ``M`` iterations (``inner_bounds`` is wrong), the code restores
RFLAGS and jumps to the original inner header: the original finishes (correct; a branch
never taken under a right contract; a leak and a contract error otherwise).

Deeper nests.  An inner loop is one node of its parent's order and runs its ``M``
iterations per parent iteration; its active flag and the gathered predicates of the
parent's blocks its exits go to are zeroed at the top of each parent iteration.  An edge
leaving several loops at once does the exit bookkeeping of each; a back edge to an
enclosing loop's header from a loop it holds ORs into that loop's next flag, then zeroed
at the top of its iterations.  A loop's induction variables are stepped in its own blocks
(not those of a loop it holds) and started in its parent's own blocks from a constant,
the induction variables of the loops holding it or registers the region does not write.
Leaving a loop also records the induction variables of the loops it holds (their starts
run again in its inactive iterations) and puts them back after it, as its own.

Calls (plugins/support/clone.py).  A call in the body, outer or in an inner loop (direct,
or through the PLT or the GOT, resolved when the region is hardened), runs as an inline
predicated clone of its callee, as in if-conversion: the callee's blocks follow the call's
block in the body's order, under the block's predicate, in every one of the ``bound``
iterations (an iteration after the loop left runs it inactive, undone).  The clone's rules
are clone.py's: its stack frame lies below the loop's whole scratch frame (RSP
``CLONE_BASE + 8`` below the region's), the engine puts RSP where each block expects it and
back to the region's for the loop's own blocks and glue; only its own frame and
RIP-relative module data may be accessed (the loop's memory rule does not apply to the
clone; clone.py checks it), except anchored table loads (plugins/support/loop_table.py: a
base from ``lea R, [rip + X]``, an index the block bounds), which are scanned.  Registers a
clone writes are written in the loop: never induction variables (a step in a callee is
not one) nor a run-time bound's limit, and addresses computed from them follow the memory
rule.  The call must return into the same iteration (its return site an edge the
predicated body carries: not the header, not a back edge, not out of its inner loop), and
with a run-time bound the header must make no call (its peeled last iteration runs the
header alone).

Induction variables.  A register whose only write in the loop is one ``add``/``sub`` of a
constant, ``inc``, ``dec`` or ``lea r, [r +/- c]`` (64- or 32-bit), in a block that every
iteration that goes on runs and that dominates the blocks after it in the order, is an
induction variable: its update is *not* undone, so in the iterations after the exit it
keeps advancing as if the loop went on, and the addresses computed from it step through the
buffer exactly like the original's would (no repeated address gives the exit away).  Its
value when the loop left is recorded at the exit edge (ORed under the edge's mask into a
zeroed slot) and put back by the dispatch.  Only a write outside every inner loop makes an
induction variable of the outer loop.  An inner loop's induction variable is a register
written exactly twice in the region: a step in the inner loop (as above, for the inner
loop's iterations), and a *start* in an outer block that every continuing outer iteration
runs and every path to the inner header passes: ``xor r, r``, ``mov r, imm``, ``mov r, p`` or
``lea r, [p + ...]`` with ``p`` outer induction variables or registers the region does not
write.  The start and the step are both kept when inactive, so the register's value in
every inner iteration depends only on the outer and inner iteration numbers.  Its value at
the inner loop's exit edge is recorded (as at the outer exits) and, after the inner loop,
put back (``cmov``): the value at the exit if the inner loop left, else the value before it
(it did not run).  Every induction variable, of any loop, is recorded at the region's exits
and put back by the dispatch.

Memory-safety rule.  Every access of the body runs in every one of the ``bound`` iterations.
Accepted: ``[rsp + d]`` with ``d >= -128`` and no index, RIP-relative operands; addresses
computed from registers the loop does not write, when the same operand (at least as wide) is
accessed on every path through an iteration (the original runs at least one); and addresses
computed from induction variables (and registers the loop does not write); in an inner
loop's own blocks, also from its own and its enclosing loops' induction variables, and the
"every path" rule counts paths through an iteration of the region's loop (the inner loop's
own blocks must cover them: the address is the same in every iteration of every loop).
PRECONDITION for the induction variables, per loop: the contract's bound must not exceed
the length of any buffer the loop walks — every access the original would make in
iterations 1..``bound``, whatever path each takes, must be valid; for an inner loop, its
``M`` iterations from where the original starts it, in each iteration of its parent.  Addresses
depending on any other register the loop computes are refused.

Leakage.  The instruction sequence and the memory lines touched are the same for every exit
point: ``bound`` identical iterations with addresses that only depend on the iteration
number.  Which exit was taken (not when) shows only after the region, in the original code
it jumps to: that is the loop's result, which the code after it branches on anyway.  If
the loop is still active after ``bound`` iterations (the contract's bound is wrong),
correctness comes first: the code jumps to the original loop's header, which runs the
remaining iterations unprotected (a leak, and a contract error the checker reveals).

Cost.  A clone costs its blocks as predicated blocks in every iteration (every path of
the callee), plus a ``lea`` moving RSP at each block whose depth differs from the one
before.  Per iteration: the predicated blocks (about ``2 w + 10 s + 12`` instructions per block
that writes ``w`` registers and ``s`` stores, plus its edges, see predication.py; the flags
stay in their slot between blocks, ``popfq`` only for a block that reads them), 3 per exit
edge plus 3 per induction variable at each exit edge, 1 per back edge, 2 to move the next
iteration's active flag, and 2 for the counter (``sub``/``jne``, the flags being in their
slot).  Before: 6 + 1 per induction variable + 3 (``pushfq``).  The dispatch: 3 per exit, 10
more, one ``cmov`` per induction variable and 4 (``popfq``, ``jmp``).  An inner loop costs
``M`` times its blocks, edges and counter per outer iteration, plus 1 per zeroed slot (its
active flag, each block it leaves to) at each outer iteration's top; before it 1 (its
counter), 3 if the flags must be saved, and with induction variables 1 + 2 per variable;
after it 2 (the wrong-bound test) and with induction variables 1 + 2 per variable.

Refusals (``I`` names the instruction as ``'text' at 0xADDR``):

- ``region shape is S, not a loop region``
- ``needs the contract's `bound``` (missing, not a positive integer), ``bound N is too large``
- run-time bounds: ``bound 'T' is not a run-time bound: ...`` (and the other messages of
  leakdbt/contract/bound.py); ``the run-time bound's R1 and R2: neither is an induction
  variable of the loop`` (``R: not an ...``); ``the run-time bound's R is written in the
  loop (its limit must not change)``; ``the run-time bound steps R by S, but 'I' does
  not``; ``a run-time bound needs the loop to test it where it leaves: neither the header
  (I) nor the block of the step (I) ends with a branch out of the loop on T``
- calls: the refusals of predicated calls (plugins/support/clone.py: indirect calls
  through a register, unresolvable GOT slots, callees with loops, recursion, the budget
  ``clone_depth``/``clone_insns``, pointer or stack-argument accesses, dead ends, ...);
  ``I is a call that does not return (a dead end in a bounded loop is not supported)``;
  ``I returns to 0xB, which ends an iteration or leaves its loop (a call must return into
  the same iteration)``; ``I is a call in the header of a loop with a run-time bound (its
  last iteration runs the header alone)``
- ``I is a system call or software interrupt``, ``I is an indirect jump``, ``I stops the
  program``, ``I is not a plain ret``, ``I: loop/jrcxz branches are not supported``, ``I is
  a string instruction``
- ``I returns from inside the loop``; ``the loop has more than 8 exits``
- nests: ``the loop's body is irreducible (...)``; ``loops are nested more than 4 deep:
  the inner loop at A holds another loop at B, 5 levels down``; ``the inner loop at A (the
  region's at +0xD) needs a bound: add it to the contract's `inner_bounds``` (also for a
  bound that is not a positive integer), ``bound N is too large``; ``inner_bounds names the
  region's at +0xD, which is not the header of an inner loop of this region (inner loops
  at: ...)``
- the conditional-block refusals of if-conversion (``I writes rsp``, AVX, x87/MMX, mxcsr,
  32-bit addressing, store widths, segment or absolute stores, memory or dividend-register
  divisors)
- memory: ``I: its address depends on R, which the loop computes (not an induction
  variable)``; ``I: accesses memory that not every path through an iteration accesses``
- ``the region needs more than 4096 bytes of scratch memory``
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from leakdbt.plugin_api import (
    BlockView,
    Flow,
    Insn,
    RegionView,
    RunTimeBound,
    goto,
    parse_bound,
)
from plugins.support.clone import Graph, expand_calls, resolve_call
from plugins.support.loop_nest import Inner, Nest, nest
from plugins.support.loop_table import TableEngine, anchored_loads, computed_loads
from plugins.support.memory_safety import check_accesses
from plugins.support.predication import (
    GPR,
    GPR32,
    INIT,
    INSN_PASSES,
    Engine,
    InsnInfo,
    Mem,
    Pred,
    Refused,
    WholeRegionPass,
    analyse,
    body,
    control_refusal,
    dead_end,
    predicated_refusal,
    slot,
    successors,
    topological,
    where,
)

__all__ = ["INNER_KEY", "PASS", "bound_loop", "induction_variables", "inner_bounds"]

MAX_EXITS = 8
MAX_BOUND = (1 << 31) - 1
INNER_KEY = "inner_bound"
"""Params ``inner_bound+0xD`` (or ``-0xD``): the bound of the inner loop whose header is
``D`` bytes after (before) the region's entry (the contract's ``inner_bounds``)."""
_LEA = re.compile(r"\w+, \[(\w+) [+-] (0x[0-9a-f]+|\d+)\]$")


def bound_loop(region: RegionView) -> list[str]:
    """The fixed-trip-count code for a loop region (see the module doc); raises
    :class:`~plugins.support.predication.Refused` with the reason when it cannot."""
    if region.shape != "loop":
        raise Refused(f"region shape is {region.shape}, not a loop region")
    bound = _outer_bound(region.params.get("bound"))
    bias = region.bias
    header = region.entry
    for b in region.blocks:
        if dead_end(b) and b.last.flow is Flow.CALL:
            raise Refused(f"{where(b.last, bias)} is a call that does not return (a dead end "
                          "in a bounded loop is not supported)")
    for insn in region.instructions():
        if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
            continue  # cloned (plugins/support/clone.py), or refused by expand_calls
        reason = control_refusal(insn, bias)
        if reason:
            raise Refused(reason)
    for b in region.blocks:
        if b.last.flow is Flow.RETURN:
            raise Refused(f"{where(b.last, bias)} returns from inside the loop")
    shape = nest(header, region.blocks, bias)
    bounds = inner_bounds(region, shape)
    exits = region.exits()
    if len(exits) > MAX_EXITS:
        raise Refused(f"the loop has more than {MAX_EXITS} exits")
    infos = {i.address: analyse(i) for i in region.instructions()}
    for b in shape.flat():
        for insn in body(b):
            if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                continue
            reason = predicated_refusal(infos[insn.address], bias)
            if reason:
                raise Refused(reason)
    graph: Graph | None = None
    vouched: frozenset[int] = frozenset()
    if any(b.last.flow in (Flow.CALL, Flow.INDIRECT_CALL) for b in region.blocks):
        _check_calls(region, shape, isinstance(bound, RunTimeBound))
        vouched = _callee_tables(region)
        graph = expand_calls(region, shape.flat(), vouched)
        shape = _with_clones(shape, graph)
        infos.update(graph.infos)
    order = shape.flat()
    ivs = _outer_ivs(shape, order, infos)
    header_test = isinstance(bound, RunTimeBound) and _check_run_time(
        bound, shape, order, infos, ivs, bias)
    inner_ivs: dict[int, dict[str, tuple[int, int]]] = {}
    for i in sorted(shape.inners, key=lambda i: len(shape.ancestors(i))):  # parents first
        held = frozenset(ivs).union(*(inner_ivs[a.header] for a in shape.ancestors(i)))
        inner_ivs[i.header] = _inner_ivs(shape, i, infos, held)
    spread = _spread_ivs(shape, order, infos, ivs)
    written = frozenset(r for b in order for i in body(b) for r in infos[i.address].writes
                        if r in GPR)
    induction = frozenset(ivs) | spread.keys() | {r for v in inner_ivs.values() for r in v}
    loads = computed_loads(order, infos, written, induction)
    # Every table load clone.py let through is scanned (the same blocks, recognised alike).
    assert graph is None or all(a in loads for a in vouched if a in graph.infos)
    # A clone's accesses follow clone.py's rule (checked by expand_calls), not the loop's.
    cloned = frozenset() if graph is None else graph.infos.keys()
    checked = {a: replace(i, mems=()) if a in loads or a in cloned else i
               for a, i in infos.items()}
    _check_memory(region, shape, checked, frozenset(ivs) | spread.keys(), inner_ivs)
    emitter = _Emitter(region, shape, bounds, infos, ivs, inner_ivs, spread, loads)
    if graph is not None:
        engine = emitter.engine
        engine.entry_depths, engine.deltas = graph.depths, graph.deltas
        engine.rebased = frozenset(graph.deltas)
    return emitter.code(bound, exits, header_test)


def _check_calls(region: RegionView, shape: Nest, run_time: bool) -> None:
    """Calls the loop can clone: each returns to a block of the same iteration (the clone's
    last block, far down the stack, carries its mask there like any block of the body);
    with a run-time bound the header, whose last iteration runs alone, makes no call."""
    bias = region.bias
    for b in shape.flat():
        call = b.last
        if call.flow not in (Flow.CALL, Flow.INDIRECT_CALL):
            continue
        inner = shape.inner_of(b.start)
        back = call.next not in shape.edges.get(b.start, ()) or call.next == shape.header
        if back or (inner is not None and call.next not in inner.members):
            raise Refused(f"{where(call, bias)} returns to {call.next + bias:#x}, which "
                          "ends an iteration or leaves its loop (a call must return into "
                          "the same iteration)")
        if run_time and b.start == shape.header:
            raise Refused(f"{where(call, bias)} is a call in the header of a loop with a "
                          "run-time bound (its last iteration runs the header alone)")


def _callee_tables(region: RegionView) -> frozenset[int]:
    """The anchored table loads (plugins/support/loop_table.py) of every function the
    region's calls reach: clone.py's memory rule leaves them to the table scan."""
    out: set[int] = set()
    seen: set[int] = set()
    calls: list[Insn] = [i for b in region.blocks for i in b.insns
                         if i.flow in (Flow.CALL, Flow.INDIRECT_CALL)]
    while calls:
        resolved = resolve_call(region, calls.pop())
        if isinstance(resolved, str) or resolved[0] in seen:
            continue  # expand_calls refuses it, or it was walked
        seen.add(resolved[0])
        for b in resolved[1]:
            out |= anchored_loads(b).keys()
            calls += [i for i in b.insns if i.flow in (Flow.CALL, Flow.INDIRECT_CALL)]
    return frozenset(out)


def _with_clones(shape: Nest, graph: Graph) -> Nest:
    """The nest with each call block followed by its clone's blocks (topological order),
    in the outer body or in the inner loop that makes the call."""
    by_key = {b.start: b for b in graph.blocks}

    def spliced(blocks: Sequence[BlockView]) -> list[BlockView]:
        out: list[BlockView] = []
        for b in blocks:
            b = by_key[b.start]
            out.append(b)
            if b.start in graph.clones or not b.successors \
                    or b.successors[0] not in graph.clones:
                continue
            entry, seen, stack = b.successors[0], set(), [b.successors[0]]
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack += [s for s in by_key[n].successors if s in graph.clones]
            order = topological(entry, [by_key[k] for k in seen], lambda a, c: False)
            assert order is not None  # clones are acyclic
            out += order
        return out

    inners: list[Inner] = []

    def rebuilt(order: Sequence[BlockView | Inner]) -> tuple[BlockView | Inner, ...]:
        nodes: list[BlockView | Inner] = []
        for node in order:
            if isinstance(node, Inner):
                inner_order = rebuilt(node.order)
                flat: list[BlockView] = []
                for n in inner_order:
                    flat += list(n.blocks) if isinstance(n, Inner) else [n]
                inner = Inner(node.header, tuple(flat), node.latches, inner_order,
                              node.parent)
                inners.append(inner)
                nodes.append(inner)
            else:
                nodes += spliced([node])
        return tuple(nodes)

    nodes = rebuilt(shape.order)
    inners.sort(key=lambda i: i.header)
    edges = {k: tuple(successors(b)) for k, b in by_key.items() if k in graph.clones}
    for a, succ in shape.edges.items():
        b = by_key[a]
        edges[a] = tuple(b.successors) if b.successors and b.successors[0] in graph.clones \
            else succ
    return Nest(shape.header, nodes, tuple(inners), edges, frozenset(graph.clones))


def _bound(value: object, missing: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Refused(missing)
    if value > MAX_BOUND:
        raise Refused(f"bound {value} is too large")
    return value


def _outer_bound(value: object) -> int | RunTimeBound:
    """The region's bound: a constant, or a run-time bound (``"END - START"``, module doc,
    "Run-time bounds")."""
    if isinstance(value, str):
        parsed = parse_bound(value)
        if isinstance(parsed, str):
            raise Refused(f"bound {parsed}")
        return parsed
    return _bound(value, "needs the contract's `bound`")


def _check_run_time(bound: RunTimeBound, shape: Nest, order: list[BlockView],
                    infos: dict[int, InsnInfo], ivs: dict[str, int], bias: int) -> bool:
    """Is the loop's run-time bound tested where the loop leaves (module doc, "Run-time
    bounds")?  One register is an induction variable stepping by the bound's step towards
    the other (``END - START``: up from START or down from END; ``COUNT``: down to zero),
    which the loop does not write.  The test is a conditional branch out of the loop on
    the flags of ``cmp END, START`` (``COUNT``: ``test R, R``, ``cmp R, 0`` or the step
    itself), ending the header (True: the bound counts the iterations before the header's
    test fails) or the block of the step, after the step (False: the iterations up to and
    including the one whose test leaves)."""
    written = _writers(order, infos)
    step = 1 << bound.shift
    regs = [r for r in (bound.end, bound.start) if r is not None]
    named = " and ".join(regs)
    iv = next((r for r in reversed(regs) if r in ivs), None)
    if iv is None:
        raise Refused(f"the run-time bound's {named}: "
                      f"{'neither is' if len(regs) == 2 else 'not'} an induction variable of "
                      f"the loop")
    limit = next((r for r in regs if r != iv), None)
    if limit is not None and limit in written:
        raise Refused(f"the run-time bound's {limit} is written in the loop (its limit must "
                      f"not change)")
    (_, stepper), = written[iv]
    want = (step if iv == bound.start else -step, False)
    if _step_of(stepper, iv) != want:
        raise Refused(f"the run-time bound steps {iv} by {want[0]}, but "
                      f"'{stepper.insn.text}' does not")
    tests = ({"cmp"} if limit is not None else {"test", "cmp", stepper.insn.mnemonic})

    def tested(b: BlockView, after: int) -> bool:
        if b.last.flow is not Flow.BRANCH or all(s in shape.edges for s in successors(b)):
            return False
        writers = [infos[i.address] for i in body(b) if infos[i.address].flags_write]
        test = writers[-1].insn if writers else None
        if test is None or test.address < after or test.mnemonic not in tests:
            return False
        ops = test.op_str.split(", ")
        if limit is not None:
            return sorted(ops) == sorted(regs)
        return test.address == stepper.insn.address or ops in ([iv, iv], [iv, "0"])

    head = next(b for b in order if b.start == shape.header)
    if tested(head, 0):
        return True
    at = next(b for b in order if b.start == ivs[iv])
    if at is not head and tested(at, stepper.insn.address):
        return False
    what = f"cmp {bound.end}, {bound.start}" if limit is not None else \
        f"{iv} (test {iv}, {iv}, cmp {iv}, 0 or its step)"
    raise Refused(f"a run-time bound needs the loop to test it where it leaves: neither the "
                  f"header ({where(head.last, bias)}) nor the block of the step "
                  f"({where(stepper.insn, bias)}) ends with a branch out of the loop on "
                  f"{what}")


def _offset(delta: int) -> str:
    return f"+{delta:#x}" if delta >= 0 else f"-{-delta:#x}"


def inner_bounds(region: RegionView, shape: Nest) -> dict[int, int]:
    """Each inner loop's header -> its bound, from the params ``inner_bound+0xD`` (the
    header ``D`` bytes after the region's entry; the contract's ``inner_bounds``)."""
    given = {k[len(INNER_KEY):]: v for k, v in region.params.items()
             if k.startswith(INNER_KEY)}
    out: dict[int, int] = {}
    for inner in shape.inners:
        key = _offset(inner.header - region.entry)
        at = f"{inner.header + region.bias:#x}"
        out[inner.header] = _bound(
            given.pop(key, None),
            f"the inner loop at {at} (the region's at {key}) needs a bound: add it to the "
            f"contract's `inner_bounds`")
    if given:
        key = sorted(given)[0]
        heads = ", ".join(_offset(i.header - region.entry) for i in shape.inners) or "none"
        raise Refused(f"inner_bounds names the region's at {key}, which is not the header "
                      f"of an inner loop of this region (inner loops at: {heads})")
    return out


class _Emitter:
    """Writes the bounded loop's code: the outer loop and, in its body, each inner loop as
    a loop of its own (module doc, "Inner loops")."""

    def __init__(self, region: RegionView, shape: Nest, bounds: dict[int, int],
                 infos: dict[int, InsnInfo], ivs: dict[str, int],
                 inner_ivs: dict[int, dict[str, tuple[int, int]]],
                 spread: dict[str, tuple[int, bool]],
                 loads: Mapping[int, Mem | tuple[Mem, int, int]]) -> None:
        self.region, self.shape, self.bounds, self.infos = region, shape, bounds, infos
        self.ivs, self.inner_ivs = ivs, inner_ivs
        engine = self.engine = TableEngine(region.bias, loads) if loads else Engine(region.bias)
        self.active, self.nxt, self.exit_id, self.count = (engine.alloc() for _ in range(4))
        # Every induction variable, of any loop, is recorded at the exits and put back.
        regs = sorted({*ivs, *spread, *(r for v in inner_ivs.values() for r in v)})
        # Stepped in several blocks: its value at the top, stepped once at the end.
        self.spread = {r: (engine.alloc(), *step) for r, step in sorted(spread.items())}
        self.recorded = {r: engine.alloc() for r in regs}
        self.ids = {e: n + 1 for n, e in enumerate(region.exits())}
        self.unmasked: dict[int, set[str]] = {}
        for r, at in ivs.items():
            self.unmasked.setdefault(at, set()).add(r)
        for v in inner_ivs.values():
            for r, (init, step) in v.items():
                self.unmasked.setdefault(init, set()).add(r)
                self.unmasked.setdefault(step, set()).add(r)
        # Per inner loop: its active flag (entries OR into it), next flag, counter, and
        # for its induction variables the exit flag, the values at the exit and before.
        self.inner_slots = {i.header: {"active": engine.alloc(), "nxt": engine.alloc(),
                                       "count": engine.alloc(), "exited": engine.alloc()}
                            for i in shape.inners}
        # An inner loop's variables and those of the loops it holds (their starts run in
        # its inactive iterations too): their values at its exit are put back after it.
        self.inner_rec = {
            i.header: {r: (engine.alloc(), engine.alloc())
                       for r in sorted({*inner_ivs[i.header]}.union(
                           *(inner_ivs[d.header] for d in shape.inners
                             if i in shape.ancestors(d))))}
            for i in shape.inners}
        # Blocks an inner loop leaves to: their predicates gather over its iterations.
        # (An inner loop leaving into another one enters it: its active flag gathers.)
        self.gathered = {i.header: self.inner_slots[i.header]["active"] for i in shape.inners}
        for i in shape.inners:
            for b in i.blocks:
                for s in successors(b):
                    if s in shape.edges and s not in i.members and s != shape.header \
                            and s not in self.gathered:
                        self.gathered[s] = engine.alloc()
        for s, at in self.gathered.items():
            engine.preds[s] = Pred(at)
        # Each gathered slot is zeroed at the top of every iteration of the loop whose
        # body holds its block (an inner header's: its parent's; None: the region's).
        self.zeroed: dict[int | None, list[int]] = {}
        for s, at in self.gathered.items():
            loop = shape.loop(s)
            home = loop.parent if loop is not None else _owner(shape, s)
            self.zeroed.setdefault(home, []).append(at)
        engine.preds[shape.header] = Pred(self.active)
        self.npreds: dict[int, int] = {}
        for a, succ in shape.edges.items():
            for s in succ:
                if self._inside(a, s):
                    self.npreds[s] = self.npreds.get(s, 0) + 1
        for s in self.gathered:
            self.npreds[s] = self.npreds.get(s, 0) + 2  # always a slot, never shared
        # The outer next flag: the first back edge writes it, unless back edges run in
        # inner loops (many times an iteration): then it is zeroed and every edge ORs.
        self.or_back = any(shape.header in successors(b) for i in shape.inners
                           for b in i.blocks)
        self.first_back = [not self.or_back]
        # Likewise per inner loop, for back edges from the loops it holds.
        self.inner_or_back = {
            i.header: any(i.header in successors(b) for b in i.blocks
                          if _owner(shape, b.start) != i.header) for i in shape.inners}
        self.first_inner_back = {h: not o for h, o in self.inner_or_back.items()}
        self.labels = 0

    def _inside(self, a: int, s: int) -> bool:
        """Does the engine carry the predicate along ``a -> s``?  Edges inside one inner
        loop (but back to its header) and from outer blocks to outer blocks or into an
        inner loop; back edges, exits and the edges leaving an inner loop are glue."""
        if s not in self.shape.edges or s == self.shape.header or s not in self.shape.edges[a]:
            return False
        inner = self.shape.inner_of(a)
        return inner is None or s in inner.members

    def _glue(self, source: int) -> Callable[[int | None], list[str]]:
        """The glue of the edges leaving the block at ``source`` that the engine does not
        own (mask in RAX; see predication.Special)."""
        inner = self.shape.inner_of(source)
        engine = self.engine

        def glue(target: int | None) -> list[str]:
            assert target is not None
            out: list[str] = []
            loop = inner
            while loop is not None and target not in loop.members:  # the loops it leaves
                slots = self.inner_slots[loop.header]
                if self.inner_rec[loop.header]:
                    out.append(f"or {slot(slots['exited'])}, rax")
                for r, (rec, _) in self.inner_rec[loop.header].items():
                    out += [f"mov rcx, {engine.value_of(r)}", "and rcx, rax",
                            f"or {slot(rec)}, rcx"]
                loop = self.shape.loop(loop.parent)
            if loop is not None and target == loop.header:  # a back edge of an inner loop
                nxt = self.inner_slots[loop.header]["nxt"]
                return [*out, self._first(self.first_inner_back, loop.header, nxt)]
            if target == self.shape.header:
                if self.first_back[0]:
                    self.first_back[0] = False
                    return [*out, f"mov {slot(self.nxt)}, rax"]
                return [*out, f"or {slot(self.nxt)}, rax"]
            if target in self.gathered:
                return [*out, f"or {slot(self.gathered[target])}, rax"]
            # An exit: at most one edge ever leaves (the loop is then inactive), so its
            # number and the induction variables are ORed into zeroed slots.
            out += ["mov rcx, rax", f"and rcx, {self.ids[target]:#x}",
                    f"or {slot(self.exit_id)}, rcx"]
            for r, at in self.recorded.items():
                out += [f"mov rcx, {engine.value_of(r)}", "and rcx, rax", f"or {slot(at)}, rcx"]
            return out
        return glue

    @staticmethod
    def _first(first: dict[int, bool], key: int, at: int) -> str:
        """``mov`` the mask into the slot ``at`` on the first edge, ``or`` it afterwards."""
        if first[key]:
            first[key] = False
            return f"mov {slot(at)}, rax"
        return f"or {slot(at)}, rax"

    def _block(self, b: BlockView, late: Sequence[str] = ()) -> list[str]:
        """A block, RSP first put where it expects it (a clone's: far below the frame)."""
        engine = self.engine
        unmasked = frozenset(self.unmasked.get(b.start, ()))
        if b.start in self.shape.clones:
            unmasked |= {"rsp"}  # a clone's RSP moves the same whether its block is on or off
        return [*engine.move_to(engine.entry_depths.get(b.start, 0)),
                *engine.block(b, self.infos, engine.preds.get(b.start), self._inside,
                              self.npreds, self._glue(b.start), unmasked, late)]

    def code(self, bound: int | RunTimeBound, exits: list[int], header_test: bool = False
             ) -> list[str]:
        engine, shape = self.engine, self.shape
        fixed = isinstance(bound, int)
        lines = [INIT, f"mov {slot(self.active)}, 0xffffffffffffffff",
                 f"mov {slot(self.exit_id)}, 0",
                 *(f"mov {slot(at)}, 0" for at in self.recorded.values()),
                 *([f"mov {slot(self.count)}, {bound:#x}"] if isinstance(bound, int) else []),
                 *engine.flags_to_slot()]
        engine.live = False  # every iteration starts with the flags in their slot
        if isinstance(engine, TableEngine):
            lines += engine.bounds()
        peel = 0
        if isinstance(bound, RunTimeBound):
            peel = engine.alloc()
            lines += self._run_time_count(bound, header_test, peel)
        lines.append("bl_top:")
        zero = [*self.zeroed.get(None, []), *([self.nxt] if self.or_back else [])]
        lines += [f"mov {slot(z)}, 0" for z in zero]
        lines += [f"mov {slot(at)}, {r}" for r, (at, _, _) in self.spread.items()]

        def after(n: int) -> list[str]:
            if n or fixed:
                return []
            # A run-time bound: its last iteration, or one out of range, runs the header
            # only (module doc).
            test = f"cmp {slot(self.count)}, 1" if header_test else f"cmp {slot(peel)}, 0"
            out = [*engine.flags_to_slot(), test, "je bl_peel" if header_test else "jne bl_peel"]
            engine.live = False
            return out

        lines += self._body(shape.order, self.nxt, self.active, after)
        lines += engine.move_to(0)
        assert engine.saved and not engine.live
        for r, (at, step, narrow) in self.spread.items():
            sign = "+" if step >= 0 else "-"
            lines += [f"mov {r}, {slot(at)}",
                      f"lea {GPR32[r] if narrow else r}, [{r} {sign} {abs(step):#x}]"]
        # The public counter decides the branch; the logical flags stay in their slot.
        lines += [f"sub {slot(self.count)}, 1", "jne bl_top"]
        lines += self._dispatch(exits)
        if not fixed:
            lines += self._peeled(exits)
        return engine.finish(lines)

    def _run_time_count(self, bound: RunTimeBound, header_test: bool, peel: int
                        ) -> list[str]:
        """The counter from the registers at the entry (flags in their slot, free): ``N =
        (END - START) >> k + C`` full iterations, then (``header_test``) the header of one
        more, whose test leaves: ``N + 1`` iterations, the last one peeled (only its header
        runs: the counter is 1 there).  Out of range (fewer than 1 or more than MAX_BOUND
        iterations): one, peeled (the ``peel`` slot set)."""
        t1, count = slot(self.engine.t1), slot(self.count)
        lines = [f"mov {t1}, rax", f"mov rax, {bound.end}"]
        if bound.start is not None:
            lines.append(f"sub rax, {t1 if bound.start == 'rax' else bound.start}")
        if bound.shift:
            lines.append(f"sar rax, {bound.shift}")
        add = bound.add + header_test
        if add:
            lines.append(f"add rax, {add:#x}" if add > 0 else f"sub rax, {-add:#x}")
        return [*lines, f"mov {count}, rax", f"mov rax, {t1}", f"mov {slot(peel)}, 0",
                f"cmp {count}, 1", "jl bl_rt_peel", f"cmp {count}, {MAX_BOUND:#x}",
                "jle bl_rt_count", "bl_rt_peel:", f"mov {count}, 1", f"mov {slot(peel)}, 1",
                "bl_rt_count:"]

    def _peeled(self, exits: list[int]) -> list[str]:
        """After the last iteration's header (a run-time bound): where the original goes,
        selected as the dispatch does: the exit recorded (induction variables get their
        values there), a successor in the loop whose predicate the header set (the bound
        was wrong: the original goes on from there), or the header again (its back edge
        to itself)."""
        engine, header = self.engine, self.shape.header
        block = next(b for b in self.shape.flat() if b.start == header)
        t1, t2 = slot(engine.t1), slot(engine.t2)
        lines = ["bl_peel:", f"mov {t1}, rax", f"mov {t2}, rcx", f"movabs rax, {goto(header)}"]
        for s in dict.fromkeys(successors(block)):
            if s == header or s not in self.shape.edges:
                continue
            pred = engine.preds.get(s)
            lines.append(f"movabs rcx, {goto(s)}")
            if pred is None or pred == engine.preds.get(header):
                lines.append("mov rax, rcx")  # the header's only way on
            else:
                lines += [pred.test(), f"cmov{pred.on} rax, rcx"]
        for e in exits:
            lines += [f"movabs rcx, {goto(e)}", f"cmp {slot(self.exit_id)}, {self.ids[e]:#x}",
                      "cmove rax, rcx"]
        target = engine.alloc()
        lines += [f"mov {slot(target)}, rax", f"mov rcx, {t2}", f"mov rax, {t1}",
                  f"cmp {slot(self.exit_id)}, 0"]
        lines += [f"cmovne {r}, {slot(at)}" for r, at in self.recorded.items()]
        return [*lines, *engine.load_flags(engine.fl), f"jmp {slot(target)}"]

    def _body(self, order: Sequence[BlockView | Inner], nxt: int, active: int,
              after: Callable[[int], list[str]] = lambda n: []) -> list[str]:
        """One iteration of a loop's body in ``order``: its blocks predicated, each child
        loop run whole; the last node also copies the next iteration's flag (slot ``nxt``)
        into the active one (``active``); ``after(n)``: lines after the n-th node."""
        engine = self.engine
        late = [f"mov rax, {slot(nxt)}", f"mov {slot(active)}, rax"]
        lines: list[str] = []
        for n, node in enumerate(order):
            last = n == len(order) - 1
            if isinstance(node, Inner):
                lines += [*engine.move_to(0), *self._inner(node)]
                if last:
                    lines += [f"mov {slot(engine.t1)}, rax", *late,
                              f"mov rax, {slot(engine.t1)}"]
            else:
                lines += self._block(node, late if last else ())
            lines += after(n)
        return lines

    def _inner(self, inner: Inner) -> list[str]:
        """An inner loop: its body ``bound`` times under its active flag (the entries' masks
        ORed), the loops it holds each run the same way where they come in its order;
        still active after that, the bound was wrong: the original goes on from its
        header.  Its induction variables get their values at its exit, or before it when
        it did not run."""
        engine, h = self.engine, inner.header
        n = self.labels
        self.labels += 1
        slots, rec = self.inner_slots[h], self.inner_rec[h]
        lines = engine.flags_to_slot()
        engine.live = False
        lines += [f"mov {slot(snap)}, {r}" for r, (_, snap) in rec.items()]
        lines += [f"mov {slot(at)}, 0" for at, _ in rec.values()]
        if rec:
            lines.append(f"mov {slot(slots['exited'])}, 0")
        lines += [f"mov {slot(slots['count'])}, {self.bounds[h]:#x}", f"bl_inner{n}:"]
        zero = [*self.zeroed.get(h, []), *([slots["nxt"]] if self.inner_or_back[h] else [])]
        lines += [f"mov {slot(z)}, 0" for z in zero]
        lines += self._body(inner.order, slots["nxt"], slots["active"])
        lines += engine.move_to(0)
        assert engine.saved and not engine.live
        lines += [f"sub {slot(slots['count'])}, 1", f"jne bl_inner{n}",
                  f"cmp {slot(slots['active'])}, 0", f"je bl_done{n}",
                  *engine.load_flags(engine.fl), f"jmp {goto(h)}", f"bl_done{n}:"]
        if rec:
            lines.append(f"cmp {slot(slots['exited'])}, 0")
            for r, (at, snap) in rec.items():
                lines += [f"cmove {r}, {slot(snap)}", f"cmovne {r}, {slot(at)}"]
        return lines

    def _dispatch(self, exits: list[int]) -> list[str]:
        """Select the way out without a branch: the original header if the loop is still
        active after `bound` iterations (the bound was wrong: finish in the original), else
        the recorded exit; induction variables get their values at the exit."""
        engine = self.engine
        target = engine.alloc()
        t1 = slot(engine.t1)
        lines = [f"mov {t1}, rax", f"mov {slot(engine.t2)}, rcx",
                 f"movabs rax, {goto(self.shape.header)}"]
        for e in exits:
            lines += [f"movabs rcx, {goto(e)}", f"cmp {slot(self.exit_id)}, {self.ids[e]:#x}",
                      "cmove rax, rcx"]
        lines += [f"mov {slot(target)}, rax", f"mov rcx, {slot(engine.t2)}", f"mov rax, {t1}",
                  f"cmp {slot(self.exit_id)}, 0"]
        lines += [f"cmovne {r}, {slot(at)}" for r, at in self.recorded.items()]
        return [*lines, *engine.load_flags(engine.fl), f"jmp {slot(target)}"]


def _reaches(start: int, edges: Mapping[int, Sequence[int]], avoid: int, goal: set[int]
             ) -> bool:
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


def _public_start(info: InsnInfo, reg: str, public: frozenset[str]) -> bool:
    """Does the instruction set ``reg`` (64- or 32-bit) from a constant or from registers
    in ``public`` only: ``xor r, r``, ``mov r, imm``, ``mov r, p``, ``lea r, [p + ...]``?"""
    insn = info.insn
    ops = insn.op_str.split(", ")
    if info.mems or len(ops) != 2 or ops[0] not in (reg, GPR32[reg]) \
            or {r for r in info.writes if r in GPR} != {reg}:
        return False
    if insn.mnemonic == "xor":
        return ops[1] == ops[0]
    if insn.mnemonic in ("mov", "movabs", "lea"):
        return all(r in public for r in info.reads if r in GPR)
    return False


def _writers(blocks: Sequence[BlockView], infos: dict[int, InsnInfo]
             ) -> dict[str, list[tuple[BlockView, InsnInfo]]]:
    """General register -> the instructions (with their blocks) that write it."""
    out: dict[str, list[tuple[BlockView, InsnInfo]]] = {}
    for b in blocks:
        for insn in body(b):
            for r in infos[insn.address].writes:
                if r in GPR:
                    out.setdefault(r, []).append((b, infos[insn.address]))
    return out


def _every_iteration(header: int, edges: Mapping[int, Sequence[int]], latches: set[int],
                     order: Sequence[BlockView], start: int) -> bool:
    """Does every iteration that goes on (reaches a latch) run the block at ``start``, and
    does it dominate the blocks after it in ``order``?"""
    if start == header:
        return True
    position = [b.start for b in order].index(start)
    return not (_reaches(header, edges, start, latches)
                or any(_reaches(header, edges, start, {later.start})
                       for later in order[position + 1:]))


def induction_variables(region: RegionView, order: list[BlockView],
                        infos: dict[int, InsnInfo]) -> dict[str, int]:
    """The outer loop's induction variables (see the module doc) -> the block that updates
    them (``order``: the region's blocks in the order they run)."""
    return _outer_ivs(nest(region.entry, region.blocks, region.bias), order, infos)


def _outer_ivs(shape: Nest, order: list[BlockView], infos: dict[int, InsnInfo]
               ) -> dict[str, int]:
    """Registers whose one write in the region is a step in an outer block that every
    continuing iteration runs (module doc) -> that block."""
    latches = {a for a in shape.edges if any(s == shape.header for s in _succ(order, a))}
    out: dict[str, int] = {}
    for r, ws in _writers(order, infos).items():
        if len(ws) != 1 or not _step(ws[0][1], r) or shape.inner_of(ws[0][0].start) \
                or ws[0][0].start in shape.clones:
            continue
        if _every_iteration(shape.header, shape.edges, latches, order, ws[0][0].start):
            out[r] = ws[0][0].start
    return out


_SIGNED_LEA = re.compile(r"\w+, \[\w+ ([+-]) (0x[0-9a-f]+|\d+)\]$")


def _step_of(info: InsnInfo, reg: str) -> tuple[int, bool] | None:
    """(what a step instruction adds to ``reg``, whether it writes the 32-bit register),
    or None for an instruction that is not a step of ``reg``."""
    if not _step(info, reg):
        return None
    insn = info.insn
    ops = insn.op_str.split(", ")
    narrow = ops[0] != reg
    if insn.mnemonic in ("inc", "dec"):
        return (1 if insn.mnemonic == "inc" else -1), narrow
    if insn.mnemonic in ("add", "sub"):
        value = int(ops[1], 0)
        return (value if insn.mnemonic == "add" else -value), narrow
    m = _SIGNED_LEA.match(insn.op_str)
    assert m is not None  # _step matched it
    value = int(m.group(2), 0)
    return (value if m.group(1) == "+" else -value), narrow


def _spread_ivs(shape: Nest, order: list[BlockView], infos: dict[int, InsnInfo],
                single: dict[str, int]) -> dict[str, tuple[int, bool]]:
    """Outer induction variables stepped in several blocks (a latch the compiler
    duplicated, module doc) -> (the step, 32-bit): every write is the same step in an
    outer block, every path through an iteration that goes on passes exactly one, and no
    address is computed from the register after a step in the iteration."""
    latches = {a for a in shape.edges if shape.header in _succ(order, a)}
    out: dict[str, tuple[int, bool]] = {}
    for r, ws in _writers(order, infos).items():
        if r in single or len(ws) < 2:
            continue
        steps = {_step_of(i, r) for _, i in ws}
        blocks = {b.start for b, _ in ws}
        if len(steps) != 1 or None in steps or len(blocks) != len(ws) \
                or any(shape.inner_of(b) or b in shape.clones for b in blocks):
            continue
        step = steps.pop()
        assert step is not None
        if _one_step_per_iteration(shape, order, blocks, latches) \
                and not _addressed_after(shape, infos, r, ws):
            out[r] = step
    return out


def _one_step_per_iteration(shape: Nest, order: list[BlockView], steps: set[int],
                            latches: set[int]) -> bool:
    """Does every path from the header to a latch pass exactly one block of ``steps``?"""
    counts: dict[int, set[int]] = {b.start: set() for b in order}
    counts[shape.header] = {0}
    for b in order:
        here = {min(c + (b.start in steps), 2) for c in counts[b.start]}
        if b.start in latches and here != {1}:
            return False
        for s in shape.edges[b.start]:
            counts[s] |= here
    return True


def _addressed_after(shape: Nest, infos: dict[int, InsnInfo], reg: str,
                     ws: list[tuple[BlockView, InsnInfo]]) -> bool:
    """Is an address computed from ``reg`` after one of its steps ``ws``, in the step's
    block or in a block reachable from it in the iteration?"""
    by_start = {b.start: b for b in shape.flat()}
    seen: set[int] = set()
    stack = [s for b, _ in ws for s in shape.edges[b.start]]
    for b, info in ws:
        after = [i for i in body(b) if i.address > info.insn.address]
        if any(reg in m.regs for i in after for m in infos[i.address].mems):
            return True
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if any(reg in m.regs for i in body(by_start[n]) for m in infos[i.address].mems):
            return True
        stack += list(shape.edges[n])
    return False


def _succ(order: Sequence[BlockView], start: int) -> list[int]:
    return next(successors(b) for b in order if b.start == start)


def _owner(shape: Nest, start: int) -> int | None:
    """The header of the innermost inner loop holding the block at ``start`` (None: an
    outer block)."""
    inner = shape.inner_of(start)
    return None if inner is None else inner.header


def _inner_ivs(shape: Nest, inner: Inner, infos: dict[int, InsnInfo], held: frozenset[str]
               ) -> dict[str, tuple[int, int]]:
    """An inner loop's induction variables -> (the block of its parent that starts them,
    its block that steps them): registers written exactly twice in the region, once by a
    step in a block of the loop itself (not of a loop it holds) that every continuing
    iteration of it runs, once in a block of its parent (the region's outer blocks, or the
    inner loop holding it) that every continuing iteration of the parent runs before the
    loop, from a constant or from ``held`` (the induction variables of the loops holding
    it) and registers the region does not write."""
    order = shape.flat()
    writers = _writers(order, infos)
    public = frozenset(GPR.values()) - writers.keys() | held
    edges = {a: [s for s in succ if s in inner.members] for a, succ in shape.edges.items()
             if a in inner.members}
    parent = shape.loop(inner.parent)
    if parent is None:
        top, top_edges = shape.header, dict(shape.edges)
        latches = {a for a in shape.edges if any(s == shape.header for s in _succ(order, a))}
    else:
        top, latches = parent.header, set(parent.latches)
        top_edges = {a: tuple(s for s in succ if s in parent.members)
                     for a, succ in shape.edges.items() if a in parent.members}
    out: dict[str, tuple[int, int]] = {}
    for r, ws in writers.items():
        steps = [(b, i) for b, i in ws if _owner(shape, b.start) == inner.header]
        starts = [(b, i) for b, i in ws if _owner(shape, b.start) == inner.parent]
        if len(ws) != 2 or len(steps) != 1 or len(starts) != 1 \
                or any(b.start in shape.clones for b, _ in ws):
            continue
        (sb, si), (ib, ii) = steps[0], starts[0]
        if not _step(si, r) or not _public_start(ii, r, public - {r}):
            continue
        if not _every_iteration(inner.header, edges, set(inner.latches), inner.blocks,
                                sb.start):
            continue
        if ib.start != top and _reaches(top, top_edges, ib.start, latches | {inner.header}):
            continue  # a parent's iteration may go on, or enter the loop, without it
        out[r] = (ib.start, sb.start)
    return out


def _check_memory(region: RegionView, shape: Nest, infos: dict[int, InsnInfo],
                  ivs: frozenset[str], inner_ivs: dict[int, dict[str, tuple[int, int]]]
                  ) -> None:
    """The memory-safety rule of the module doc, for every access of the body: outer
    blocks may address through the outer induction variables, an inner loop's own blocks
    through those, its ancestors' and its own; "every path" counts paths through an
    iteration of the region's loop."""
    header = region.entry
    edges: dict[int, list[int]] = {}
    for b in shape.flat():
        edges[b.start] = list(shape.edges[b.start])
        if any(s == header or s not in shape.edges for s in successors(b)):
            edges[b.start].append(-1)  # the iteration ends here
    groups: list[tuple[list[BlockView], frozenset[str]]] = [
        ([b for b in shape.order if isinstance(b, BlockView)], ivs)]
    for i in shape.inners:  # its own blocks, through its and its ancestors' variables
        held = ivs.union(*(inner_ivs[a.header] for a in [i, *shape.ancestors(i)]))
        groups.append(([b for b in i.blocks if _owner(shape, b.start) == i.header], held))
    for blocks, induction in groups:
        inside = {b.start for b in blocks}
        others = frozenset(r for b in shape.flat() if b.start not in inside
                           for i in body(b) for r in infos[i.address].writes)
        check_accesses(blocks, infos, region.bias, header, edges,
                       computed_by="the loop computes (not an induction variable)",
                       every_path="through an iteration", induction=induction,
                       also_written=others)


PASS = WholeRegionPass("bounded-loop", "loop", bound_loop, before=INSN_PASSES)
"""The ``bounded-loop`` pass (see the module doc)."""
