"""Differential tests of plugins.ct_division: the constant-time sequence against the real
div/idiv, both run in raw Unicorn from identical random states (biased to edge cases).

Compared after each run: every GPR, RIP, the non-arithmetic RFLAGS bits, the stack from the
red zone up, the data page, and whether and where #DE (interrupt 0) happened.  Each run of the
sequence also records its executed instruction addresses, which must be the same for every
input (all instructions in order; up to the final check ``div`` when the input faults).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn import x86_const as x

from leakdbt.x86.asm import assemble, assemble_many
from leakdbt.x86.insn import Insn, decode, decode_all
from plugins.ct_division import (
    FRAME_BASE,
    UnsupportedDivision,
    constant_time_divide,
    division_frame,
)

ORIG = 0x100000
SEQ = 0x200000
SEQ_SIZE = 0x4000
DATA = 0x600000
STACK = 0x7F0000
STACK_SIZE = 0x10000
RSP = STACK + 0x8000
UNMAPPED = 0x900000
FS_BASE = DATA + 0x800
STATES = 300
MASK64 = (1 << 64) - 1
ARITH_FLAGS = 0x8D5  # CF PF AF ZF SF OF: undefined after div/idiv
KEPT = RSP - 128 - STACK  # stack offset from which on nothing may change (red zone and up)

GPRS = {
    "rax": x.UC_X86_REG_RAX, "rbx": x.UC_X86_REG_RBX, "rcx": x.UC_X86_REG_RCX,
    "rdx": x.UC_X86_REG_RDX, "rsi": x.UC_X86_REG_RSI, "rdi": x.UC_X86_REG_RDI,
    "rbp": x.UC_X86_REG_RBP, "rsp": x.UC_X86_REG_RSP, "r8": x.UC_X86_REG_R8,
    "r9": x.UC_X86_REG_R9, "r10": x.UC_X86_REG_R10, "r11": x.UC_X86_REG_R11,
    "r12": x.UC_X86_REG_R12, "r13": x.UC_X86_REG_R13, "r14": x.UC_X86_REG_R14,
    "r15": x.UC_X86_REG_R15,
}


@dataclass(frozen=True)
class Form:
    """One instruction form: its text (or raw bytes) and fixed base registers for memory."""

    text: str
    raw: bytes | None = None
    bases: tuple[tuple[str, int], ...] = ()
    divisor_at: int | None = None  # address of a memory divisor
    divisor_reg: str | None = None  # register holding the divisor (Capstone name)

    @property
    def signed(self) -> bool:
        return self.text.startswith("idiv")


def _reg_form(text: str) -> Form:
    return Form(text, divisor_reg=text.split()[1])


FORMS = [
    # register operands, all widths, both signednesses, high-byte and odd registers
    *(_reg_form(t) for t in (
        "div bl", "idiv bl", "div bh", "idiv ch", "div ah", "idiv dh", "div sil", "idiv r9b",
        "div cx", "idiv cx", "div r10w", "idiv dx",
        "div ecx", "idiv ecx", "div r13d", "idiv eax",
        "div rbx", "idiv rbx", "div r15", "idiv rdx", "div rsp", "idiv esp",
    )),
    # memory operands
    Form("div byte ptr [rsi + 0x10]", bases=(("rsi", DATA),), divisor_at=DATA + 0x10),
    Form("idiv byte ptr [rsi + 0x11]", bases=(("rsi", DATA),), divisor_at=DATA + 0x11),
    Form("div word ptr [rbx + rcx*2 - 8]", bases=(("rbx", DATA + 0x108), ("rcx", 0x20)),
         divisor_at=DATA + 0x140),
    Form("idiv word ptr [rsp + 8]", divisor_at=RSP + 8),
    Form("div dword ptr [rsp - 0x40]", divisor_at=RSP - 0x40),  # in the red zone
    Form("idiv dword ptr [rdi]", bases=(("rdi", DATA + 0x204),), divisor_at=DATA + 0x204),
    Form("div qword ptr [rsp]", divisor_at=RSP),
    Form("idiv qword ptr [rbp - 0x18]", bases=(("rbp", DATA + 0x318),), divisor_at=DATA + 0x300),
    Form("div qword ptr fs:[0x20]", raw=bytes.fromhex("6448f7342520000000"),
         divisor_at=FS_BASE + 0x20),
    Form("idiv dword ptr [0x600400]", raw=bytes.fromhex("f73c2500046000"),
         divisor_at=DATA + 0x400),
    Form("idiv qword ptr [rsp - 0x80]", divisor_at=RSP - 0x80),  # bottom of the red zone
]


def _insn(form: Form, address: int = ORIG) -> Insn:
    raw = form.raw if form.raw is not None else assemble(form.text, address)
    insn = decode(raw, address)
    assert insn is not None and insn.text == form.text, (insn, form.text)
    return insn


@dataclass
class Run:
    regs: dict[str, int]
    flags: int
    rip: int
    stack: bytes
    data: bytes
    fault: int | None  # interrupt number, or None
    trace: list[int] = field(default_factory=list)


class Emulator:
    """One Unicorn instance per code, rebuilt after every fault.

    Unicorn 2.1 does not recover from a CPU exception stopped in an interrupt hook: the next
    #DE on the same instance is reported as interrupt 8 (double fault) or not at all (the run
    just stops at the instruction).  So an instance that faulted is thrown away.
    """

    def __init__(self, code: bytes, address: int, *, trace: bool) -> None:
        self.code, self.address, self.tracing = code, address, trace
        self.start, self.end = address, address + len(code)
        self.fault: int | None = None
        self.trace: list[int] = []
        self.uc = self._build()

    def _build(self) -> Uc:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(self.address & ~0xFFF, 0x10000)
        uc.mem_write(self.address, self.code)
        uc.mem_map(DATA, 0x1000)
        uc.mem_map(STACK, STACK_SIZE)
        uc.hook_add(UC_HOOK_INTR, self._intr)
        if self.tracing:
            append = self.trace.append
            uc.hook_add(UC_HOOK_CODE, lambda _uc, a, _s, _d: append(a), None,
                        self.start, self.end - 1)
        return uc

    def _intr(self, uc: Uc, intno: int, _data: object) -> None:
        self.fault = intno
        uc.emu_stop()

    def run(self, regs: dict[str, int], flags: int, stack: bytes, data: bytes) -> Run:
        uc = self.uc
        uc.mem_write(STACK, stack)
        uc.mem_write(DATA, data)
        for name, value in regs.items():
            uc.reg_write(GPRS[name], value)
        uc.reg_write(x.UC_X86_REG_EFLAGS, flags)
        uc.reg_write(x.UC_X86_REG_FS_BASE, FS_BASE)
        self.fault = None
        self.trace.clear()
        try:
            uc.emu_start(self.start, self.end)
        except UcError as e:  # memory faults: recorded as -1 - errno
            self.fault = -1 - e.errno
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        if self.fault is None and rip != self.end:  # stopped without telling: see above
            self.fault = -100
        result = Run(
            regs={name: uc.reg_read(r) for name, r in GPRS.items()},
            flags=uc.reg_read(x.UC_X86_REG_EFLAGS),
            rip=rip,
            stack=bytes(uc.mem_read(STACK, STACK_SIZE)),
            data=bytes(uc.mem_read(DATA, 0x1000)),
            fault=self.fault,
            trace=list(self.trace),
        )
        if self.fault is not None:
            self.uc = self._build()
        return result


# --------------------------------------------------------------------------------------------
# Biased random states


def _edges(bits: int) -> list[int]:
    m = (1 << bits) - 1
    h = 1 << (bits - 1)
    return [0, 1, 2, 3, m, m - 1, h, h - 1, h + 1, 0x55 & m, 7]


def _pick(rng: random.Random, bits: int) -> int:
    if rng.random() < 0.5:
        return rng.choice(_edges(bits))
    return rng.getrandbits(rng.choice([bits, bits, max(1, bits // 2), 3]))


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def _operands(rng: random.Random, bits: int, signed: bool) -> tuple[int, int]:
    """(dividend of 2*bits bits, divisor of bits bits), unsigned encodings."""
    m, m2 = (1 << bits) - 1, (1 << 2 * bits) - 1
    kind = rng.random()
    d = _pick(rng, bits)
    if kind < 0.3:  # anything: mostly faults
        return (_pick(rng, bits) << bits | _pick(rng, bits)), d
    if kind < 0.85:  # quotient fits (mostly)
        if not signed:
            d = d or 1
            q, r = _pick(rng, bits), rng.randrange(d)
            return (q * d + r) & m2, d
        sd = _signed(d, bits) or -1
        q = _signed(_pick(rng, bits), bits)
        r = rng.randrange(abs(sd))
        n = q * sd
        r = -r if n < 0 or (n == 0 and rng.random() < 0.5) else r
        return (n + r) & m2, sd & m
    # boundary: just past / at the largest quotient, INT_MIN / -1
    if not signed:
        d = d or 1
        q = m + rng.choice([0, 1])
        return (q * d + rng.randrange(d)) & m2, d
    sd = rng.choice([-1, 1, _signed(d, bits) or 2])
    q = rng.choice([1 << (bits - 1), (1 << (bits - 1)) - 1, -(1 << (bits - 1)),
                    -(1 << (bits - 1)) - 1])
    return (q * sd) & m2, sd & m


def _place(regs: dict[str, int], name: str, value: int, bits: int) -> None:
    """Write ``value`` into the sub-register ``name`` (Capstone name) of ``regs``."""
    high = {"ah": "rax", "bh": "rbx", "ch": "rcx", "dh": "rdx"}
    if name in high:
        full, shift, bits = high[name], 8, 8
    else:
        full = next(f for f, subs in _SUBS.items() if name in subs)
        shift = 0
    mask = ((1 << bits) - 1) << shift
    regs[full] = (regs[full] & ~mask) | (value << shift & mask)


_SUBS = {
    "rax": ("rax", "eax", "ax", "al"), "rbx": ("rbx", "ebx", "bx", "bl"),
    "rcx": ("rcx", "ecx", "cx", "cl"), "rdx": ("rdx", "edx", "dx", "dl"),
    "rsi": ("rsi", "esi", "si", "sil"), "rdi": ("rdi", "edi", "di", "dil"),
    "rbp": ("rbp", "ebp", "bp", "bpl"), "rsp": ("rsp", "esp", "sp", "spl"),
    **{f"r{i}": (f"r{i}", f"r{i}d", f"r{i}w", f"r{i}b") for i in range(8, 16)},
}


def _state(rng: random.Random, form: Form, bits: int) -> tuple[dict[str, int], int, bytes, bytes]:
    regs = {name: rng.getrandbits(64) for name in GPRS}
    regs["rsp"] = RSP
    n, d = _operands(rng, bits, form.signed)
    if bits == 8:
        regs["rax"] = (regs["rax"] & ~0xFFFF) | n
    else:
        _place(regs, "rax", n & ((1 << bits) - 1), bits)
        _place(regs, "rdx", n >> bits, bits)
    stack = bytearray(rng.randbytes(STACK_SIZE))
    data = bytearray(rng.randbytes(0x1000))
    if form.divisor_reg and _FULL_OF.get(form.divisor_reg) != "rsp":
        _place(regs, form.divisor_reg, d, bits)
    for name, value in form.bases:
        regs[name] = value
    if form.divisor_at is not None:
        raw = d.to_bytes(bits // 8, "little")
        if DATA <= form.divisor_at < DATA + 0x1000:  # fs: operands too
            data[form.divisor_at - DATA:form.divisor_at - DATA + len(raw)] = raw
        else:
            stack[form.divisor_at - STACK:form.divisor_at - STACK + len(raw)] = raw
    flags = 0x2 | rng.choice([0, 0x8D5, 0x400, 0x41]) | rng.getrandbits(1)
    return regs, flags, bytes(stack), bytes(data)


_FULL_OF = {sub: full for full, subs in _SUBS.items() for sub in subs}


def _model(form: Form, bits: int, regs: dict[str, int], stack: bytes, data: bytes
           ) -> tuple[int, int] | None:
    """What div/idiv leaves in RAX and RDX, or None if it faults (#DE): the specification."""
    m = (1 << bits) - 1
    if form.divisor_reg in ("ah", "bh", "ch", "dh"):
        d = regs[_FULL_OF[form.divisor_reg[0] + "l"]] >> 8 & 0xFF
    elif form.divisor_reg is not None:
        d = regs[_FULL_OF[form.divisor_reg]] & m
    else:
        assert form.divisor_at is not None
        mem, base = (data, DATA) if DATA <= form.divisor_at < DATA + 0x1000 else (stack, STACK)
        d = int.from_bytes(mem[form.divisor_at - base:form.divisor_at - base + bits // 8],
                           "little")
    n = regs["rax"] & 0xFFFF if bits == 8 else (regs["rdx"] & m) << bits | (regs["rax"] & m)
    if form.signed:
        n, d = _signed(n, 2 * bits), _signed(d, bits)
    if d == 0:
        return None
    q = abs(n) // abs(d) * (1 if (n < 0) == (d < 0) else -1)
    r = n - q * d
    fits = -(1 << (bits - 1)) <= q < 1 << (bits - 1) if form.signed else q <= m
    if not fits:
        return None
    q, r = q & m, r & m
    if bits == 8:
        return regs["rax"] & ~0xFFFF | r << 8 | q, regs["rdx"]
    if bits == 16:
        return regs["rax"] & ~0xFFFF | q, regs["rdx"] & ~0xFFFF | r
    return q, r


# --------------------------------------------------------------------------------------------


def _width(insn: Insn) -> int:
    for ptr, bits in (("byte", 8), ("word", 16), ("qword", 64), ("dword", 32)):
        if insn.op_str.startswith(ptr):
            return bits
    reg = insn.op_str
    if reg in ("ah", "bh", "ch", "dh"):
        return 8
    return 8 << _SUBS[_FULL_OF[reg]][::-1].index(reg)


def _check_recoverable(seq: Run, orig: Run, frame_size: int, slots: dict[str, int],
                       rflags_slot: int, before: dict[str, int], flags: int) -> None:
    """At a fault of the sequence, the original state can be rebuilt from its frame."""
    rsp = seq.regs["rsp"]
    assert rsp + frame_size == RSP

    def quad(at: int) -> int:
        return int.from_bytes(seq.stack[at - STACK:at - STACK + 8], "little")

    rebuilt = dict(seq.regs)
    rebuilt["rsp"] = rsp + frame_size
    for reg, offset in slots.items():
        rebuilt[reg] = quad(rsp + offset)
    assert rebuilt == orig.regs == before
    assert quad(rsp + rflags_slot) == flags == orig.flags


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.text)
def test_differential(form: Form) -> None:
    insn = _insn(form)
    bits = _width(insn)
    lines = constant_time_divide(insn)
    code = assemble_many(lines, SEQ)
    assert len(code) < SEQ_SIZE
    addresses = [i.address for i in decode_all(code, SEQ)]
    assert len(addresses) == len(lines)
    check = addresses[lines.index("div edi")]
    frame = division_frame(insn)

    original = Emulator(insn.raw, ORIG, trace=False)
    sequence = Emulator(code, SEQ, trace=True)
    rng = random.Random(zlib.crc32(form.text.encode()))
    faults = 0
    for _ in range(STATES):
        regs, flags, stack, data = _state(rng, form, bits)
        want = original.run(regs, flags, stack, data)
        got = sequence.run(regs, flags, stack, data)
        expected = _model(form, bits, regs, stack, data)
        assert (expected is None) == (want.fault is not None)
        if expected is not None:
            assert (want.regs["rax"], want.regs["rdx"]) == expected
        assert (got.fault, want.fault) in ((None, None), (0, 0)), (regs, got.fault, want.fault)
        if want.fault is None:
            assert got.regs == want.regs, (lines, regs)
            assert got.rip == SEQ + len(code) and want.rip == ORIG + len(insn.raw)
            assert got.flags & ~ARITH_FLAGS == want.flags & ~ARITH_FLAGS
            # Nothing from 128 bytes below RSP upwards changes (the red zone survives).
            assert got.stack[KEPT:] == want.stack[KEPT:] == stack[KEPT:]
            assert got.trace == addresses
        else:
            faults += 1
            assert want.rip == ORIG and got.rip == check
            assert got.trace == addresses[: addresses.index(check) + 1]
            _check_recoverable(got, want, frame.size, frame.slots, frame.rflags, regs, flags)
            assert got.stack[KEPT:] == want.stack[KEPT:] == stack[KEPT:]
        assert got.data == want.data == data
    # Both outcomes are well represented (a divisor that is part of the dividend, as in
    # `div ah` or `idiv rdx`, makes the quotient overflow almost always).
    aliased = form.divisor_reg in ("ah", "al", "dx", "ax", "edx", "eax", "rdx", "rax")
    assert faults > STATES // 10 and (aliased or faults < STATES * 9 // 10), faults


def test_memory_fault_is_recoverable() -> None:
    """A memory operand that faults faults in the sequence too, with the same frame."""
    for text, raw in [("div qword ptr [rsi + 8]", None), ("idiv byte ptr [rbx]", None)]:
        insn = decode(raw or assemble(text, ORIG), ORIG)
        assert insn is not None
        code = assemble_many(constant_time_divide(insn), SEQ)
        frame = division_frame(insn)
        rng = random.Random(1)
        for _ in range(5):
            regs = {name: rng.getrandbits(64) for name in GPRS}
            regs["rsp"], regs["rsi"], regs["rbx"] = RSP, UNMAPPED, UNMAPPED
            stack = rng.randbytes(STACK_SIZE)
            data = rng.randbytes(0x1000)
            want = Emulator(insn.raw, ORIG, trace=False).run(regs, 0x202, stack, data)
            got = Emulator(code, SEQ, trace=False).run(regs, 0x202, stack, data)
            assert want.fault is not None and got.fault == want.fault
            _check_recoverable(got, want, frame.size, frame.slots, frame.rflags, regs, 0x202)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.text)
def test_no_secret_dependent_division_or_branch(form: Form) -> None:
    """The only div is the final constant check; no idiv, no branch, no other variable op."""
    insn = _insn(form)
    lines = constant_time_divide(insn)
    decoded = decode_all(assemble_many(lines, SEQ), SEQ)
    mnemonics = [i.mnemonic for i in decoded]
    assert mnemonics.count("div") == 1 and "idiv" not in mnemonics
    at = mnemonics.index("div")
    assert decoded[at].op_str == "edi"
    assert lines[at - 3:at] == ["and rdi, 1", "xor eax, eax", "xor edx, edx"]
    assert all(i.flow.value == "next" for i in decoded)  # no jump, branch, call or return
    variable = {"div", "idiv", "mul", "imul", "bsf", "bsr", "loop", "rep"}
    assert not {m for m in mnemonics[:at]} & variable
    # The red zone is skipped before the first push.
    assert lines[0] == "lea rsp, [rsp - 0x80]" and lines[-1].startswith("lea rsp, [rsp + ")


def test_frame_layout() -> None:
    insn = _insn(Form("idiv rbx"))
    frame = division_frame(insn)
    assert frame.size == FRAME_BASE + 8 * len(frame.slots)
    assert sorted(frame.slots.values()) == list(range(16, 16 + 8 * len(frame.slots), 8))
    assert frame.rflags == 16 + 8 * len(frame.slots)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("48f735f9ff0000", "RIP-relative"),  # div qword ptr [rip + 0xfff9]
        ("67f733", "32-bit addressing"),  # div dword ptr [ebx]
        ("48f7742480", "below the red zone"),  # div qword ptr [rsp - 0x80] is fine; see below
        ("4801d8", "not a div"),  # add rax, rbx
    ],
)
def test_refused(raw: str, why: str) -> None:
    insn = decode(bytes.fromhex(raw), ORIG)
    assert insn is not None
    if why == "below the red zone":
        constant_time_divide(insn)  # [rsp - 0x80] is the red zone's lowest quadword: fine
        insn = decode(bytes.fromhex("48f7b42478ffffff"), ORIG)  # [rsp - 0x88]
        assert insn is not None
    with pytest.raises(UnsupportedDivision, match=why.split()[0]) as info:
        constant_time_divide(insn)
    assert isinstance(info.value, ValueError)
