"""Byte-granular taint propagation rules for x86-64, one function per instruction family.

Labels are bit sets (bit i = secret i); every register byte, every memory byte and the flags
(one label set for all of them) carries one.  :class:`Shadow` is the shadow state; it knows
nothing of the engine, so every rule here is a pure function of a decoded instruction
(:class:`Insn`), the effective addresses of its memory operands and the shadow state.

The rules are dispatched by mnemonic through :data:`RULES`; anything not in the table gets
:func:`rule_default` (every output byte = union of every input byte), which the tracker counts
per mnemonic.  Conventions shared by all rules:

- a write to a 32-bit general-purpose register clears the taint of its upper 4 bytes (the
  hardware zero-extends); 8- and 16-bit writes leave the other bytes alone;
- arithmetic with carries (add/sub/adc/sbb/inc/dec/neg/cmp, mul/imul, div/idiv, shifts by a
  register count) is *conservative*: every result byte gets the union of every input byte,
  since a carry or a shift can move any input bit to any output byte;
- only 16 bytes of each vector register are shadowed (xmm0-15); a ymm read beyond them
  returns the union of the 16, a ymm write beyond them is dropped;
- vector shuffles, unpacks, lane-wise arithmetic and compares, and the bit-manipulation
  instructions (bsf/popcnt/BMI/...) take their byte-level semantics from
  :mod:`leakdbt.analysis.vector_rules`; a rule whose result depends on a control value
  (pshufb's mask, a shift count in a register) asks :attr:`Shadow.concrete` for it and is
  precise only when that control is clean.

Besides labels the shadow keeps two facts the tracker needs:

- **known-zero bits** per general-purpose register (:meth:`Shadow.zero_bits`): bits that are
  zero whatever the secrets are, learnt from ``and`` with an immediate, zero-extensions and
  shifts by an immediate and reset by any other write (:meth:`Shadow.set_reg` is the funnel).
  They let the tracker tell an index masked to a few bits from a whole tainted byte;
- **address-to-value taint** (:attr:`Shadow.via`): while one instruction runs, memory read
  through a tainted address is seen by every load with the address's labels added, so
  whatever the rule computes from the loaded bytes depends on the address too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from operator import or_
from typing import Protocol

from capstone import CsInsn
from capstone import x86_const as x86

from leakdbt.analysis import vector_rules as vr
from leakdbt.x86.insn import detail_decoder
from leakdbt.x86.memaccess import memory_access

GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
XMM_BASE = 16 * 8  # shadow index of xmm0 byte 0
NREGBYTES = XMM_BASE + 16 * 16
FULL = (1 << 64) - 1


@dataclass(frozen=True)
class RegLoc:
    """Where a register's bytes live in the shadow register file."""

    name: str
    start: int  # index of its byte 0 in Shadow.regs
    size: int  # bytes shadowed (a ymm register: 16)
    width: int  # architectural size in bytes
    zext: bool = False  # a 32-bit GPR: writing it clears the upper 4 bytes
    gpr: int = -1  # GPR number, or -1
    zshift: int = 0  # GPR: bit offset of this register in the 64-bit one (8 for ah)
    zkeep: int = 0  # GPR: known-zero bits of the 64-bit register a write keeps ...
    zfill: int = 0  # ... and the ones it sets (a 32-bit write: the upper 32 bits)
    zmask: int = 0  # GPR: its bits, relative to its bit 0


def _register_table() -> dict[str, RegLoc]:
    table: dict[str, RegLoc] = {}
    legacy = {"rax": ("eax", "ax", "al", "ah"), "rcx": ("ecx", "cx", "cl", "ch"),
              "rdx": ("edx", "dx", "dl", "dh"), "rbx": ("ebx", "bx", "bl", "bh"),
              "rsp": ("esp", "sp", "spl", None), "rbp": ("ebp", "bp", "bpl", None),
              "rsi": ("esi", "si", "sil", None), "rdi": ("edi", "di", "dil", None)}
    for n, r in enumerate(GPRS):
        s = n * 8
        if r in legacy:
            e, w, b, h = legacy[r]
        else:
            e, w, b, h = r + "d", r + "w", r + "b", None
        table[r] = RegLoc(r, s, 8, 8, gpr=n, zmask=FULL)
        table[e] = RegLoc(e, s, 4, 4, zext=True, gpr=n, zfill=FULL ^ 0xFFFF_FFFF,
                          zmask=0xFFFF_FFFF)
        table[w] = RegLoc(w, s, 2, 2, gpr=n, zkeep=FULL ^ 0xFFFF, zmask=0xFFFF)
        table[b] = RegLoc(b, s, 1, 1, gpr=n, zkeep=FULL ^ 0xFF, zmask=0xFF)
        if h:
            table[h] = RegLoc(h, s + 1, 1, 1, gpr=n, zshift=8, zkeep=FULL ^ 0xFF00, zmask=0xFF)
    for n in range(16):
        s = XMM_BASE + 16 * n
        table[f"xmm{n}"] = RegLoc(f"xmm{n}", s, 16, 16)
        table[f"ymm{n}"] = RegLoc(f"ymm{n}", s, 16, 32)
    return table


REGISTERS = _register_table()


def reg_loc(reg_id: int) -> RegLoc | None:
    """The shadow location of a Capstone register, or None (rip, segments, flags: clean)."""
    if reg_id == 0:
        return None
    return REGISTERS.get(detail_decoder().reg_name(reg_id) or "")


@dataclass(frozen=True)
class Op:
    """One decoded operand.  kind: 'r' register, 'm' memory, 'i' immediate."""

    kind: str
    size: int
    reg: RegLoc | None = None
    imm: int = 0
    base: RegLoc | None = None  # memory: base register (None: none, or rip)
    index: RegLoc | None = None
    scale: int = 1
    disp: int = 0
    rip_relative: bool = False
    segment: str = ""  # "fs" / "gs" / ""
    read: bool = True
    written: bool = False


@dataclass
class Insn:
    """What the rules need from one decoded instruction."""

    address: int
    size: int
    mnemonic: str  # without a rep prefix
    ops: tuple[Op, ...]
    rep: bool = False
    reads_flags: bool = False
    writes_flags: bool = False
    implicit_reads: tuple[RegLoc, ...] = ()
    implicit_writes: tuple[RegLoc, ...] = ()
    rule: Callable[[Shadow, Insn, Sequence[int]], None] | None = field(default=None, repr=False)
    mem_index: tuple[int, ...] = ()  # the memory operands
    default: bool = False  # no specific rule: rule_default

    @property
    def mem_ops(self) -> list[int]:
        return [i for i, o in enumerate(self.ops) if o.kind == "m"]


def decode(cs_insn: CsInsn) -> Insn:
    """Turn a Capstone instruction (decoded with detail) into an :class:`Insn`."""
    mnemonic = cs_insn.mnemonic
    rep = False
    for prefix in ("rep ", "repe ", "repne ", "repz ", "repnz ", "bnd ", "notrack ", "lock "):
        if mnemonic.startswith(prefix):
            rep = rep or prefix.startswith("rep")
            mnemonic = mnemonic[len(prefix):]
    ops: list[Op] = []
    explicit: set[str] = set()
    for n, o in enumerate(cs_insn.operands):
        access = o.access or 0
        if o.type == x86.X86_OP_MEM:  # Capstone marks some stores read-only: corrected
            read, written = memory_access(mnemonic, n, access)
        else:
            read, written = bool(access & 1) or access == 0, bool(access & 2)
        if o.type == x86.X86_OP_REG:
            loc = reg_loc(o.reg)
            if loc is not None:
                explicit.add(loc.name)
            ops.append(Op("r", o.size, reg=loc, read=read, written=written))
        elif o.type == x86.X86_OP_IMM:
            ops.append(Op("i", o.size, imm=o.imm))
        elif o.type == x86.X86_OP_MEM:
            m = o.mem
            seg = detail_decoder().reg_name(m.segment) if m.segment else ""
            ops.append(Op("m", o.size, base=reg_loc(m.base), index=reg_loc(m.index),
                          scale=m.scale, disp=m.disp, rip_relative=m.base == x86.X86_REG_RIP,
                          segment=seg if seg in ("fs", "gs") else "", read=read,
                          written=written))
    reads, writes = cs_insn.regs_access()
    addr_regs = {loc.name for o in ops if o.kind == "m" for loc in (o.base, o.index) if loc}
    imp_r = tuple(loc for r in reads if (loc := reg_loc(r)) is not None
                  and loc.name not in explicit and loc.name not in addr_regs)
    imp_w = tuple(loc for r in writes if (loc := reg_loc(r)) is not None
                  and loc.name not in explicit)
    insn = Insn(cs_insn.address, cs_insn.size, mnemonic, tuple(ops), rep,
                x86.X86_REG_EFLAGS in reads, x86.X86_REG_EFLAGS in writes, imp_r, imp_w)
    insn.rule = rule_for(mnemonic)
    insn.mem_index = tuple(i for i, o in enumerate(insn.ops) if o.kind == "m")
    insn.default = is_default(mnemonic)
    return insn


# -- the shadow state -------------------------------------------------------------------------


class Concrete(Protocol):
    """Concrete values of the machine state before the current instruction runs."""

    def reg_value(self, loc: RegLoc) -> bytes:
        """A register's value, ``loc.width`` bytes, little-endian."""
        ...

    def mem_value(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest memory."""
        ...


class Shadow:
    """Taint of every register byte, the flags, and memory bytes (address -> labels; bytes
    not in the dict are clean); known-zero bits per GPR; the memory read through tainted
    addresses by the current instruction (see the module doc)."""

    def __init__(self) -> None:
        self.regs: list[int] = [0] * NREGBYTES
        self.flags = 0
        self.mem: dict[int, int] = {}
        self.zero: list[int] = [0] * len(GPRS)  # per GPR: bits known to be zero
        self.via: Sequence[tuple[int, int, int]] = ()  # (start, end, labels) of such reads
        self.concrete: Concrete | None = None  # the engine's values, when one runs

    # registers
    def reg(self, loc: RegLoc) -> list[int]:
        b = self.regs[loc.start:loc.start + loc.size]
        if loc.width > loc.size:  # ymm: the unshadowed upper half gets the union
            b += [union(b)] * (loc.width - loc.size)
        return b

    def set_reg(self, loc: RegLoc, labels: Sequence[int]) -> None:
        """Write a register's taint; what was known of its bits is forgotten."""
        n = loc.size
        self.regs[loc.start:loc.start + n] = list(labels[:n]) + [0] * (n - len(labels))
        g = loc.gpr
        if g >= 0:
            if loc.zext:
                self.regs[loc.start + 4:loc.start + 8] = [0, 0, 0, 0]
            zero = self.zero
            zero[g] = (zero[g] & loc.zkeep) | loc.zfill

    def zero_bits(self, loc: RegLoc) -> int:
        """The bits of a GPR (relative to its bit 0) known to be zero whatever the secrets."""
        if loc.gpr < 0:
            return 0
        return (self.zero[loc.gpr] >> loc.zshift) & loc.zmask

    def add_zero(self, loc: RegLoc, bits: int) -> None:
        """Record that ``bits`` of a GPR (relative to its bit 0) are known to be zero."""
        if loc.gpr >= 0:
            self.zero[loc.gpr] |= (bits & loc.zmask) << loc.zshift

    def reg_named(self, name: str) -> list[int]:
        return self.reg(REGISTERS[name])

    def set_reg_named(self, name: str, labels: Sequence[int]) -> None:
        self.set_reg(REGISTERS[name], labels)

    # memory
    def load(self, address: int, size: int) -> list[int]:
        """The taint of ``size`` bytes of memory (with the address taint of a read through a
        tainted address, while the instruction that reads it runs)."""
        mem = self.mem
        out = [mem.get(a, 0) for a in range(address, address + size)] if mem else [0] * size
        if self.via:
            end = address + size
            for lo, hi, t in self.via:
                for a in range(max(lo, address), min(hi, end)):
                    out[a - address] |= t
        return out

    def store(self, address: int, labels: Sequence[int]) -> None:
        mem = self.mem
        for i, t in enumerate(labels):
            if t:
                mem[address + i] = t
            elif mem:
                mem.pop(address + i, None)

    def clear(self, address: int, size: int) -> None:
        mem = self.mem
        if not mem:
            return
        if size > len(mem):
            for a in [a for a in mem if address <= a < address + size]:
                del mem[a]
        else:
            for a in range(address, address + size):
                mem.pop(a, None)

    def address_taint(self, op: Op) -> int:
        """Union of the taint of the registers that form a memory operand's address."""
        t = 0
        for loc in (op.base, op.index):
            if loc is not None:
                t |= union(self.reg(loc))
        return t


def union(labels: Sequence[int]) -> int:
    return reduce(or_, labels, 0)


# -- operand access helpers -------------------------------------------------------------------


def read_op(sh: Shadow, ins: Insn, ea: Sequence[int], i: int) -> list[int]:
    """Taint of operand i's bytes (an immediate is clean)."""
    op = ins.ops[i]
    if op.kind == "r":
        return sh.reg(op.reg) if op.reg is not None else [0] * op.size
    if op.kind == "m":
        return sh.load(ea[i], op.size)
    return [0] * op.size


def value_op(sh: Shadow, ins: Insn, ea: Sequence[int], i: int) -> bytes | None:
    """Operand i's concrete value (little-endian, ``op.size`` bytes), or None without an
    engine (:attr:`Shadow.concrete`)."""
    op = ins.ops[i]
    if op.kind == "i":
        return (op.imm & ((1 << (8 * op.size)) - 1)).to_bytes(op.size, "little")
    c = sh.concrete
    if c is None:
        return None
    if op.kind == "m":
        return c.mem_value(ea[i], op.size)
    return c.reg_value(op.reg)[:op.size] if op.reg is not None else None


def write_op(sh: Shadow, ins: Insn, ea: Sequence[int], i: int, labels: Sequence[int]) -> None:
    op = ins.ops[i]
    labels = list(labels[:op.size]) + [0] * (op.size - len(labels))
    if op.kind == "r":
        if op.reg is not None:
            sh.set_reg(op.reg, labels)
    elif op.kind == "m":
        sh.store(ea[i], labels)


def _all_inputs(sh: Shadow, ins: Insn, ea: Sequence[int], flags: bool = False) -> int:
    t = sh.flags if flags else 0
    for i, op in enumerate(ins.ops):
        if op.read:
            t |= union(read_op(sh, ins, ea, i))
    return t


def _same_reg(ins: Insn) -> bool:
    """`op r, r` (two operands) or `vop d, r, r` (three): the sources are one register."""
    ops = ins.ops
    if len(ops) not in (2, 3) or any(o.kind != "r" or o.reg is None for o in ops):
        return False
    return ops[-1].reg == ops[-2].reg


# -- rules ------------------------------------------------------------------------------------

Rule = Callable[[Shadow, Insn, Sequence[int]], None]


def _gpr_dst(ins: Insn) -> RegLoc | None:
    """The destination when it is a general-purpose register."""
    op = ins.ops[0]
    return op.reg if op.kind == "r" and op.reg is not None and op.reg.gpr >= 0 else None


def _zero_src(sh: Shadow, ins: Insn, i: int) -> int:
    """The known-zero bits of operand i (a register; else none)."""
    op = ins.ops[i]
    return sh.zero_bits(op.reg) if op.kind == "r" and op.reg is not None else 0


def rule_mov(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """mov/movabs: copy bytes (and a register's known-zero bits)."""
    src = ins.ops[1]
    zero = sh.zero_bits(src.reg) if src.kind == "r" and src.reg is not None else 0
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 1))
    if zero:
        dst = _gpr_dst(ins)
        if dst is not None:
            sh.add_zero(dst, zero)


def rule_movzx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movzx: copy the source bytes, the extension is clean (and known zero)."""
    src = ins.ops[1]
    zero = _zero_src(sh, ins, 1) | (-1 << (8 * src.size))
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 1))
    dst = _gpr_dst(ins)
    if dst is not None:
        sh.add_zero(dst, zero)


def rule_movsx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movsx/movsxd: copy; every extension byte carries the source's top byte."""
    src = read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, src + [src[-1]] * (ins.ops[0].size - len(src)))


def rule_lea(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """lea: every destination byte = union of the address registers (carries spread)."""
    t = sh.address_taint(ins.ops[1])
    write_op(sh, ins, ea, 0, [t] * ins.ops[0].size)


def rule_arith(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """add/sub/adc/sbb/inc/dec/neg/cmp: every result byte and the flags = union of every
    input byte (and of the flags for adc/sbb).  `sub r, r` is the zeroing idiom: clean."""
    if ins.mnemonic in ("sub", "sbb") and _same_reg(ins):
        t = sh.flags if ins.mnemonic == "sbb" else 0
    else:
        t = _all_inputs(sh, ins, ea, flags=ins.mnemonic in ("adc", "sbb"))
    if ins.mnemonic != "cmp":
        write_op(sh, ins, ea, 0, [t] * ins.ops[0].size)
    sh.flags = t


def rule_logic(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """and/or/xor: byte-wise union; flags = union of all.  `xor r, r` clears; `and` with an
    immediate clears the bytes where the immediate is 0."""
    size = ins.ops[0].size
    zero = 0
    if ins.mnemonic == "xor" and _same_reg(ins):
        out = [0] * size
    else:
        a, b = read_op(sh, ins, ea, 0), read_op(sh, ins, ea, 1)
        out = [x | y for x, y in zip(a, b + [0] * (size - len(b)), strict=False)]
        if ins.mnemonic == "and" and ins.ops[1].kind == "i":
            imm = ins.ops[1].imm
            out = [t if (imm >> (8 * j)) & 0xFF else 0 for j, t in enumerate(out)]
            zero = _zero_src(sh, ins, 0) | ~imm
        elif ins.mnemonic == "and":
            zero = _zero_src(sh, ins, 0) | _zero_src(sh, ins, 1)
    write_op(sh, ins, ea, 0, out)
    sh.flags = union(out)
    dst = _gpr_dst(ins)
    if zero and dst is not None:
        sh.add_zero(dst, zero)


def rule_test(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """test: flags = union of both operands."""
    sh.flags = _all_inputs(sh, ins, ea)


def rule_not(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """not: byte-wise copy (taint unchanged)."""


_SHIFT_KIND = {"shl": "l", "sal": "l", "shr": "r", "sar": "a"}


def rule_shift(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """Shifts and rotates.  By an immediate that a byte-wise rule can follow (shl/shr/sar):
    each result byte gets the source bytes its bits come from (and shl/shr keep track of the
    known-zero bits); otherwise (register count, rotates, double shifts) every byte and the
    flags = union of operand + count."""
    size = ins.ops[0].size
    src = read_op(sh, ins, ea, 0)
    m = ins.mnemonic
    if m in _SHIFT_KIND and len(ins.ops) == 2 and ins.ops[1].kind == "i":
        k = ins.ops[1].imm & (0x3F if size == 8 else 0x1F)
        width = (1 << (8 * size)) - 1
        zero = _zero_src(sh, ins, 0)
        write_op(sh, ins, ea, 0, vr.shift_bytes(src, k, _SHIFT_KIND[m]))
        sh.flags = union(src) if k else sh.flags
        dst = _gpr_dst(ins)
        if dst is not None and m != "sar":
            left = m != "shr"
            sh.add_zero(dst, (zero << k) | ((1 << k) - 1) if left
                        else (zero >> k) | (width ^ (width >> k)))
        return
    t = _all_inputs(sh, ins, ea, flags=m in ("rcl", "rcr"))
    write_op(sh, ins, ea, 0, [t] * size)
    if ins.writes_flags:
        sh.flags = t


def _acc(size: int) -> tuple[str, str]:
    return {1: ("al", "ah"), 2: ("ax", "dx"), 4: ("eax", "edx"), 8: ("rax", "rdx")}[size]


def rule_mul(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """mul/imul: every output byte (and the flags) = union of the inputs."""
    if len(ins.ops) == 1:
        size = ins.ops[0].size
        lo, hi = _acc(size)
        t = union(read_op(sh, ins, ea, 0)) | union(sh.reg_named(lo))
        if size == 1:
            sh.set_reg_named("ax", [t, t])
        else:
            sh.set_reg_named(lo, [t] * size)
            sh.set_reg_named(hi, [t] * size)
    else:
        t = union([union(read_op(sh, ins, ea, i)) for i in range(1, len(ins.ops))])
        if len(ins.ops) == 2:
            t |= union(read_op(sh, ins, ea, 0))
        write_op(sh, ins, ea, 0, [t] * ins.ops[0].size)
    sh.flags = t


def div_inputs(sh: Shadow, ins: Insn, ea: Sequence[int]) -> int:
    """Union of a div/idiv's dividend (rdx:rax, or ax) and divisor."""
    size = ins.ops[0].size
    if size == 1:
        dividend = union(sh.reg_named("ax"))
    else:
        lo, hi = _acc(size)
        dividend = union(sh.reg_named(lo)) | union(sh.reg_named(hi))
    return dividend | union(read_op(sh, ins, ea, 0))


def rule_div(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """div/idiv: quotient and remainder = union of dividend and divisor (flags undefined:
    given the same union)."""
    size = ins.ops[0].size
    t = div_inputs(sh, ins, ea)
    if size == 1:
        sh.set_reg_named("ax", [t, t])
    else:
        lo, hi = _acc(size)
        sh.set_reg_named(lo, [t] * size)
        sh.set_reg_named(hi, [t] * size)
    sh.flags = t


def rule_setcc(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """setcc: the destination byte = the flags' taint."""
    write_op(sh, ins, ea, 0, [sh.flags])


def rule_cmov(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """cmovcc: a select: byte-wise union of both sources, plus the flags on every byte (a
    32-bit destination is zero-extended whether or not it moves)."""
    a, b = read_op(sh, ins, ea, 0), read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, [x | y | sh.flags for x, y in zip(a, b, strict=False)])


def rule_nop(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """No data flow (nop, jumps, endbr64, fences, prefetches, ...)."""


def _rsp(ea: Sequence[int]) -> int:
    return ea[-1]  # by convention the tracker appends rsp as the last "address"


def rule_push(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """push: the 8 (or 2) bytes below rsp get the operand's bytes (an immediate: clean;
    a narrower immediate is sign-extended, clean as well).  ``ea[-1]`` is rsp."""
    size = 2 if ins.ops and ins.ops[0].size == 2 else 8
    src = read_op(sh, ins, ea, 0) if ins.ops else [0] * size
    sh.store(_rsp(ea) - size, (src + [0] * size)[:size])


def rule_pop(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pop: the operand gets the bytes at rsp (``ea[-1]``)."""
    size = ins.ops[0].size
    write_op(sh, ins, ea, 0, sh.load(_rsp(ea), size))


def rule_call(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """call: the pushed return address is clean."""
    sh.clear(_rsp(ea) - 8, 8)


def rule_leave(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """leave: rsp = rbp; rbp = [rbp].  ``ea[-1]`` is rbp's value here."""
    sh.set_reg_named("rsp", sh.reg_named("rbp"))
    sh.set_reg_named("rbp", sh.load(ea[-1], 8))


def rule_xchg(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """xchg: swap the operands' taint."""
    a, b = read_op(sh, ins, ea, 0), read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, b)
    write_op(sh, ins, ea, 1, a)


def rule_xadd(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """xadd: the source gets the destination's old value, the destination the sum
    (conservative union); flags = union."""
    a, b = read_op(sh, ins, ea, 0), read_op(sh, ins, ea, 1)
    t = union(a) | union(b)
    write_op(sh, ins, ea, 1, a)
    write_op(sh, ins, ea, 0, [t] * ins.ops[0].size)
    sh.flags = t


def rule_cmpxchg(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """cmpxchg: conservative: destination, accumulator and flags = union of all three."""
    size = ins.ops[0].size
    acc = _acc(size)[0] if size > 1 else "al"
    t = _all_inputs(sh, ins, ea) | union(sh.reg_named(acc))
    write_op(sh, ins, ea, 0, [t] * size)
    sh.set_reg_named(acc, [t] * size)
    sh.flags = t


def rule_bswap(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """bswap: permute the bytes."""
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 0)[::-1])


def rule_vec_move(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movd/movq/movdqa/movdqu/movaps/movups/...: byte-wise copy.  Into an xmm register, a
    narrower source (movd/movq) zeroes the rest; a wider register source is truncated."""
    dst, src = ins.ops[0], ins.ops[1]
    b = read_op(sh, ins, ea, 1)
    n = min(dst.size, src.size)
    write_op(sh, ins, ea, 0, b[:n] + [0] * (dst.size - n))


def rule_scalar_move(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """SSE movss/movsd (and their VEX forms): register <- memory zeroes the upper bytes,
    register <- register merges the low element only."""
    n = 4 if ins.mnemonic.endswith("ss") else 8
    dst = ins.ops[0]
    src = read_op(sh, ins, ea, len(ins.ops) - 1)[:n]
    if dst.kind == "m":
        sh.store(ea[0], src)
    elif ins.ops[-1].kind == "m":
        write_op(sh, ins, ea, 0, src + [0] * (dst.size - n))
    else:
        old = read_op(sh, ins, ea, 1 if len(ins.ops) == 3 else 0)
        write_op(sh, ins, ea, 0, src + old[n:])


def rule_vec_logic(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pxor/pand/por/xorps/andps/... (and VEX three-operand forms): byte-wise union;
    `pxor x, x` (and the other x-xor-x / x-andn-x forms) clears."""
    dst = ins.ops[0]
    zeroing = ins.mnemonic.lstrip("v") in ("pxor", "xorps", "xorpd", "pandn", "andnps",
                                            "andnpd")
    if zeroing and _same_reg(ins):
        write_op(sh, ins, ea, 0, [0] * dst.size)
        return
    srcs = [read_op(sh, ins, ea, i) for i in range(1 if len(ins.ops) == 3 else 0, len(ins.ops))]
    out = [union([s[j] for s in srcs if j < len(s)]) for j in range(dst.size)]
    write_op(sh, ins, ea, 0, out)


def _string_size(ins: Insn) -> int:
    return {"b": 1, "w": 2, "d": 4, "q": 8}[ins.mnemonic[-1]]


def rule_movs(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movs: copy one element [rsi] -> [rdi] (the engine runs a rep prefix one element per
    step, so the tracker sees every iteration)."""
    n = _string_size(ins)
    sh.store(ea[0], sh.load(ea[1], n))


def rule_stos(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """stos: [rdi] = the accumulator's bytes."""
    n = _string_size(ins)
    sh.store(ea[0], sh.reg_named(_acc(n)[0] if n > 1 else "al"))


def rule_lods(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """lods: the accumulator = [rsi]."""
    n = _string_size(ins)
    sh.set_reg_named(_acc(n)[0] if n > 1 else "al", sh.load(ea[1], n))


def rule_scas_cmps(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """scas/cmps: flags = union of the compared elements."""
    sh.flags = _all_inputs(sh, ins, ea) | (sh.flags if ins.rep else 0)


def rule_cdq(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """cwd/cdq/cqo: rdx (all of it) = the accumulator's sign = its top byte;
    cbw/cwde/cdqe: sign-extend the accumulator in place."""
    m = ins.mnemonic
    if m in ("cwd", "cdq", "cqo"):
        src, dst = {"cwd": ("ax", "dx"), "cdq": ("eax", "edx"), "cqo": ("rax", "rdx")}[m]
        top = sh.reg_named(src)[-1]
        sh.set_reg_named(dst, [top] * REGISTERS[dst].size)
    else:
        src, dst = {"cbw": ("al", "ax"), "cwde": ("ax", "eax"), "cdqe": ("eax", "rax")}[m]
        b = sh.reg_named(src)
        sh.set_reg_named(dst, b + [b[-1]] * (REGISTERS[dst].size - len(b)))


# -- vector shuffles, unpacks and lane-wise operations (byte semantics: vector_rules) ------


def _sse(ins: Insn) -> str:
    """The SSE mnemonic of an instruction (a VEX form without its 'v')."""
    m = ins.mnemonic
    return m[1:] if m.startswith("v") else m


def _vsources(ins: Insn) -> tuple[int, int, int]:
    """(first source, second source, immediate) of ``op d, s[, imm]`` (SSE: the destination
    is the first source too) or ``vop d, s1, s2[, imm]`` (VEX)."""
    ops = ins.ops
    has_imm = bool(ops) and ops[-1].kind == "i"
    n = len(ops) - has_imm
    return n - 2, n - 1, ops[-1].imm & 0xFF if has_imm else 0


def _two(sh: Shadow, ins: Insn, ea: Sequence[int]) -> tuple[list[int], list[int], int]:
    """The labels of both sources and the immediate (see :func:`_vsources`)."""
    a, b, imm = _vsources(ins)
    return read_op(sh, ins, ea, a), read_op(sh, ins, ea, b), imm


def _sizes(pattern: str, sizes: dict[str, int], *stems: str) -> dict[str, int]:
    return {pattern.format(stem=s, t=t): n for s in stems for t, n in sizes.items()}


_BWDQ = {"b": 1, "w": 2, "d": 4, "q": 8}
LANE_SIZE: dict[str, int] = {
    **_sizes("{stem}{t}", _BWDQ, "padd", "psub", "pcmpeq", "pcmpgt"),
    **_sizes("{stem}{t}", {"b": 1, "w": 2}, "padds", "paddus", "psubs", "psubus", "pavg"),
    **_sizes("{stem}{t}", {"b": 1, "w": 2, "d": 4}, "pminu", "pmins", "pmaxu", "pmaxs",
             "psign", "pabs"),
    "pmullw": 2, "pmulhw": 2, "pmulhuw": 2, "pmulhrsw": 2, "pmaddubsw": 2, "pmulld": 4,
    "pmaddwd": 4, "pmuludq": 8, "pmuldq": 8,
}
"""Lane-wise instructions: the element size in bytes."""
IDIOMS = frozenset(m for m in LANE_SIZE if m.startswith(("psub", "pcmp")))
"""`op x, x` gives a constant whatever x is (zero, or all ones for pcmpeq)."""


def rule_lanes(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """padd/psub/pcmpeq/pcmpgt/pmin/pmax/pmul/pavg/psign: each element of the result = the
    union of that element in both sources; `psub x, x` and `pcmp x, x` are constants."""
    m = _sse(ins)
    if m in IDIOMS and _same_reg(ins):
        write_op(sh, ins, ea, 0, [0] * ins.ops[0].size)
        return
    a, b, _ = _two(sh, ins, ea)
    write_op(sh, ins, ea, 0, vr.lanes(LANE_SIZE[m], a, b))


def rule_lanes_unary(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pabsb/w/d: each element of the result = union of the source's element."""
    src = read_op(sh, ins, ea, len(ins.ops) - 1)
    write_op(sh, ins, ea, 0, vr.lanes(LANE_SIZE[_sse(ins)], src))


UNPACK: dict[str, tuple[int, bool]] = {
    **{f"punpckl{t}": (n, False) for t, n in (("bw", 1), ("wd", 2), ("dq", 4), ("qdq", 8))},
    **{f"punpckh{t}": (n, True) for t, n in (("bw", 1), ("wd", 2), ("dq", 4), ("qdq", 8))},
    "unpcklps": (4, False), "unpckhps": (4, True), "unpcklpd": (8, False),
    "unpckhpd": (8, True),
}
"""Unpacks: (element size, high half)."""
PACK = {"packsswb": 2, "packuswb": 2, "packssdw": 4, "packusdw": 4}
"""Packs: the size of the input elements."""


def rule_unpack(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """punpckl*/punpckh*, unpcklps/...: interleave the elements of both sources' low (high)
    halves."""
    size, high = UNPACK[_sse(ins)]
    a, b, _ = _two(sh, ins, ea)
    write_op(sh, ins, ea, 0, vr.unpack(size, high, a, b))


def rule_pack(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """packsswb/packuswb/packssdw/packusdw: each narrowed element from one source element."""
    a, b, _ = _two(sh, ins, ea)
    write_op(sh, ins, ea, 0, vr.pack(PACK[_sse(ins)], a, b))


def rule_pshufd(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pshufd/pshuflw/pshufhw: permute dwords (words of one half) by the immediate."""
    m, src, imm = _sse(ins), read_op(sh, ins, ea, 1), ins.ops[2].imm & 0xFF
    out = vr.pshufd(src, imm) if m == "pshufd" else vr.pshufw(src, imm, m == "pshufhw")
    write_op(sh, ins, ea, 0, out)


def rule_pshufb(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pshufb: byte j = a[mask[j] & 15] (or zero), precise where the mask byte is clean and
    its value known, else the union of the lane; plus the mask byte's labels."""
    a, b, _ = _vsources(ins)
    mask = read_op(sh, ins, ea, b)
    values = value_op(sh, ins, ea, b)
    write_op(sh, ins, ea, 0, vr.pshufb(read_op(sh, ins, ea, a), mask, values))


def rule_palignr(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """palignr: the byte window ``imm`` bytes up into the concatenation a:b."""
    a, b, imm = _two(sh, ins, ea)
    write_op(sh, ins, ea, 0, vr.palignr(imm, a, b))


def rule_byte_shift(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pslldq/psrldq: shift whole bytes of each 128-bit lane."""
    src = read_op(sh, ins, ea, len(ins.ops) - 2)
    count = ins.ops[-1].imm & 0xFF
    write_op(sh, ins, ea, 0, vr.byte_shift(src, count, _sse(ins) == "pslldq"))


VSHIFT: dict[str, tuple[int, str]] = {
    **{f"psll{t}": (n, "l") for t, n in (("w", 2), ("d", 4), ("q", 8))},
    **{f"psrl{t}": (n, "r") for t, n in (("w", 2), ("d", 4), ("q", 8))},
    "psraw": (2, "a"), "psrad": (4, "a"),
}
"""Element shifts: (element size, kind)."""


def rule_vec_shift(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """psll/psrl/psra: by an immediate, or a clean count whose value is known, byte-precise
    within each element; by a tainted or unknown count every byte of an element gets the
    union of the element and the count."""
    size, kind = VSHIFT[_sse(ins)]
    ops = ins.ops
    if ops[-1].kind == "i":
        src = read_op(sh, ins, ea, len(ops) - 2)
        write_op(sh, ins, ea, 0, vr.lane_shift(src, size, ops[-1].imm & 0xFF, kind))
        return
    a, b, _ = _vsources(ins)
    src, count = read_op(sh, ins, ea, a), union(read_op(sh, ins, ea, b)[:8])
    value = None if count else value_op(sh, ins, ea, b)
    if value is not None:
        out = vr.lane_shift(src, size, int.from_bytes(value[:8], "little"), kind)
    else:
        out = [t | count for t in vr.lanes(size, src)]
    write_op(sh, ins, ea, 0, out)


def rule_shufps(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """shufps/shufpd: the low elements from a, the high ones from b, chosen by the
    immediate."""
    a, b, imm = _two(sh, ins, ea)
    fn = vr.shufps if _sse(ins) == "shufps" else vr.shufpd
    write_op(sh, ins, ea, 0, fn(imm, a, b))


def rule_psadbw(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """psadbw: per 8-byte half a 16-bit sum of all its bytes in both sources."""
    a, b, _ = _two(sh, ins, ea)
    write_op(sh, ins, ea, 0, vr.sad(a, b))


def rule_movhl(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movhps/movhpd/movlps/movlpd/movhlps/movlhps (and VEX forms): move 8-byte halves; a
    store writes the named half of the register, a load merges with the other half of the
    destination (VEX: of the first source)."""
    m, ops = _sse(ins), ins.ops
    high = m in ("movhps", "movhpd", "movlhps")
    if ops[0].kind == "m":
        src = read_op(sh, ins, ea, 1)
        write_op(sh, ins, ea, 0, src[8:16] if high else src[:8])
        return
    base = vr.fit(read_op(sh, ins, ea, 1 if len(ops) == 3 else 0), 16)
    src = vr.fit(read_op(sh, ins, ea, len(ops) - 1), 16)
    if high:
        out = base[:8] + src[:8]
    elif m == "movhlps":
        out = src[8:16] + base[8:16]
    else:
        out = src[:8] + base[8:16]
    write_op(sh, ins, ea, 0, out)


ELEMENT = {"b": 1, "w": 2, "d": 4, "q": 8}


def rule_pinsr(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pinsrb/w/d/q: one element of the destination (VEX: of the first source) replaced by
    the source's low bytes."""
    ops = ins.ops
    base, src = read_op(sh, ins, ea, len(ops) - 3), read_op(sh, ins, ea, len(ops) - 2)
    write_op(sh, ins, ea, 0, vr.insert(base, src, ELEMENT[ins.mnemonic[-1]], ops[-1].imm))


def rule_pextr(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pextrb/w/d/q: the destination gets one element (a register zero-extended)."""
    src = read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, vr.extract(src, ELEMENT[ins.mnemonic[-1]], ins.ops[2].imm))


MASK_SIZE = {"movmskps": 4, "movmskpd": 8, "pmovmskb": 1}
"""Sign-mask extractions: the element size."""


def rule_movmsk(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movmskps/movmskpd/pmovmskb: bit i of the (32-bit) result = the sign of element i."""
    write_op(sh, ins, ea, 0, vr.movmsk(read_op(sh, ins, ea, 1), MASK_SIZE[_sse(ins)]))


def rule_ptest(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """ptest: ZF and CF from both operands: the flags = union of both."""
    sh.flags = union(read_op(sh, ins, ea, 0)) | union(read_op(sh, ins, ea, 1))


EXTEND: dict[str, tuple[int, int, bool]] = {
    f"pmov{z}x{f}{t}": (ELEMENT[f], ELEMENT[t], z == "s")
    for z in "zs" for f, t in (("b", "w"), ("b", "d"), ("b", "q"), ("w", "d"), ("w", "q"),
                               ("d", "q"))}
"""Widening moves: (source element size, result element size, signed)."""


def rule_pmovx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pmovzx/pmovsx: widen the low elements of the source."""
    f, t, signed = EXTEND[_sse(ins)]
    write_op(sh, ins, ea, 0, vr.extend(read_op(sh, ins, ea, 1), f, t, signed))


# -- bit manipulation ---------------------------------------------------------------------------


def rule_bitscan(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """bsf/bsr: the index depends on every source byte, and a zero source leaves the
    destination as it was, so its old bytes stay in too; the flags (ZF) = the source."""
    t = union(read_op(sh, ins, ea, 1))
    write_op(sh, ins, ea, 0, [x | t for x in read_op(sh, ins, ea, 0)])
    sh.flags = t


def rule_bitcount(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """tzcnt/lzcnt/popcnt: a count (at most 64, so byte 0 alone) of every source byte; the
    upper bytes are zero; the flags = the source."""
    t = union(read_op(sh, ins, ea, 1))
    write_op(sh, ins, ea, 0, [t])
    sh.flags = t


BIT_REACH = 1 << 13
"""Bytes: a bit string offset whose tainted bits reach further is followed only at the
operand and at the byte it hits."""


def _signed(value: int, width: int) -> int:
    return value - (1 << width) if value >> (width - 1) & 1 else value


def bit_string_bytes(sh: Shadow, ins: Insn, ea: Sequence[int]) -> range | None:
    """bt* on memory with a register offset (signed: it reaches beyond the operand): the
    bytes the bit can be in — the one it is in, or every one the offset's tainted bits can
    move it to (at most :data:`BIT_REACH`) — when the engine's values are known."""
    value = value_op(sh, ins, ea, 1)
    if value is None:
        return None
    width = 8 * len(value)
    v = int.from_bytes(value, "little")
    bits = 0
    for j, t in enumerate(read_op(sh, ins, ea, 1)):
        if t:
            bits |= 0xFF << (8 * j)
    sign = 1 << (width - 1)
    lo, hi = v & ~bits, v | bits
    if bits & sign:
        lo, hi = lo | sign, hi & ~sign
    first, last = ea[0] + (_signed(lo, width) >> 3), ea[0] + (_signed(hi, width) >> 3)
    if last - first >= BIT_REACH:
        first = last = ea[0] + (_signed(v, width) >> 3)
    return range(first, last + 1)


def rule_bit_test(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """bt/bts/btr/btc: CF = one bit of the destination, chosen by the offset; the other
    flags are kept (one label set: the old flags stay in).  bts/btr/btc then set, reset or
    flip that bit: its byte keeps its labels and gets the offset's (an immediate offset: no
    change; a register offset into a register: every byte; into memory: every byte the
    offset can reach, :func:`bit_string_bytes`)."""
    dst = read_op(sh, ins, ea, 0)
    modify = ins.mnemonic != "bt"
    if ins.ops[1].kind == "i":
        sh.flags |= dst[(ins.ops[1].imm & (8 * len(dst) - 1)) // 8]
        return
    t = union(read_op(sh, ins, ea, 1))
    where = bit_string_bytes(sh, ins, ea) if ins.ops[0].kind == "m" else None
    if where is None:
        sh.flags |= union(dst) | t
        if modify:
            write_op(sh, ins, ea, 0, [x | t for x in dst])
        return
    labels = sh.load(where.start, len(where))
    sh.flags |= union(labels) | t
    if modify and t:
        sh.store(where.start, [x | t for x in labels])


def rule_andn(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """andn: ~a & b byte-wise: the union of both; flags = union."""
    size = ins.ops[0].size
    a, b = read_op(sh, ins, ea, 1), vr.fit(read_op(sh, ins, ea, 2), size)
    out = [x | y for x, y in zip(a, b, strict=False)]
    write_op(sh, ins, ea, 0, out)
    sh.flags = union(out)


def rule_blsx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """blsi/blsr/blsmsk: bit i of the result depends on the source's bits 0..i (a borrow
    chain): byte j = union of bytes 0..j; flags = the source."""
    src = read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, vr.prefix(src))
    sh.flags = union(src)


def rule_bzhi(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """bzhi: clear the bits from index (the third operand's byte 0) up: each byte = its own
    and the index; flags = union."""
    src, index = read_op(sh, ins, ea, 1), read_op(sh, ins, ea, 2)[0]
    write_op(sh, ins, ea, 0, [x | index for x in src])
    sh.flags = union(src) | index


def _wide(op: Op) -> RegLoc | None:
    """The 64-bit register of a 32-bit GPR operand."""
    loc = op.reg
    return REGISTERS[GPRS[loc.gpr]] if op.kind == "r" and loc and loc.zext else None


def rule_pdep_pext(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """pdep: result bit p comes from a source bit at or below p and depends on the mask bits
    at or below p; pext: result bit k comes from a source bit at or above k, placed by the
    whole mask.  The engine runs a 32-bit pdep on the whole 64-bit registers (without
    truncating), so that one is followed as a 64-bit pdep: a superset of the hardware's."""
    src, mask = read_op(sh, ins, ea, 1), vr.fit(read_op(sh, ins, ea, 2), ins.ops[0].size)
    if ins.mnemonic == "pdep":
        wide = [_wide(op) for op in ins.ops]
        if wide[0] and wide[1]:
            src, mask = sh.reg(wide[1]), sh.reg(wide[2]) if wide[2] else vr.fit(mask, 8)
        out = [x | y for x, y in zip(vr.prefix(src), vr.prefix(mask), strict=False)]
        if wide[0]:
            sh.set_reg(wide[0], out)
            return
    else:
        m = union(mask)
        out = [x | m for x in vr.suffix(src)]
    write_op(sh, ins, ea, 0, out)


_SHIFTX = {"shlx": "l", "shrx": "r", "sarx": "a"}


def rule_shiftx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """shlx/shrx/sarx (no flags): by a clean count whose value is known, byte-precise; else
    a left shift's byte j = bytes 0..j, a right shift's = bytes j.. (plus the count)."""
    src, kind = read_op(sh, ins, ea, 1), _SHIFTX[ins.mnemonic]
    count = read_op(sh, ins, ea, 2)[0]
    value = None if count else value_op(sh, ins, ea, 2)
    if value is not None:
        out = vr.shift_bytes(src, value[0] & (8 * len(src) - 1), kind)
    else:
        out = [x | count for x in (vr.prefix(src) if kind == "l" else vr.suffix(src))]
    write_op(sh, ins, ea, 0, out)


def rule_rorx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """rorx (no flags): rotate by the immediate: each byte from the one or two bytes its bits
    come from."""
    src = read_op(sh, ins, ea, 1)
    write_op(sh, ins, ea, 0, vr.rotate_bytes(src, ins.ops[2].imm))


def rule_movbe(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movbe: a byte-reversed move."""
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 1)[::-1])


def rule_sahf(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """sahf: SF/ZF/AF/PF/CF = ah (OF is kept: the old flags stay in)."""
    sh.flags |= sh.reg_named("ah")[0]


def rule_lahf(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """lahf: ah = the flags."""
    sh.set_reg_named("ah", [sh.flags])


def rule_default(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """Anything else: every output (written operands, implicitly written registers, flags
    when written) = union of every input (read operands, implicit register reads, flags when
    read)."""
    t = sh.flags if ins.reads_flags else 0
    for i, op in enumerate(ins.ops):
        if op.read and op.kind != "i":
            t |= union(read_op(sh, ins, ea, i))
    for loc in ins.implicit_reads:
        if loc.name not in ("rsp", "esp"):
            t |= union(sh.reg(loc))
    for i, op in enumerate(ins.ops):
        if op.written:
            write_op(sh, ins, ea, i, [t] * op.size)
    for loc in ins.implicit_writes:
        if loc.name not in ("rsp", "esp"):
            sh.set_reg(loc, [t] * loc.size)
    if ins.writes_flags:
        sh.flags = t


# -- the dispatch table ---------------------------------------------------------------------

CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge",
              "le", "g")
SSE_FLOAT_ARITH = frozenset(
    f"{v}{op}{t}" for v in ("", "v") for op in ("add", "sub", "mul", "div", "sqrt", "min", "max")
    for t in ("ss", "sd", "ps", "pd"))

RULES: dict[str, Rule] = {}


def _table(rule: Rule, *mnemonics: str) -> None:
    for m in mnemonics:
        RULES[m] = rule


_table(rule_mov, "mov", "movabs")
_table(rule_movzx, "movzx")
_table(rule_movsx, "movsx", "movsxd")
_table(rule_lea, "lea")
_table(rule_arith, "add", "sub", "adc", "sbb", "inc", "dec", "neg", "cmp")
_table(rule_logic, "and", "or", "xor")
_table(rule_test, "test")
_table(rule_not, "not")
_table(rule_shift, "shl", "sal", "shr", "sar", "rol", "ror", "rcl", "rcr", "shld", "shrd")
_table(rule_mul, "mul", "imul")
_table(rule_div, "div", "idiv")
_table(rule_setcc, *(f"set{c}" for c in CONDITIONS), "setc", "setnc", "setz", "setnz",
       "setnae", "setnb", "setna", "setnbe", "setpe", "setpo", "setnge", "setnl", "setng",
       "setnle")
_table(rule_cmov, *(f"cmov{c}" for c in CONDITIONS))
_table(rule_nop, "nop", "endbr64", "endbr32", "jmp", "ret", "lfence", "mfence", "sfence",
       "pause", "prefetcht0", "prefetcht1", "prefetcht2", "prefetchnta", "prefetchw",
       "prefetch", "prefetchwt1",
       "jrcxz", "jecxz", "loop", "loope", "loopne", "hlt", "syscall", "cld", "std",
       "vzeroupper", "ud2", "int3", "cpuid", "rdtsc", "xgetbv",
       *(f"j{c}" for c in CONDITIONS))
_table(rule_push, "push")
_table(rule_pop, "pop")
_table(rule_call, "call")
_table(rule_leave, "leave")
_table(rule_xchg, "xchg")
_table(rule_xadd, "xadd")
_table(rule_cmpxchg, "cmpxchg")
_table(rule_bswap, "bswap")
_table(rule_vec_move, "movd", "movq", "movdqa", "movdqu", "movaps", "movups", "movapd",
       "movupd", "lddqu", "vmovd", "vmovq", "vmovdqa", "vmovdqu", "vmovaps", "vmovups",
       "vmovapd", "vmovupd", "vmovdqa64", "vmovdqu8", "vmovdqu64", "movntdq", "vmovntdq")
_table(rule_scalar_move, "movss", "vmovss")  # movsd: see rule_for (string form shares it)
_table(rule_vec_logic, "pxor", "pand", "por", "pandn", "xorps", "xorpd", "andps", "andpd",
       "orps", "orpd", "andnps", "andnpd", "vpxor", "vpand", "vpor", "vpandn", "vxorps",
       "vxorpd", "vandps", "vandpd", "vorps", "vorpd")
_table(rule_movs, "movsb", "movsw", "movsq")
_table(rule_stos, "stosb", "stosw", "stosd", "stosq")
_table(rule_lods, "lodsb", "lodsw", "lodsd", "lodsq")
_table(rule_scas_cmps, "scasb", "scasw", "scasd", "scasq", "cmpsb", "cmpsw", "cmpsq")
_table(rule_cdq, "cwd", "cdq", "cqo", "cbw", "cwde", "cdqe")


def _vex(rule: Rule, *mnemonics: str) -> None:
    """Register the SSE mnemonics and their VEX (v-prefixed) forms."""
    _table(rule, *mnemonics, *(f"v{m}" for m in mnemonics))


_vex(rule_lanes, *(m for m in LANE_SIZE if not m.startswith("pabs")))
_vex(rule_lanes_unary, "pabsb", "pabsw", "pabsd")
_vex(rule_unpack, *UNPACK)
_vex(rule_pack, *PACK)
_vex(rule_pshufd, "pshufd", "pshuflw", "pshufhw")
_vex(rule_pshufb, "pshufb")
_vex(rule_palignr, "palignr")
_vex(rule_byte_shift, "pslldq", "psrldq")
_vex(rule_vec_shift, *VSHIFT)
_vex(rule_shufps, "shufps", "shufpd")
_vex(rule_psadbw, "psadbw")
_vex(rule_movhl, "movhps", "movhpd", "movlps", "movlpd", "movhlps", "movlhps")
_vex(rule_pinsr, "pinsrb", "pinsrw", "pinsrd", "pinsrq")
_vex(rule_pextr, "pextrb", "pextrw", "pextrd", "pextrq")
_vex(rule_movmsk, *MASK_SIZE)
_vex(rule_ptest, "ptest")
_vex(rule_pmovx, *EXTEND)
_table(rule_bitscan, "bsf", "bsr")
_table(rule_bitcount, "tzcnt", "lzcnt", "popcnt")
_table(rule_bit_test, "bt", "bts", "btr", "btc")
_table(rule_andn, "andn")
_table(rule_blsx, "blsi", "blsr", "blsmsk")
_table(rule_bzhi, "bzhi")
_table(rule_pdep_pext, "pdep", "pext")
_table(rule_shiftx, *_SHIFTX)
_table(rule_rorx, "rorx")
_table(rule_movbe, "movbe")
_table(rule_sahf, "sahf")
_table(rule_lahf, "lahf")
_table(rule_nop, "cmc", "clc", "stc")


def rule_movsd(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movsd: the string move (two memory operands) or the SSE scalar double move."""
    if len(ins.ops) == 2 and ins.ops[0].kind == "m" and ins.ops[1].kind == "m":
        rule_movs(sh, ins, ea)
    else:
        rule_scalar_move(sh, ins, ea)


def rule_cmpsd(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """cmpsd: the string compare or the SSE scalar compare (default rule)."""
    if len(ins.ops) == 2 and ins.ops[0].kind == "m" and ins.ops[1].kind == "m":
        rule_scas_cmps(sh, ins, ea)
    else:
        rule_default(sh, ins, ea)


_table(rule_movsd, "movsd", "vmovsd")
_table(rule_cmpsd, "cmpsd")


def rule_for(mnemonic: str) -> Rule:
    """The rule for a mnemonic (:func:`rule_default` when none is specific)."""
    return RULES.get(mnemonic, rule_default)


def is_default(mnemonic: str) -> bool:
    """Does ``mnemonic`` fall to :func:`rule_default`?"""
    return mnemonic not in RULES
