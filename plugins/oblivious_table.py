"""The oblivious-table pass: secret-indexed table lookups that touch every unit of the table.

Preconditions.  The region (usually one block, contract kind ``table``; or kind None, when
the pass applies to the accesses it can tie to a known table) contains loads or stores
``[base + index*scale + disp]`` into a table whose bounds are known:

- the contract's ``region.table`` (link-time address, length): every memory access of the
  region whose address uses a register (other than RSP/RIP) is checked against it *at run
  time*, except one whose displacement or traced base provably points into another ELF data
  object;
- otherwise the ELF data object (``region.object_at``) containing the access's *anchor*: the
  displacement (non-PIE ``movzx eax, byte ptr [rax + 0x4a3c20]``), or the target of the
  ``lea B, [rip + X]`` that last wrote the base register B in the same block, plus the
  displacement (PIE ``lea rdx, [rip + X]; ...; movzx eax, byte ptr [rdx + rax]``).  When the
  mapping names the table (``params["table"]``), only an object of that name counts, and
  ``params["length"]`` overrides its size.  An access with no register besides the anchor
  is a constant address and is left alone.

Heap tables.  A ``table`` region for which neither gives bounds (no contract table, no
``params["table"]``, no access tied to an ELF object) is a heap table (:func:`heap_accesses`):
every register-addressed access of it gets the bounds of the guest allocation holding its
effective address *at run time*, from the ``.bounds`` line of :func:`heap_access`
(:func:`leakdbt.plugin_api.allocation_bounds`; how leakdbt learns allocations, and what
happens when it cannot: docs/passes.md, "Heap tables").  The scan's span and trip count
are then computed from those bounds; unknown bounds (0, 0) make the scan empty and the
access out of contract, so the original instruction runs.

Value-range tables.  A heap-table access whose index register the block bounds
(:func:`plugins.support.value_range.upper_bound`: ``movzx r32, r8`` → 255, ``and r, imm``,
``shr r64, 56`` ...) can only touch ``[base + disp, base + disp + max*scale + width)``
(:func:`value_span`; at most :data:`MAX_SPAN` bytes).  Its sequence (:func:`range_access`)
computes that span's start from the base register, taken as public, and asks for the
bounds of the memory holding the *start* (``.bounds REG, OFF, mapped``: the allocation,
else the ELF object, else the readable guest mapping — the stack too); the table is the
span intersected with them, and the rest is the heap sequence.  Accesses whose registers
are all such public bases, unchanged in between, are not table accesses and are left alone
(:func:`_public`).

Branch and loop regions (:func:`composed`: shape ``branch`` or ``loop``, kind that shape or
None).  if-conversion or bounded-loop replaces the whole region and carries this pass's
replacements as its ``.insn`` lines (they run first: ``INSN_PASSES``); the sequence then
sees the registers the whole-region code gives the instruction, which for an access of an
arm that is off are not the original's (a guard redirects them).  So only the table
accesses whose scan is the same whatever the region's predicates are rewritten
(:func:`composed_accesses`): known bounds (ELF object at the anchor, the contract's table
when the anchor is in it) or, in a branch region's entry block, a value-range span; in a
conditional block, known bounds and an address that stays in the table, in contract, when
the block is off (the guard's ``base``/``data`` targets: the table's first element), or a
value-range load whose guard keeps its base (:func:`_kept_span`, the ``keep`` target: the
index zeroed, the span's start; a junk base is sent to the scratch slot by the guard
itself); in a loop, known bounds and registers the loop does not write.  The rest (plain
stack and pointer accesses, a table whose guard goes to the scratch slot, an access with a
per-access problem) are left as they are; a region with none gets the refusal ``no load
or store in {region} is a table access whose rewrite composes with the {shape} region's:
...`` (the pass does not apply to it).

``params["granularity"]`` (default ``params["line_size"]``, else the profile's line size) is
the unit an observer can tell apart: the cache line, or the intra-line unit.

Method.  Each table access is replaced (``Rewrite.replace``) by a sequence that

1. skips the red zone (``lea rsp, [rsp - 0x80]``), saves RFLAGS and six scratch registers,
   and computes the effective address EA exactly as the instruction does (``lea``);
2. checks, without branching, that the access is *in contract*: ``T <= EA <= T + L - w``
   (T, L: the table's runtime start and length, w: the access width) and that it does not
   straddle two units (``EA mod s <= s - w``, s = max(granularity, w));
3. reads, in a fixed order, one w-byte value from every s-byte unit of the s-aligned span
   covering the table — at the same offset in each unit as EA — and keeps the one from EA's
   unit with ``cmove``; the trip count of this loop is a constant of the table;
4. stores the selected value into a slot at ``[rsp - REGION_SCRATCH]`` (the bottom of the
   per-instruction scratch), restores registers and RFLAGS, and runs the *original
   instruction with its memory operand replaced by that slot* (``xor eax, dword ptr
   [rsp - 0x280]``).  The result (destination width, zero/sign extension, partial writes,
   xmm destinations, flags) is therefore the instruction's own;
5. for an instruction that writes its operand (a store, or read-modify-write such as
   ``add byte ptr [T + rax], cl``): re-enters a frame and writes every unit back — the old
   value, except EA's unit, which gets the instruction's result from the slot.

RFLAGS: saved before the sequence and restored before the instruction runs, so the flags
are exactly the instruction's (none for a load).  An access that is *not* in contract (index
out of bounds, an address the run-time check does not place in the table, or an element
straddling two units) takes a branch after the constant-footprint scan and performs the
original instruction on the original address: in-contract accesses have a constant memory
footprint, out-of-contract ones (a bug in the program, or not a table access at all) do not,
and that branch reveals which of the two happened.

16-byte (legacy SSE) accesses: loads (``movdqu``/``movdqa``/``movups``/``movaps``/
``movupd``/``movapd``/``lddqu``), ALU sources (``pxor xmm0, xmmword ptr [...]``, ``pshufd``,
``ptest``, ``pcmpistri``: any instruction whose one memory operand is 16 bytes) and stores
(the moves and ``movnt*`` with a memory destination; Capstone marks the unaligned and
non-temporal ones read-only, so a 16-byte memory destination is taken as written; so is
the memory destination of ``mov*``/``pextr*``/``extractps`` of any width: ``movnti``,
``movq``/``movlps``/``movd [mem], xmm``, ``pextrd``, whose destinations Capstone also marks
read-only).  The scan
reads each unit as two quadwords and selects each with ``cmove`` into RAX and R8 (no xmm
register is used, so none needs saving); the selected 16 bytes go to A, the first 16-byte
aligned address in slots 8-13, with the original RSP at A + 16, and the instruction runs as
``mov rsp, [slot 6]`` (= A); ``insn`` on ``xmmword ptr [rsp]``; ``mov rsp, [rsp + 16]`` —
two flag-preserving moves, so the aligned forms cannot fault on the copy (no instruction
with a 16-byte memory operand reads RSP except in an address, and an RSP-based address is
not a table access).  Alignment: every
legacy-SSE 16-byte operand except those of :data:`UNALIGNED_OK` faults (#GP) when it is not
16-byte aligned; for those forms the in-contract check also requires ``EA mod 16 = 0``, so a
misaligned one runs the original instruction, which faults where it would.  (Taking an
unlisted form as aligned is safe: it only sends its misaligned accesses down that path.)
VEX forms (``vmovdqu xmm``, ``vpxor``) are refused: the emulator the differential tests run
on has no AVX.

The span may start before and end after the table (its first and last units are s-aligned):
those bytes are read too, but never beyond the table's pages (s <= 4096).

Cost per lookup: n = span / s loads (table length / granularity for an aligned table: 4 for a
256-byte S-box at 64-byte lines, 64 at 4-byte units; 16 for a 1 KiB T-table at 64-byte
lines — 64 for the four of a 4 KiB set, if the contract names the set as one table), as many
loads and stores again for a store, and about 30 instructions besides.  Measured (executed
instructions for one in-contract lookup over n units, tests/unit/plugins/
test_oblivious_table_sse.py ``test_cost``): 8-byte load 46 + 6n; 16-byte ``movdqu`` load
58 + 8n, ``movdqa`` 62 + 8n; 16-byte store 74 + 10n.  The code size does
not depend on n (the scan is a loop with a constant trip count).

Stores are non-atomic read-modify-writes of *every* unit: another thread writing the same
table concurrently may lose its write, and a store to a read-only table faults at the first
unit rather than at the element (the original faults too).

Refusals (``Refusal.reason``).  For one access: ``'{insn}' at 0x{runtime address}: ``
followed by one of

- ``{w}-byte memory operand is not supported (1, 2, 4, 8 or 16 bytes)`` (ymm/zmm, x87
  10-byte);
- ``VEX-encoded 16-byte access is not supported (...)``;
- ``prefixes (lock/rep) are not supported``;
- ``xchg/cmpxchg/xadd are atomic; an oblivious read-modify-write of every unit would not be``;
- ``changes RSP (push/pop/leave through the table is not supported)``;
- ``a control transfer through the table leaks the entry through where it goes; ...``;
- ``more than one memory operand (string instruction)``;
- ``vector-indexed addressing (gather/scatter) is not supported``;
- ``32-bit addressing is not supported``; ``segment override (...)``;
- ``xlat reads the table implicitly (rewrite it as movzx)``;
- ``the table at 0x... is not aligned to its {w}-byte accesses (...)``, ``the table at
  0x... ({L} bytes) is smaller than its {w}-byte accesses``;
- ``table at 0x... ({L} bytes) needs {n} loads per lookup (limit 65536)``.

For the region: ``no load or store in {region} indexes a known table: ...`` (nor could be a
heap table) and ``granularity {g} is not a power of two up to 4096``.  Heap-table accesses
are refused for the same per-access reasons; their alignment, size and unit count are
checked at run time (the translator's cap on the allocation size, 64 KiB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from leakdbt.plugin_api import (
    API_VERSION,
    INSN_SCRATCH,
    RED_ZONE,
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
from plugins.support.predication import dead_end, keeps_base
from plugins.support.value_range import upper_bound

__all__ = ["MAX_UNITS", "PASS", "ObliviousTable", "TableAccess", "composed",
           "composed_accesses", "find_accesses", "heap_access", "heap_accesses",
           "oblivious_access"]

MAX_UNITS = 1 << 16
"""The largest number of units (loads per lookup) the pass accepts for one table."""
MAX_SPAN = 1 << 16
"""The largest span (bytes) a value-range access scans: as the run-time cap on a heap table
(leakdbt.run.allocations.MAX_TABLE_BYTES); a larger one gets allocation bounds instead."""
MAX_GRANULARITY = 4096  # a page: reads of the span then never leave the table's pages
MASK64 = (1 << 64) - 1

_SCRATCH = ("rax", "rcx", "rdx", "rsi", "rdi", "r8")  # saved, in push order
_FRAME = RED_ZONE + 8 * (1 + len(_SCRATCH))  # below the original RSP: red zone, RFLAGS, regs
# Quadwords at the bottom of the per-instruction scratch (original RSP - 0x280): the
# selected/stored value, the scan base and the wanted unit's offset; for a heap table also
# the allocation's start and size (written by the translator at ``.bounds``) and the span.
_SLOT = REGION_SCRATCH
_BOUNDS = _SLOT - _FRAME - 24  # the ``.bounds`` offset: slots 3 and 4, from inside the frame
assert _FRAME + 48 <= _SLOT <= RED_ZONE + INSN_SCRATCH
_LOAD = {1: ("movzx edx, byte ptr", "dl"), 2: ("movzx edx, word ptr", "dx"),
         4: ("mov edx, dword ptr", "edx"), 8: ("mov rdx, qword ptr", "rdx")}
WIDE = 16
"""The xmm width: read and written as two quadwords per unit; the instruction runs on a
16-byte-aligned copy (``_wide_slot``)."""
# Slots 6-13 of a 16-byte access: slot 6 holds A, the 16-byte-aligned copy of the operand
# in slots 8-13 (A = slot 8 rounded up to 16), with the original RSP at A + 16; slot 7 keeps
# the in-contract mask while the scan uses r8.
_A = 6
_WIDE_BASE = 8
assert _SLOT - _FRAME >= 8 * (_WIDE_BASE + 6)
# Legacy-SSE forms whose 16-byte memory operand need not be aligned (Intel SDM vol. 1,
# 14.9: every other non-VEX m128 operand faults with #GP when it is not 16-byte aligned).
UNALIGNED_OK = frozenset({"movdqu", "movups", "movupd", "lddqu", "pcmpestri", "pcmpestrm",
                          "pcmpistri", "pcmpistrm"})
_MEMORY = re.compile(r"\[[^\]]*\]")


def _hex(value: int) -> str:
    return f"{value:#x}"


@dataclass(frozen=True)
class TableAccess:
    """One memory access of the region that may index a table."""

    insn: Insn
    width: int  # bytes read or written
    address: str  # the memory operand without brackets, as Capstone prints it
    reads: bool
    writes: bool
    anchor: int | None  # link-time address the operand is known to point at, plus the index
    problem: str | None = None  # why this access cannot be rewritten (None: it can)
    span: ValueSpan | None = None  # what it can touch, from its index's value range


@dataclass(frozen=True)
class ValueSpan:
    """Where an access ``[base + index*scale + disp]`` whose index is at most ``bound`` can
    reach, whatever the index: ``length`` bytes from ``start`` (``base + disp``, as an
    operand expression: it uses only the public register ``base``)."""

    start: str
    length: int
    index: str  # the 64-bit register bounded
    bound: int
    base: str | None  # the register of ``start`` (None: a constant)


def _writes_reg(ci: Any, reg: str) -> bool:
    """Whether the decoded instruction writes (any part of) 64-bit register ``reg``."""
    return any(REGISTER64.get(ci.reg_name(r)) == reg for r in ci.regs_access()[1])


def _traced_lea(block: tuple[Insn, ...], at: int, reg: str) -> int | None:
    """The target X of ``lea reg, [rip + X]`` if that is the last instruction before index
    ``at`` of ``block`` that writes ``reg`` (None otherwise)."""
    for insn in reversed(block[:at]):
        ci = detail(insn)
        if not _writes_reg(ci, reg):
            continue
        if insn.mnemonic == "lea" and insn.rip_target is not None \
                and insn.op_str.split(",")[0].strip() == reg:
            return insn.rip_target
        return None
    return None


def _inspect(block: tuple[Insn, ...], at: int, region: RegionView) -> TableAccess | None:
    """The access made by ``block[at]``, or None when it has no register-indexed memory
    operand (no memory operand, ``lea``/``nop``, constant or RIP-relative or stack address)."""
    k = detail_constants()

    insn = block[at]
    if insn.mnemonic in ("lea", "nop") or insn.mnemonic.startswith("prefetch"):
        return None
    ci = detail(insn)
    mems = [op for op in ci.operands if op.type == k.op_mem]
    if insn.mnemonic in ("xlatb", "xlat"):
        return TableAccess(insn, 1, "rbx + al", True, False, None,
                           "xlat reads the table implicitly (rewrite it as movzx)")
    if not mems:
        return None
    mem = mems[0].mem
    base = ci.reg_name(mem.base) if mem.base else None
    index = ci.reg_name(mem.index) if mem.index else None
    registers = [r for r in (base, index) if r is not None]
    if not registers or "rip" in registers or "rsp" in registers or "esp" in registers:
        return None  # constant, RIP-relative or stack address: not a table index
    match = _MEMORY.search(insn.op_str)
    address = match.group(0)[1:-1] if match else ""
    op = mems[0]
    anchor, constant = _anchor(block, at, base, index, mem.scale, mem.disp, region)
    if constant:
        return None
    # (Capstone marks some stores' destinations read-only: memory_access corrects it.)
    first = next(n for n, o in enumerate(ci.operands) if o.type == k.op_mem)
    reads, writes = memory_access(insn.mnemonic, first, op.access)
    if ci.operands[0].type == k.op_mem and op.size == WIDE:
        writes = True  # a legacy-SSE 16-byte memory destination is always written
    access = TableAccess(insn, op.size, address, reads, writes, anchor)
    problem = _problem(insn, ci, access, len(mems), registers)
    return access if problem is None else TableAccess(
        access.insn, access.width, access.address, access.reads, access.writes,
        access.anchor, problem)


def _anchor(block: tuple[Insn, ...], at: int, base: str | None, index: str | None,
            scale: int, disp: int, region: RegionView) -> tuple[int | None, bool]:
    """(anchor, constant): where the operand points with the index left out — a traced
    ``lea`` of the base (or of a scale-1 index) plus the displacement, else the displacement
    when it is a known address, else None — and whether the address is a constant (the
    traced register is the only one)."""
    candidates = [r for r in (base, index if scale == 1 else None) if r is not None]
    for reg in candidates:
        target = _traced_lea(block, at, REGISTER64.get(reg, reg))
        if target is not None:
            others = [r for r in (base, index) if r is not None and r != reg]
            return (target + disp) & MASK64, not others
    d = disp & MASK64
    if region.table is not None and region.table[0] <= d < region.table[0] + region.table[1]:
        return d, False
    return (d if region.object_at(d) is not None else None), False


def _problem(insn: Insn, ci: Any, access: TableAccess, memory_operands: int,
             registers: list[str]) -> str | None:
    """Why the access cannot be rewritten, or None."""
    if memory_operands != 1:
        return "more than one memory operand (string instruction)"
    if any(r not in REGISTER64 for r in registers):
        return "vector-indexed addressing (gather/scatter) is not supported"
    if ci.addr_size != 8:
        return "32-bit addressing is not supported"
    if re.search(r"\b[cdefgs]s:", insn.op_str):
        return "segment override (a table lives in the module, not at fs:/gs:)"
    if insn.prefixes:
        return "prefixes (lock/rep) are not supported"
    if insn.mnemonic in ("xchg", "cmpxchg", "cmpxchg8b", "cmpxchg16b", "xadd") and \
            access.writes:
        return ("xchg/cmpxchg/xadd are atomic; an oblivious read-modify-write of "
                "every unit would not be")
    if insn.flow is not Flow.NEXT:
        return ("a control transfer through the table leaks the entry through "
                "where it goes; it is not hardened")
    if any(REGISTER64.get(ci.reg_name(r)) == "rsp" for r in ci.regs_access()[1]):
        return "changes RSP (push/pop/leave through the table is not supported)"
    if access.width not in _LOAD and access.width != WIDE:
        return (f"{access.width}-byte memory operand is not supported "
                "(1, 2, 4, 8 or 16 bytes)")
    if access.width == WIDE and insn.mnemonic.startswith("v"):
        return ("VEX-encoded 16-byte access is not supported (only legacy SSE forms are "
                "differentially tested: the emulator has no AVX)")
    if not (access.reads or access.writes):
        return "Capstone does not say whether it reads or writes its operand"
    return None


def _bounds(access: TableAccess, region: RegionView) -> tuple[int, int] | None:
    """The table (link-time address, length) ``access`` is checked against, or None."""
    if region.table is not None:
        t, n = region.table
        if access.anchor is not None and not t <= access.anchor < t + n:
            obj = region.object_at(access.anchor)
            if obj is not None and (obj.address + obj.size <= t or t + n <= obj.address):
                return None  # provably another object
        return region.table
    if access.anchor is None:
        return None
    obj = region.object_at(access.anchor)
    if obj is None or obj.size <= 0:
        return None
    wanted = region.params.get("table")
    if isinstance(wanted, str) and wanted and obj.name != wanted:
        return None
    length = region.params.get("length")
    size = length if isinstance(length, int) and not isinstance(length, bool) and length > 0 \
        else obj.size
    return obj.address, size


def find_accesses(region: RegionView) -> list[tuple[TableAccess, tuple[int, int]]]:
    """The region's table accesses, each with its table's link-time (address, length)."""
    out = []
    for block in region.blocks:
        for at in range(len(block.insns)):
            access = _inspect(block.insns, at, region)
            if access is None:
                continue
            bounds = _bounds(access, region)
            if bounds is not None:
                out.append((access, bounds))
    return out


def composed(region: RegionView) -> bool:
    """Whether a whole-region pass rewrites ``region`` around this pass's replacements (its
    ``.insn`` lines carry them): shape ``branch`` (if-conversion) or ``loop``
    (bounded-loop), of that kind or none."""
    return region.shape in ("branch", "loop") and region.kind in (None, region.shape)


def composed_accesses(region: RegionView, granularity: int = 64
                      ) -> list[tuple[TableAccess, tuple[int, int] | None]]:
    """The accesses of a branch or loop region (:func:`composed`) whose oblivious rewrite
    composes exactly with the whole-region pass, each with its table's link-time (address,
    length), or None for a value-range access (its ``span`` set).  Only table accesses as
    for a ``table`` region, never every register-addressed access (no contract-table or
    heap rule), and of those only where the address the sequence sees is the same, or in
    the table, whatever the region's predicates:

    - branch: an access of the entry block (it runs once, before any branch, never
      redirected) with known bounds or a value-range span; an access of a conditional
      block with known bounds when, with its block off, if-conversion's guard (if any)
      redirects it inside the table, in contract: the block set the base with ``lea base,
      [rip + X]`` (the guard zeroes the index: ``X + disp``), or, non-PIE at bias 0, the
      displacement is a data object (base and index zeroed: ``disp``); with no sized object,
      a value-range span whose base the block sets that way (:func:`_anchored_span`) or
      whose guard keeps its base (:func:`_kept_span`).  Any other guard
      moves the address to the region's scratch slot: the scan would be in contract on one
      path and not on the other, so such an access is left alone;
    - loop: an access with known bounds whose registers no block of the loop writes (the
      same address in every iteration, active or not); bounded-loop scans its own computed
      loads (plugins/support/loop_table.py).

    Accesses with a per-access problem (see the module doc) or a table the pass cannot
    scan are left alone too: refusing would leave the whole region unhardened."""
    loop = region.shape == "loop"
    written = {r for b in region.blocks for i in b.insns for r in _written(i)} if loop \
        else set()
    out: list[tuple[TableAccess, tuple[int, int] | None]] = []
    for block in region.blocks:
        if dead_end(block):  # not run predicated: its instructions are no ``.insn`` lines
            continue
        for at in range(len(block.insns)):
            access = _inspect(block.insns, at, region)
            if access is None or access.problem is not None:
                continue
            bounds = _anchored_bounds(access, region)
            if bounds is not None and _check_table(access, bounds[0] + region.bias,
                                                   bounds[1], granularity) is not None:
                continue
            if loop:
                if bounds is not None and not _address_registers(access.insn) & written:
                    out.append((access, bounds))
            elif block.start == region.entry:
                span = None if bounds is not None else value_span(block.insns, at,
                                                                  access.width)
                if bounds is not None or span is not None:
                    out.append((replace(access, span=span), bounds))
            elif bounds is not None and _off_in_contract(block.insns, at, access, bounds,
                                                         region, granularity):
                out.append((access, bounds))
            elif bounds is None:
                span = (_kept_span(region, block, at, access)
                        or _anchored_span(block.insns, at, access))
                if span is not None:
                    out.append((replace(access, span=span), None))
    return out


def _kept_span(region: RegionView, block: BlockView, at: int, access: TableAccess
               ) -> ValueSpan | None:
    """The value-range span of a conditional block's load whose if-conversion guard keeps
    its base (:func:`plugins.support.predication.keeps_base`, the ``keep`` target): with
    the block off the index is 0, so the load is at the span's start ``base + disp`` (or,
    when no readable memory is there, the guard moved the base to the scratch slot and the
    scan reads the stack there).  None unless the span's public start is that base and its
    bounded register the index."""
    m = keeps_base(region, block, at)
    if m is None:
        return None
    span = value_span(block.insns, at, access.width)
    if span is None or span.base != REGISTER64[m.base or ""] \
            or span.index != REGISTER64[m.index or ""]:
        return None
    return span


def _anchored_span(block: tuple[Insn, ...], at: int, access: TableAccess
                   ) -> ValueSpan | None:
    """The value-range span of a conditional block's load from a table no sized object
    describes (a stripped library's ``.rodata``) whose base the block itself sets with ``lea
    base, [rip + X]``: with the block off, if-conversion's guard (if any) keeps that base and
    zeroes the index (the ``base`` target, :func:`_off_in_contract`), so the load is at the
    span's start ``X + disp`` and the scan reads the same lines on both paths.  None unless
    the span's public start is that base."""
    span = value_span(block, at, access.width)
    if span is None or span.base is None or not _sets_base_to_data(block, at, span.base):
        return None
    return span


def _written(insn: Insn) -> set[str]:
    """The 64-bit registers ``insn`` writes (any part of)."""
    ci = detail(insn)
    return {REGISTER64[ci.reg_name(r)] for r in ci.regs_access()[1]
            if ci.reg_name(r) in REGISTER64}


def _anchored_bounds(access: TableAccess, region: RegionView) -> tuple[int, int] | None:
    """A composed region's bounds for ``access``: the contract's table when its anchor is
    inside it, else the ELF object at its anchor (:func:`_bounds`); none without an
    anchor."""
    if access.anchor is None:
        return None
    if region.table is not None:
        t, n = region.table
        if t <= access.anchor < t + n:
            return region.table
    return _bounds(access, replace(region, table=None))


def _off_in_contract(block: tuple[Insn, ...], at: int, access: TableAccess,
                     bounds: tuple[int, int], region: RegionView, granularity: int) -> bool:
    """Whether, with its block off, ``block[at]`` (a conditional block's access) is at an
    address inside the table ``bounds``, in contract, whether or not it runs guarded:
    if-conversion's guard targets (plugins/support/predication.py, ``Guard``) ``base``
    (the block's own ``lea base, [rip + X]``, index zeroed: ``X + disp``) and ``data``
    (bias 0, the displacement a data object: ``disp``); an unguarded access has the same
    address on every path.  The ``slot`` target (anything else) is not in the table."""
    k = detail_constants()
    ci = detail(access.insn)
    mem = next(op.mem for op in ci.operands if op.type == k.op_mem)
    base = REGISTER64.get(ci.reg_name(mem.base)) if mem.base else None
    if base is not None and _sets_base_to_data(block, at, base):
        target = _traced_lea(block, at, base)
        if target is None:
            return False
        off = (target + mem.disp) & MASK64
    elif region.bias == 0 and region.object_at(mem.disp & MASK64) is not None:
        off = mem.disp & MASK64
    else:
        return False
    t, n = bounds
    w = access.width
    s = max(granularity, w)
    runtime = off + region.bias
    return (t <= off <= t + n - w and runtime % s <= s - w
            and not (needs_alignment(access) and runtime % WIDE))


def _sets_base_to_data(block: tuple[Insn, ...], at: int, base: str) -> bool:
    """Whether the last instruction of ``block`` before ``at`` that writes ``base`` is a
    ``lea`` of a RIP-relative address: when it does, if-conversion's guard keeps the base
    (the ``base`` target) and only zeroes the index."""
    for insn in reversed(block[:at]):
        if base in _written(insn):
            return (insn.mnemonic == "lea" and "[rip" in insn.op_str
                    and insn.rip_target is not None)
    return False


def _harden_composed(region: RegionView, granularity: int) -> Rewrite | Refusal:
    """The oblivious rewrite of a branch or loop region's table accesses
    (:func:`composed_accesses`); the whole-region pass carries them."""
    out: dict[int, tuple[str, ...]] = {}
    for access, bounds in composed_accesses(region, granularity):
        if bounds is not None:
            lines = oblivious_access(access, bounds[0], bounds[1], granularity)
        else:
            assert access.span is not None
            lines = range_access(access, access.span, granularity)
        out[access.insn.address] = tuple(lines)
    if not out:
        return Refusal(
            f"no load or store in {region.name} is a table access whose rewrite composes "
            f"with the {region.shape} region's: none has known bounds (or, in the entry "
            "block of a branch region, a value-range span) at an address the region's "
            "predicates do not move out of the table")
    return Rewrite(replace=out)


def _granularity(region: RegionView, profile: ProfileView | None) -> int | Refusal:
    value = region.params.get("granularity", region.params.get("line_size"))
    if value is None:
        value = profile.line_size if profile is not None else 64
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 \
            or value & (value - 1) or value > MAX_GRANULARITY:
        return Refusal(f"granularity {value!r} is not a power of two up to "
                       f"{MAX_GRANULARITY}")
    return value


def _frame_enter() -> list[str]:
    return [f"lea rsp, [rsp - {_hex(RED_ZONE)}]", "pushfq",
            *(f"push {r}" for r in _SCRATCH)]


def _frame_leave() -> list[str]:
    return [*(f"pop {r}" for r in reversed(_SCRATCH)), "popfq",
            f"lea rsp, [rsp + {_hex(RED_ZONE)}]"]


def _slot(k: int) -> str:
    """Slot quadword ``k`` addressed from inside the frame."""
    return f"qword ptr [rsp - {_hex(_SLOT - _FRAME - 8 * k)}]"


def oblivious_access(access: TableAccess, table: int, length: int, granularity: int
                     ) -> list[str]:
    """The replacement lines for ``access`` into the table at link-time address ``table``
    of ``length`` bytes, touching every ``granularity``-byte unit (see the module doc).

    Runtime addresses are written ``@link-time`` (:func:`goto`): the load bias is a multiple
    of the page size, so the s-aligned start of the span moves with the table."""
    w = access.width
    s = max(granularity, w)
    log = s.bit_length() - 1
    start = table & ~(s - 1)  # U0: the s-aligned start of the span
    units = ((table + length - 1) >> log) - (table >> log) + 1
    insn = access.insn
    lines = _frame_enter() + [
        f"lea rsi, [{access.address}]",  # EA, as the instruction computes it
        f"movabs rdi, {goto(table)}",
        "mov rcx, rsi", "sub rcx, rdi",  # EA - T
        f"mov edx, {_hex(length - w)}",
        "xor r8d, r8d",
        "cmp rdx, rcx", "adc r8d, 0",  # out of bounds: EA - T > L - w (unsigned)
        *_unit_checks(access, s),
        "and rax, r8",  # offset in the unit (0 when not in contract: reads stay in the span)
        f"movabs rdx, {goto(start)}",
        "mov rdi, rsi", "sub rdi, rdx",
        f"shr rdi, {_hex(log)}", f"shl rdi, {_hex(log)}",  # offset of EA's unit in the span
        "lea rsi, [rdx + rax]",  # scan base: U0 + offset in unit
        *_wide_slot(access),
    ]
    if access.reads:
        lines += [
            *_select_init(access), "xor ecx, ecx",
            "ot_read:",
            *_select(access),
            f"add rcx, {_hex(s)}", f"cmp rcx, {_hex(units * s)}",
            "jb ot_read",
            *_select_done(access),
        ]
    return _access_and_write_back(lines, access, insn, s, _hex(units * s))


def heap_access(access: TableAccess, granularity: int) -> list[str]:
    """The replacement lines for ``access`` into a table whose bounds are known only at run
    time: those of the guest allocation containing its effective address, which the
    translator writes into two slots at the ``.bounds`` line
    (:func:`leakdbt.plugin_api.allocation_bounds`).  Otherwise as :func:`oblivious_access`,
    except that the span and the trip count of the scan are computed from those slots: every
    ``granularity``-byte unit of [start, start + size) is read, in a fixed order.  Unknown
    bounds (both slots 0) make the access out of contract and the scan empty: the original
    instruction then runs on the original address."""
    return _frame_enter() + [
        f"lea rsi, [{access.address}]",  # EA, as the instruction computes it
        allocation_bounds("rsi", _BOUNDS),  # T into slot 3, L into slot 4
        *_bounded_access(access, granularity),
    ]


def range_access(access: TableAccess, span: ValueSpan, granularity: int) -> list[str]:
    """The replacement lines for ``access`` whose index the block bounds (``span``): the
    table is the span, ``[start, start + length)``, intersected at run time with the
    memory that holds its (public) start — the live allocation, else the readable guest
    mapping (:func:`leakdbt.plugin_api.allocation_bounds` with ``mapped``).  Then as
    :func:`heap_access`.  A start in no readable memory gives (0, 0): an empty scan and the
    original instruction, on the original address."""
    used = set(re.findall(r"\b[a-z][a-z0-9]+\b", access.address))
    used = {REGISTER64.get(r, r) for r in used}
    tmp = next(r for r in ("rdi", "rcx", "rdx", "rax", "r8") if r not in used)
    return _frame_enter() + [
        # the span's start (public), before RSI changes
        f"lea {tmp}, [{span.start}]" if span.base else f"movabs {tmp}, {span.start}",
        f"lea rsi, [{access.address}]",  # EA, as the instruction computes it
        *([] if tmp == "rdi" else [f"mov rdi, {tmp}"]),
        allocation_bounds("rdi", _BOUNDS, mapped=True),  # the memory holding the start
        f"mov rcx, {_slot(3)}", "mov rdx, rcx", f"add rdx, {_slot(4)}",  # [start, end)
        "cmp rcx, rdi", "cmovb rcx, rdi",  # T = max(start, span start)
        f"movabs rax, {_hex(span.length)}", "add rax, rdi",
        "cmp rax, rdx", "cmovb rdx, rax",  # end = min(end, span end)
        "xor eax, eax", "sub rdx, rcx",
        "cmovbe rdx, rax", "cmovbe rcx, rax",  # empty (unknown): T = L = 0
        f"mov {_slot(3)}, rcx", f"mov {_slot(4)}, rdx",
        *_bounded_access(access, granularity),
    ]


def _bounded_access(access: TableAccess, granularity: int) -> list[str]:
    """The heap sequence once EA is in RSI and the table's runtime start and length in
    slots 3 and 4 (both 0: unknown)."""
    w = access.width
    s = max(granularity, w)
    log = s.bit_length() - 1
    insn = access.insn
    lines = [
        f"mov rdi, {_slot(3)}",
        "mov rcx, rsi", "sub rcx, rdi",  # EA - T
        f"mov rdx, {_slot(4)}",
        "xor r8d, r8d",
        f"sub rdx, {_hex(w)}", "adc r8d, 0",  # L < w (unknown bounds: L = 0)
        "cmp rdx, rcx", "adc r8d, 0",  # out of bounds: EA - T > L - w (unsigned)
        *_unit_checks(access, s),
        "and rax, r8",  # offset in the unit (0 when not in contract)
        "mov rdx, rdi", f"shr rdx, {_hex(log)}", f"shl rdx, {_hex(log)}",  # U0
        "mov rcx, rdi", f"add rcx, {_slot(4)}", f"add rcx, {_hex(s - 1)}",
        f"shr rcx, {_hex(log)}", f"shl rcx, {_hex(log)}",  # the s-aligned end of the span
        "sub rcx, rdx", f"mov {_slot(5)}, rcx",  # span bytes (0 for unknown bounds)
        "mov rdi, rsi", "sub rdi, rdx",
        f"shr rdi, {_hex(log)}", f"shl rdi, {_hex(log)}",  # offset of EA's unit in the span
        "lea rsi, [rdx + rax]",  # scan base: U0 + offset in unit
        *_wide_slot(access),
    ]
    if access.reads:
        lines += [
            *_select_init(access), "xor ecx, ecx", "jmp ot_test",
            "ot_read:",
            *_select(access),
            f"add rcx, {_hex(s)}",
            "ot_test:",
            f"cmp rcx, {_slot(5)}", "jb ot_read",
            *_select_done(access),
        ]
    # in contract: the span holds at least EA's unit
    return _access_and_write_back(lines, access, insn, s, _slot(5))


def heap_accesses(region: RegionView) -> list[TableAccess]:
    """The accesses of a ``table`` region that get run-time allocation bounds: when the
    contract gives no table and no access can be tied to an ELF data object, every memory
    access whose address uses a register (other than RSP/RIP) and is not constant."""
    if region.kind != "table" or region.table is not None or "table" in region.params:
        return []
    if find_accesses(region):
        return []
    out = []
    for block in region.blocks:
        found: list[tuple[int, TableAccess]] = []
        for at in range(len(block.insns)):
            access = _inspect(block.insns, at, region)
            if access is not None:
                span = value_span(block.insns, at, access.width)
                found.append((at, access if span is None else replace(access, span=span)))
        bases = [(at, a.span.base) for at, a in found if a.span is not None and a.span.base]
        out += [a for at, a in found if a.span is not None or a.problem is not None
                or not _public(block.insns, at, bases)]
    return out


def _public(block: tuple[Insn, ...], at: int, bases: list[tuple[int, str]]) -> bool:
    """Whether every register of ``block[at]``'s address holds, there, what it holds where
    it is the public start of a value-range span (``bases``: (position, register)): the
    address is then as public as that start, and not a table index (it is left alone)."""
    registers = _address_registers(block[at])
    return bool(registers) and all(
        any(base == r and not any(_writes_reg(detail(i), r)
                                  for i in block[min(at, p):max(at, p)])
            for p, base in bases)
        for r in registers)


def _address_registers(insn: Insn) -> set[str]:
    k = detail_constants()
    ci = detail(insn)
    mem = next(op.mem for op in ci.operands if op.type == k.op_mem)
    return {REGISTER64.get(ci.reg_name(r), ci.reg_name(r)) for r in (mem.base, mem.index) if r}


def value_span(block: tuple[Insn, ...], at: int, width: int) -> ValueSpan | None:
    """The span the memory operand of ``block[at]`` (``width`` bytes) can reach when the
    block bounds its index register (:func:`plugins.support.value_range.upper_bound`): the
    index, else (scale 1) the base, whichever is bounded; the other register (if any) is
    the span's public start.  None when neither is bounded, or both are the same."""
    k = detail_constants()
    ci = detail(block[at])
    mem = next(op.mem for op in ci.operands if op.type == k.op_mem)
    base = REGISTER64.get(ci.reg_name(mem.base)) if mem.base else None
    index = REGISTER64.get(ci.reg_name(mem.index)) if mem.index else None
    choices = [(index, base, mem.scale)] if index is not None else []
    if base is not None and (index is None or mem.scale == 1):
        choices.append((base, index, 1))
    for secret, public, scale in choices:
        assert secret is not None
        if secret == public:
            continue
        bound = upper_bound(block, at, secret)
        if bound is None or bound * scale + width > MAX_SPAN:
            continue
        disp = mem.disp
        offset = f"{'-' if disp < 0 else '+'} {_hex(abs(disp))}"
        start = f"{public} {offset}" if public is not None else _hex(disp & MASK64)
        return ValueSpan(start, bound * scale + width, secret, bound, public)
    return None


def _check_table(access: TableAccess, table: int, length: int, granularity: int
                 ) -> str | None:
    """Why ``access`` into this table (runtime address) cannot be made oblivious, or None."""
    w = access.width
    if length < w:
        return f"the table at {table:#x} ({length} bytes) is smaller than its {w}-byte accesses"
    if table % w:
        return (f"the table at {table:#x} is not aligned to its {w}-byte accesses (elements "
                "would straddle units)")
    s = max(granularity, w)
    units = ((table + length - 1) // s) - (table // s) + 1
    if units > MAX_UNITS:
        return (f"table at {table:#x} ({length} bytes) needs {units} loads per lookup "
                f"(limit {MAX_UNITS})")
    return None


def harden_region(region: RegionView, profile: ProfileView | None = None) -> Rewrite | Refusal:
    """The oblivious rewrite of every table access in ``region`` (see the module doc)."""
    granularity = _granularity(region, profile)
    if isinstance(granularity, Refusal):
        return granularity
    if composed(region):
        return _harden_composed(region, granularity)
    found = find_accesses(region)
    if not found:
        heap = heap_accesses(region)
        if heap:
            return _harden_heap(heap, region, granularity)
        return Refusal(
            f"no load or store in {region.name} indexes a known table: its bounds are "
            "neither in the contract nor those of an ELF data symbol at the address the "
            "code uses, and it has no register-addressed access whose bounds could come "
            "from its allocation at run time (name the table and its length in the "
            "contract)")
    replace: dict[int, tuple[str, ...]] = {}
    for access, (table, length) in found:
        problem = access.problem or _check_table(access, table + region.bias, length,
                                                 granularity)
        if problem is not None:
            return Refusal(f"'{access.insn.text}' at {access.insn.address + region.bias:#x}: "
                           f"{problem}")
        replace[access.insn.address] = tuple(
            oblivious_access(access, table, length, granularity))
    return Rewrite(replace=replace)


def _harden_heap(heap: list[TableAccess], region: RegionView, granularity: int
                 ) -> Rewrite | Refusal:
    replace: dict[int, tuple[str, ...]] = {}
    for access in heap:
        if access.problem is not None:
            return Refusal(f"'{access.insn.text}' at {access.insn.address + region.bias:#x}: "
                           f"{access.problem}")
        replace[access.insn.address] = tuple(
            heap_access(access, granularity) if access.span is None
            else range_access(access, access.span, granularity))
    return Rewrite(replace=replace)


class ObliviousTable:
    """The ``oblivious-table`` pass (see the module doc)."""

    name = "oblivious-table"
    api_version = API_VERSION
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def applies(self, region: RegionView, contract: ContractView, profile: ProfileView
                ) -> bool | Refusal:
        if region.kind == "table":
            return True
        if composed(region):
            granularity = _granularity(region, profile)
            if isinstance(granularity, Refusal):
                return granularity
            return bool(composed_accesses(region, granularity))
        if region.kind is not None:
            return False
        return bool(find_accesses(region))

    def harden(self, region: RegionView, contract: ContractView, profile: ProfileView
               ) -> Rewrite | Refusal:
        return harden_region(region, profile)


PASS = ObliviousTable()


def _access_and_write_back(lines: list[str], access: TableAccess, insn: Insn, s: int,
                           end: str) -> list[str]:
    """The common tail of the static and heap sequences: the access itself at a scratch
    copy, then (for a store) every unit of the span rewritten with the selected value up to
    ``end`` (an immediate or a slot); an address outside the table runs the original."""
    wide = access.width == WIDE
    if access.writes:
        lines += [f"mov {_slot(1)}, rsi", f"mov {_slot(2)}, rdi"]
    lines += ["test r8, r8", "je ot_outside", *_frame_leave()]
    if wide:  # RSP at A (no flag changes): the aligned forms cannot fault on the copy
        lines += [f"mov rsp, qword ptr [rsp - {_hex(_SLOT - 8 * _A)}]",
                  _MEMORY.sub("[rsp]", insn.text, count=1),
                  f"mov rsp, qword ptr [rsp + {_hex(WIDE)}]"]
    else:
        lines += [_MEMORY.sub(f"[rsp - {_hex(_SLOT)}]", insn.text, count=1)]
    if access.writes:
        if wide:
            lines += _frame_enter() + [
                f"mov rdx, {_slot(_A)}", "mov rax, qword ptr [rdx]",
                "mov r8, qword ptr [rdx + 8]",
                f"mov rsi, {_slot(1)}", f"mov rdi, {_slot(2)}",
                "xor ecx, ecx",
                "ot_write:",
                "mov rdx, qword ptr [rsi + rcx]", "cmp rcx, rdi", "cmove rdx, rax",
                "mov qword ptr [rsi + rcx], rdx",
                "mov rdx, qword ptr [rsi + rcx + 8]", "cmove rdx, r8",
                "mov qword ptr [rsi + rcx + 8], rdx",
                f"add rcx, {_hex(s)}", f"cmp rcx, {end}",
                "jb ot_write",
            ] + _frame_leave()
        else:
            load, store_reg = _LOAD[access.width]
            lines += _frame_enter() + [
                f"mov rax, {_slot(0)}", f"mov rsi, {_slot(1)}", f"mov rdi, {_slot(2)}",
                "xor ecx, ecx",
                "ot_write:",
                f"{load} [rsi + rcx]",
                "cmp rcx, rdi", "cmove rdx, rax",
                f"mov {load.split()[-2]} ptr [rsi + rcx], {store_reg}",
                f"add rcx, {_hex(s)}", f"cmp rcx, {end}",
                "jb ot_write",
            ] + _frame_leave()
    return lines + ["jmp ot_done", "ot_outside:", *_frame_leave(), original(insn.address),
                    "ot_done:"]


def needs_alignment(access: TableAccess) -> bool:
    """Whether the instruction faults when its memory operand is not 16-byte aligned: every
    legacy-SSE 16-byte operand but those of :data:`UNALIGNED_OK`.  (Over-approximating is
    safe: such an access, misaligned, is out of contract and runs the original.)"""
    return access.width == WIDE and access.insn.mnemonic not in UNALIGNED_OK


def _unit_checks(access: TableAccess, s: int) -> list[str]:
    """With EA in RSI and the out-of-bounds count in R8D: add one when EA's element straddles
    two units, and one when an aligned 16-byte form's EA is misaligned (the original then
    runs, and faults where it would); R8 becomes all ones when in contract, else 0."""
    lines = ["mov eax, esi", f"and eax, {_hex(s - 1)}",  # EA's offset in its unit
             f"mov edx, {_hex(s - access.width)}",
             "cmp edx, eax", "adc r8d, 0"]  # straddles two units
    if needs_alignment(access):
        lines += ["mov edx, esi", "and edx, 0xf", "neg edx", "adc r8d, 0"]  # CF: EA % 16
    return lines + ["neg r8d", "sbb r8, r8", "not r8"]  # all ones: in contract


def _wide_slot(access: TableAccess) -> list[str]:
    """For a 16-byte access: A (see ``_A``) into slot 6, the original RSP at A + 16."""
    if access.width != WIDE:
        return []
    return [f"lea rdx, [rsp - {_hex(_SLOT - _FRAME - 8 * _WIDE_BASE - 15)}]",
            "and rdx, 0xfffffffffffffff0",  # A: slot 8 rounded up to 16
            f"lea rcx, [rsp + {_hex(_FRAME)}]", f"mov qword ptr [rdx + {_hex(WIDE)}], rcx",
            f"mov {_slot(_A)}, rdx"]


def _select_init(access: TableAccess) -> list[str]:
    if access.width != WIDE:
        return ["xor eax, eax"]
    return [f"mov {_slot(7)}, r8", "xor eax, eax", "xor r8d, r8d"]


def _select(access: TableAccess) -> list[str]:
    """Read the element at ``[rsi + rcx]`` and keep it (RAX, and R8 for its high quadword)
    when RCX is the wanted unit's offset (RDI)."""
    if access.width != WIDE:
        return [f"{_LOAD[access.width][0]} [rsi + rcx]", "cmp rcx, rdi", "cmove rax, rdx"]
    return ["mov rdx, qword ptr [rsi + rcx]", "cmp rcx, rdi", "cmove rax, rdx",
            "mov rdx, qword ptr [rsi + rcx + 8]", "cmove r8, rdx"]


def _select_done(access: TableAccess) -> list[str]:
    """The selected element into the operand's copy: slot 0, or A for a 16-byte access."""
    if access.width != WIDE:
        return [f"mov {_slot(0)}, rax"]
    return [f"mov rdx, {_slot(_A)}", "mov qword ptr [rdx], rax", "mov qword ptr [rdx + 8], r8",
            f"mov r8, {_slot(7)}"]
