"""Decoded x86-64 instructions as small immutable records the translator can reason about.

Capstone's own instruction objects are heavy and tied to the decoder; :class:`Insn` keeps
what the CFG builder and the relocator need: bytes, text, how control leaves the instruction
(:class:`Flow`), a direct target, and where a RIP-relative displacement sits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from leakdbt.x86.registers import REGS64 as REGS64  # re-exported for its users


class Flow(enum.Enum):
    """How control leaves an instruction."""

    NEXT = "next"  # to the following instruction
    JUMP = "jump"  # direct unconditional jump
    BRANCH = "branch"  # direct conditional jump (jcc, loop*, j*cxz): target or next
    CALL = "call"  # direct call: the callee, then (usually) the next instruction
    INDIRECT_JUMP = "indirect-jump"
    INDIRECT_CALL = "indirect-call"
    RETURN = "return"
    STOP = "stop"  # never continues: ud2, hlt (int3 is a trap: a handler may return after it)

    @property
    def ends_block(self) -> bool:
        return self is not Flow.NEXT


# Conditional direct branches, by Capstone mnemonic.  loop*/j*cxz only have a rel8 form.
CONDITIONAL = frozenset({
    "ja", "jae", "jb", "jbe", "je", "jg", "jge", "jl", "jle", "jne", "jno", "jnp", "jns",
    "jo", "jp", "js",
})
SHORT_ONLY = frozenset({"loop", "loope", "loopne", "jrcxz", "jecxz"})
TRANSACTION = frozenset({"xbegin"})  # continues, or jumps to its abort handler
STOPS = frozenset({"ud2", "hlt", "ud0", "ud1"})
RETURNS = frozenset({"ret", "retf", "iretq", "iret", "iretd", "sysret", "sysretq"})


@dataclass(frozen=True, slots=True)
class Insn:
    """One decoded instruction at its address."""

    address: int
    raw: bytes
    mnemonic: str  # without prefixes such as notrack/bnd/rep/lock
    prefixes: str  # those prefixes as Capstone prints them ("" if none)
    op_str: str
    flow: Flow
    target: int | None = None  # direct branch or call target
    rip_target: int | None = None  # address a RIP-relative memory operand denotes
    disp_offset: int = 0  # offset of the 32-bit RIP displacement in ``raw`` (0: none)

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def next(self) -> int:
        return self.address + len(self.raw)

    @property
    def text(self) -> str:
        """The instruction as Capstone prints it (Intel syntax)."""
        full = f"{self.prefixes} {self.mnemonic}".strip()
        return f"{full} {self.op_str}".strip()


@lru_cache(maxsize=1)
def detail_decoder() -> Any:
    """The one Capstone decoder with operand details, shared by everything that needs them
    (created lazily: importing Capstone costs tens of milliseconds)."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def written_registers(insn: Insn) -> frozenset[str]:
    """The general registers ``insn`` writes, implicit writes included (64-bit names)."""
    out: set[str] = set()
    for ci in detail_decoder().disasm(insn.raw, insn.address, 1):
        out |= {REGS64[ci.reg_name(r)] for r in ci.regs_access()[1]
                if ci.reg_name(r) in REGS64}
    return frozenset(out)


def decode(code: bytes, address: int) -> Insn | None:
    """The instruction at the start of ``code`` (located at ``address``), or None."""
    for ci in detail_decoder().disasm(code[:15], address, 1):
        return from_capstone(ci)
    return None


def decode_all(code: bytes, address: int) -> list[Insn]:
    """Decode ``code`` linearly from ``address``, stopping at the first undecodable byte."""
    return [from_capstone(ci) for ci in detail_decoder().disasm(code, address)]


def from_capstone(ci: Any) -> Insn:
    """Convert a Capstone instruction (decoded with detail) into an :class:`Insn`."""
    from capstone import x86

    words = ci.mnemonic.split()
    mnemonic, prefixes = words[-1], " ".join(words[:-1])
    target = rip_target = None
    disp_offset = 0
    for op in ci.operands:
        if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
            rip_target = (ci.address + ci.size + op.mem.disp) & 0xFFFF_FFFF_FFFF_FFFF
            disp_offset = ci.disp_offset
    ops = ci.operands
    direct = len(ops) == 1 and ops[0].type == x86.X86_OP_IMM
    if mnemonic in CONDITIONAL or mnemonic in SHORT_ONLY or mnemonic in TRANSACTION:
        flow = Flow.BRANCH
    elif mnemonic == "jmp":
        flow = Flow.JUMP if direct else Flow.INDIRECT_JUMP
    elif mnemonic == "call":
        flow = Flow.CALL if direct else Flow.INDIRECT_CALL
    elif mnemonic in RETURNS:
        flow = Flow.RETURN
    elif mnemonic in STOPS:
        flow = Flow.STOP
    elif mnemonic in ("ljmp", "lcall"):
        flow = Flow.INDIRECT_JUMP if mnemonic == "ljmp" else Flow.INDIRECT_CALL
    else:
        flow = Flow.NEXT
    if flow in (Flow.BRANCH, Flow.JUMP, Flow.CALL):
        target = ops[0].imm & 0xFFFF_FFFF_FFFF_FFFF
    return Insn(ci.address, bytes(ci.bytes), mnemonic, prefixes, ci.op_str, flow, target,
                rip_target, disp_offset)
