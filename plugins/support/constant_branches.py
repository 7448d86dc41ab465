"""Branches of a clone decided by constants: folded to jumps when the graph is built
(plugins/support/clone.py, :func:`fold_constant_branches`; docs/passes.md, "Predicated
calls").

Every call of a region gets its own *instance* of the callee's blocks
(:func:`~plugins.support.clone.expand_calls`), so each instance has exactly one call site.
A branch of such an instance whose condition depends only on values that are constants on
every path into it *within the expanded graph* -- the high half of a 128-bit divisor the
caller's arm zeroes (``xor ecx, ecx; call __umodti3``), a mode flag it passes (``mov edx,
2; call f``), a register the callee zeroes itself -- goes the same way every time the
instance runs in the active state.  Such a branch becomes a plain jump to that successor,
and the blocks reachable only through the other edge are dropped from the instance.

The analysis.  A forward data flow over the whole graph (the region's blocks and every
clone's), from the region's entry with every register unknown.  Its facts are the 64-bit
general registers known to hold a constant; the meet at a join keeps a register only when
every predecessor that reaches the join gives it the same value.  It is *conditional*
(Wegman and Zadeck's sparse conditional constant propagation): a clone branch it decides
propagates along its taken edge only, so a block reached only through an untaken edge gets
no facts and is dropped; facts only ever lose registers, so a decision, once it is made,
can only be withdrawn (both edges then propagate), never reversed, and the worklist reaches
a fixpoint (cycles of counted loops included).  The region's own branches are never
folded: they are the secret branches the pass if-converts.

The transfer of one instruction (:func:`step`) is exact for what it models, with Python
integers at the operand's width: ``mov``/``movabs`` of a register or an immediate,
``movzx``/``movsx``/``movsxd``, ``xor``/``sub`` of a register with itself (zero whatever
it held), ``add``, ``sub``, ``and``, ``or``, ``xor``, ``inc``, ``dec`` and ``lea`` (no RIP,
no RSP) on known registers and immediates, and ``cmp``/``test`` (flags only).  A 32-bit
write zero-extends into the 64-bit register; an 8- or 16-bit write keeps the register known
only when its old value was.  Anything else makes every register it writes unknown
(Capstone's implicit writes and the divisor registers of ``div`` included): a load from
memory, ``pop``, ``mul``, ``cmov``, ``setcc``, a call that is not cloned (every register),
a system call (every register).  RSP is never tracked.

Flags.  A branch is decided only from the last instruction of its own block that writes
flags, when that is a modelled instruction with known operands that sets every flag the
condition reads (``inc``/``dec`` leave CF, so ``jb`` after them is not decided).  Any later
instruction that may write a flag, modelled or not, withdraws them.

Why it is sound.  In the hardened region every block runs, on or off
(plugins/support/predication.py).  (1) When a clone block is *on*, the original run is on
the same path: the region's blocks before the call ran on it (each of them on) and did
exactly what the original did, and so did the clone's blocks before it; the registers then
hold what the original's hold, which is, for every register the analysis calls constant,
its constant, whichever path of the graph led there (the meet).  The original therefore
takes the edge the analysis computed, and so does the fold; the dropped blocks are ones
the original cannot reach from this call.  A constant written by a region block that is
*off* never reaches an on clone block: an off region block means the original did not run
it, and then the call after it is not on the original's path either, so its clone is off
too.  (2) When a clone block is *off*, nothing it does is kept (the predicated engine
restores what it writes), so the path it takes does not matter for correctness; the memory
rule (clone.py) holds on every cloned path, so the folded path cannot fault either.
(3) The fold depends only on the code, never on a run's values, so every run of the
region runs the same instructions, on or off: no leak is added.

What is not done.  Flags set in a predecessor block, values kept in memory (a spill and
its reload), and branches of the region itself are not decided.  The budget
(``clone_insns``) and the refusals of clone.py are checked before the fold, on every path
of each callee, the untaken ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from leakdbt.plugin_api import REGISTER64, BlockView, Flow, Insn, detail, detail_constants
from plugins.support.predication import SYSCALLS, analyse, body, topological

__all__ = ["Analysis", "Flags", "Graph", "Regs", "analyse_graph", "decide",
           "fold_constant_branches", "run_block", "step"]

Regs = dict[str, int]
"""64-bit register name -> its known value (a register absent: unknown)."""
Flags = dict[str, int]
"""Flag (``cf``, ``pf``, ``zf``, ``sf``, ``of``) -> its known value (absent: unknown)."""

class Graph(Protocol):
    """What the fold reads and updates of clone.py's ``Graph`` (not imported: clone.py
    imports this module)."""

    entry: int
    blocks: list[BlockView]
    clones: set[int]
    depths: dict[int, int]
    origin: dict[int, BlockView]
    function: dict[int, int]
    indexed: list[Any]  # clone.Indexed: ``key``, the block holding the access
    insns: int
    cyclic: bool


_HIGH = frozenset({"ah", "bh", "ch", "dh"})
_FLAG_DESTROYERS = frozenset({"popf", "popfq", "popfd", "sahf"})


def _mask(width: int) -> int:
    return (1 << (8 * width)) - 1


def _read(regs: Mapping[str, int], name: str, width: int) -> int | None:
    """The value of register ``name`` (any width; ``ah``...) or None when unknown."""
    full = REGISTER64.get(name)
    if full is None or full == "rsp" or full not in regs:
        return None
    shift = 8 if name in _HIGH else 0
    return (regs[full] >> shift) & _mask(width)


def _write(regs: Regs, name: str, width: int, value: int | None) -> None:
    """Write ``value`` (None: unknown) to register ``name`` of ``width`` bytes: a 32-bit
    write zero-extends, an 8/16-bit one merges into the old value (unknown if that is)."""
    full = REGISTER64.get(name)
    if full is None:
        return
    if value is None or full == "rsp":
        regs.pop(full, None)
        return
    value &= _mask(width)
    if width >= 4:
        regs[full] = value
        return
    old = regs.get(full)
    if old is None:
        return
    shift = 8 if name in _HIGH else 0
    keep = ~(_mask(width) << shift) & _mask(8)
    regs[full] = (old & keep) | (value << shift)


def _parity(value: int) -> int:
    return int(bin(value & 0xFF).count("1") % 2 == 0)


def _result_flags(res: int, width: int) -> Flags:
    bits = 8 * width
    return {"zf": int(res == 0), "sf": (res >> (bits - 1)) & 1, "pf": _parity(res)}


def _add(a: int, b: int, width: int) -> tuple[int, Flags]:
    bits, m = 8 * width, _mask(width)
    res = (a + b) & m
    flags = _result_flags(res, width)
    flags["cf"] = int(a + b > m)
    flags["of"] = (((a ^ res) & (b ^ res)) >> (bits - 1)) & 1
    return res, flags


def _sub(a: int, b: int, width: int) -> tuple[int, Flags]:
    bits, m = 8 * width, _mask(width)
    res = (a - b) & m
    flags = _result_flags(res, width)
    flags["cf"] = int(a < b)
    flags["of"] = (((a ^ b) & (a ^ res)) >> (bits - 1)) & 1
    return res, flags


def _logic(op: Callable[[int, int], int]) -> Callable[[int, int, int], tuple[int, Flags]]:
    def run(a: int, b: int, width: int) -> tuple[int, Flags]:
        res = op(a, b) & _mask(width)
        return res, {**_result_flags(res, width), "cf": 0, "of": 0}
    return run


_BINARY: dict[str, tuple[Callable[[int, int, int], tuple[int, Flags]], bool]] = {
    # mnemonic -> (result and flags, writes its destination)
    "add": (_add, True),
    "sub": (_sub, True),
    "cmp": (_sub, False),
    "and": (_logic(lambda a, b: a & b), True),
    "test": (_logic(lambda a, b: a & b), False),
    "or": (_logic(lambda a, b: a | b), True),
    "xor": (_logic(lambda a, b: a ^ b), True),
}


@dataclass
class _Operand:
    kind: str  # "reg", "imm", "mem"
    size: int
    reg: str = ""
    imm: int = 0
    mem: Any = None


def _operands(insn: Insn) -> tuple[Any, list[_Operand]] | None:
    try:
        ci = detail(insn)
    except ValueError:
        return None
    k = detail_constants()
    ops = []
    for op in ci.operands:
        if op.type == k.op_reg:
            ops.append(_Operand("reg", op.size, reg=ci.reg_name(op.reg)))
        elif op.type == k.op_mem:
            ops.append(_Operand("mem", op.size, mem=op.mem))
        else:
            ops.append(_Operand("imm", op.size, imm=op.imm))
    return ci, ops


def _value(regs: Mapping[str, int], op: _Operand) -> int | None:
    if op.kind == "reg":
        return _read(regs, op.reg, op.size)
    if op.kind == "imm":
        return op.imm & _mask(op.size)
    return None  # a load: unknown


def _model(insn: Insn, regs: Regs) -> tuple[bool, Flags | None]:
    """Run ``insn`` on ``regs`` when it is modelled: (modelled, the flags it leaves, None
    when it leaves no flag known or writes none).  Unmodelled: ``regs`` untouched."""
    m = insn.mnemonic
    if m not in _BINARY and m not in ("mov", "movabs", "movzx", "movsx", "movsxd", "inc",
                                      "dec", "lea"):
        return False, None
    decoded = _operands(insn)
    if decoded is None:
        return False, None
    ci, ops = decoded
    if m == "lea":
        if len(ops) != 2 or ops[0].kind != "reg":
            return False, None
        mem = ops[1].mem
        parts = 0
        for reg, scale in ((mem.base, 1), (mem.index, mem.scale)):
            if not reg:
                continue
            name = ci.reg_name(reg)
            v = _read(regs, name, 8 if REGISTER64.get(name) == name else 4)
            if v is None or name in ("rip", "eip"):
                _write(regs, ops[0].reg, ops[0].size, None)
                return True, None
            parts += v * scale
        if mem.segment:
            return False, None
        width = 8 if ci.addr_size == 8 else 4
        _write(regs, ops[0].reg, ops[0].size, (parts + mem.disp) & _mask(width))
        return True, None
    if any(op.kind == "mem" for op in ops) or not ops or ops[0].kind != "reg":
        return False, None
    dest = ops[0]
    if m in ("mov", "movabs", "movzx"):
        _write(regs, dest.reg, dest.size, _value(regs, ops[1]))
        return True, None
    if m in ("movsx", "movsxd"):
        v = _value(regs, ops[1])
        if v is not None:
            sign = 1 << (8 * ops[1].size - 1)
            v = (v ^ sign) - sign
        _write(regs, dest.reg, dest.size, v)
        return True, None
    a = _value(regs, dest)
    if m in ("inc", "dec"):
        if a is None:
            _write(regs, dest.reg, dest.size, None)
            return True, None
        res, flags = (_add if m == "inc" else _sub)(a, 1, dest.size)
        del flags["cf"]  # inc/dec leave CF as it was: not known here
        _write(regs, dest.reg, dest.size, res)
        return True, flags
    if len(ops) != 2:
        return False, None
    fn, writes = _BINARY[m]
    b = _value(regs, ops[1])
    if m in ("xor", "sub") and ops[1].kind == "reg" and ops[1].reg == dest.reg:
        a = b = 0  # zero whatever the register held (the flags of 0 - 0, 0 ^ 0)
    if a is None or b is None:
        if writes:
            _write(regs, dest.reg, dest.size, None)
        return True, None
    res, flags = fn(a, b, dest.size)
    if writes:
        _write(regs, dest.reg, dest.size, res)
    return True, flags


def step(insn: Insn, regs: Regs, flags: Flags | None) -> Flags | None:
    """Run ``insn`` on the known registers ``regs`` (updated in place); the flags known
    after it (``flags``: those known before)."""
    if not insn.raw:
        return flags  # a synthetic control-flow record (clone.py): no effect
    if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL) or insn.mnemonic in SYSCALLS:
        regs.clear()
        return None
    info = analyse(insn)
    modelled, new_flags = _model(insn, regs)
    if not modelled:
        for r in info.writes:
            regs.pop(REGISTER64.get(r, r), None)
    regs.pop("rsp", None)
    if modelled and info.flags_write:
        return new_flags
    if info.flags_write or insn.mnemonic in _FLAG_DESTROYERS:
        return None
    return flags


_CONDITIONS: dict[str, tuple[tuple[str, ...], Callable[[Flags], bool]]] = {
    "jo": (("of",), lambda f: f["of"] == 1),
    "jno": (("of",), lambda f: f["of"] == 0),
    "jb": (("cf",), lambda f: f["cf"] == 1),
    "jae": (("cf",), lambda f: f["cf"] == 0),
    "je": (("zf",), lambda f: f["zf"] == 1),
    "jne": (("zf",), lambda f: f["zf"] == 0),
    "jbe": (("cf", "zf"), lambda f: f["cf"] == 1 or f["zf"] == 1),
    "ja": (("cf", "zf"), lambda f: f["cf"] == 0 and f["zf"] == 0),
    "js": (("sf",), lambda f: f["sf"] == 1),
    "jns": (("sf",), lambda f: f["sf"] == 0),
    "jp": (("pf",), lambda f: f["pf"] == 1),
    "jnp": (("pf",), lambda f: f["pf"] == 0),
    "jl": (("sf", "of"), lambda f: f["sf"] != f["of"]),
    "jge": (("sf", "of"), lambda f: f["sf"] == f["of"]),
    "jle": (("zf", "sf", "of"), lambda f: f["zf"] == 1 or f["sf"] != f["of"]),
    "jg": (("zf", "sf", "of"), lambda f: f["zf"] == 0 and f["sf"] == f["of"]),
}


def decide(cc: str, flags: Flags | None) -> bool | None:
    """Is the branch ``cc`` (``je``...) taken with ``flags``; None when a flag it reads is
    unknown (or the condition is not a plain jcc)."""
    cond = _CONDITIONS.get(cc)
    if cond is None or flags is None or any(f not in flags for f in cond[0]):
        return None
    return cond[1](flags)


def run_block(block: BlockView, regs: Mapping[str, int]) -> tuple[Regs, Flags | None]:
    """The registers known after ``block``'s body from ``regs`` before it, and the flags
    its last flag write leaves known (None: none, or no flag write in the block)."""
    out = dict(regs)
    flags: Flags | None = None
    for insn in body(block):
        flags = step(insn, out, flags)
    return out, flags


@dataclass
class Analysis:
    """The fixpoint: ``facts`` (block -> registers known on entry; a block absent was not
    reached) and ``taken`` (a folded block -> the successor it always goes to)."""

    facts: dict[int, Regs] = field(default_factory=dict)
    taken: dict[int, int] = field(default_factory=dict)


def _meet(old: Regs | None, new: Regs) -> Regs:
    if old is None:
        return dict(new)
    return {r: v for r, v in old.items() if new.get(r) == v}


def _decision(block: BlockView, regs: Mapping[str, int]) -> tuple[Regs, int | None]:
    out, flags = run_block(block, regs)
    last = block.last
    if last.flow is not Flow.BRANCH or last.target is None:
        return out, None
    taken = decide(last.mnemonic, flags)
    if taken is None:
        return out, None
    return out, last.target if taken else last.next


def analyse_graph(entry: int, blocks: Iterable[BlockView], foldable: Iterable[int]
                  ) -> Analysis:
    """The conditional constant propagation over ``blocks`` (see the module doc), whose
    branches in ``foldable`` blocks (clone blocks) may be decided.  The entry, and any
    other non-foldable block left unreached (the region's blocks are all run), start with
    nothing known."""
    by = {b.start: b for b in blocks}
    can_fold = frozenset(foldable)
    result = Analysis()
    facts = result.facts
    for seed in [entry, *(k for k in by if k not in can_fold)]:
        if seed not in by or seed in facts:
            continue  # reached already
        facts[seed] = {}
        work = [seed]
        while work:
            k = work.pop()
            out, go = _decision(by[k], facts[k])
            nexts = [go] if go is not None and k in can_fold else list(by[k].successors)
            for s in nexts:
                if s not in by:
                    continue
                new = {} if s == entry else _meet(facts.get(s), out)
                if s not in facts or facts[s] != new:
                    facts[s] = new
                    work.append(s)
    for k in facts:
        if k in can_fold:
            _, go = _decision(by[k], facts[k])
            if go is not None:
                result.taken[k] = go
    return result


def fold_constant_branches(graph: Graph) -> None:
    """Fold ``graph``'s decided clone branches into jumps and drop the clone blocks no
    longer reached (in place); the Graph's bookkeeping follows."""
    if not graph.clones:
        return
    result = analyse_graph(graph.entry, graph.blocks, graph.clones)
    if not result.taken and all(b.start in result.facts for b in graph.blocks):
        return
    blocks = []
    for b in graph.blocks:
        if b.start in graph.clones and b.start not in result.facts:
            continue  # reached only through an untaken edge: not run for this instance
        go = result.taken.get(b.start)
        if go is not None:
            at = graph.origin[b.start].last if b.start in graph.origin else b.last
            jump = Insn(at.address, b"", "jmp", "", f"{go:#x}", Flow.JUMP, go)
            b = BlockView(b.start, (*b.insns[:-1], jump), (go,))
        blocks.append(b)
    kept = {b.start for b in blocks}
    dropped = graph.clones - kept
    graph.blocks = blocks
    graph.clones &= kept
    for table in (graph.depths, graph.origin, graph.function):
        for k in dropped:
            table.pop(k, None)
    graph.indexed = [a for a in graph.indexed if a.key in kept]
    graph.insns = sum(1 for k in graph.clones for i in body(graph.origin[k])
                      if i.flow not in (Flow.CALL, Flow.INDIRECT_CALL))
    if graph.cyclic:
        graph.cyclic = topological(graph.entry, blocks, lambda a, c: False) is None
