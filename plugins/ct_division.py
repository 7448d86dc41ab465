"""Constant-time replacement for ``div``/``idiv`` (the core of the constant-time division pass).

:func:`constant_time_divide` turns one decoded ``div`` or ``idiv`` (8, 16, 32 or 64 bits;
register or memory operand) into Intel-syntax lines, in Capstone's spelling, that
:func:`leakdbt.x86.asm.assemble_many` encodes.  The sequence

- computes the same quotient and remainder in the same registers as the instruction (AL/AH;
  AX/DX; EAX/EDX with the upper halves of RAX/RDX zeroed; RAX/RDX), and leaves every other
  general-purpose register, RSP included, as it was;
- runs the same instructions in the same order whatever the operands: a restoring
  shift-subtract division unrolled over the operand width (8, 16, 32 or 64 steps), with
  ``adc``/``sbb``/``cmov`` carrying the decisions, and no branch at all;
- faults with #DE (SIGFPE) exactly when the original would (zero divisor, or a quotient that
  does not fit: unsigned wider than the operand, signed outside its range, INT_MIN / -1), and
  only then.  The one ``div`` it executes comes last and divides the constant 0 (EDX:EAX) by
  EDI, which is the constant 1 unless the original faults, where it is 0.  Neither its
  latency nor anything else depends on the operands in the non-faulting case.

Flags: DIV/IDIV leave CF, OF, SF, ZF, AF and PF undefined; the sequence leaves them undefined
too (in practice, whatever the final ``div edi`` of 0 by 1 leaves in them).  DF, IF, TF and the
other system flags are not changed.

Stack: the code may run in a leaf function that keeps data in the red zone, so the sequence
moves RSP down by 128 bytes before it pushes anything and writes nothing at or above
RSP - 128.  Below that it uses 24 + 8 * (saved registers) bytes (:func:`division_frame`),
memory the ABI leaves to signal handlers anyway.  A memory operand that lies there (only
possible through a base other than RSP, which cannot be checked here) would be overwritten
before it is read.

Faults: the sequence can fault in two places, the load of a memory operand (#PF, as the
original would) and the final ``div`` (#DE).  At both, the original register state and RFLAGS
are recoverable from the stack frame described by :func:`division_frame` (original RSP =
RSP + ``size``; each saved register at ``[rsp + slot]``; registers not saved are unchanged).

Refused (:class:`UnsupportedDivision`, a ValueError): RIP-relative memory operands unless
the module's load bias is given (the operand is then read at its absolute address), 32-bit
addressing (0x67 prefix), prefixes such as ``rep``/``lock``, and ``[rsp + D]`` operands with
D < -128 (memory below the red zone, which the sequence's own frame overwrites before the
load).

:data:`PASS` is the ``ct-division`` hardening pass built on it: it replaces every DIV/IDIV of
a region by the sequence (docs/passes.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from leakdbt.plugin_api import (
    API_VERSION,
    REGISTER64,
    ContractView,
    Insn,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    detail,
    detail_constants,
)
from plugins.support.clone import cloned_instructions

__all__ = [
    "FRAME_BASE",
    "PASS",
    "DivisionFrame",
    "UnsupportedDivision",
    "constant_time_divide",
    "division_frame",
]

MASK64 = (1 << 64) - 1
RED_ZONE = 128
FRAME_BASE = RED_ZONE + 8 + 16  # red zone, saved RFLAGS, two result slots

# Register roles (64-bit names).  Q and R are RAX and RDX, the division's own registers.
_D = "rbx"  # divisor (absolute value for idiv)
_T = "rsi"  # trial remainder R - D
_OK = "rdi"  # all ones while the instruction does not fault; the final divisor (0/1)
_C = "rcx"  # 64-bit steps: carry out of R, then the quotient-bit decision
_SN = "r8"  # idiv: sign mask of the dividend
_SD = "r9"  # idiv: sign mask of the divisor
_SX = "r10"  # idiv: sign mask of the quotient
_LIM = "r11"  # idiv: largest quotient magnitude allowed

_SUB = {  # 64-bit register -> (32, 16, 8-bit low) names
    "rax": ("eax", "ax", "al"), "rbx": ("ebx", "bx", "bl"), "rcx": ("ecx", "cx", "cl"),
    "rdx": ("edx", "dx", "dl"), "rsi": ("esi", "si", "sil"), "rdi": ("edi", "di", "dil"),
    "rbp": ("ebp", "bp", "bpl"), "rsp": ("esp", "sp", "spl"),
    **{f"r{i}": (f"r{i}d", f"r{i}w", f"r{i}b") for i in range(8, 16)},
}
_HIGH_BYTE = {"ah": "rax", "bh": "rbx", "ch": "rcx", "dh": "rdx"}
_PTR = {1: "byte ptr", 2: "word ptr", 4: "dword ptr", 8: "qword ptr"}


class UnsupportedDivision(ValueError):
    """The instruction is not a ``div``/``idiv`` this pass can rewrite (the reason says why)."""


@dataclass(frozen=True)
class DivisionFrame:
    """Where the original state is while the sequence may fault.

    At the memory-operand load and at the final ``div``: the original RSP is RSP + ``size``;
    the original value of each register in ``slots`` (and RFLAGS) is the quadword at
    ``[rsp + offset]``; every other general-purpose register holds its original value.
    """

    size: int
    slots: dict[str, int]
    rflags: int


@dataclass(frozen=True)
class _Operand:
    width: int  # bytes: 1, 2, 4, 8
    reg: str | None  # register operand (Capstone's name), or None for memory
    segment: str | None = None  # "fs"/"gs" or None
    base: str | None = None
    index: str | None = None
    scale: int = 1
    disp: int = 0


def _saved(signed: bool, width: int) -> list[str]:
    """The registers the sequence saves, in push order (RAX and RDX first, then scratch)."""
    regs = ["rax", "rdx", _D, _T, _OK]
    if width == 8:
        regs.append(_C)
    if signed:
        regs += [_SN, _SD, _SX, _LIM]
    return regs


def division_frame(insn: Insn, bias: int | None = None) -> DivisionFrame:
    """The frame of :func:`constant_time_divide`'s sequence for ``insn`` (see DivisionFrame)."""
    signed, operand = _parse(insn, bias)
    saved = _saved(signed, operand.width)
    n = len(saved)
    # [rsp]: result RAX, [rsp+8]: result RDX, then saved registers (last pushed lowest),
    # then RFLAGS, then the red zone.
    slots = {reg: 16 + 8 * (n - 1 - k) for k, reg in enumerate(saved)}
    return DivisionFrame(size=FRAME_BASE + 8 * n, slots=slots, rflags=16 + 8 * n)


def _parse(insn: Insn, bias: int | None = None) -> tuple[bool, _Operand]:
    k = detail_constants()
    if insn.mnemonic not in ("div", "idiv"):
        raise UnsupportedDivision(f"{insn.text!r} is not a div/idiv instruction")
    if insn.prefixes:
        raise UnsupportedDivision(f"{insn.text!r}: prefixes are not supported")
    ci = detail(insn)
    if ci.size != len(insn.raw):
        raise UnsupportedDivision(f"cannot decode {insn.raw.hex()} at {insn.address:#x}")
    ops = [op for op in ci.operands if op.type in (k.op_reg, k.op_mem)]
    if len(ops) != 1:  # Capstone lists only the explicit operand for div/idiv
        raise UnsupportedDivision(f"{insn.text!r}: expected one explicit operand")
    op = ops[0]
    width = op.size
    if width not in _PTR:
        raise UnsupportedDivision(f"{insn.text!r}: operand size {width}")
    signed = insn.mnemonic == "idiv"
    if op.type == k.op_reg:
        return signed, _Operand(width, ci.reg_name(op.reg))
    mem = op.mem
    if ci.addr_size != 8:
        raise UnsupportedDivision(f"{insn.text!r}: 32-bit addressing is not supported")
    base = ci.reg_name(mem.base) if mem.base else None
    index = ci.reg_name(mem.index) if mem.index else None
    if base == "rip" and bias is not None and index is None and insn.rip_target is not None:
        return signed, _Operand(width, None, None, None, None, 1,
                                (insn.rip_target + bias) & MASK64)
    if base == "rip":
        raise UnsupportedDivision(
            f"{insn.text!r}: RIP-relative operands are not supported (the sequence's address "
            "is not known here)"
        )
    segment = ci.reg_name(mem.segment) if mem.segment else None
    if segment not in (None, "fs", "gs"):
        segment = None  # cs/ds/es/ss overrides do nothing in 64-bit mode
    if base == "rsp" and index is None and mem.disp < -RED_ZONE:
        raise UnsupportedDivision(
            f"{insn.text!r}: operand below the red zone (the sequence's frame overwrites it)"
        )
    return signed, _Operand(width, None, segment, base, index, mem.scale, mem.disp)


def _hex(value: int) -> str:
    return f"{value:#x}"


def _memory(operand: _Operand, frame: int) -> tuple[list[str], str]:
    """Lines that prepare the address (into RBX if needed) and the memory operand's text."""
    segment = f"{operand.segment}:" if operand.segment else ""
    ptr = _PTR[operand.width]
    disp = operand.disp + (frame if operand.base == "rsp" else 0)
    if operand.base is None and operand.index is None:
        # Absolute address: Keystone turns most [N] operands RIP-relative, so go via RBX.
        return [f"movabs {_D}, {_hex(disp & MASK64)}"], f"{ptr} {segment}[{_D}]"
    parts = []
    if operand.base:
        parts.append(operand.base)
    if operand.index:
        parts.append(f"{operand.index}*{operand.scale}" if operand.scale != 1 else operand.index)
    text = " + ".join(parts)
    if disp > 0:
        text += f" + {_hex(disp)}"
    elif disp < 0:
        text += f" - {_hex(-disp)}"
    return [], f"{ptr} {segment}[{text}]"


def _load_divisor(signed: bool, operand: _Operand, frame: int) -> list[str]:
    """Lines that put the divisor, extended to 64 bits (sign- or zero-), into RBX."""
    w = operand.width
    lines: list[str] = []
    if operand.reg is None:
        lines, src = _memory(operand, frame)
    elif operand.reg in _HIGH_BYTE:
        src = operand.reg  # ah/bh/ch/dh: only without REX, so extend into EBX first
        ext = "movsx" if signed else "movzx"
        lines.append(f"{ext} ebx, {src}")
        if signed:
            lines.append("movsxd rbx, ebx")
        return lines
    elif REGISTER64.get(operand.reg) == "rsp":
        lines.append(f"lea {_D}, [rsp + {_hex(frame)}]")
        src = {8: "rbx", 4: "ebx", 2: "bx", 1: "bl"}[w]
    else:
        src = operand.reg
    if w == 8:
        if src != "rbx":
            lines.append(f"mov rbx, {src}")
    elif w == 4:
        lines.append(f"movsxd rbx, {src}" if signed else f"mov ebx, {src}")
    else:
        lines.append(f"{'movsx rbx' if signed else 'movzx ebx'}, {src}")
    return lines


def _step(width: int, first: bool) -> list[str]:
    """One step of the restoring division.

    On entry CF is the previous quotient bit (ignored by the first step, which shifts in 0).
    RAX holds the dividend's unconsumed low bits at the top and the quotient bits so far at
    the bottom; RDX is the partial remainder (< divisor while the quotient fits).  On exit CF
    is this step's quotient bit, not yet shifted into RAX.
    """
    shift = "add rax, rax" if first else "adc rax, rax"
    if width < 8:
        # 2 * RDX + 1 < 2**33: no carry out of RDX.
        return [
            shift,  # CF = next dividend bit
            "adc rdx, rdx",
            f"mov {_T}, rdx",
            f"sub {_T}, {_D}",  # CF = RDX < divisor
            f"cmovae rdx, {_T}",
            "cmc",  # CF = quotient bit
        ]
    # 64-bit: the shifted remainder is 65 bits, c:RDX.  Subtract iff c or RDX >= divisor.
    return [
        shift,
        "adc rdx, rdx",  # CF = c
        f"sbb {_C}, {_C}",  # -c
        f"mov {_T}, rdx",
        f"sub {_T}, {_D}",  # CF = b (borrow)
        f"adc {_C}, -1",  # b - c - 1: zero iff c == 0 and b == 1 (no subtraction)
        f"neg {_C}",  # CF = quotient bit
        f"cmovb rdx, {_T}",
    ]


def constant_time_divide(insn: Insn, bias: int | None = None) -> list[str]:
    """Intel-syntax lines computing ``insn`` (a div/idiv) in constant time; see the module doc.
    ``bias``: the module's load bias, needed for a RIP-relative operand (link-time address).

    Raises :class:`UnsupportedDivision` (a ValueError) for forms it refuses.
    """
    signed, operand = _parse(insn, bias)
    w = operand.width
    bits = 8 * w
    saved = _saved(signed, w)
    layout = division_frame(insn, bias)
    frame = layout.size
    slot_rax, slot_rdx = layout.slots["rax"], layout.slots["rdx"]

    lines = [f"lea rsp, [rsp - {_hex(RED_ZONE)}]", "pushfq"]
    lines += [f"push {reg}" for reg in saved]
    lines.append("lea rsp, [rsp - 0x10]")  # result slots
    # -- operands: divisor into RBX (read once), dividend into RDX (high) : RAX (low)
    lines += _load_divisor(signed, operand, frame)
    if signed:
        lines += [
            f"mov {_SD}, {_D}", f"sar {_SD}, 0x3f",
            f"xor {_D}, {_SD}", f"sub {_D}, {_SD}",  # |divisor|
        ]
        if w == 8:
            lines += [
                f"mov {_SN}, rdx", f"sar {_SN}, 0x3f",
                f"xor rax, {_SN}", f"xor rdx, {_SN}",
                f"sub rax, {_SN}", f"sbb rdx, {_SN}",  # |RDX:RAX|, 128 bits
            ]
        else:
            lines += {
                1: ["movsx rax, ax"],
                2: ["movsx rdx, dx", "shl rdx, 0x10", "movzx eax, ax", "or rax, rdx"],
                4: ["shl rdx, 0x20", "mov eax, eax", "or rax, rdx"],
            }[w]
            lines += [
                f"mov {_SN}, rax", f"sar {_SN}, 0x3f",
                f"xor rax, {_SN}", f"sub rax, {_SN}",  # |dividend| < 2**(2*bits) <= 2**64
                "mov rdx, rax", f"shr rdx, {_hex(bits)}",
            ]
    else:
        lines += {1: ["movzx edx, ah"], 2: ["movzx edx, dx"], 4: ["mov edx, edx"], 8: []}[w]
    if w < 8:
        lines.append(f"shl rax, {_hex(64 - bits)}")  # low half at the top of RAX
    # The quotient fits in `bits` bits iff high half < divisor (also catches divisor 0).
    lines += [f"cmp rdx, {_D}", f"sbb {_OK}, {_OK}"]
    # -- the division proper: `bits` identical steps, then shift in the last quotient bit
    for i in range(bits):
        lines += _step(w, first=i == 0)
    lines.append("adc rax, rax")  # RAX = quotient, RDX = remainder (of magnitudes for idiv)
    if signed:
        limit = (1 << (bits - 1)) - 1
        lines += [
            f"mov {_SX}, {_SN}", f"xor {_SX}, {_SD}",
            f"movabs {_LIM}, {_hex(limit)}" if bits == 64 else f"mov {_LIM}, {_hex(limit)}",
            f"sub {_LIM}, {_SX}",  # 2**(bits-1) if the quotient is negative
            f"cmp {_LIM}, rax",  # CF = quotient magnitude too large
            f"sbb {_LIM}, {_LIM}",
            f"not {_LIM}",
            f"and {_OK}, {_LIM}",
            f"xor rax, {_SX}", f"sub rax, {_SX}",  # quotient with its sign
            f"xor rdx, {_SN}", f"sub rdx, {_SN}",  # remainder takes the dividend's sign
        ]
    # -- results into the result slots, with the registers' untouched parts
    if w in (1, 2):
        lines += [
            f"mov {_T}, qword ptr [rsp + {_hex(slot_rax)}]", f"mov qword ptr [rsp], {_T}",
            f"mov {_T}, qword ptr [rsp + {_hex(slot_rdx)}]", f"mov qword ptr [rsp + 8], {_T}",
        ]
        if w == 1:
            lines += ["mov byte ptr [rsp], al", "mov byte ptr [rsp + 1], dl"]
        else:
            lines += ["mov word ptr [rsp], ax", "mov word ptr [rsp + 8], dx"]
    else:
        if w == 4:
            lines += ["mov eax, eax", "mov edx, edx"]
        lines += ["mov qword ptr [rsp], rax", "mov qword ptr [rsp + 8], rdx"]
    # -- the fault check: 0 / 1 normally, 0 / 0 exactly when the original faults
    lines += [f"and {_OK}, 1", "xor eax, eax", "xor edx, edx", "div edi"]
    # -- epilogue
    lines += ["mov rax, qword ptr [rsp]", "mov rdx, qword ptr [rsp + 8]", "lea rsp, [rsp + 0x10]"]
    lines += [f"pop {reg}" for reg in reversed(saved[2:])]
    lines.append(f"lea rsp, [rsp + {_hex(RED_ZONE + 8 + 16)}]")  # saved RDX, RAX, RFLAGS
    return lines


class ConstantTimeDivision:
    """The ``ct-division`` pass: every DIV/IDIV of the region becomes the constant-time
    sequence (about 6 instructions per operand bit: 200-520 instructions)."""

    name = "ct-division"
    api_version = API_VERSION
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView) -> bool:
        """Whether the region (or a callee it clones) has a division."""
        return any(i.mnemonic in ("div", "idiv") for i in _instructions(region))

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        """One replacement per division; a division it cannot rewrite refuses the region."""
        replace: dict[int, tuple[str, ...]] = {}
        for insn in _instructions(region):
            if insn.mnemonic not in ("div", "idiv"):
                continue
            try:
                replace[insn.address] = tuple(constant_time_divide(insn, region.bias))
            except UnsupportedDivision as e:
                return Refusal(f"the division at {insn.address + region.bias:#x}: {e}")
        return Rewrite(replace=replace)


def _instructions(region: RegionView) -> list[Insn]:
    """The region's instructions and, in a branch region (whose calls if-conversion turns
    into predicated clones, plugins/support/clone.py), those of the callees it clones."""
    own = region.instructions()
    return own + cloned_instructions(region) if region.shape == "branch" else own


PASS = ConstantTimeDivision()
