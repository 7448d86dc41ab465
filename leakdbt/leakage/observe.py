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

Recording.  With the function scope (not code ranges) and the native recorder built
(leakdbt/leakage/_trace.c, :mod:`leakdbt.leakage.native`), the control-flow and
memory-access observers are C hooks that append to arrays and update the digests without
a Python call per block or access; otherwise Python hooks record the same events and
digests (:func:`leakdbt.leakage.native.mix`; the tests compare the two).  The
variable-latency observer is a Python hook at the few instructions of its classes.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from leakdbt.dbt.region import merge_ranges
from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.native import NativeRecorder, mix, native_library
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PAGE
from leakdbt.run.scope import FunctionScope
from leakdbt.x86.insn import decode, detail_decoder

R = TypeVar("R")
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
    # full: (blocks recorded before it, thread index) at each guest thread switch: the blocks
    # from there on ran in that thread (index 0: the first thread, then in creation order)
    threads: list[tuple[int, int]] = field(default_factory=list)


class RunObserver:
    """Attaches the observers to a machine for one run (see the module doc)."""

    def __init__(self, machine: Machine, observers: Sequence[LeakKind], unit: int,
                 latency_classes: Sequence[str], scope: Sequence[int] | FunctionScope | None,
                 full: bool = False, ranges: Sequence[tuple[int, int]] | None = None,
                 native: bool = True) -> None:
        """``scope``: the run's :class:`FunctionScope`, or runtime entry addresses of the
        scoped functions (None: everything; more can be added with :meth:`add_scope`).
        ``ranges``: runtime [start, end) code ranges to observe instead (``scope`` is then
        None).  ``native``: record with the C hooks when they are built (see the module
        doc; code ranges are always observed from Python)."""
        self.machine = machine
        self.observers = frozenset(observers)
        self.unit = unit
        self.classes = tuple(c for c in CLASS_MNEMONICS if c in latency_classes)
        self.full = full
        self._trace = Trace()
        self._latency_cost = 0  # the cost model's subnormal assists (native: added at sync)
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
        lib = native_library() if native and self.ranges is None else None
        self._native: NativeRecorder | None = None
        if lib is not None:
            self._native = NativeRecorder(
                machine, lib, memory=LeakKind.MEMORY_ACCESS in self.observers, unit=unit,
                full=full, everywhere=self.everywhere, figures=self._counts,
                leave=self.scope.active)
        else:
            hooks.on_block(self._on_block if self.ranges is None
                           else self._on_block_in_ranges)
            if LeakKind.MEMORY_ACCESS in self.observers:
                hooks.on_memory(self._on_access)
        if full:
            machine.thread_listeners.append(self._on_thread_switch)
        if LeakKind.VARIABLE_LATENCY in self.observers and self.classes:
            machine.mem.exec_page_listeners.append(self._scan_page)
            for page in machine.mem.code_pages_in_use():
                self._scan_page(page)

    @property
    def native(self) -> bool:
        """Are the control-flow and memory-access observers the C hooks?"""
        return self._native is not None

    @property
    def trace(self) -> Trace:
        """The run's observations so far."""
        if self._native is not None:
            self._sync(self._native)
        return self._trace

    def _sync(self, native: NativeRecorder) -> None:
        """Copy what the C hooks recorded since the last call into the trace."""
        native.check()
        t, s = self._trace, native.state
        t.instructions = int(s.instructions)
        t.cost = int(s.cost) + self._latency_cost
        t.digests[LeakKind.CONTROL_FLOW] = int(s.flow_digest)
        if LeakKind.MEMORY_ACCESS in self.observers:
            t.digests[LeakKind.MEMORY_ACCESS] = int(s.memory_digest)
        if self.full:
            b, m = t.blocks, t.memory
            native.sync(b.starts, b.lasts, b.rsps, m.blocks, m.pcs, m.units, m.writes)

    def flush_every(self, blocks: int, flush: Callable[[Trace], object]) -> None:
        """Full traces: hand the trace to ``flush`` each time some ``blocks`` more blocks
        are held, to store its first blocks and drop them (bounded memory for long runs:
        leakdbt.leakage.chunks.TraceWriter); block numbers stay those of the whole run."""
        native = self._native
        if native is None:
            self._trace.blocks.watch(blocks, lambda: flush(self._trace))
            return

        def on_full() -> None:
            flush(self.trace)  # copies what the C hooks hold first...
            native.forget()  # ...which they need not hold any longer

        native.flush_every(blocks, on_full)

    def _on_thread_switch(self, index: int) -> None:
        self._trace.threads.append((self._blocks_so_far(), index))

    def release(self) -> Trace:
        """The run is over: its trace, which this observer lets go of (with the native
        recorder's memory), so that it goes as soon as its taker is done with it."""
        trace = self.trace
        if self._native is not None:
            self._native.release()
            self._native = None
        self._trace = Trace()
        return trace

    def _blocks_so_far(self) -> int:
        return self._native.blocks if self._native is not None else len(self._trace.blocks)

    # -- scope ------------------------------------------------------------------------------

    def add_scope(self, entry: int) -> None:
        """Observe from each entry of the function at runtime address ``entry``."""
        self.scope.add_entry(entry)

    def _on_entry(self, address: int) -> None:
        self.active = True
        self._entered_ns = time.perf_counter_ns()
        if self._native is not None:  # counts the block holding the entry, as below
            self._native.enter(address, self._rsp())
        elif self._current[0] == address:  # the block hook ran before: count its block
            self._record(*self._current)

    def _on_leave(self) -> None:
        self.active = False
        if self._native is not None:
            self._native.set_active(False)
        self._trace.scope_ns += time.perf_counter_ns() - self._entered_ns

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
        self._trace.instructions += counts[0]
        self._trace.cost += counts[1]
        if self.inside(address):
            self._record_flow(address, counts[2])

    def _record(self, address: int, size: int) -> None:
        counts = self._counts(address, size)
        self._trace.instructions += counts[0]
        self._trace.cost += counts[1]
        self._record_flow(address, counts[2])

    def _record_flow(self, address: int, last: int) -> None:
        t = self._trace
        t.digests[LeakKind.CONTROL_FLOW] = mix(t.digests[LeakKind.CONTROL_FLOW], address)
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
        if self.ranges is None:  # every instruction counts: the same for the same bytes
            return _block_figures(bytes(code), address)
        return _count_block(bytes(code), address, self.inside)

    # -- memory ------------------------------------------------------------------------------

    def _on_access(self, is_write: bool, address: int, size: int) -> None:
        pc = None
        if self.ranges is not None:
            pc = self._rip()
            if not self.inside(pc):
                return
        elif not self.active:
            return
        t = self._trace
        unit = self.unit
        units = range(address // unit, (address + max(size, 1) - 1) // unit + 1)
        for u in units:  # the same digest as the native hook's
            t.digests[LeakKind.MEMORY_ACCESS] = mix(t.digests[LeakKind.MEMORY_ACCESS],
                                                    u * 2 + is_write)
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
        found = dict(_latency_sites(bytes(code), page, self.classes))
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
        t = self._trace
        latency = LeakKind.VARIABLE_LATENCY
        # crc32, not hash(): a string's hash differs between processes (trials may run apart)
        t.digests[latency] = mix(mix(t.digests[latency], address),
                                 zlib.crc32(props.encode()))
        if "subnormal" in props:
            t.cost += COST["subnormal"]
            self._latency_cost += COST["subnormal"]
        if self.full:
            t.latency.append((self._blocks_so_far() - 1, address, props))
            t.operands.append(tuple(values))


# The caches of what every trial of a check computes alike.  Plain dicts (bounded: full, they
# stop growing), so that a trial forked from a snapshot (leakdbt.leakage.snapshot) can hand
# what it added back to its parent, for the trials forked after it.
SHARED_CACHES: list[dict[Any, Any]] = []


def _shared_cache(limit: int) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Memoise a function of hashable arguments in a dict of :data:`SHARED_CACHES`."""
    def wrap(fn: Callable[..., R]) -> Callable[..., R]:
        table: dict[tuple[Any, ...], R] = {}
        SHARED_CACHES.append(table)

        @functools.wraps(fn)
        def cached(*args: Any) -> R:
            found = table.get(args)
            if found is None:
                found = fn(*args)
                if len(table) < limit:
                    table[args] = found
            return found
        return cached
    return wrap


@_shared_cache(1 << 16)
def _block_figures(code: bytes, address: int) -> tuple[int, int, int]:
    """(instructions, cost, address of the last instruction) of the block of ``code`` at
    ``address`` (cached: every trial of a check runs the same blocks)."""
    return _count_block(code, address, None)


def _count_block(code: bytes, address: int, inside: Callable[[int], bool] | None
                 ) -> tuple[int, int, int]:
    """:func:`_block_figures`, counting only the instructions ``inside`` accepts (None: all)."""
    n = cost = 0
    at = last = 0
    while at < len(code):
        insn = decode(code[at:], address + at)
        if insn is None:
            break
        if inside is None or inside(address + at):
            n += 1
            cost += next((COST[c] for c, m in CLASS_MNEMONICS.items()
                          if c != "fp-subnormal" and insn.mnemonic in m), COST["default"])
        last = at
        at += insn.size
    return n, cost, address + last


def operand_values(machine: Machine, site: LatencySite) -> list[int]:
    """The site's operands now (for DIV/IDIV: RAX, RDX, then the divisor)."""
    return [_read_operand(machine, kind, what) for kind, what in site.operands]


@_shared_cache(4096)
def _latency_sites(code: bytes, base: int, classes: tuple[str, ...]
                   ) -> tuple[tuple[int, LatencySite], ...]:
    """Instructions of the latency ``classes`` found by a linear sweep of ``code`` at
    ``base`` (a page, plus the bytes an instruction at its end may need).  The sweep reads
    mnemonics only; operand details are decoded for the instructions found.  Cached: every
    trial of a check maps the same code pages."""
    from capstone import x86 as cx

    found = []
    end = base + PAGE
    md = detail_decoder()
    for address, size, mnemonic, _ops in md.disasm_lite(code, base):
        if address >= end:
            break
        cls = next((c for c in classes if mnemonic in CLASS_MNEMONICS[c]), None)
        if cls is None:
            continue
        ci = next(md.disasm(code[address - base:address - base + size], address, 1))
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
    return tuple(found)


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
