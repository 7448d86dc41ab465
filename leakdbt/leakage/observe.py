"""Observers: what an adversary sees of one run, recorded for the code a contract scopes.

Three observers, chosen by the contract's adversary (``leakdbt.contract.mapping``), each
named by the kind of leak it sees (:class:`~leakdbt.leakage.findings.LeakKind`):

- **control-flow**: the sequence of basic blocks executed;
- **memory-access**: each data access, as (kind, address // unit) — unit 64 (cache line),
  4096 (page) or 1 (byte);
- **variable-latency**: each instruction of a variable-latency class on the CPU profile, with
  the operand properties that decide its time (:func:`operand_class`).

Scope.  With ``protect.functions``, an observation counts only while a scoped function is
running — from its entry until it returns, callees included; without, the whole run
(:class:`leakdbt.run.scope.FunctionScope`, the one scope of every tool).  Code
ranges scope it instead to the instructions in them (the blocks that start there, the
accesses and latency sites of their instructions): that is how the hardening tests watch a
contract's regions, original and hardened copy (``Dispatcher.code_ranges``).

Every run keeps a digest per observer (cheap); a *full* run also keeps the events, each
tagged with the index of the block it happened in, so that two runs can be aligned block by
block (leakdbt.leakage.align).  A per-run cost estimate (:data:`COST`) is a model, not a
measurement.
"""

from __future__ import annotations

import bisect
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from leakdbt.dbt.region import merge_ranges
from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.findings import LeakKind
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PAGE
from leakdbt.run.scope import FunctionScope
from leakdbt.x86.insn import decode, detail_decoder

OBSERVERS = tuple(LeakKind)  # one observer per kind of leak, named by it

# Instruction classes whose latency may depend on operands (profiles.LATENCY_CLASSES keys).
INT_DIV = frozenset({"div", "idiv"})
FP_DIV = frozenset({"divss", "divsd", "divps", "divpd", "fdiv", "fdivp", "fdivr", "fdivrp"})
FP_SQRT = frozenset({"sqrtss", "sqrtsd", "sqrtps", "sqrtpd", "fsqrt"})
FP_ARITH = frozenset({"addss", "addsd", "addps", "addpd", "subss", "subsd", "subps", "subpd",
                      "mulss", "mulsd", "mulps", "mulpd"}) | FP_DIV | FP_SQRT
CLASS_MNEMONICS: dict[str, frozenset[str]] = {
    "int-div": INT_DIV, "fp-div": FP_DIV, "fp-sqrt": FP_SQRT, "fp-subnormal": FP_ARITH,
}

COST = {"default": 1, "int-div": 26, "fp-div": 14, "fp-sqrt": 18, "subnormal": 150}
"""The cost model (cycles): every instruction 1, a division or square root its typical
latency, and a subnormal operand a microcode assist.  Rough published orders of magnitude,
used only to rank runs; not a measurement."""

MXCSR_DAZ = 1 << 6  # denormals are zero: subnormal SSE inputs are read as zero


@dataclass(frozen=True)
class LatencySite:
    """A variable-latency instruction and how to read its operands."""

    address: int
    mnemonic: str
    cls: str  # a CLASS_MNEMONICS key
    operands: tuple[tuple[str, Any], ...]  # ("reg", name) / ("xmm", n) / ("mem", (b,i,s,d))
    width: int  # operand bytes


@dataclass
class Trace:
    """One run's observations."""

    digests: dict[LeakKind, int] = field(default_factory=lambda: dict.fromkeys(OBSERVERS, 0))
    instructions: int = 0  # in scope
    cost: int = 0  # the cost model's estimate, in scope
    scope_ns: int = 0  # host time spent in scope (emulation, hooks included)
    blocks: BlockTrace = field(default_factory=BlockTrace)
    # full: (address, its last instruction, RSP when it starts)
    memory: AccessTrace = field(default_factory=AccessTrace)  # (block, pc, kind, unit)
    latency: list[tuple[int, int, str]] = field(default_factory=list)  # (block, pc, operands)
    operands: list[tuple[int, ...]] = field(default_factory=list)  # each latency event's values


class RunObserver:
    """Attaches the observers to a machine for one run (see the module doc)."""

    def __init__(self, machine: Machine, observers: Sequence[LeakKind], unit: int,
                 latency_classes: Sequence[str], scope: Sequence[int] | FunctionScope | None,
                 full: bool = False, ranges: Sequence[tuple[int, int]] | None = None) -> None:
        """``scope``: the run's :class:`FunctionScope`, or runtime entry addresses of the
        scoped functions (None: everything; more can be added with :meth:`add_scope`).
        ``ranges``: runtime [start, end) code ranges to observe instead (``scope`` is then
        None)."""
        self.machine = machine
        self.observers = frozenset(observers)
        self.unit = unit
        self.classes = tuple(c for c in CLASS_MNEMONICS if c in latency_classes)
        self.full = full
        self.trace = Trace()
        self.ranges = merge_ranges(ranges) if ranges is not None else None
        self._starts = [lo for lo, _ in self.ranges or ()]
        if isinstance(scope, FunctionScope):
            self.scope = scope
        else:
            self.scope = FunctionScope(machine, None if scope is None and ranges is None
                                       else [])
            for entry in scope or ():
                self.scope.add_entry(entry)
        self.scope.on_enter.append(self._on_entry)
        self.scope.on_leave.append(self._on_leave)
        self.active = self.scope.everywhere  # mirrors the scope, updated at each block
        self.everywhere = self.active
        self._rsp = machine.reg_reader("rsp")  # read once per block: no lookups per call
        self._rip = machine.reg_reader("rip")
        self._current = (0, 0)  # the block running now: (address, size)
        self._entered_ns = time.perf_counter_ns()
        # block -> (instructions, cost, address of its last instruction)
        self._insn_counts: dict[int, tuple[int, int, int]] = {}
        self._sites: dict[int, LatencySite] = {}  # variable-latency instructions now
        self._hooked: set[int] = set()  # addresses with a hook (it outlives unmapped code)
        hooks = machine.hooks
        hooks.on_block(self._on_block if self.ranges is None else self._on_block_in_ranges)
        if LeakKind.MEMORY_ACCESS in self.observers:
            hooks.on_memory(self._on_access)
        if LeakKind.VARIABLE_LATENCY in self.observers and self.classes:
            machine.mem.exec_page_listeners.append(self._scan_page)
            for page in machine.mem.code_pages_in_use():
                self._scan_page(page)

    # -- scope ------------------------------------------------------------------------------

    def add_scope(self, entry: int) -> None:
        """Observe from each entry of the function at runtime address ``entry``."""
        self.scope.add_entry(entry)

    def _on_entry(self, address: int) -> None:
        self.active = True
        self._entered_ns = time.perf_counter_ns()
        if self._current[0] == address:  # the block hook ran before: count its block
            self._record(*self._current)

    def _on_leave(self) -> None:
        self.active = False
        self.trace.scope_ns += time.perf_counter_ns() - self._entered_ns

    def inside(self, address: int) -> bool:
        """Is ``address`` in the observed code ranges?"""
        assert self.ranges is not None
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address < self.ranges[i][1]

    def _in_scope(self, pc: int) -> bool:
        """Does an event of the instruction at ``pc`` count now?"""
        return self.active if self.ranges is None else self.inside(pc)

    # -- control flow and the cost model ------------------------------------------------------

    def _on_block(self, address: int, size: int) -> None:
        if self.active and not self.everywhere:
            self.scope.active()  # notices a return (and calls _on_leave)
        self._current = (address, size)
        if self.active:
            self._record(address, size)

    def _on_block_in_ranges(self, address: int, size: int) -> None:
        """Range scope: count every block's instructions in the ranges (a block may run into
        one), and record the blocks that start in one."""
        counts = self._counts(address, size)
        self.trace.instructions += counts[0]
        self.trace.cost += counts[1]
        if self.inside(address):
            self._record_flow(address, counts[2])

    def _record(self, address: int, size: int) -> None:
        counts = self._counts(address, size)
        self.trace.instructions += counts[0]
        self.trace.cost += counts[1]
        self._record_flow(address, counts[2])

    def _record_flow(self, address: int, last: int) -> None:
        t = self.trace
        t.digests[LeakKind.CONTROL_FLOW] = hash((t.digests[LeakKind.CONTROL_FLOW], address))
        if self.full:
            t.blocks.append((address, last, self._rsp()))

    def _counts(self, address: int, size: int) -> tuple[int, int, int]:
        """(instructions, cost, address of the last instruction) of the block, counting only
        the instructions in scope of a range scope (cached per block)."""
        counts = self._insn_counts.get(address)
        if counts is None:
            counts = self._insn_counts[address] = self._count(address, size)
        return counts

    def _count(self, address: int, size: int) -> tuple[int, int, int]:
        code = self.machine.mem.read_code_view(address, size)  # an entry jump, not the original
        n = cost = 0
        at = last = 0
        while at < size:
            insn = decode(code[at:], address + at)
            if insn is None:
                break
            if self.ranges is None or self.inside(address + at):
                n += 1
                cost += next((COST[c] for c, m in CLASS_MNEMONICS.items()
                              if c != "fp-subnormal" and insn.mnemonic in m), COST["default"])
            last = at
            at += insn.size
        return n, cost, address + last

    # -- memory ------------------------------------------------------------------------------

    def _on_access(self, is_write: bool, address: int, size: int) -> None:
        pc = None
        if self.ranges is not None:
            pc = self._rip()
            if not self.inside(pc):
                return
        elif not self.active:
            return
        kind = "w" if is_write else "r"
        t = self.trace
        unit = self.unit
        units = range(address // unit, (address + size - 1) // unit + 1)
        for u in units:
            t.digests[LeakKind.MEMORY_ACCESS] = hash((t.digests[LeakKind.MEMORY_ACCESS], kind, u))
        if self.full:
            pc = self._rip() if pc is None else pc
            block = len(t.blocks) - 1
            t.memory.extend(block, pc, is_write, units)

    # -- variable latency ----------------------------------------------------------------------

    def _scan_page(self, page: int) -> None:
        """Hook every variable-latency instruction of a code page about to be used."""
        mem = self.machine.mem
        code = mem.read(page, PAGE)
        after = mem.find(page + PAGE)
        if after is not None and after.guest:
            code += mem.read(page + PAGE, 15)  # an instruction may cross
        found = dict(_latency_sites(code, page, self.classes))
        for address in [a for a in self._sites if page <= a < page + PAGE and a not in found]:
            del self._sites[address]  # the page holds other code now
        for address, site in found.items():
            self._sites[address] = site
            if address not in self._hooked:
                self._hooked.add(address)
                self.machine.hooks.at(address, self._on_latency)

    def _on_latency(self, address: int, size: int) -> None:
        site = self._sites.get(address)
        if site is None or not self._in_scope(address):
            return
        values = operand_values(self.machine, site)
        mxcsr = 0 if site.cls == "int-div" else self.machine.reg("mxcsr")
        props = operand_class(site, values, mxcsr)
        t = self.trace
        latency = LeakKind.VARIABLE_LATENCY
        t.digests[latency] = hash((t.digests[latency], address, props))
        if "subnormal" in props:
            t.cost += COST["subnormal"]
        if self.full:
            t.latency.append((len(t.blocks) - 1, address, props))
            t.operands.append(tuple(values))


def operand_values(machine: Machine, site: LatencySite) -> list[int]:
    """The site's operands now (for DIV/IDIV: RAX, RDX, then the divisor)."""
    return [_read_operand(machine, kind, what) for kind, what in site.operands]


def _latency_sites(code: bytes, base: int, classes: Sequence[str]
                   ) -> list[tuple[int, LatencySite]]:
    """Instructions of the latency ``classes`` found by a linear sweep of ``code`` at
    ``base`` (a page, plus the bytes an instruction at its end may need)."""
    from capstone import x86 as cx

    found = []
    end = base + PAGE
    for ci in detail_decoder().disasm(code, base):
        if ci.address >= end:
            break
        cls = next((c for c in classes if ci.mnemonic in CLASS_MNEMONICS[c]), None)
        if cls is None:
            continue
        operands: list[tuple[str, Any]] = []
        width = 0
        for op in ci.operands:
            width = max(width, op.size)
            if op.type == cx.X86_OP_REG:
                name = ci.reg_name(op.reg)
                operands.append(("xmm", int(name[3:])) if name.startswith("xmm")
                                else ("reg", name))
            elif op.type == cx.X86_OP_MEM:
                m = op.mem
                base_reg = ci.reg_name(m.base) if m.base else None
                disp = m.disp + (ci.address + ci.size if base_reg == "rip" else 0)
                operands.append(("mem", (None if base_reg == "rip" else base_reg,
                                         ci.reg_name(m.index) if m.index else None, m.scale,
                                         disp, op.size)))
        if ci.mnemonic in INT_DIV:
            operands = [("reg", "rax"), ("reg", "rdx"), *operands]
        found.append((ci.address, LatencySite(ci.address, ci.mnemonic, cls, tuple(operands),
                                              width)))
    return found


def operand_class(site: LatencySite, values: Sequence[int], mxcsr: int) -> str:
    """The operand properties that decide ``site``'s latency, as text: for DIV/IDIV the
    significant bits of dividend (RDX:RAX) and divisor — the quotient's length decides the
    iterations on most cores; for floating-point division and square root each operand's
    class (zero, subnormal, normal, inf, nan); for other floating-point arithmetic whether
    each operand is subnormal (read as zero under MXCSR.DAZ).  Equal text: equal latency, as
    far as the profile can tell.  ``values``: :func:`operand_values`; ``mxcsr``: MXCSR."""
    if site.mnemonic in INT_DIV:
        rax, rdx, divisor = values[0], values[1], values[-1]
        width = site.width * 8
        dividend = rdx << width | (rax & ((1 << width) - 1)) if width < 64 else rdx << 64 | rax
        return f"dividend:{dividend.bit_length()} divisor:{divisor.bit_length()}"
    double = site.mnemonic.endswith(("sd", "pd")) or site.mnemonic.startswith("f")
    daz = not site.mnemonic.startswith("f") and mxcsr & MXCSR_DAZ
    classes = [_fp_class(v, double, site.mnemonic.endswith(("ps", "pd"))) for v in values]
    if daz:  # subnormal inputs are read as zero: no assist
        classes = [c.replace("subnormal", "zero") for c in classes]
    if site.cls == "fp-subnormal":  # only subnormal operands slow add/sub/mul down
        classes = ["/".join("subnormal" if lane == "subnormal" else "other"
                            for lane in c.split("/")) for c in classes]
    return " ".join(classes)


def _read_operand(machine: Machine, kind: str, what: Any) -> int:
    if kind == "reg":
        return machine.reg(what)
    if kind == "xmm":
        return machine.reg(f"xmm{what}")
    base, index, scale, disp, size = what
    address = disp
    if base:
        address += machine.reg(base)
    if index:
        address += scale * machine.reg(index)
    return int.from_bytes(machine.mem.read(address & ((1 << 64) - 1), size), "little")


def _fp_class(value: int, double: bool, packed: bool) -> str:
    """Class of each float in ``value`` (one scalar, or every lane when packed)."""
    lanes = (2 if double else 4) if packed else 1
    size = 8 if double else 4
    raw = value.to_bytes(16, "little")
    out = []
    for lane in range(lanes):
        f = struct.unpack("<d" if double else "<f", raw[lane * size:(lane + 1) * size])[0]
        if f == 0:
            out.append("zero")
        elif math.isnan(f):
            out.append("nan")
        elif math.isinf(f):
            out.append("inf")
        elif abs(f) < (2.2250738585072014e-308 if double else 1.1754943508222875e-38):
            out.append("subnormal")
        else:
            out.append("normal")
    return "/".join(out)
