"""Predicated execution of a region's blocks: the engine of if-conversion and bounded-loop.

Every block of an acyclic piece of a region runs, in a topological order, whatever the
secret; a block whose *predicate* is off runs too, and is then undone.  A predicate is a
quadword slot in the region's scratch area holding all-ones (the block is on the path the
original takes) or zero.

One predicated block ``b`` (predicate ``P``) becomes::

    snapshot the registers b writes (mov to slots; movups for xmm; stmxcsr when b uses SSE)
    for each instruction of b except its final jump:
        div/idiv: when P is off, RAX = RDX = 0 and the divisor = 1 (cmov; flags kept)
        store:    record its address (lea) and the old value of the bytes it writes
        .insn A   (the original instruction, or another pass's sequence for it)
    setcc into a byte slot: b's branch condition (flags untouched), when an edge needs it
    commit, under one ``cmp P, 0``: registers cmov'ed from their snapshots; stores written
        back with their old value when P is off (load, cmov, store: the same address is
        touched either way); xmm registers, MXCSR and, if b writes flags, RFLAGS selected
        likewise; then the edges' masks (P & cond, P & ~cond, or P): the predicate of a
        successor with several predecessors is ``mov``ed by the first and ``or``ed by the
        others (their masks exclude each other), an exit's glue is the client's.

A block with no instructions but its jump and only unconditional edges costs nothing: its
successor simply shares its predicate; so does a block's only successor along a jump.  The
predicates of an always-on block's successors are its condition byte (or its negation).

State outside the snapshot slots is therefore exactly what the original path produces: an
inactive block leaves no trace but its (path-independent) memory accesses and time.  A block
whose predicate is known to be on (an if-converted region's entry) runs unpredicated.

Flags are kept lazily.  The logical RFLAGS (the original's at this point) are in the register
or in one slot; ``pushfq`` runs before the first clobber (a commit's ``cmp``) and ``popfq``
only before an instruction that reads flags it does not define first (Capstone's eflags
access: a flag left undefined, or a shift by CL, counts as read), or at the end.  A block
that writes no flag needs no RFLAGS snapshot or select.  ``pushfq``/``popfq`` move RSP, so RSP
is first moved down past the red zone with ``lea`` (flags untouched) and back up after, and
the flags land in (or come from) a scratch slot: nothing at or above RSP - 128 is written.
All glue keeps RSP as it was between original instructions.

Scratch: slots at ``[rsp - REGION_SCRATCH - 8 k]``, per-instruction sequences (ct-division)
use the :data:`~leakdbt.plugin_api.INSN_SCRATCH` area above them.  RAX (and RCX, for stores
and glue that needs it) are borrowed in a commit, saved to and restored from slots; constant
slots (0, 1) are initialised only when a division guard uses them.

Memory-safety rule (checked by the clients with :func:`always_valid` and the coverage check
:func:`covered`): an inactive block runs its memory accesses too, so each access of a
predicated block must be valid whatever the path, and touch an address that does not depend
on the path.  Accepted are ``[rsp + d]`` with ``d >= -128`` and no index (the frame; RSP does
not change in predicated code), RIP-relative operands (module data), and addresses computed
only from registers whose value does not depend on the path, which the original accesses on
every path (see the clients for the exact form).  The data an inactive block reads is
garbage-in, garbage-out and discarded.  An access the rule does not accept may run
*guarded* (:class:`Guard`, if-conversion's predicated blocks): its address registers are
redirected to a known-valid place while its block is off.

Cost per predicated block with ``w`` written (masked) general registers and ``s`` stores:
``2 w + 10 s`` (snapshot and cmov; record and undo) plus the commit: 3 (``pushfq``) + 1
(``cmp``) + 2 (borrowing RAX) when anything is committed, 3 more when the block writes flags
(select), 2 when it borrows RCX; its edges: 1 (``setcc``) + 3 for the first mask, 1 for the
second, 1 per successor predicate (``mov``/``or``); 3 (``popfq``) when it reads incoming
flags that are in their slot.  E.g. a block that writes one register and the flags and ends
in a branch to two successors: about 22.  10 per xmm register written, 6 when it uses SSE
(MXCSR), 10 per division.  Zero for an empty block with an unconditional edge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from leakdbt.plugin_api import (
    API_VERSION,
    REGION_SCRATCH,
    REGISTER64,
    BlockView,
    ContractView,
    Flow,
    Insn,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    allocation_bounds,
    detail,
    detail_constants,
    goto,
    memory_access,
    original,
)
from plugins.support.value_range import upper_bound

__all__ = ["INIT", "INSN_PASSES", "Engine", "Guard", "InsnInfo", "Layout", "Mem", "Pred", "Refused",
           "Span", "Terminator",
           "analyse", "always_valid", "control_refusal", "covered", "dead_end", "is_string",
           "copied_blocks", "keeps_base", "needs_flags",
           "predicated_refusal", "terminator", "topological", "topological_nodes",
           "writes_flags"]

MAX_SPAN = 1 << 16
"""The longest value-range span a ``keep`` guard serves (oblivious-table's limit)."""
MAX_FRAME = 0x1000  # scratch bytes below REGION_SCRATCH a region may use
CLONE_BASE = REGION_SCRATCH + MAX_FRAME
"""How far below the region's RSP a callee clone's caller frame ends (plugins/support/clone.py):
a clone's RSP is this far below where the original call has it."""

_SUB = {"rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"),
        "rcx": ("ecx", "cx", "cl", "ch"), "rdx": ("edx", "dx", "dl", "dh"),
        "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"), "rbp": ("ebp", "bp", "bpl"),
        "rsp": ("esp", "sp", "spl"),
        **{f"r{i}": (f"r{i}d", f"r{i}w", f"r{i}b") for i in range(8, 16)}}
GPR = REGISTER64
"""Capstone register name -> its 64-bit general register."""
GPR32 = {full: names[0] for full, names in _SUB.items()}
"""64-bit general register -> its 32-bit name."""
XMM = frozenset(f"xmm{i}" for i in range(16))
_IGNORED = frozenset({"rflags", "eflags", "rip", "eip"})
_STRING = frozenset(f"{op}{size}" for op in ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")
                    for size in "bwdq")
CONDITIONAL = frozenset({"ja", "jae", "jb", "jbe", "je", "jg", "jge", "jl", "jle", "jne", "jno",
                         "jnp", "jns", "jo", "jp", "js"})
SYSCALLS = frozenset({"syscall", "sysenter", "int", "int1", "int3", "into"})
# Stores whose memory operand does not say what they write: the whole XSAVE/FXSAVE area, or
# a masked store (maskmovdqu's implicit [rdi]; vmaskmov*/vpmaskmov* write only some lanes).
_AREA_STORE = re.compile(r"(f?xsave|maskmov|vmaskmov|vpmaskmov)")
_PTR = {1: "byte ptr", 2: "word ptr", 4: "dword ptr", 8: "qword ptr"}


INSN_PASSES = ("ct-division", "oblivious-table", "fp-ftz-daz")
"""The per-instruction passes a whole-region pass runs before: their rewrites of the
instructions its code carries as ``.insn`` lines land inside it (docs/passes.md)."""


class Refused(Exception):
    """Why a pass refuses a region (its message becomes the Refusal's reason)."""


class WholeRegionPass:
    """A pass that replaces regions of one shape whole (contract kind = that shape, or
    none) with the code ``rewrite`` returns; a region of that kind but another shape is
    refused.  if-conversion and bounded-loop are two of these."""

    api_version = API_VERSION
    after: tuple[str, ...] = ()

    def __init__(self, name: str, shape: str, rewrite: Callable[[RegionView], list[str]],
                 before: tuple[str, ...] = ()) -> None:
        self.name = name
        self.shape = shape
        self.rewrite = rewrite
        self.before = before

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView
                ) -> bool | Refusal:
        """Regions of the pass's shape."""
        if region.kind not in (None, self.shape):
            return False
        if region.shape != self.shape:
            return (Refusal(f"region shape is {region.shape}, not a {self.shape} region")
                    if region.kind == self.shape else False)
        return True

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        """The region's code, or why there is none."""
        try:
            return Rewrite(code=tuple(self.rewrite(region)))
        except Refused as e:
            return Refusal(str(e))


def _hex(value: int) -> str:
    return f"{value:#x}"


def slot(off: int, ptr: str = "qword", depth: int = 0) -> str:
    """The scratch slot ``off`` bytes below the region's RSP as a memory operand, while RSP
    is ``depth`` bytes below the region's (inside a callee clone; 0 elsewhere)."""
    return f"{ptr} ptr [{_rsp(depth - off)}]"


def _rsp(disp: int) -> str:
    """``rsp + disp`` in Capstone's spelling."""
    return f"rsp - {_hex(-disp)}" if disp < 0 else f"rsp + {_hex(disp)}"


def where(insn: Insn, bias: int) -> str:
    """How messages name an instruction: its runtime address and text."""
    return f"'{insn.text}' at {insn.address + bias:#x}"


# ---------------------------------------------------------------------------------------------
# Decoding what an instruction reads and writes


@dataclass(frozen=True)
class Mem:
    """A memory operand of an instruction."""

    width: int
    read: bool
    write: bool
    segment: str | None
    base: str | None  # Capstone name; "rip" for RIP-relative
    index: str | None
    scale: int
    disp: int
    rip_target: int | None  # link-time address of a RIP-relative operand

    @property
    def regs(self) -> frozenset[str]:
        """The general registers (64-bit names) the address is computed from."""
        return frozenset(GPR[r] for r in (self.base, self.index) if r is not None and r in GPR)

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two operands denote the same address (given the same registers)."""
        return (self.segment, self.base, self.index, self.scale, self.disp, self.rip_target)

    def address(self) -> str:
        """``[base + index*scale +/- disp]`` in Capstone's spelling (not for RIP/segments)."""
        parts = [p for p in (self.base,) if p]
        if self.index:
            parts.append(self.index if self.scale == 1 else f"{self.index}*{self.scale}")
        text = " + ".join(parts)
        if not parts:
            raise Refused("absolute memory operand")
        if self.disp > 0:
            text += f" + {_hex(self.disp)}"
        elif self.disp < 0:
            text += f" - {_hex(-self.disp)}"
        return f"[{text}]"


@dataclass(frozen=True)
class InsnInfo:
    """What one instruction reads and writes, in the terms the passes reason in."""

    insn: Insn
    reads: frozenset[str]  # 64-bit GPR names, xmmN, other Capstone names (no flags/rip)
    writes: frozenset[str]
    mems: tuple[Mem, ...]
    addr32: bool  # 32-bit addressing (0x67 prefix)
    divisor: str | None = None  # div/idiv: the divisor register (Capstone name) or "mem"
    div_width: int = 0
    flags_read: bool = False  # reads a flag (or may leave one as it was: shift by CL, ...)
    flags_write: bool = False  # may change a flag (arithmetic or system)
    flags_define: bool = False  # sets CF PF AF ZF SF OF to values that do not depend on them


def _norm(name: str) -> str:
    return GPR.get(name, name)


_NO_ACCESS = ("lea", "nop")  # memory operand, but no memory access


def analyse(insn: Insn) -> InsnInfo:
    """Registers read and written (implicit ones included) and memory operands of ``insn``."""
    k = detail_constants()
    try:
        ci = detail(insn)
    except ValueError:
        raise Refused(f"cannot decode the instruction at {insn.address:#x}") from None
    regs_read, regs_write = ci.regs_access()
    reads = frozenset(_norm(ci.reg_name(r)) for r in regs_read) - _IGNORED
    writes = frozenset(_norm(ci.reg_name(r)) for r in regs_write) - _IGNORED
    mems: list[Mem] = []
    divisor: str | None = None
    width = 0
    for n, op in enumerate(ci.operands):
        if op.type == k.op_mem and insn.mnemonic not in _NO_ACCESS:
            m = op.mem
            base = ci.reg_name(m.base) if m.base else None
            segment = ci.reg_name(m.segment) if m.segment else None
            mems.append(Mem(op.size, *memory_access(insn.mnemonic, n, op.access),
                            segment if segment in ("fs", "gs") else None, base,
                            ci.reg_name(m.index) if m.index else None, m.scale, m.disp,
                            insn.rip_target if base == "rip" else None))
    if insn.mnemonic in ("div", "idiv"):
        op = ci.operands[0]
        width = op.size
        divisor = ci.reg_name(op.reg) if op.type == k.op_reg else "mem"
        writes |= {"rax", "rdx", *([GPR[divisor]] if divisor in GPR else [])}
    read, write, define = _flag_access(ci.eflags, insn)
    # 32-bit addressing matters for an access only: ``lea edx, [ecx - 1]`` is arithmetic
    addr32 = ci.addr_size != 8 and (bool(mems) or insn.mnemonic not in _NO_ACCESS)
    return InsnInfo(insn, reads, writes, tuple(mems), addr32, divisor, width, read, write,
                    define)


_ARITH = ("CF", "PF", "AF", "ZF", "SF", "OF")
_VARIABLE_COUNT = frozenset({"shl", "shr", "sar", "sal", "rol", "ror", "rcl", "rcr", "shld",
                             "shrd"})


@lru_cache(maxsize=1)
def _flag_bits() -> tuple[int, int, tuple[int, ...], int]:
    """Capstone's eflags bits: reads, writes, per arithmetic flag the bits that define it,
    and the bits that leave an arithmetic flag depending on its old value."""
    bits = detail_constants().eflags
    read = sum(b for n, b in bits.items() if n.startswith(("TEST_", "PRIOR_")))
    write = sum(b for n, b in bits.items()
                if n.startswith(("MODIFY_", "SET_", "RESET_", "UNDEFINED_", "PRIOR_")))
    defines = tuple(sum(bits.get(f"{k}_{f}", 0) for k in ("MODIFY", "SET", "RESET"))
                    for f in _ARITH)
    vague = sum(bits.get(f"{k}_{f}", 0) for k in ("UNDEFINED", "PRIOR", "TEST") for f in _ARITH)
    return read, write, defines, vague


def _flag_access(eflags: int, insn: Insn) -> tuple[bool, bool, bool]:
    """(reads flags, writes flags, defines all six arithmetic flags) for one instruction.
    A flag the manual leaves undefined counts as not defined (it may keep its value); a
    shift or rotate by CL may leave every flag as it was (count 0), so it reads them."""
    read, write, defines, vague = _flag_bits()
    reads = bool(eflags & read)
    define = not eflags & vague and all(eflags & d for d in defines)
    if insn.mnemonic in _VARIABLE_COUNT and not re.search(r", (0x[0-9a-f]+|\d+)$", insn.op_str):
        reads, define = True, False
    return reads, bool(eflags & write), define


# ---------------------------------------------------------------------------------------------
# Blocks, terminators, orders


@dataclass(frozen=True)
class Terminator:
    """How control leaves a block: ``branch`` (jcc: ``cc``, ``taken``, ``fall``), ``jump``
    or ``fall`` (to ``taken``), ``ret``, or ``end`` (a dead end, :func:`dead_end`)."""

    kind: str
    taken: int | None = None
    fall: int | None = None
    cc: str = ""


def is_string(insn: Insn) -> bool:
    """A string instruction (movsb ... outsq; SSE ``movsd xmm, ...`` is not one)."""
    return insn.mnemonic in _STRING and "xmm" not in insn.op_str


def control_refusal(insn: Insn, bias: int) -> str | None:
    """Why an instruction cannot be part of predicated code whatever the block, or None."""
    flow = insn.flow
    w = where(insn, bias)
    if flow in (Flow.CALL, Flow.INDIRECT_CALL):
        return f"{w} is a call (a callee cannot be predicated)"
    if flow is Flow.INDIRECT_JUMP:
        return f"{w} is an indirect jump"
    if flow is Flow.STOP:
        return f"{w} stops the program"
    if flow is Flow.RETURN and (insn.mnemonic != "ret" or insn.op_str):
        return f"{w} is not a plain ret"
    if flow is Flow.BRANCH and insn.mnemonic not in CONDITIONAL:
        return f"{w}: loop/jrcxz branches are not supported"
    if insn.mnemonic in SYSCALLS:
        return f"{w} is a system call or software interrupt"
    if is_string(insn):
        return f"{w} is a string instruction"
    return None


def dead_end(block: BlockView) -> bool:
    """Does the program's path end with this block: a call the translator knows does not
    return (``abort``, ``__assert_fail``, a function with no return path), or a stop
    (``hlt``, ``ud2``)?  The translator gives such a block no successor.  A whole-region
    rewrite does not run it predicated: where its predicate is on, control leaves for the
    original code (:meth:`Engine.block`), which ends the program as the original does."""
    return not block.successors and block.last.flow in (Flow.CALL, Flow.STOP)


def terminator(block: BlockView) -> Terminator:
    """The block's terminator (its successors as the original decides them)."""
    last = block.last
    if dead_end(block):
        return Terminator("end")
    if last.flow is Flow.BRANCH:
        assert last.target is not None
        return Terminator("branch", last.target, last.next, last.mnemonic[1:])
    if last.flow is Flow.JUMP:
        return Terminator("jump", last.target)
    if last.flow is Flow.RETURN:
        return Terminator("ret")
    return Terminator("fall", last.next)


def body(block: BlockView) -> tuple[Insn, ...]:
    """The block's instructions without a final branch, jump or return; none for a dead
    end (they run only in the original code, :func:`dead_end`)."""
    if dead_end(block):
        return ()
    if block.last.flow in (Flow.BRANCH, Flow.JUMP, Flow.RETURN):
        return block.insns[:-1]
    return block.insns


def successors(block: BlockView) -> list[int]:
    """Where control goes after the block (no repeats, taken edge first)."""
    t = terminator(block)
    return list(dict.fromkeys(s for s in (t.taken, t.fall) if s is not None))


def topological(entry: int, blocks: Sequence[BlockView], ignore: Callable[[int, int], bool]
                ) -> list[BlockView] | None:
    """The blocks in a topological order of the edges between them (except those ``ignore``
    says to leave out), the entry first, by address otherwise; None when there is a cycle."""
    by_start = {b.start: b for b in blocks}
    edges = {b.start: [s for s in successors(b) if s in by_start and not ignore(b.start, s)]
             for b in blocks}
    order = topological_nodes(entry, edges)
    return None if order is None else [by_start[b] for b in order]


def topological_nodes(entry: int, edges: Mapping[int, Iterable[int]]) -> list[int] | None:
    """The nodes of ``edges`` (node -> successors, all nodes) in a topological order, the
    entry first, the lowest ready node next (Kahn's); None when there is a cycle or the
    entry has a predecessor."""
    indegree = dict.fromkeys(edges, 0)
    for targets in edges.values():
        for s in targets:
            indegree[s] += 1
    if indegree[entry]:
        return None
    order: list[int] = []
    ready = [entry]
    while ready:
        ready.sort()
        n = ready.pop(0)
        order.append(n)
        for s in edges[n]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    return order if len(order) == len(edges) else None


def covered(start: int, edges: dict[int, list[int]], cover: Iterable[int]) -> bool:
    """Does every path from ``start`` to the end (an edge to a node not in ``edges``, or a
    node without successors) pass through a node of ``cover``?"""
    cover = set(cover)
    if start in cover:
        return True
    seen = {start}
    stack = [start]
    while stack:
        n = stack.pop()
        if n not in edges or not edges[n]:
            return False
        for s in edges[n]:
            if s in cover or s in seen:
                continue
            seen.add(s)
            stack.append(s)
    return True  # every path ran into the cover before reaching the end


def always_valid(mem: Mem) -> bool:
    """Frame slots at or above the red zone's bottom, and module data (RIP-relative)."""
    if mem.base == "rip":
        return mem.index is None
    return (mem.base == "rsp" and mem.index is None and mem.disp >= -128
            and mem.segment is None)


def predicated_refusal(info: InsnInfo, bias: int) -> str | None:
    """Why ``info``'s instruction cannot run predicated (besides memory safety), or None."""
    insn = info.insn
    w = where(insn, bias)
    if "rsp" in info.writes:
        return f"{w} writes rsp"
    if info.addr32:
        return f"{w} uses 32-bit addressing"
    if insn.mnemonic.startswith("v") and any(
            r.startswith(("xmm", "ymm", "zmm")) for r in info.reads | info.writes):
        return f"{w} is an AVX instruction (ymm/zmm state is not predicated)"
    if insn.mnemonic.startswith("f") or any(r.startswith(("st", "fp", "mm")) and r not in GPR
                                            for r in info.reads | info.writes):
        return f"{w} uses the x87/MMX state, which is not predicated"
    if insn.mnemonic.startswith(("ldmxcsr", "fxrstor", "xrstor")):
        return f"{w} writes mxcsr, which is not predicated"
    if insn.text.startswith("lock ") or insn.mnemonic.startswith("cmpxchg") or (
            insn.mnemonic == "xchg" and info.mems):
        # a locked read-modify-write must stay one atomic access, which load, select and
        # store back is not; cmpxchg also writes RAX (RDX) and memory only when equal
        return f"{w} is an atomic or compare-and-exchange instruction (not predicated)"
    if insn.mnemonic.startswith("xlat"):  # Capstone gives it no operand, reads or writes
        return f"{w} is xlat (its load from [rbx + al] and its write of al are implicit)"
    if _AREA_STORE.match(insn.mnemonic):
        return f"{w} stores more memory than its operand names (not undone)"
    other = sorted(r for r in info.writes if r not in GPR and r not in XMM)
    if other:
        return f"{w} writes {other[0]}, which is not predicated"
    for m in info.mems:
        if m.write and m.width not in (1, 2, 4, 8, 16):
            return f"{w} writes {m.width} bytes of memory (only 1, 2, 4, 8 or 16 are undone)"
        if m.write and m.segment:
            return f"{w} writes through {m.segment}: (segment stores are not undone)"
        if m.write and m.base is None and m.index is None:
            return f"{w} writes to an absolute address (not undone)"
    if info.divisor is not None:
        d = info.divisor
        if d == "mem":
            return f"{w}: a memory divisor in a conditional block is not supported"
        if GPR.get(d) == "rax" or (GPR.get(d) == "rdx" and info.div_width > 1):
            return f"{w}: a divisor in the dividend's registers is not supported"
    return None


# ---------------------------------------------------------------------------------------------
# Flags across blocks


def writes_flags(infos: Sequence[InsnInfo]) -> bool:
    """Does any of the instructions change a flag?"""
    return any(i.flags_write for i in infos)


def needs_flags(infos: Sequence[InsnInfo], read_at_end: bool) -> bool:
    """Does running ``infos`` (then reading the flags if ``read_at_end``) need the flags it
    starts with: it reads one before all six arithmetic flags are defined, or changes only
    some of them (the others pass through)?  False for code that touches no flag and does
    not read them at the end: its flags simply stay where they are."""
    touched = False
    for i in infos:
        if i.flags_read:
            return True
        if i.flags_define:
            return False
        touched |= i.flags_write
    return touched or read_at_end


# ---------------------------------------------------------------------------------------------
# Emitting predicated code


@dataclass(frozen=True)
class Pred:
    """A block's predicate: a scratch slot holding a qword mask (``mask``: all-ones when the
    block is on), or a condition byte from ``setcc`` (``byte``: 1 when on; ``nbyte``: 0 when
    on)."""

    slot: int
    kind: str = "mask"

    @property
    def on(self) -> str:
        """The condition code that holds after :meth:`test` when the block is on."""
        return "e" if self.kind == "nbyte" else "ne"

    @property
    def off(self) -> str:
        return "ne" if self.kind == "nbyte" else "e"

    def test(self, depth: int = 0) -> str:
        return f"cmp {slot(self.slot, 'qword' if self.kind == 'mask' else 'byte', depth)}, 0"

    def mask(self, depth: int = 0) -> list[str]:
        """RAX = the predicate as a mask (flags clobbered)."""
        if self.kind == "mask":
            return [f"mov rax, {slot(self.slot, 'qword', depth)}"]
        return [f"movzx eax, {slot(self.slot, 'byte', depth)}",
                "neg rax" if self.kind == "byte" else "sub rax, 1"]


@dataclass(frozen=True)
class Guard:
    """A memory access of a predicated block that the memory rule cannot prove valid on
    the paths where the block is off (``if (p) x = *p``; a store through a pointer the
    arm computed): it runs *guarded*.  Just before it, when the block's predicate is off,
    its address registers are redirected (``cmov``) so that it touches a known-valid
    place, by ``target``:

    - ``slot``: the index becomes 0 and the base the address of the region's safe scratch
      slot (16 bytes) minus the displacement;
    - ``base``: the block itself set the base to module data (``lea base, [rip + X]``, no
      later write): the base stays and the index becomes 0, so the access lands on
      ``X + disp``, the table's first element;
    - ``data``: the displacement is the link-time address of a data object of a module
      loaded where it was linked (non-PIE ``movzx eax, byte ptr [rdx + 0x4a3c20]``): base
      and index become 0, so the access lands on that address, inside the table;
    - ``keep`` (a load only, :func:`keeps_base`: the base a register no instruction of the
      region writes, the index one the block bounds): the index becomes 0 and the base
      stays, so the load lands on ``base + disp``, the start of the value-range span
      oblivious-table scans for it — when the run-time probe (``.bounds``, ``mapped``)
      finds ``w`` readable bytes there; otherwise (a NULL or junk base the program tests
      before the arm) the base is redirected as for ``slot``.  The choice depends only on
      the base (public, path-independent), never on the predicate's value beyond the
      final ``cmov``;
    - ``loop`` (a clone's access indexed by a counted loop's counter,
      plugins/support/arm_loop.py ``loop_guards``): the index, and a base register, come
      from slots the loop's glue fills with the values they have in the same iteration
      when the block is on, so the access touches the same address either way.

    The registers are snapshotted with the block's own, so an off block's commit puts them
    back; when the block is on, nothing changes.  A store guarded so is recorded and undone
    at the redirected address (the bytes there come back).  See :meth:`Engine.guard` for
    the code and the leakage it leaves."""

    mem: Mem
    target: str = "slot"
    # target "loop" (a clone's access indexed by a counted loop's counter,
    # plugins/support/arm_loop.py): the index comes from slot ``index_slot`` and the base,
    # unless ``base_slot`` is None (it is RSP), from ``base_slot``.
    index_slot: int | None = None
    base_slot: int | None = None

    @property
    def regs(self) -> frozenset[str]:
        """The registers the guard may change (64-bit names)."""
        out = {GPR[self.mem.index]} if self.mem.index else set()
        if self.mem.base and (self.target not in ("base", "loop") or self.base_slot is not None):
            out.add(GPR[self.mem.base])
        return frozenset(out)


def copied_blocks(region: RegionView) -> tuple[BlockView, ...]:
    """The blocks of ``region`` whose instructions if-conversion's code runs: for an
    iteration region (a block jumps back to the entry) those from which the entry is
    reachable, one iteration (plugins/if_conversion.py ``_iteration``); else all; dead ends
    excepted (they run only once control has left the copy)."""
    blocks = region.blocks
    entry = region.entry
    if any(entry in successors(b) for b in blocks):
        preds: dict[int, list[int]] = {b.start: [] for b in blocks}
        for b in blocks:
            for t in successors(b):
                if t in preds:
                    preds[t].append(b.start)
        members, stack = {entry}, list(preds[entry])
        while stack:
            n = stack.pop()
            if n not in members:
                members.add(n)
                stack += preds[n]
        blocks = tuple(b for b in blocks if b.start in members)
    return tuple(b for b in blocks if not dead_end(b))


def keeps_base(region: RegionView, block: BlockView, at: int) -> Mem | None:
    """The memory operand of ``block.insns[at]`` when a guard may keep its base (the
    ``keep`` target of :class:`Guard`), else None: a load (no write) ``[base + index*scale
    + disp]`` with distinct general registers (not RSP/RIP), no segment, at most 8 bytes,
    whose base no instruction of the region's copied blocks (:func:`copied_blocks`) writes
    (its value is the region's entry value on every path: public, as a value-range span's
    start is taken to be) and whose index the block bounds
    (:func:`plugins.support.value_range.upper_bound`, span within ``MAX_SPAN``).
    if-conversion picks the target with it, and oblivious-table rewrites exactly those
    accesses with a value-range scan from ``base + disp``: one rule, so the guard's
    off-path address is the scan's start."""
    blocks = copied_blocks(region)
    if block.start not in {b.start for b in blocks}:
        return None
    info = analyse(block.insns[at])
    if len(info.mems) != 1 or info.addr32:
        return None
    m = info.mems[0]
    base, index = GPR.get(m.base or ""), GPR.get(m.index or "")
    if (m.write or not m.read or m.segment or m.width > 8 or base is None or index is None
            or base == index or "rsp" in (base, index)):
        return None
    if not -(1 << 30) < m.disp < 1 << 30:
        return None
    if any(base in analyse(i).writes for b in blocks for i in b.insns):  # jumps included
        return None
    bound = upper_bound(block.insns, at, index)
    if bound is None or bound * m.scale + m.width > MAX_SPAN:
        return None
    return m


Special = Callable[[int | None], list[str]]
"""Glue for an edge the engine does not own (an exit, a back edge), given its mask in RAX
(all-ones: the edge is taken): flags free, may use RCX (then saved), must keep RAX.  Empty:
the edge needs nothing."""

INIT = "\0init"
"""Marks where the constant slots are initialised (:meth:`Engine.finish`)."""

_RCX = re.compile(r"\b(rcx|ecx|cx|cl|ch)\b")


@dataclass(frozen=True)
class Span:
    """Blocks laid out together right after ``head``'s block, in their topological order
    from ``first``: every path to them crosses the edge ``head -> first``.  ``skip``: a
    kept branch's side, jumped over when the edge is not taken (``taken``: it is the
    branch's taken edge); ``joins`` are the blocks outside it that its blocks give a
    predicate to (their slots start at 0 before the jump).  Otherwise a call's span:
    ``regs`` are the clean registers the call's block keeps on every path until the span
    ends."""

    head: int
    first: int
    blocks: frozenset[int]
    skip: bool
    taken: bool = False
    joins: tuple[int, ...] = ()
    regs: tuple[str, ...] = ()


@dataclass
class Layout:
    """The order :meth:`Engine.run` runs the blocks in, and its spans (made by
    plugins/support/public_branches.py)."""

    order: list[BlockView]
    spans: dict[int, list[Span]] = field(default_factory=dict)  # by first block, outer first
    calls: dict[int, Span] = field(default_factory=dict)  # call block -> its span (regs)


class Engine:
    """Emits predicated blocks and owns the scratch frame below ``REGION_SCRATCH``.

    Flags are kept lazily: the logical RFLAGS (those of the original at this point) are in
    the register (``live``), in the slot ``fl`` (``saved``), or both; ``popfq`` only runs
    when an instruction needs them in the register, ``pushfq`` only when they would be lost.
    """

    def __init__(self, bias: int, floor: int = 0) -> None:
        """``floor``: how far below the region's RSP conditional code may move RSP (its
        slots then start that much deeper, below every RSP the code runs with)."""
        self.bias = bias
        self.top = REGION_SCRATCH + floor
        self.deepest = self.top
        self.t1 = self.alloc()  # RAX while borrowed
        self.t2 = self.alloc()  # RCX while borrowed
        self.fl = self.alloc()  # the logical flags while not live
        self.nf = self.alloc()  # a block's final flags during its commit
        self.zero = self.alloc()
        self.one = self.alloc()
        self.high_one = self.alloc()  # bh/ch/dh = 1
        self.consts: set[int] = set()
        self.live = True
        self.saved = False
        self.preds: dict[int, Pred | None] = {}  # None: always on
        self.init_placed = False  # INIT goes after the first always-on block (RSP final)
        # Callee clones (plugins/support/clone.py) and a branch region's own epilogues move
        # RSP: how far below the region's RSP it is now, at the start of each block (by its
        # key) and after each instruction.
        self.depth = 0
        self.entry_depths: dict[int, int] = {}
        self.deltas: dict[int, int] = {}  # instruction address -> what it adds to the depth
        self.rebased: frozenset[int] = frozenset()  # clone instructions (see original())
        self.stubs: list[str] = []  # out-of-line exits of dead ends, after the code
        self.guards: dict[int, Guard] = {}  # instruction address -> its guard (see Guard)
        self.safe: int | None = None  # the 16-byte slot guarded accesses go to when off
        self.conds: dict[int, int] = {}  # block -> the slot of its condition byte
        self.skips: dict[Span, tuple[str, int]] = {}  # a skip's label, RSP's depth at it
        # a call block keeping registers: its predicate, their values before it (slots)
        self.kept: dict[int, tuple[Pred | None, dict[str, int]]] = {}

    def at(self, off: int, ptr: str = "qword") -> str:
        """The slot ``off`` as a memory operand where RSP is now."""
        return slot(off, ptr, self.depth)

    def alloc(self, size: int = 8) -> int:
        """A new slot of ``size`` bytes at ``[rsp - offset]`` (the offset is returned)."""
        self.top += size
        self.deepest = max(self.deepest, self.top)
        if self.deepest - REGION_SCRATCH > MAX_FRAME:
            raise Refused(f"the region needs more than {MAX_FRAME} bytes of scratch memory")
        return self.top

    def finish(self, lines: list[str]) -> list[str]:
        """``lines`` with the :data:`INIT` marker replaced by the used constants' slots."""
        values = {self.zero: 0, self.one: 1, self.high_one: 0x100}
        init = [f"mov {slot(c)}, {values[c]:#x}" for c in sorted(self.consts)]
        out: list[str] = []
        for line in [*lines, *self.stubs]:
            out += init if line == INIT else [line]
        return out

    # -- flags ---------------------------------------------------------------------------

    def save_flags(self, off: int) -> list[str]:
        """RFLAGS into the slot ``off`` (RSP moved below the red zone meanwhile)."""
        d = self.depth
        return [f"lea rsp, [{_rsp(d - off + 8)}]", "pushfq", f"lea rsp, [{_rsp(off - d)}]"]

    def load_flags(self, off: int) -> list[str]:
        """RFLAGS from the slot ``off``."""
        d = self.depth
        return [f"lea rsp, [{_rsp(d - off)}]", "popfq", f"lea rsp, [{_rsp(off - 8 - d)}]"]

    def move_to(self, depth: int) -> list[str]:
        """RSP moved (flags untouched) to ``depth`` bytes below the region's RSP."""
        if depth == self.depth:
            return []
        out = [f"lea rsp, [{_rsp(self.depth - depth)}]"]
        self.depth = depth
        return out

    def flags_to_reg(self) -> list[str]:
        """Make the register hold the logical flags."""
        if self.live:
            return []
        self.live = True
        return self.load_flags(self.fl)

    def flags_to_slot(self) -> list[str]:
        """Make the slot ``fl`` hold the logical flags (the register may then be clobbered)."""
        if self.saved:
            return []
        assert self.live
        self.saved = True
        return self.save_flags(self.fl)

    def value_of(self, reg: str) -> str:
        """The operand holding general register ``reg``'s value inside edge glue (RAX and
        RCX are borrowed there)."""
        return {"rax": self.at(self.t1), "rcx": self.at(self.t2)}.get(reg, reg)

    # -- blocks --------------------------------------------------------------------------

    def run(self, order: Sequence[BlockView], infos: dict[int, InsnInfo],
            inside: Callable[[int, int], bool], special: Special,
            unmasked: Callable[[int], frozenset[str]] = lambda b: frozenset(),
            late: Sequence[str] = (), final_depth: int = 0,
            layout: Layout | None = None) -> list[str]:
        """Lines running the blocks of ``order`` (topological; the first one's predicate in
        ``self.preds``, or none: always on).  ``inside(a, b)``: the engine propagates the
        predicate along the edge a -> b (b is a later block of ``order``); other edges go
        to ``special``.  ``late``: lines at the end of the last block's commit (RAX
        borrowed, flags free).  ``final_depth``: where RSP is left (below the region's).
        ``layout``: the order and spans that keep public branches
        (plugins/support/public_branches.py), instead of ``order``."""
        npreds: dict[int, int] = {}
        for b in order:
            for s in successors(b):
                if inside(b.start, s):
                    npreds[s] = npreds.get(s, 0) + 1
        out: list[str] = []
        last = max(n for n, b in enumerate(order) if not dead_end(b)) if late else -1
        assert layout is None or not late
        if layout is not None:
            order = layout.order
        spans: list[Span] = []  # open, innermost last
        for n, b in enumerate(order):
            while spans and b.start not in spans[-1].blocks:
                out += self._close(spans.pop())
            for span in layout.spans.get(b.start, ()) if layout else ():
                out += self._open(span)
                spans.append(span)
            out += self.move_to(self.entry_depths.get(b.start, 0))
            keep: frozenset[str] = frozenset()
            if layout is not None and b.start in layout.calls:
                keep = frozenset(layout.calls[b.start].regs)
                out += self._keep(b.start, keep)
            out += self.block(b, infos, self.preds.get(b.start), inside, npreds, special,
                              unmasked(b.start) | keep, late if n == last else ())
        while spans:
            out += self._close(spans.pop())
        return out + self.move_to(final_depth)

    # -- spans of plugins/support/public_branches.py -------------------------------------

    def _keep(self, block: int, regs: frozenset[str]) -> list[str]:
        """Before a call block whose clean writes ``regs`` stay on every path until its
        span ends: their values before it, for :meth:`_close`."""
        self.kept[block] = (self.preds.get(block), {r: self.alloc() for r in sorted(regs)})
        return [f"mov {self.at(off)}, {r}" for r, off in self.kept[block][1].items()]

    def _open(self, span: Span) -> list[str]:
        """The jump over a kept branch's side when its edge is not taken (the condition
        byte is the same on every path: public_branches.py); the joins' predicate slots
        start at 0, since the blocks that would ``mov`` them may not run.  Nothing for a
        call's span."""
        if not span.skip:
            return []
        out: list[str] = []
        for j in span.joins:
            if j not in self.preds:
                join = self.preds[j] = Pred(self.alloc())
                out.append(f"mov {self.at(join.slot)}, 0")
        label = f"pb_skip{len(self.skips)}"
        self.skips[span] = (label, self.depth)
        out += self.flags_to_slot()
        self.live = False
        out += [f"cmp {self.at(self.conds[span.head], 'byte')}, 0",
                f"{'je' if span.taken else 'jne'} {label}"]
        return out

    def _close(self, span: Span) -> list[str]:
        """The end of a span: the label a skip jumps to (the state made the same on both
        ways in: flags in their slot, RSP where the jump left it), or a call's kept
        registers put back where the call block is off."""
        out = self.flags_to_slot()
        self.live = False
        if span.skip:
            label, depth = self.skips[span]
            return [*out, *self.move_to(depth), f"{label}:"]
        pred, saved = self.kept[span.head]
        assert pred is not None
        out.append(pred.test(self.depth))
        return out + [f"cmov{pred.off} {r}, {self.at(off)}" for r, off in saved.items()]

    def block(self, block: BlockView, infos: dict[int, InsnInfo], pred: Pred | None,
              inside: Callable[[int, int], bool], npreds: dict[int, int], special: Special,
              unmasked: frozenset[str] = frozenset(), late: Sequence[str] = ()) -> list[str]:
        """Lines running ``block`` under ``pred`` (None: always on).  ``unmasked``:
        registers whose writes are kept even when the predicate is off."""
        term = terminator(block)
        if term.kind == "end":
            return self._dead_end(block, pred)
        insns = [infos[i.address] for i in body(block)]
        edges = [(t, k) for t, k in ((term.taken, "taken"), (term.fall, "fall"))
                 if t is not None]
        cond = self.alloc() if term.kind == "branch" else 0
        self.conds[block.start] = cond
        actions: dict[str, list[str]] = {}
        # The edges' glue runs where the block ends: RSP as its instructions leave it.
        exit_depth = self.depth + sum(self.deltas.get(i.insn.address, 0) for i in insns)
        for t, k in edges:
            assert t is not None
            if inside(block.start, t):
                if npreds[t] == 1 and term.kind != "branch":
                    self.preds[t] = pred
                    continue
                if npreds[t] == 1 and pred is None:
                    self.preds[t] = Pred(cond, "byte" if k == "taken" else "nbyte")
                    continue
                known = self.preds.get(t)
                if known is not None:  # a later predecessor: the masks exclude each other
                    actions[k] = [f"or {slot(known.slot, 'qword', exit_depth)}, rax"]
                else:
                    known = self.preds[t] = Pred(self.alloc())
                    actions[k] = [f"mov {slot(known.slot, 'qword', exit_depth)}, rax"]
            else:
                glue = special(t)
                if glue:
                    actions[k] = glue
        needs_cond = term.kind == "branch" and (
            bool(actions) or any(p == Pred(cond, "byte") or p == Pred(cond, "nbyte")
                                 for p in self.preds.values()))
        mark = self.top
        if pred is None:
            out = self._always(block, insns, term, cond, needs_cond, actions)
        else:
            out = self._predicated(insns, term, pred, cond, needs_cond, actions, unmasked, late)
        self.top = mark
        return out

    def _dead_end(self, block: BlockView, pred: Pred | None) -> list[str]:
        """A dead end (:func:`dead_end`): when its predicate is on, the state is the one the
        original has at the block (every block before it on its path ran, every other one
        was undone), so control leaves (``jcc`` to an exit after the code) for the original:
        the logical flags back in the register, the block's instructions (as ``.insn``, so
        per-instruction passes' replacements hold there too), then a jump to the original
        call or stop itself, which pushes the original return address.  Nothing after it
        needs predicating: the program's path ends there.  When the predicate is off,
        nothing runs but the test."""
        label = f"pe_end{len(self.stubs)}"
        tail = [*(original(i.address) for i in block.insns[:-1]),
                f"jmp {goto(block.last.address)}"]
        if pred is None:  # always taken: the code after it never runs
            return [*self.flags_to_reg(), *tail]
        out = [*self.flags_to_slot(), pred.test(self.depth), f"j{pred.on} {label}"]
        self.stubs += [f"{label}:", *self.load_flags(self.fl), *tail]
        self.live = False  # the test clobbered them; the slot ``fl`` holds the logical flags
        return out

    def original(self, info: InsnInfo) -> list[str]:
        """``.insn`` for the instruction.  A callee clone's ``add``/``sub rsp, imm`` runs
        with RSP where the original call has it (``lea``s, flags untouched, around it): its
        flags depend on RSP's value, and must be the original's."""
        address = info.insn.address
        if address in self.rebased and self.deltas.get(address) and info.flags_write \
                and info.insn.mnemonic in ("add", "sub"):
            return [f"lea rsp, [rsp + {CLONE_BASE:#x}]", original(address),
                    f"lea rsp, [rsp - {CLONE_BASE:#x}]"]
        return [original(address)]

    def _always(self, block: BlockView, insns: list[InsnInfo], term: Terminator, cond: int,
                needs_cond: bool, actions: dict[str, list[str]]) -> list[str]:
        """An always-on block: its instructions, then its edges without touching flags
        (an always-on block comes first, so its edges only ``mov`` masks)."""
        out: list[str] = []
        if needs_flags(insns, needs_cond):
            out += self.flags_to_reg()
        for i in insns:
            out += self.original(i)
            self.depth += self.deltas.get(i.insn.address, 0)
        if writes_flags(insns):
            self.live, self.saved = True, False
        if not self.init_placed:
            out.append(INIT)
            self.init_placed = True
        if needs_cond:
            out.append(f"set{term.cc} {self.at(cond, 'byte')}")
        if actions:
            assert all(line.startswith("mov ") for a in actions.values() for line in a)
            out.append(f"mov {self.at(self.t1)}, rax")
            if term.kind == "branch":
                out += [f"movzx eax, {self.at(cond, 'byte')}", "lea rax, [rax - 1]", "not rax"]
                out += actions.get("taken", [])
                if "fall" in actions:
                    out += ["not rax", *actions["fall"]]
            else:
                out += ["mov rax, 0xffffffffffffffff", *actions.get("taken", [])]
            out.append(f"mov rax, {self.at(self.t1)}")
        return out

    def _predicated(self, insns: list[InsnInfo], term: Terminator, pred: Pred, cond: int,
                    needs_cond: bool, actions: dict[str, list[str]], unmasked: frozenset[str],
                    late: Sequence[str]) -> list[str]:
        out: list[str] = []
        writes = frozenset().union(*(i.writes for i in insns), *(
            self.guards[i.insn.address].regs for i in insns if i.insn.address in self.guards))
        gprs = sorted(r for r in writes if r in GPR and r not in unmasked)
        xmms = sorted((r for r in writes if r in XMM), key=lambda r: int(r[3:]))
        sse = any(r in XMM for i in insns for r in i.reads | i.writes)
        stores = [m for i in insns for m in i.mems if m.write]
        fw = writes_flags(insns)
        window = bool(gprs or xmms or sse or stores or fw or actions or late)
        if fw:
            out += self.flags_to_slot()  # the flags before the block, to undo it
        if needs_flags(insns, needs_cond):
            out += self.flags_to_reg()
        snaps = {r: self.alloc() for r in gprs}
        xsnaps = {r: self.alloc(16) for r in xmms}
        out += [f"mov {self.at(snaps[r])}, {r}" for r in gprs]
        out += [f"movups {self.at(xsnaps[r], 'xmmword')}, {r}" for r in xmms]
        mxcsr_in = mxcsr_out = 0
        if sse:
            mxcsr_in, mxcsr_out = self.alloc(), self.alloc()
            out.append(f"stmxcsr {self.at(mxcsr_in, 'dword')}")
        recorded: list[tuple[Mem, int, int]] = []
        for info in insns:
            if info.insn.address in self.guards:
                out += self.guard(self.guards[info.insn.address], pred)
            if info.divisor is not None:
                out += self._div_guard(info, [pred])
            for m in info.mems:
                if m.write:
                    address, old = self.alloc(), self.alloc(16 if m.width == 16 else 8)
                    out += self._record(m, address, old)
                    recorded.append((m, address, old))
            out += self.original(info)
            self.depth += self.deltas.get(info.insn.address, 0)
        if fw:
            self.live, self.saved = True, False  # the block's flags; `fl` holds those before
        if needs_cond:
            out.append(f"set{term.cc} {self.at(cond, 'byte')}")
        if not window:
            return out
        # Commit: one comparison; everything up to the edges is mov/cmov (flags kept).
        out += self.save_flags(self.nf) if fw else self.flags_to_slot()
        self.live, self.saved = False, True
        out.append(pred.test(self.depth))
        out += [f"cmov{pred.off} {r}, {self.at(snaps[r])}" for r in gprs]
        glue = [line for a in actions.values() for line in a] + list(late)
        rcx = bool(recorded) or any(_RCX.search(line) for line in glue)
        rax = bool(recorded or xmms or sse or fw or actions or late)
        if rax:
            out.append(f"mov {self.at(self.t1)}, rax")
        if rcx:
            out.append(f"mov {self.at(self.t2)}, rcx")
        for m, address, old in reversed(recorded):
            out += self._undo(m, address, old, pred.off)
        if xmms:
            new = self.alloc(16)
            for r in xmms:
                out.append(f"movups {self.at(new, 'xmmword')}, {r}")
                for half in (0, 8):
                    out += [f"mov rax, {self.at(new - half)}",
                            f"cmov{pred.off} rax, {self.at(xsnaps[r] - half)}",
                            f"mov {self.at(new - half)}, rax"]
                out.append(f"movups {r}, {self.at(new, 'xmmword')}")
        if sse:
            out += [f"stmxcsr {self.at(mxcsr_out, 'dword')}",
                    f"mov eax, {self.at(mxcsr_out, 'dword')}",
                    f"cmov{pred.off} eax, {self.at(mxcsr_in, 'dword')}",
                    f"mov {self.at(mxcsr_out, 'dword')}, eax",
                    f"ldmxcsr {self.at(mxcsr_out, 'dword')}"]
        if fw:
            out += [f"mov rax, {self.at(self.fl)}", f"cmov{pred.on} rax, {self.at(self.nf)}",
                    f"mov {self.at(self.fl)}, rax"]
        # The edges' masks (flags free from here on).
        if actions:
            if pred.kind != "mask":
                mask = Pred(self.alloc())
                out += [*pred.mask(self.depth), f"mov {self.at(mask.slot)}, rax"]
                pred = mask
            p = self.at(pred.slot)
            if term.kind != "branch":
                out += [f"mov rax, {p}", *actions["taken"]]
            elif "taken" in actions:
                out += [f"movzx eax, {self.at(cond, 'byte')}", "neg rax", f"and rax, {p}",
                        *actions["taken"]]
                if "fall" in actions:
                    out += [f"xor rax, {p}", *actions["fall"]]
            else:
                out += [f"movzx eax, {self.at(cond, 'byte')}", "sub rax, 1", f"and rax, {p}",
                        *actions["fall"]]
        out += late
        if rcx:
            out.append(f"mov rcx, {self.at(self.t2)}")
        if rax:
            out.append(f"mov rax, {self.at(self.t1)}")
        return out

    def guard(self, g: Guard, pred: Pred) -> list[str]:
        """Before a guarded access (:class:`Guard`): when ``pred`` is off, its registers
        redirected as the guard's target says (``cmov`` from a slot).  Flags are saved and
        restored around the test; RAX is borrowed to compute the safe slot's address.  8
        to 12 instructions; 14 more for ``keep`` (the probe and the choice of base).

        Leakage: on the path where the block runs, the access touches its own address, as
        the original does; where it does not, it touches the safe slot, which lies among
        the region's scratch slots that every commit touches, or the table's first
        element (``base``, ``data``).  So the lines touched differ by the access's own
        line, exactly where the original touched it on one path and nothing on the other:
        a guard makes the access safe and its instruction sequence path-independent, it
        does not hide its address.  An oblivious table scan that replaces the access (a
        ``base`` or ``data`` guard keeps its address inside the table) touches every line
        of the table either way."""
        m = g.mem
        keep = self.alloc()
        out = self.save_flags(keep)
        value = self.zero
        if g.target in ("slot", "keep"):
            assert self.safe is not None and m.base is not None
            value = self.alloc()
            out += [f"mov {self.at(self.t1)}, rax",
                    f"lea rax, [{_rsp(self.depth - self.safe - m.disp)}]",
                    f"mov {self.at(value)}, rax", f"mov rax, {self.at(self.t1)}"]
        if g.target == "keep":
            out += self._keep_or_slot(m, value)
        out.append(pred.test(self.depth))
        if g.target == "loop":
            assert g.index_slot is not None and m.index
            if g.base_slot is not None and m.base:
                out.append(f"cmov{pred.off} {GPR[m.base]}, {self.at(g.base_slot)}")
            return [*out, f"cmov{pred.off} {GPR[m.index]}, {self.at(g.index_slot)}",
                    *self.load_flags(keep)]
        self.consts.add(self.zero)
        if g.target != "base" and m.base:
            out.append(f"cmov{pred.off} {GPR[m.base]}, {self.at(value)}")
        if m.index:
            out.append(f"cmov{pred.off} {GPR[m.index]}, {self.at(self.zero)}")
        return out + self.load_flags(keep)

    def _keep_or_slot(self, m: Mem, value: int) -> list[str]:
        """A ``keep`` guard's base when its block is off, into slot ``value`` (which holds
        the safe slot's address minus the displacement): the base itself when the probe
        (``.bounds``, ``mapped``) finds ``m.width`` readable bytes at ``base + disp``, else
        the safe slot's.  Flags are clobbered (the caller saved them); RAX is borrowed.
        Only public values decide: the base and the memory mapped there.  The probe's slots
        are zeroed first, so code run where no probe writes them (raw emulation, a
        translator without one) takes the safe slot."""
        base = GPR[m.base or ""]
        probe = self.alloc(16)  # start at the slot, length 8 bytes above it
        start, length = self.at(probe), self.at(probe - 8)
        return [f"mov {self.at(self.t1)}, rax",
                f"lea rax, [{base} {'-' if m.disp < 0 else '+'} {_hex(abs(m.disp))}]",
                f"mov {start}, 0", f"mov {length}, 0",  # a probe that does not run: none
                allocation_bounds("rax", probe - self.depth, mapped=True),
                f"sub rax, {start}", f"add rax, {_hex(m.width)}",  # end offset in the memory
                f"cmp {length}, rax",  # below: fewer than width bytes there (or none)
                f"mov rax, {self.at(self.t1) if base == 'rax' else base}",
                f"cmovb rax, {self.at(value)}",
                f"cmp {length}, 0", f"cmove rax, {self.at(value)}",  # no readable memory
                f"mov {self.at(value)}, rax", f"mov rax, {self.at(self.t1)}"]

    def _div_guard(self, info: InsnInfo, preds: Sequence[Pred]) -> list[str]:
        """When a predicate of ``preds`` is off: RAX = RDX = 0 and the divisor 1 (0 / 1
        cannot fault).  Flags are kept (the division's undefined flags then come out as the
        original's)."""
        d = info.divisor
        assert d is not None and d in GPR
        keep = self.alloc()
        one = self.high_one if d in ("bh", "ch", "dh") else self.one
        self.consts |= {self.zero, one}
        out = self.save_flags(keep)
        for p in preds:
            out += [p.test(self.depth), f"cmov{p.off} rax, {self.at(self.zero)}",
                    f"cmov{p.off} rdx, {self.at(self.zero)}",
                    f"cmov{p.off} {GPR[d]}, {self.at(one)}"]
        return out + self.load_flags(keep)

    def _record(self, m: Mem, address: int, old: int) -> list[str]:
        """Before a store: its address and the bytes it overwrites into slots (no flags)."""
        if m.base == "rip":
            assert m.rip_target is not None
            # "@A" is replaced by A's runtime address (leakdbt.plugin_api.goto's marker).
            compute = f"movabs rax, @{m.rip_target:#x}"
        else:
            compute = f"lea rax, {m.address()}"
        out = [f"mov {self.at(self.t1)}, rax", compute, f"mov {self.at(address)}, rax"]
        if m.width == 16:
            out += ["mov rax, qword ptr [rax + 8]", f"mov {self.at(old - 8)}, rax",
                    f"mov rax, {self.at(address)}", "mov rax, qword ptr [rax]"]
        else:
            out.append({1: "movzx eax, byte ptr [rax]", 2: "movzx eax, word ptr [rax]",
                        4: "mov eax, dword ptr [rax]", 8: "mov rax, qword ptr [rax]"}[m.width])
        return out + [f"mov {self.at(old)}, rax", f"mov rax, {self.at(self.t1)}"]

    def _undo(self, m: Mem, address: int, old: int, off: str) -> list[str]:
        """After the block, flags from the predicate's test: the old bytes back when it is
        off (the current ones otherwise).  RAX and RCX are borrowed."""
        out = [f"mov rax, {self.at(address)}"]
        if m.width == 16:
            for half in (0, 8):
                at = f"[rax + {half}]" if half else "[rax]"
                out += [f"mov rcx, qword ptr {at}", f"cmov{off} rcx, {self.at(old - half)}",
                        f"mov qword ptr {at}, rcx"]
            return out
        load, reg = {1: ("movzx ecx, byte ptr [rax]", "cl"),
                     2: ("movzx ecx, word ptr [rax]", "cx"),
                     4: ("mov ecx, dword ptr [rax]", "ecx"),
                     8: ("mov rcx, qword ptr [rax]", "rcx")}[m.width]
        cmov = (f"cmov{off} rcx, {self.at(old)}" if m.width == 8
                else f"cmov{off} ecx, {self.at(old, 'dword')}")
        return out + [load, cmov, f"mov {_PTR[m.width]} [rax], {reg}"]
