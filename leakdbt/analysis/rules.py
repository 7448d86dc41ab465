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
  returns the union of the 16, a ymm write beyond them is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from operator import or_

from capstone import CsInsn
from capstone import x86_const as x86

from leakdbt.dbt.insn import detail_decoder

GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
XMM_BASE = 16 * 8  # shadow index of xmm0 byte 0
NREGBYTES = XMM_BASE + 16 * 16


@dataclass(frozen=True)
class RegLoc:
    """Where a register's bytes live in the shadow register file."""

    name: str
    start: int  # index of its byte 0 in Shadow.regs
    size: int  # bytes shadowed (a ymm register: 16)
    width: int  # architectural size in bytes
    zext: bool = False  # a 32-bit GPR: writing it clears the upper 4 bytes
    gpr: int = -1  # GPR number, or -1


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
        table[r] = RegLoc(r, s, 8, 8, gpr=n)
        table[e] = RegLoc(e, s, 4, 4, zext=True, gpr=n)
        table[w] = RegLoc(w, s, 2, 2, gpr=n)
        table[b] = RegLoc(b, s, 1, 1, gpr=n)
        if h:
            table[h] = RegLoc(h, s + 1, 1, 1, gpr=n)
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
    for o in cs_insn.operands:
        access = o.access or 0
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
    return insn


# -- the shadow state -------------------------------------------------------------------------


class Shadow:
    """Taint of every register byte, the flags, and memory bytes (address -> labels; bytes
    not in the dict are clean)."""

    def __init__(self) -> None:
        self.regs: list[int] = [0] * NREGBYTES
        self.flags = 0
        self.mem: dict[int, int] = {}

    # registers
    def reg(self, loc: RegLoc) -> list[int]:
        b = self.regs[loc.start:loc.start + loc.size]
        if loc.width > loc.size:  # ymm: the unshadowed upper half gets the union
            b += [union(b)] * (loc.width - loc.size)
        return b

    def set_reg(self, loc: RegLoc, labels: Sequence[int]) -> None:
        n = loc.size
        self.regs[loc.start:loc.start + n] = list(labels[:n]) + [0] * (n - len(labels))
        if loc.zext:
            self.regs[loc.start + 4:loc.start + 8] = [0, 0, 0, 0]

    def reg_named(self, name: str) -> list[int]:
        return self.reg(REGISTERS[name])

    def set_reg_named(self, name: str, labels: Sequence[int]) -> None:
        self.set_reg(REGISTERS[name], labels)

    # memory
    def load(self, address: int, size: int) -> list[int]:
        mem = self.mem
        if not mem:
            return [0] * size
        return [mem.get(a, 0) for a in range(address, address + size)]

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


def rule_mov(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """mov/movabs: copy bytes."""
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 1))


def rule_movzx(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """movzx: copy the source bytes, the extension is clean."""
    write_op(sh, ins, ea, 0, read_op(sh, ins, ea, 1))


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
    if ins.mnemonic == "xor" and _same_reg(ins):
        out = [0] * size
    else:
        a, b = read_op(sh, ins, ea, 0), read_op(sh, ins, ea, 1)
        out = [x | y for x, y in zip(a, b + [0] * (size - len(b)), strict=False)]
        if ins.mnemonic == "and" and ins.ops[1].kind == "i":
            imm = ins.ops[1].imm
            out = [t if (imm >> (8 * j)) & 0xFF else 0 for j, t in enumerate(out)]
    write_op(sh, ins, ea, 0, out)
    sh.flags = union(out)


def rule_test(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """test: flags = union of both operands."""
    sh.flags = _all_inputs(sh, ins, ea)


def rule_not(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """not: byte-wise copy (taint unchanged)."""


def rule_shift(sh: Shadow, ins: Insn, ea: Sequence[int]) -> None:
    """Shifts and rotates.  By an immediate that a byte-wise rule can follow (shl/shr/sar):
    each result byte gets the source bytes its bits come from; otherwise (register count,
    rotates, double shifts) every byte and the flags = union of operand + count."""
    size = ins.ops[0].size
    src = read_op(sh, ins, ea, 0)
    m = ins.mnemonic
    if m in ("shl", "sal", "shr", "sar") and len(ins.ops) == 2 and ins.ops[1].kind == "i":
        k = ins.ops[1].imm & (0x3F if size == 8 else 0x1F)
        out = []
        for j in range(size):
            if m in ("shl", "sal"):  # bits [8j-k, 8j+7-k] of the source
                lo, hi = (8 * j - k), (8 * j + 7 - k)
            else:
                lo, hi = (8 * j + k), (8 * j + 7 + k)
            bytes_ = range(max(lo, 0) // 8, min(hi, 8 * size - 1) // 8 + 1) if hi >= 0 else ()
            t = union([src[b] for b in bytes_ if 0 <= b < size])
            if m == "sar" and hi > 8 * size - 1:
                t |= src[-1]
            out.append(t)
        write_op(sh, ins, ea, 0, out)
        sh.flags = union(src) if k else sh.flags
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
                                            "andnpd", "psubb", "psubw", "psubd", "psubq")
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
_table(rule_test, "test", "bt")
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
       "vxorpd", "vandps", "vandpd", "vorps", "vorpd", "psubb", "psubw", "psubd", "psubq")
_table(rule_movs, "movsb", "movsw", "movsq")
_table(rule_stos, "stosb", "stosw", "stosd", "stosq")
_table(rule_lods, "lodsb", "lodsw", "lodsd", "lodsq")
_table(rule_scas_cmps, "scasb", "scasw", "scasd", "scasq", "cmpsb", "cmpsw", "cmpsq")
_table(rule_cdq, "cwd", "cdq", "cqo", "cbw", "cwde", "cdqe")


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
    return mnemonic not in RULES
