"""Predicated execution of a region's blocks: the engine of if-conversion and bounded-loop.

Every block of an acyclic piece of a region runs, in a topological order, whatever the
secret; a block whose *predicate* is off runs too, and is then undone.  A predicate is a
quadword slot in the region's scratch area holding all-ones (the block is on the path the
original takes) or zero.

One predicated block ``b`` (predicate ``P``) becomes::

    snapshot the registers b writes (mov to slots; movups for xmm; stmxcsr when b uses SSE)
    snapshot RFLAGS                                  (pushfq into a slot, see below)
    for each instruction of b except its final jump:
        div/idiv: when P is off, RAX = RDX = 0 and the divisor = 1 (cmov; flags kept)
        store:    record its address (lea) and the old value of the bytes it writes
        .insn A   (the original instruction, or another pass's sequence for it)
    save RFLAGS (b's final flags)
    the terminator's edges: mask = P & cond (setcc from b's own flags), P & ~cond; the
        client says what an edge does with its mask (OR it into the successor's predicate,
        record an exit, ...)
    commit, under one ``cmp P, 0``: stores written back with their old value when P is off
        (load, cmov, store: the same address is touched either way), registers and xmm
        registers cmov'ed from their snapshots, MXCSR and RFLAGS selected likewise.

State outside the snapshot slots is therefore exactly what the original path produces: an
inactive block leaves no trace but its (path-independent) memory accesses and time.  A block
whose predicate is known to be on (an if-converted region's entry) runs unpredicated.

RFLAGS travel through memory with ``pushfq``/``popfq``.  They move RSP, so RSP is first moved
down past the red zone with ``lea`` (flags untouched) and back up after, and the flags land
in (or come from) a scratch slot: nothing at or above RSP - 128 is written.  All glue keeps
RSP as it was between original instructions.

Scratch: slots at ``[rsp - REGION_SCRATCH - 8 k]``, per-instruction sequences (ct-division)
use the :data:`~leakdbt.plugin_api.INSN_SCRATCH` area above them.  Two general registers
(RAX, RCX) are borrowed by the glue and always restored from slots.

Memory-safety rule (checked by the clients with :func:`always_valid` and the coverage check
:func:`covered`): an inactive block runs its memory accesses too, so each access of a
predicated block must be valid whatever the path, and touch an address that does not depend
on the path.  Accepted are ``[rsp + d]`` with ``d >= -128`` and no index (the frame; RSP does
not change in predicated code), RIP-relative operands (module data), and addresses computed
only from registers whose value does not depend on the path, which the original accesses on
every path (see the clients for the exact form).  The data an inactive block reads is
garbage-in, garbage-out and discarded.

Cost per predicated block with ``w`` written registers and ``s`` stores: about
``2 w + 7 s + 30`` instructions (snapshot, flags in and out, edges, commit), plus 8 per
division and 10 per xmm register written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from leakdbt.plugin_api import REGION_SCRATCH, BlockView, Flow, Insn, original

__all__ = ["Engine", "InsnInfo", "Mem", "Refused", "Terminator", "analyse", "always_valid",
           "control_refusal", "covered", "is_string", "predicated_refusal", "terminator",
           "topological"]

MAX_FRAME = 0x1000  # scratch bytes below REGION_SCRATCH a region may use

_GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
              *(f"r{i}" for i in range(8, 16)))
_SUB = {"rax": ("eax", "ax", "al", "ah"), "rbx": ("ebx", "bx", "bl", "bh"),
        "rcx": ("ecx", "cx", "cl", "ch"), "rdx": ("edx", "dx", "dl", "dh"),
        "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"), "rbp": ("ebp", "bp", "bpl"),
        "rsp": ("esp", "sp", "spl"),
        **{f"r{i}": (f"r{i}d", f"r{i}w", f"r{i}b") for i in range(8, 16)}}
GPR = {alias: full for full in _GPR_NAMES for alias in (full, *_SUB[full])}
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
_PTR = {1: "byte ptr", 2: "word ptr", 4: "dword ptr", 8: "qword ptr"}


class Refused(Exception):
    """Why a pass refuses a region (its message becomes the Refusal's reason)."""


def _hex(value: int) -> str:
    return f"{value:#x}"


def slot(off: int, ptr: str = "qword") -> str:
    """The scratch slot at ``[rsp - off]`` as a memory operand."""
    return f"{ptr} ptr [rsp - {_hex(off)}]"


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


@lru_cache(maxsize=1)
def _decoder() -> Any:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _norm(name: str) -> str:
    return GPR.get(name, name)


_NO_ACCESS = ("lea", "nop")  # memory operand, but no memory access


def analyse(insn: Insn) -> InsnInfo:
    """Registers read and written (implicit ones included) and memory operands of ``insn``."""
    from capstone import CS_AC_READ, CS_AC_WRITE, x86

    cis = list(_decoder().disasm(insn.raw, insn.address, 1))
    if not cis:
        raise Refused(f"cannot decode the instruction at {insn.address:#x}")
    ci = cis[0]
    regs_read, regs_write = ci.regs_access()
    reads = frozenset(_norm(ci.reg_name(r)) for r in regs_read) - _IGNORED
    writes = frozenset(_norm(ci.reg_name(r)) for r in regs_write) - _IGNORED
    mems: list[Mem] = []
    divisor: str | None = None
    width = 0
    for op in ci.operands:
        if op.type == x86.X86_OP_MEM and insn.mnemonic not in _NO_ACCESS:
            m = op.mem
            base = ci.reg_name(m.base) if m.base else None
            segment = ci.reg_name(m.segment) if m.segment else None
            mems.append(Mem(op.size, bool(op.access & CS_AC_READ) or not op.access,
                            bool(op.access & CS_AC_WRITE),
                            segment if segment in ("fs", "gs") else None, base,
                            ci.reg_name(m.index) if m.index else None, m.scale, m.disp,
                            insn.rip_target if base == "rip" else None))
    if insn.mnemonic in ("div", "idiv"):
        op = ci.operands[0]
        width = op.size
        divisor = ci.reg_name(op.reg) if op.type == x86.X86_OP_REG else "mem"
        writes |= {"rax", "rdx", *([GPR[divisor]] if divisor in GPR else [])}
    return InsnInfo(insn, reads, writes, tuple(mems), ci.addr_size != 8, divisor, width)


# ---------------------------------------------------------------------------------------------
# Blocks, terminators, orders


@dataclass(frozen=True)
class Terminator:
    """How control leaves a block: ``branch`` (jcc: ``cc``, ``taken``, ``fall``), ``jump``
    or ``fall`` (to ``taken``), or ``ret``."""

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


def terminator(block: BlockView) -> Terminator:
    """The block's terminator (its successors as the original decides them)."""
    last = block.last
    if last.flow is Flow.BRANCH:
        assert last.target is not None
        return Terminator("branch", last.target, last.next, last.mnemonic[1:])
    if last.flow is Flow.JUMP:
        return Terminator("jump", last.target)
    if last.flow is Flow.RETURN:
        return Terminator("ret")
    return Terminator("fall", last.next)


def body(block: BlockView) -> tuple[Insn, ...]:
    """The block's instructions without a final branch, jump or return."""
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
    indegree = dict.fromkeys(by_start, 0)
    edges = {b.start: [s for s in successors(b) if s in by_start and not ignore(b.start, s)]
             for b in blocks}
    for targets in edges.values():
        for s in targets:
            indegree[s] += 1
    if indegree[entry]:
        return None
    order: list[BlockView] = []
    ready = [entry]
    while ready:
        ready.sort()
        b = ready.pop(0)
        order.append(by_start[b])
        for s in edges[b]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    return order if len(order) == len(blocks) else None


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
# Emitting predicated code

Edge = Callable[[int | None], list[str]]
"""An edge's glue given its mask in RAX (all-ones: taken): may use RCX, must keep RAX."""


class Engine:
    """Emits predicated blocks and owns the scratch frame below ``REGION_SCRATCH``."""

    def __init__(self, bias: int) -> None:
        self.bias = bias
        self.top = REGION_SCRATCH
        self.deepest = self.top
        self.t1 = self.alloc()  # RAX while borrowed
        self.t2 = self.alloc()  # RCX while borrowed
        self.nf = self.alloc()  # a block's final flags
        self.zero = self.alloc()
        self.one = self.alloc()
        self.high_one = self.alloc()  # bh/ch/dh = 1

    def alloc(self, size: int = 8) -> int:
        """A new slot of ``size`` bytes at ``[rsp - offset]`` (the offset is returned)."""
        self.top += size
        self.deepest = max(self.deepest, self.top)
        if self.deepest - REGION_SCRATCH > MAX_FRAME:
            raise Refused(f"the region needs more than {MAX_FRAME} bytes of scratch memory")
        return self.top

    def init(self) -> list[str]:
        """Lines setting the constant slots (no flags touched)."""
        return [f"mov {slot(self.zero)}, 0", f"mov {slot(self.one)}, 1",
                f"mov {slot(self.high_one)}, 0x100"]

    @staticmethod
    def save_flags(off: int) -> list[str]:
        """RFLAGS into the slot at ``[rsp - off]`` (RSP moved below the red zone meanwhile)."""
        return [f"lea rsp, [rsp - {_hex(off - 8)}]", "pushfq", f"lea rsp, [rsp + {_hex(off)}]"]

    @staticmethod
    def load_flags(off: int) -> list[str]:
        """RFLAGS from the slot at ``[rsp - off]``."""
        return [f"lea rsp, [rsp - {_hex(off)}]", "popfq", f"lea rsp, [rsp + {_hex(off - 8)}]"]

    def value_of(self, reg: str) -> str:
        """The operand holding general register ``reg``'s value inside edge glue (RAX and
        RCX are borrowed there)."""
        return {"rax": slot(self.t1), "rcx": slot(self.t2)}.get(reg, reg)

    def _edges(self, term: Terminator, pred: int | None, edge: Edge) -> list[str]:
        """Masks of the terminator's edges into RAX, and each edge's glue (RAX/RCX saved)."""
        if term.kind == "ret":
            return []
        if term.kind == "branch":
            out = ["mov eax, 0", f"set{term.cc} al", "neg rax"]  # all-ones if taken
            if pred is not None:
                out.append(f"and rax, {slot(pred)}")
            out += edge(term.taken)
            out.append(f"xor rax, {slot(pred)}" if pred is not None else "not rax")
            return out + edge(term.fall)
        out = [f"mov rax, {slot(pred)}"] if pred is not None else ["mov eax, 0", "not rax"]
        return out + edge(term.taken)

    def block(self, block: BlockView, infos: dict[int, InsnInfo], pred: int | None,
              edge: Edge, unmasked: frozenset[str] = frozenset(),
              after_body: Sequence[str] = ()) -> list[str]:
        """Lines running ``block`` under the predicate slot ``pred`` (None: always on).
        ``unmasked``: registers whose writes are kept even when the predicate is off;
        ``after_body``: lines between an always-on block's instructions and its edges
        (flag-neutral: the slots' initialisation once RSP is final)."""
        term = terminator(block)
        insns = [infos[i.address] for i in body(block)]
        out: list[str] = []
        if pred is None:
            out += [original(i.insn.address) for i in insns]
            out += after_body
            if term.kind != "ret":
                out += self.save_flags(self.nf)
                out += [f"mov {slot(self.t1)}, rax", f"mov {slot(self.t2)}, rcx"]
                out += self._edges(term, None, edge)
                out += [f"mov rcx, {slot(self.t2)}", f"mov rax, {slot(self.t1)}"]
                out += self.load_flags(self.nf)
            return out
        mark = self.top
        writes = frozenset().union(*(i.writes for i in insns))
        gprs = sorted(r for r in writes if r in GPR and r not in unmasked)
        xmms = sorted((r for r in writes if r in XMM), key=lambda r: int(r[3:]))
        sse = any(r in XMM for i in insns for r in i.reads | i.writes)
        snaps = {r: self.alloc() for r in gprs}
        xsnaps = {r: self.alloc(16) for r in xmms}
        flags_in = self.alloc()
        for r in gprs:
            out.append(f"mov {slot(snaps[r])}, {r}")
        for r in xmms:
            out.append(f"movups {slot(xsnaps[r], 'xmmword')}, {r}")
        mxcsr_in = mxcsr_out = 0
        if sse:
            mxcsr_in, mxcsr_out = self.alloc(), self.alloc()
            out.append(f"stmxcsr {slot(mxcsr_in, 'dword')}")
        out += self.save_flags(flags_in)
        stores: list[tuple[Mem, int, int]] = []
        for info in insns:
            if info.divisor is not None:
                out += self._div_guard(info, pred)
            for m in info.mems:
                if m.write:
                    address, old = self.alloc(), self.alloc(16 if m.width == 16 else 8)
                    out += self._record(m, address, old)
                    stores.append((m, address, old))
            out.append(original(info.insn.address))
        out += self.save_flags(self.nf)
        out += [f"mov {slot(self.t1)}, rax", f"mov {slot(self.t2)}, rcx"]
        out += self._edges(term, pred, edge)
        # Commit: one comparison; everything after it is mov/cmov (flags kept) until popfq.
        out.append(f"cmp {slot(pred)}, 0")
        for m, address, old in reversed(stores):
            out += self._undo(m, address, old)
        out += [f"mov rcx, {slot(self.t2)}", f"mov rax, {slot(self.t1)}"]
        out += [f"cmove {r}, {slot(snaps[r])}" for r in gprs]
        if xmms or sse:
            out.append(f"mov {slot(self.t1)}, rax")
            if xmms:
                new = self.alloc(16)
                for r in xmms:
                    out.append(f"movups {slot(new, 'xmmword')}, {r}")
                    for half in (0, 8):
                        out += [f"mov rax, {slot(new - half)}",
                                f"cmove rax, {slot(xsnaps[r] - half)}",
                                f"mov {slot(new - half)}, rax"]
                    out.append(f"movups {r}, {slot(new, 'xmmword')}")
            if sse:
                out += [f"stmxcsr {slot(mxcsr_out, 'dword')}",
                        f"mov eax, {slot(mxcsr_out, 'dword')}",
                        f"cmove eax, {slot(mxcsr_in, 'dword')}",
                        f"mov {slot(mxcsr_out, 'dword')}, eax",
                        f"ldmxcsr {slot(mxcsr_out, 'dword')}"]
            out.append(f"mov rax, {slot(self.t1)}")
        out += [f"mov {slot(self.t1)}, rax", f"mov rax, {slot(self.nf)}",
                f"cmove rax, {slot(flags_in)}", f"mov {slot(self.nf)}, rax",
                f"mov rax, {slot(self.t1)}"]
        out += self.load_flags(self.nf)
        self.top = mark
        return out

    def _div_guard(self, info: InsnInfo, pred: int) -> list[str]:
        """When the block is off: RAX = RDX = 0 and the divisor 1 (0 / 1 cannot fault).
        Flags are kept (the division's undefined flags then come out as the original's)."""
        d = info.divisor
        assert d is not None and d in GPR
        keep = self.alloc()
        one = self.high_one if d in ("bh", "ch", "dh") else self.one
        return [*self.save_flags(keep), f"cmp {slot(pred)}, 0",
                f"cmove rax, {slot(self.zero)}", f"cmove rdx, {slot(self.zero)}",
                f"cmove {GPR[d]}, {slot(one)}", *self.load_flags(keep)]

    def _record(self, m: Mem, address: int, old: int) -> list[str]:
        """Before a store: its address and the bytes it overwrites into slots (no flags)."""
        if m.base == "rip":
            assert m.rip_target is not None
            # "@A" is replaced by A's runtime address (leakdbt.plugin_api.goto's marker).
            compute = f"movabs rax, @{m.rip_target:#x}"
        else:
            compute = f"lea rax, {m.address()}"
        out = [f"mov {slot(self.t1)}, rax", compute, f"mov {slot(address)}, rax"]
        if m.width == 16:
            out += ["mov rax, qword ptr [rax + 8]", f"mov {slot(old - 8)}, rax",
                    f"mov rax, {slot(address)}", "mov rax, qword ptr [rax]"]
        else:
            out.append({1: "movzx eax, byte ptr [rax]", 2: "movzx eax, word ptr [rax]",
                        4: "mov eax, dword ptr [rax]", 8: "mov rax, qword ptr [rax]"}[m.width])
        return out + [f"mov {slot(old)}, rax", f"mov rax, {slot(self.t1)}"]

    @staticmethod
    def _undo(m: Mem, address: int, old: int) -> list[str]:
        """After the block, flags from ``cmp P, 0``: the old bytes back when P is off (the
        current ones otherwise).  RAX and RCX are borrowed."""
        out = [f"mov rax, {slot(address)}"]
        if m.width == 16:
            for half in (0, 8):
                at = f"[rax + {half}]" if half else "[rax]"
                out += [f"mov rcx, qword ptr {at}", f"cmove rcx, {slot(old - half)}",
                        f"mov qword ptr {at}, rcx"]
            return out
        load, reg = {1: ("movzx ecx, byte ptr [rax]", "cl"),
                     2: ("movzx ecx, word ptr [rax]", "cx"),
                     4: ("mov ecx, dword ptr [rax]", "ecx"),
                     8: ("mov rcx, qword ptr [rax]", "rcx")}[m.width]
        cmov = (f"cmove rcx, {slot(old)}" if m.width == 8
                else f"cmove ecx, {slot(old, 'dword')}")
        return out + [load, cmov, f"mov {_PTR[m.width]} [rax], {reg}"]
