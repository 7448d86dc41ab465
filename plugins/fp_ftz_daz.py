"""The fp-ftz-daz pass: run a region's SSE/AVX floating point with MXCSR.FTZ and MXCSR.DAZ set.

With FTZ (flush to zero, MXCSR bit 15) a result that would be subnormal becomes a zero of
the same sign (and sets the underflow and precision flags); with DAZ (denormals are zero,
bit 6) subnormal *operands* are read as zeros of the same sign (and the denormal flag is not
set).  Either way no micro-code assist (the slow path whose latency reveals subnormal
values) runs.  **This changes results that involve subnormal values** — that is what the
pass is for; results on normal, zero, infinite and NaN values are unchanged, as long as no
result underflows.  ``region.params``: ``ftz`` and ``daz`` (booleans; both by default).

Preconditions.  A region of kind ``float``, or of kind None with SSE/AVX floating-point
arithmetic (``addsd``, ``mulps``, ``sqrtsd``, ``vfmadd231pd``, ``cvt*``, ``(u)comis*`` ...).

Method (a ``Rewrite.replace``; every sequence saves and restores RFLAGS and RAX, moves RSP
below the red zone first, and uses a dword at ``[rsp - 0x88]`` as a temporary):

- *Region mode*, for a region of kind ``float`` (its plan has no other pass), or of kind
  None and shape ``block`` (if-conversion and bounded-loop, which replace whole regions and
  keep their slots below ``REGION_SCRATCH``, only take branch and loop shapes), in which
  nothing else replaces the whole region or reorders its instructions, and RSP is the same
  everywhere (no call, no push/pop, no other write of RSP except by a final ``ret``): the
  region's first instruction is preceded
  by SAVE+ENABLE — ``stmxcsr`` of the original MXCSR into a slot at ``[rsp - REGION_SCRATCH -
  8]`` (below the per-instruction scratch, so other passes' sequences leave it alone), then
  ``ldmxcsr`` of it with the FTZ/DAZ bits set.  Every way out restores first: before a
  ``ret``/indirect jump/``ud2``; after the last instruction of a block that falls through
  out of the region; for a block ending in ``jmp``/``jcc``, after the instruction in front
  of the branch (RESTORE preserves every register and flag), or, for a branch alone in its
  block whose targets are all outside, in place of the branch (``RESTORE; jcc @target``).
  An edge back to the entry counts as a way out (the entry saves again), and an in-region
  block that a restoring block can reach directly starts with ENABLE again (idempotent).
  RESTORE writes back the original *control* bits and keeps the *status* bits (0-5)
  accumulated in the region: ``(current & 0x3f) | saved`` (the saved status bits are a
  subset of the current ones, status bits being sticky).
- *Instruction mode*, otherwise — regions of other kinds or shapes (a branch or loop
  region, where if-conversion or bounded-loop may replace the whole region), calls, stack
  pointer changes, or a block ending in a branch with no instruction in front of it and a
  target inside the region: each floating-point
  instruction is wrapped on its own, SAVE+ENABLE before it and RESTORE after it, with the
  saved MXCSR in the per-instruction scratch.  Each sequence stands alone, so it composes
  with any other pass's rewrite; code the region calls runs with the program's own MXCSR.

Cost: 2 ``ldmxcsr`` + 2 ``stmxcsr`` and about 16 other instructions per region entry (plus
one ``ldmxcsr`` per ENABLE, one per loop iteration in a loop region), or per floating-point
instruction in instruction mode.

A floating-point exception that is unmasked and raised inside the region traps with
FTZ/DAZ set; the handler sees the changed MXCSR.

Refusals (``Refusal.reason``):

- ``'{insn}' at 0x...: x87 floating point: FTZ and DAZ are MXCSR (SSE/AVX) controls and do
  not apply to the x87 FPU, whose subnormal slow paths remain``;
- ``'{insn}' at 0x...: AVX-512 is not supported``;
- ``'{insn}' at 0x...: the region reads or writes MXCSR itself``;
- ``no SSE/AVX floating-point arithmetic in {region}`` (kind ``float`` only);
- a region with kind None and x87 code gets the x87 refusal from ``applies``.
"""

from __future__ import annotations

import re

from leakdbt.plugin_api import (
    API_VERSION,
    RED_ZONE,
    REGION_SCRATCH,
    REGISTER64,
    ContractView,
    Flow,
    Insn,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    detail,
    goto,
    original,
)

__all__ = ["DAZ", "FTZ", "PASS", "FtzDaz", "harden_region", "is_float_arithmetic"]

FTZ = 1 << 15
DAZ = 1 << 6
STATUS = 0x3F  # IE DE ZE OE UE PE: sticky exception flags

_FRAME = RED_ZONE + 16  # below the original RSP: red zone, RFLAGS, RAX
_TEMP = "dword ptr [rsp - 8]"
_REGION_SLOT = f"dword ptr [rsp - {REGION_SCRATCH + 8 - _FRAME:#x}]"  # orig RSP - 0x288
_INSN_SLOT = "dword ptr [rsp - 0x10]"  # orig RSP - 0xa0, inside the per-instruction scratch

_FLOAT = re.compile(
    r"^v?(?:add|sub|mul|div|sqrt|min|max|cmp[a-z]*|round|rcp|rsqrt|dp|hadd|hsub|addsub)"
    r"(?:ss|sd|ps|pd)$"
    r"|^v?u?comis[sd]$|^v?cvt"
    r"|^vf(?:n?m(?:add|sub)|maddsub|msubadd)[0-9]*(?:ss|sd|ps|pd)$")
_MXCSR = re.compile(r"^v?(?:ldmxcsr|stmxcsr)$|^(?:fx|x)(?:save|rstor)")
_VECTOR = re.compile(r"\b[xy]mm[0-9]+\b")


def _groups(insn: Insn) -> set[str]:
    """Capstone's instruction groups of ``insn`` (``fpu``, ``avx512``, ``sse2`` ...)."""
    ci = detail(insn)
    return {ci.group_name(g) for g in ci.groups}


def is_float_arithmetic(insn: Insn) -> bool:
    """Whether ``insn`` is SSE/AVX floating-point arithmetic (FTZ/DAZ change what it does)."""
    return bool(_FLOAT.match(insn.mnemonic)) and bool(_VECTOR.search(insn.op_str))


def _is_x87(insn: Insn) -> bool:
    return "fpu" in _groups(insn)


def _is_avx512(insn: Insn) -> bool:
    return "avx512" in _groups(insn) or "zmm" in insn.op_str or "{k" in insn.op_str


def _writes_rsp(insn: Insn) -> bool:
    ci = detail(insn)
    return any(REGISTER64.get(ci.reg_name(r)) == "rsp" for r in ci.regs_access()[1])


def _bits(region: RegionView) -> int:
    params = region.params
    return (FTZ if params.get("ftz", True) else 0) | (DAZ if params.get("daz", True) else 0)


def _enter() -> list[str]:
    return [f"lea rsp, [rsp - {RED_ZONE:#x}]", "pushfq", "push rax"]


def _leave() -> list[str]:
    return ["pop rax", "popfq", f"lea rsp, [rsp + {RED_ZONE:#x}]"]


def save_enable(bits: int, slot: str) -> list[str]:
    """Store MXCSR into ``slot`` and load it with ``bits`` set (registers, flags kept)."""
    return _enter() + [f"stmxcsr {slot}", f"mov eax, {slot}", f"or eax, {bits:#x}",
                       f"mov {_TEMP}, eax", f"ldmxcsr {_TEMP}"] + _leave()


def enable(bits: int) -> list[str]:
    """Set ``bits`` in MXCSR (registers, flags kept)."""
    return _enter() + [f"stmxcsr {_TEMP}", f"mov eax, {_TEMP}", f"or eax, {bits:#x}",
                       f"mov {_TEMP}, eax", f"ldmxcsr {_TEMP}"] + _leave()


def restore(slot: str) -> list[str]:
    """MXCSR := the control bits saved in ``slot`` with the current status bits."""
    return _enter() + [f"stmxcsr {_TEMP}", f"mov eax, {_TEMP}", f"and eax, {STATUS:#x}",
                       f"or eax, {slot}", f"mov {_TEMP}, eax", f"ldmxcsr {_TEMP}"] + _leave()


def _refusal(region: RegionView) -> Refusal | None:
    """The first instruction of the region this pass cannot handle, as a refusal."""
    for insn in region.instructions():
        where = f"'{insn.text}' at {insn.address + region.bias:#x}"
        if _MXCSR.match(insn.mnemonic):
            return Refusal(f"{where}: the region reads or writes MXCSR itself")
        if _is_x87(insn):
            return Refusal(f"{where}: x87 floating point: FTZ and DAZ are MXCSR (SSE/AVX) "
                           "controls and do not apply to the x87 FPU, whose subnormal slow "
                           "paths remain")
        if _is_avx512(insn):
            return Refusal(f"{where}: AVX-512 is not supported")
    return None


class _Plan:
    """Lines to put before/after, or instead of, instructions; composed per address."""

    def __init__(self) -> None:
        self.pre: dict[int, list[str]] = {}
        self.post: dict[int, list[str]] = {}
        self.body: dict[int, list[str]] = {}

    def before(self, address: int, lines: list[str], first: bool = False) -> None:
        old = self.pre.get(address, [])
        self.pre[address] = lines + old if first else old + lines

    def after(self, address: int, lines: list[str]) -> None:
        self.post.setdefault(address, []).extend(lines)

    def rewrite(self) -> Rewrite:
        addresses = sorted(set(self.pre) | set(self.post) | set(self.body))
        return Rewrite(replace={
            a: tuple(self.pre.get(a, []) + self.body.get(a, [original(a)])
                     + self.post.get(a, []))
            for a in addresses})


def _region_plan(region: RegionView, bits: int) -> _Plan | None:
    """Set at the entry, restore on every way out (None: RSP moves, or a way out cannot be
    wrapped)."""
    for block in region.blocks:
        for insn in block.insns:
            if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                return None
            if _writes_rsp(insn) and not (insn.flow is Flow.RETURN and insn is block.last):
                return None
    inside = {b.start for b in region.blocks}
    plan = _Plan()
    plan.before(region.entry, save_enable(bits, _REGION_SLOT))
    back = restore(_REGION_SLOT)
    enable_at: set[int] = set()
    for block in region.blocks:
        last = block.last
        leaves = (any(s not in inside or s == region.entry for s in block.successors)
                  or last.flow in (Flow.RETURN, Flow.INDIRECT_JUMP, Flow.STOP))
        if not leaves:
            continue
        if last.flow is Flow.NEXT:
            plan.after(last.address, back)  # falls out of the region (or to the entry)
            continue
        if last.flow in (Flow.RETURN, Flow.INDIRECT_JUMP, Flow.STOP):
            plan.before(last.address, back)
        elif len(block.insns) >= 2:
            plan.after(block.insns[-2].address, back)  # RESTORE keeps the branch's flags
        elif all(s not in inside for s in block.successors) and last.target is not None \
                and last.mnemonic not in ("loop", "loope", "loopne", "jrcxz", "jecxz"):
            plan.body[last.address] = back + [f"{last.mnemonic} {goto(last.target)}"]
        else:
            return None
        enable_at |= {s for s in block.successors if s in inside and s != region.entry}
    for start in enable_at:
        plan.before(region.block(start).insns[0].address, enable(bits), first=True)
    return plan


def _instruction_plan(region: RegionView, bits: int) -> _Plan:
    """Each floating-point instruction wrapped on its own."""
    plan = _Plan()
    for insn in region.instructions():
        if is_float_arithmetic(insn):
            plan.before(insn.address, save_enable(bits, _INSN_SLOT))
            plan.after(insn.address, restore(_INSN_SLOT))
    return plan


def harden_region(region: RegionView) -> Rewrite | Refusal:
    """The FTZ/DAZ rewrite of ``region`` (see the module doc)."""
    refusal = _refusal(region)
    if refusal is not None:
        return refusal
    if not any(is_float_arithmetic(i) for i in region.instructions()):
        return Refusal(f"no SSE/AVX floating-point arithmetic in {region.name}")
    bits = _bits(region)
    alone = region.kind == "float" or (region.kind is None and region.shape == "block")
    plan = (_region_plan(region, bits) if alone else None) or _instruction_plan(region, bits)
    return plan.rewrite()


class FtzDaz:
    """The ``fp-ftz-daz`` pass (see the module doc)."""

    name = "fp-ftz-daz"
    api_version = API_VERSION
    before: tuple[str, ...] = ()
    # Its instruction form wraps an instruction as one `.insn` line: run after the passes
    # that replace such instructions, it wraps their whole sequence, not just the original.
    after: tuple[str, ...] = ("ct-division", "oblivious-table")

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView
                ) -> bool | Refusal:
        if not _bits(region):
            return False
        if region.kind == "float":
            return True
        if region.kind is not None:
            return False
        if any(_is_x87(i) for i in region.instructions()):
            return _refusal(region) or False
        return any(is_float_arithmetic(i) for i in region.instructions())

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        return harden_region(region)


PASS = FtzDaz()
