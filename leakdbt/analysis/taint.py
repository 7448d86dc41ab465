"""Dynamic taint tracking on a running guest: a shadow state updated before every instruction
(a code hook), and findings where tainted data reaches something observable.

Findings (aggregated per (kind, address), with counts and the union of labels seen):

- ``control-flow``: a conditional branch (jcc) whose flags are tainted, a ``jrcxz``/``loop``
  whose rcx is tainted, an indirect jump or call whose target is tainted;
- ``memory-access``: a memory operand whose address registers are tainted (or, for
  ``bt``/``bts``/``btr``/``btc`` on memory, whose register bit offset is).  Each says how
  far the secret can move it (:attr:`TaintedUse.reach`): ``line`` if some value of the tainted
  address bits puts the access in another cache line than the concrete one, ``within-line``
  if it cannot leave that line.  The range is computed from the concrete public bits of
  base and index: every tainted byte's bits vary, except those known to be zero
  (:meth:`Shadow.zero_bits`: after ``and`` with an immediate, zero-extensions, shifts), so
  ``t[x & 15]`` in a 64-byte-aligned table stays within its line;
- ``variable-latency``: ``div``/``idiv`` with a tainted dividend or divisor, SSE/AVX float
  arithmetic (add/sub/mul/div/sqrt/min/max, scalar or packed) with a tainted operand.

Address-to-value taint: a memory operand read through tainted address registers gives the
instruction's rule bytes carrying the address's labels too (:attr:`Shadow.via`), so what it
computes from them — an S-box output, a pointer loaded from a secret-chosen slot — depends
on the secret.  A store through a tainted address does not taint the stored bytes (it is a
finding only); ``lea``, nops and prefetches read no memory.

Implicit flows (``implicit=True``, the default): after a tainted *forward* conditional branch
whose skipped code is a simple if-then body (a *hammock*: within ``IMPLICIT_SPAN`` bytes, no
call, return or indirect jump, every branch in it stays in it; see :meth:`_hammock`),
everything the instructions between the branch and its target write also gets the branch's
labels, until execution reaches the target or leaves the region.  A forward branch over
anything bigger (typically an error check jumping to a far exit path) opens no region: with it
everything after a validity check of the secret would be tainted.  That is what
makes ``r = r * b % m`` under ``if (secret bit)`` tainted.  Only the path that runs the
region is tracked (not the values the other path would have written); loops with tainted
exit conditions are not followed.

Joins (:attr:`TaintTracker.joins`, set by analyze for ``public``): at the point where a
tainted branch's paths meet again (its immediate post-dominator, any shape, calls included)
every register any of its paths may write gets the label :data:`IMPLICIT`: the values there
depend on which path ran, also where the path that ran left a register unwritten.  Where the
paths meet only by returning, or nothing is known of the function (no symbol), that is done
when it returns, to the caller-saved registers (the System V ABI restores the others).  The label
spreads like any other but is no secret's: it makes no finding (:meth:`TaintTracker._report`
drops it), it only keeps such registers out of the ``public`` lists analyze writes.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from leakdbt.analysis.rules import (
    CONDITIONS,
    REGISTERS,
    SSE_FLOAT_ARITH,
    Insn,
    Op,
    RegLoc,
    Shadow,
    decode,
    div_inputs,
    read_op,
    union,
)
from leakdbt.leakage.findings import LeakKind
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import GuestMemoryFault
from leakdbt.run.secrets import argv_string
from leakdbt.x86.disasm import strict_decoder
from leakdbt.x86.insn import detail_decoder

IMPLICIT_SPAN = 4096
# Distinct addresses kept per memory-access finding, to name every table it indexes (a
# 256-entry table has at most 256 distinct element addresses: 16 such tables fit).
MAX_TARGETS = 4096
LINE, WITHIN_LINE = "line", "within-line"  # how far a secret moves a memory access
ENTRY_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                   "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
"""The registers whose taint is recorded at block starts (bit i of a mask: the i-th), in the
order of leakdbt.contract.model.GENERAL_REGISTERS: every GPR but rsp."""
ENTRY_SET = frozenset(ENTRY_REGISTERS)
CALLER_SAVED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"})
"""What a function may change for its caller (the System V ABI restores the others)."""
IMPLICIT = 1 << 63
"""The label of a value that depends on a secret through control flow only (see Joins)."""
_ENTRY_BYTES = tuple((1 << i, REGISTERS[r].start) for i, r in enumerate(ENTRY_REGISTERS))
_GPR_BYTES = 16 * 8  # Shadow.regs: the GPRs' bytes come first
SCAN_BYTES = 1024  # code decoded ahead of a newly run address, for the leaders it names
_LEADS = frozenset({*(f"j{c}" for c in CONDITIONS), "call", "jrcxz", "jecxz", "loop", "loope",
                    "loopne"})  # direct transfers whose next instruction starts a block

_JCC = frozenset(f"j{c}" for c in CONDITIONS)
_RCX_BRANCHES = frozenset({"jrcxz", "jecxz", "loop", "loope", "loopne"})
_BIT_STRING = frozenset({"bt", "bts", "btr", "btc"})
_EXTRA_EA = {"push": "rsp", "pop": "rsp", "call": "rsp", "ret": "rsp",
             "leave": "rbp"}  # the register whose value is appended to ea (rules)
_NO_ACCESS = frozenset({"lea", "nop", "prefetcht0", "prefetcht1", "prefetcht2",
                        "prefetchnta", "prefetchw", "prefetch", "prefetchwt1"})
SYS_READ, SYS_WRITE, SYS_MMAP, SYS_PREAD64, SYS_PWRITE64 = 0, 1, 9, 17, 18
SYS_READV, SYS_WRITEV, SYS_PREADV, SYS_PWRITEV = 19, 20, 295, 296
SYS_CLONE, SYS_CLONE3, CLONE_THREAD = 56, 435, 0x10000


class _Transfer(NamedTuple):
    """A system call that moves file data."""

    reads: bool  # into guest memory (else out of it)
    vectored: bool  # buffers given as an iovec array
    positioned: bool  # at the offset in r10 (else at the file position)


_TRANSFERS = {SYS_READ: _Transfer(True, False, False), SYS_PREAD64: _Transfer(True, False, True),
              SYS_READV: _Transfer(True, True, False), SYS_PREADV: _Transfer(True, True, True),
              SYS_WRITE: _Transfer(False, False, False),
              SYS_PWRITE64: _Transfer(False, False, True),
              SYS_WRITEV: _Transfer(False, True, False),
              SYS_PWRITEV: _Transfer(False, True, True)}

MAX_IOVECS = 1024  # IOV_MAX
MAP_ANONYMOUS = 0x20
MAX_FILE_TAINT = 1 << 20  # bytes of one write whose taint is remembered in the file


@dataclass
class TaintedUse:
    """An instruction that used tainted data observably (one per kind and address), as
    the tracker tallies it; leakdbt.analysis.analyze makes a finding of it."""

    kind: LeakKind
    address: int
    labels: int
    count: int
    where: str = ""
    targets: set[int] = field(default_factory=set)  # memory accesses: addresses seen (some)
    reach: str = ""  # memory accesses: LINE if any run could cross lines, else WITHIN_LINE

    def describe(self) -> str:
        return f"{self.kind} at {self.where or hex(self.address)} labels={self.labels:#x} " \
               f"x{self.count}"


@dataclass
class _Implicit:
    start: int
    end: int
    labels: int
    rsp: int


@dataclass
class _Join:
    """A tainted branch whose paths have not met yet (:attr:`TaintTracker.joins`): when
    control reaches ``join`` with RSP at ``rsp`` (or returns above it), ``regs`` get
    :data:`IMPLICIT`."""

    branch: int
    join: int | None
    rsp: int
    regs: frozenset[str]


Join = tuple[int | None, frozenset[str]]
"""Where a branch's paths meet (None: only by returning) and the registers any of them
may write (:attr:`TaintTracker.joins`)."""


@dataclass
class _ThreadTaint:
    """What of the shadow state belongs to one guest thread: its registers' and flags'
    taint, what is known zero in them, its open implicit-flow regions and joins."""

    regs: list[int]
    flags: int
    zero: list[int]
    implicit: list[_Implicit]
    joins: list[_Join] = field(default_factory=list)


class EngineValues:
    """The machine's concrete values, for the rules that need them (:class:`Concrete`)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def reg_value(self, loc: RegLoc) -> bytes:
        """A register's value, ``loc.width`` bytes."""
        value = self.machine.reg(loc.name)
        return (value & ((1 << (8 * loc.width)) - 1)).to_bytes(loc.width, "little")

    def mem_value(self, address: int, size: int) -> bytes:
        """Guest memory (zeros where it cannot be read: the instruction will fault)."""
        try:
            return self.machine.mem.read(address, size)
        except GuestMemoryFault:
            return bytes(size)


class TaintTracker:
    """Byte-granular taint over a :class:`Machine`'s registers, flags and memory.

    Attach before the guest runs (from ``ExecOptions.on_start``); mark sources with
    :meth:`taint_register`, :meth:`taint_memory` or :meth:`taint_argv`; read
    :meth:`findings` afterwards.  ``scope`` limits the code hook to [begin, end) (taint is then
    not propagated by code outside it); so does ``ranges`` (several [begin, end), more with
    :meth:`track` before their code first runs); ``line_size`` is the cache line size
    memory-access findings are judged by (:attr:`TaintedUse.reach`); ``in_scope`` tells
    whether a finding counts now (taint is propagated everywhere regardless), as the
    contract's scope says (:class:`leakdbt.run.scope.FunctionScope`).
    """

    def __init__(self, machine: Machine, *, scope: tuple[int, int] | None = None,
                 ranges: Sequence[tuple[int, int]] | None = None, implicit: bool = True,
                 line_size: int = 64, in_scope: Callable[[], bool] | None = None) -> None:
        self.machine = machine
        self.mem = machine.mem
        # Register readers bound once: the hook reads registers for every instruction.
        self._read = {name: machine.reg_reader(name) for name in REGISTERS}
        self._read.update((name, machine.reg_reader(name)) for name in ("fs_base", "gs_base"))
        self._extra_ea = {m: self._read[r] for m, r in _EXTRA_EA.items()}
        self.shadow = Shadow()
        self.shadow.concrete = EngineValues(machine)
        self.implicit = implicit
        self.line_size = line_size
        self.in_scope = in_scope
        self.instructions = 0
        self.elapsed = 0.0
        self.default_counts: Counter[str] = Counter()
        self._cache: dict[int, Insn] = {}
        self._found: dict[tuple[LeakKind, int], TaintedUse] = {}
        self._implicit: list[_Implicit] = []
        self._hammocks: dict[tuple[int, int], bool] = {}
        # Joins (module doc; leakdbt.analysis.public): ``joins(address)`` tells, for a
        # tainted conditional branch, where its paths meet and which registers any path may
        # write (None: unknown: the caller-saved ones, at the return); ``_open`` holds the
        # branches whose join has not come yet.  Memory written on the paths is not
        # re-tainted.
        self.joins: Callable[[int], Join | None] | None = None
        self._open: list[_Join] = []
        self._join_at: set[int | None] = set()  # their joins
        # Register taint at block starts (leakdbt.analysis.public): a *leader* is an address
        # reached by a transfer (it does not follow the instruction run before it), or the
        # target of a direct branch, call or jump, or the instruction after a conditional
        # branch or call, in the code scanned so far (SCAN_BYTES linearly from each newly
        # run address not scanned yet, before it runs: a loop's back edge is seen before
        # its header first runs); every execution of a leader records which GPRs are
        # tainted.  A leader found after it first ran (a back edge further than the scan
        # reaches) is *blind*: some of its executions went unrecorded.
        self._next = -1  # where the instruction run last would fall through to
        self._leaders: set[int] = set()
        self._blind: set[int] = set()
        self._scanned: set[int] = set()  # instruction addresses the scans decoded
        self._entry_taint: dict[int, int] = {}  # leader -> ENTRY_REGISTERS mask, OR-ed
        self._leader_now = -1  # the leader recorded last
        # Guest threads (leakdbt.linux.threads) share memory but not registers: at a switch
        # the outgoing thread's register taint is kept and the incoming one's put back.
        # Threads are numbered in creation order (0: the first), as Machine.thread_listeners
        # names them; a new one starts with its creator's taint at its clone (rax clean).
        self._thread = 0
        self._threads_made = 1
        self._parked: dict[int, _ThreadTaint] = {}
        machine.thread_listeners.append(self._on_thread_switch)
        if scope is not None:
            ranges = [scope, *(ranges or ())]
        if ranges is None:
            machine.hooks.on_code(self._on_insn)  # every instruction
        else:
            for begin, end in ranges:
                self.track(begin, end)
        self._syscall = machine.syscall_handler
        machine.syscall_handler = self._on_syscall
        # Secrets that enter by read(2): called with (fd, buffer, bytes read, file offset of
        # the first) after the buffer has been cleared; they taint what is secret in it.
        self.read_sources: list[Callable[[int, int, int, int], None]] = []
        self._files: dict[tuple[int, int], dict[int, int]] = {}  # file -> offset -> labels

    def track(self, begin: int, end: int) -> None:
        """Also propagate taint through the code in [begin, end) (before it first runs: code
        the engine translated earlier would not call the hook)."""
        self.machine.hooks.on_code(self._on_insn, begin, end)

    # -- sources ----------------------------------------------------------------------------------

    def taint_register(self, reg: str, labels: int, nbytes: int | None = None) -> None:
        loc = REGISTERS[reg]
        n = loc.size if nbytes is None else nbytes
        self.shadow.set_reg(loc, [labels] * n + self.shadow.reg(loc)[n:])
        at = self._leader_now
        if at in self._entry_taint and self.machine.reg("rip") == at:
            # a source's hook at a block start the tracker's hook already recorded (a
            # function entry): the register is tainted there
            self._entry_taint[at] |= self._gpr_mask()

    def taint_memory(self, address: int, length: int, labels: int) -> None:
        self.shadow.store(address, [labels] * length)

    def taint_argv(self, index: int, labels: int) -> tuple[int, int]:
        ptr, n = argv_string(self.machine, index)
        self.taint_memory(ptr, n, labels)
        return ptr, n

    # -- threads ----------------------------------------------------------------------------------

    def _register_taint(self) -> _ThreadTaint:
        sh = self.shadow
        return _ThreadTaint(list(sh.regs), sh.flags, list(sh.zero), list(self._implicit),
                            list(self._open))

    def _on_thread_switch(self, index: int) -> None:
        """Thread ``index`` runs from now on: park the running thread's register taint and
        load ``index``'s (clean if it was never seen: it began before the tracker)."""
        if index == self._thread:
            return
        self._parked[self._thread] = self._register_taint()
        incoming = self._parked.pop(index, None)
        sh = self.shadow
        if incoming is None:
            incoming = _ThreadTaint([0] * len(sh.regs), 0, [0] * len(sh.zero), [])
        sh.regs[:] = incoming.regs
        sh.flags = incoming.flags
        sh.zero[:] = incoming.zero
        self._implicit = incoming.implicit
        self._open = incoming.joins
        self._join_at = {j.join for j in self._open}
        self._thread = index

    def _thread_made(self, nr: int, flags: int, result: int) -> None:
        """After clone/clone3: a new thread (CLONE_THREAD, and the call returned its tid)
        gets the caller's register taint, as it gets its registers."""
        if nr in (SYS_CLONE, SYS_CLONE3) and flags & CLONE_THREAD and 0 < result < 1 << 63:
            self._parked[self._threads_made] = self._register_taint()
            self._threads_made += 1

    # -- results ----------------------------------------------------------------------------------

    def findings(self) -> list[TaintedUse]:
        out = sorted(self._found.values(), key=lambda f: (f.address, f.kind))
        for f in out:
            f.where = self.machine.symbolize(f.address)
        return out

    def speed(self) -> float:
        """Guest instructions per second spent under the tracker's hook."""
        return self.instructions / self.elapsed if self.elapsed else 0.0

    # -- the hook --------------------------------------------------------------------------------

    def _decode(self, address: int, size: int) -> Insn:
        code = self.mem.read(address, max(size, 1) if size < 16 else 16)
        cs = next(detail_decoder().disasm(code, address, 1), None)
        if cs is None:  # let the engine raise the fault; no data flow
            return Insn(address, size, "(bad)", ())
        return decode(cs)

    def _reg_value(self, loc: RegLoc | None) -> int:
        if loc is None:
            return 0
        return self._read[loc.name]()

    def _address(self, ins: Insn, op: Op) -> int:
        a = op.disp
        if op.rip_relative:
            a += ins.address + ins.size
        elif op.base is not None:
            a += self._reg_value(op.base)
        if op.index is not None:
            a += self._reg_value(op.index) * op.scale
        if op.segment == "fs":
            a += self._read["fs_base"]()
        elif op.segment == "gs":
            a += self._read["gs_base"]()
        return a & 0xFFFF_FFFF_FFFF_FFFF

    def _report(self, kind: LeakKind, address: int, labels: int, target: int | None = None,
                reach: str = "") -> None:
        labels &= ~IMPLICIT  # no secret's: makes no finding (module doc, Joins)
        if not labels or self.in_scope is not None and not self.in_scope():
            return
        f = self._found.get((kind, address))
        if f is None:
            f = self._found[(kind, address)] = TaintedUse(kind, address, labels, 0, reach=reach)
        f.labels |= labels
        f.count += 1
        if target is not None and len(f.targets) < MAX_TARGETS:
            f.targets.add(target)
        if reach == LINE:
            f.reach = LINE

    def _reach(self, op: Op, address: int) -> str:
        """LINE if the tainted, not-known-zero bits of the address registers can move this
        access (``op`` at ``address``) out of its cache line, else WITHIN_LINE."""
        sh = self.shadow
        lo = hi = address
        for loc, scale in ((op.base, 1), (op.index, op.scale)):
            if loc is None:
                continue
            bits = 0
            for j, t in enumerate(sh.reg(loc)):
                if t:
                    bits |= 0xFF << (8 * j)
            bits &= ~sh.zero_bits(loc)
            if bits:
                value = self._reg_value(loc)
                lo -= (value & bits) * scale  # every varying bit 0 ...
                hi += (bits & ~value) * scale  # ... or 1
        hi += max(op.size, 1) - 1
        return WITHIN_LINE if lo // self.line_size == hi // self.line_size else LINE

    def _on_insn(self, address: int, size: int) -> None:
        t0 = time.perf_counter()
        self.instructions += 1
        if self._open and (address != self._next or address in self._join_at):
            self._meet(address)  # a join, or a transfer (a return): before the record
        ins = self._cache.get(address)
        if ins is None or ins.size != size:
            ins = self._decode(address, size)
            if address not in self._scanned:
                self._scan(address)
            if address != self._next or address in self._leaders:
                self._at_leader(address)  # before it is cached: it has not run yet
            self._cache[address] = ins
        elif address != self._next or address in self._leaders:
            self._at_leader(address)
        self._next = address + size
        sh = self.shadow
        m = ins.mnemonic
        ops = ins.ops
        ea: list[int] = [0] * len(ops)
        via: list[tuple[int, int, int]] = []
        for i in ins.mem_index:
            op = ops[i]
            a = ea[i] = self._address(ins, op)
            if (op.base is not None or op.index is not None) and m not in _NO_ACCESS:
                t = sh.address_taint(op)
                if t:
                    self._report(LeakKind.MEMORY_ACCESS, address, t, a, self._reach(op, a))
                    via.append((a, a + op.size, t))
        extra = self._extra_ea.get(m)
        if extra is not None:
            ea.append(extra())
        elif ins.rep and self._read["rcx"]() == 0:
            self.elapsed += time.perf_counter() - t0
            return  # a rep string instruction with rcx = 0 does nothing
        if self._implicit:
            self._implicit_step(ins, ea, via)
        else:
            if via:
                sh.via = via  # loads of these bytes carry the address's labels
            self._check(ins, ea)
            assert ins.rule is not None
            ins.rule(sh, ins, ea)
            if via:
                sh.via = ()
        if ins.default:
            self.default_counts[m] += 1
        self.elapsed += time.perf_counter() - t0

    # -- register taint at block starts -----------------------------------------------------------

    def _lead(self, address: int) -> None:
        if address not in self._leaders:
            self._leaders.add(address)
            if address in self._cache:  # it ran before it was known to start a block
                self._blind.add(address)

    def _scan(self, address: int) -> None:
        """Decode up to SCAN_BYTES from ``address`` (until code scanned before, or bytes that
        do not decode): each direct branch, call or jump names its target as a leader, and
        a conditional branch or a call the instruction after it."""
        page = address & ~0xFFF
        code = b""
        for end in (address + SCAN_BYTES, page + 0x1000):  # the next page may be unmapped
            try:
                code = self.mem.read(address, end - address)
                break
            except GuestMemoryFault:
                continue
        for cs in strict_decoder().disasm(code, address):
            if cs.address in self._scanned:
                break
            self._scanned.add(cs.address)
            m = cs.mnemonic.rsplit(" ", 1)[-1]  # without bnd or notrack
            if m in _LEADS or m == "jmp":
                if cs.op_str.startswith("0x"):  # else indirect: seen when it runs
                    self._lead(int(cs.op_str, 16))
                if m != "jmp":
                    self._lead(cs.address + cs.size)

    def _at_leader(self, address: int) -> None:
        """Record which GPRs are tainted as the leader at ``address`` is about to run."""
        self._lead(address)
        self._leader_now = address
        self._entry_taint[address] = self._entry_taint.get(address, 0) | self._gpr_mask()

    def _gpr_mask(self) -> int:
        """The ENTRY_REGISTERS with a tainted byte now (bit i: the i-th)."""
        regs = self.shadow.regs
        mask = 0
        if any(regs[:_GPR_BYTES]):
            for bit, start in _ENTRY_BYTES:
                if any(regs[start:start + 8]):
                    mask |= bit
        return mask

    def _branch(self, address: int) -> None:
        """A tainted conditional branch at ``address``: remember its join."""
        rsp = self._read["rsp"]()
        if any(j.branch == address and j.rsp == rsp for j in self._open):
            return  # again before its join (a loop)
        known = self.joins(address) if self.joins is not None else None
        join, regs = known if known is not None else (None, CALLER_SAVED)
        self._open.append(_Join(address, join, rsp, regs))
        self._join_at.add(join)

    def _meet(self, address: int) -> None:
        """Taint the registers of the branches whose paths meet at ``address`` (or have
        returned: RSP above the branch's).  Called at the joins and after transfers (where a
        return lands) only: per other instruction, while a branch is open, one set lookup."""
        rsp = self._read["rsp"]()
        sh = self.shadow
        still = []
        for j in self._open:
            if rsp > j.rsp or (address == j.join and rsp == j.rsp):
                for r in j.regs:
                    sh.set_reg_named(r, [t | IMPLICIT for t in sh.reg_named(r)])
            else:
                still.append(j)
        self._open = still
        self._join_at = {j.join for j in still}

    def block_taint(self) -> tuple[dict[int, int], set[int]]:
        """The GPR taint seen at block starts: address -> mask (bit i: ENTRY_REGISTERS[i]
        was tainted in some execution of it) for the addresses whose every execution was
        recorded, and the addresses that ran without that (their taint is unknown)."""
        known = {a: m for a, m in self._entry_taint.items() if a not in self._blind}
        return known, {a for a in self._cache if a not in known}

    def _check(self, ins: Insn, ea: Sequence[int]) -> None:
        sh, m, address = self.shadow, ins.mnemonic, ins.address
        if m in _JCC:
            if sh.flags:
                self._report(LeakKind.CONTROL_FLOW, address, sh.flags)
                if self.joins is not None:
                    self._branch(address)
                if self.implicit and ins.ops and ins.ops[0].kind == "i":
                    target = ins.ops[0].imm
                    nxt = address + ins.size
                    if self._hammock(nxt, target):
                        rsp = self._read["rsp"]()
                        self._implicit.append(_Implicit(nxt, target, sh.flags, rsp))
        elif m in _RCX_BRANCHES:
            t = union(sh.reg_named("rcx")) | (sh.flags if m in ("loope", "loopne") else 0)
            if t:
                self._report(LeakKind.CONTROL_FLOW, address, t)
        elif m in ("jmp", "call") and ins.ops and ins.ops[0].kind != "i":
            t = union(read_op(sh, ins, ea, 0))
            if t:
                self._report(LeakKind.CONTROL_FLOW, address, t)
        elif m in ("div", "idiv"):
            t = div_inputs(sh, ins, ea)
            if t:
                self._report(LeakKind.VARIABLE_LATENCY, address, t)
        elif m in _BIT_STRING and ins.ops[0].kind == "m" and ins.ops[1].kind == "r":
            t = union(read_op(sh, ins, ea, 1))  # the bit offset moves the access
            if t and not sh.address_taint(ins.ops[0]):
                self._report(LeakKind.MEMORY_ACCESS, address, t, ea[0], LINE)
        elif m in SSE_FLOAT_ARITH:
            t = 0
            for i, op in enumerate(ins.ops):
                if op.read:
                    t |= union(read_op(sh, ins, ea, i))
            if t:
                self._report(LeakKind.VARIABLE_LATENCY, address, t)

    def _hammock(self, start: int, end: int) -> bool:
        """Is [start, end) a simple if-then body: straight-line code or forward branches that
        stay inside it, no call, return, indirect jump or system call (cached)?"""
        key = (start, end)
        ok = self._hammocks.get(key)
        if ok is None:
            ok = start < end <= start + IMPLICIT_SPAN
            if ok:
                code = self.mem.read(start, end - start)
                at = start
                for cs in strict_decoder().disasm(code, start):
                    at = cs.address + cs.size
                    m = cs.mnemonic
                    if m.startswith(("call", "ret", "syscall", "int", "hlt", "ud2")):
                        ok = False
                    elif m.startswith(("j", "loop")):
                        try:
                            target = int(cs.op_str, 16)
                        except ValueError:
                            target = -1
                        ok = start <= target <= end
                    if not ok:
                        break
                ok = ok and at == end
            self._hammocks[key] = ok
        return ok

    def _implicit_step(self, ins: Insn, ea: Sequence[int],
                       via: Sequence[tuple[int, int, int]]) -> None:
        """Apply the rule (with ``via``'s address-to-value taint), then add the labels of the
        enclosing tainted branches to whatever the instruction wrote."""
        rsp = self._read["rsp"]()
        pc = ins.address
        stack = self._implicit
        while stack:
            top = stack[-1]
            if top.start <= pc < top.end or rsp < top.rsp:
                break
            stack.pop()
        self.shadow.via = via
        self._check(ins, ea)  # may open a new region: not applied to the branch itself
        assert ins.rule is not None
        ins.rule(self.shadow, ins, ea)
        self.shadow.via = ()  # stores keep only the region's labels
        labels = 0
        for ctx in stack:
            if ctx.start <= pc < ctx.end or rsp < ctx.rsp:
                labels |= ctx.labels
        if not labels:
            return
        sh = self.shadow
        for i, op in enumerate(ins.ops):
            if op.written:
                if op.kind == "r" and op.reg is not None:
                    sh.set_reg(op.reg, [t | labels for t in sh.reg(op.reg)[:op.reg.size]])
                elif op.kind == "m":
                    a = ea[i]
                    sh.store(a, [t | labels for t in sh.load(a, op.size)])
        for loc in ins.implicit_writes:
            if loc.name not in ("rsp", "esp"):
                sh.set_reg(loc, [t | labels for t in sh.reg(loc)[:loc.size]])
        if ins.writes_flags:
            sh.flags |= labels
        if ins.mnemonic in ("push", "call"):
            a = ea[-1] - 8
            sh.store(a, [t | labels for t in sh.load(a, 8)])

    # -- system calls -----------------------------------------------------------------------------

    def guest_path(self, fd: int) -> str | None:
        """The guest path guest ``fd`` was opened by, if the kernel knows one."""
        fds = getattr(getattr(self._syscall, "kernel", None), "fds", None)
        return None if fds is None else fds.guest_path(fd)

    def _file(self, fd: int) -> tuple[int, int] | None:
        """(device, inode) of the regular file guest ``fd`` refers to, else None."""
        try:
            host = self._syscall.kernel.fds.get(fd).host_fd  # type: ignore[union-attr]
            st = os.fstat(host)
        except (OSError, AttributeError, LookupError):
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None

    def _remember(self, fd: int, labels: list[int], offset: int) -> None:
        """Tainted bytes written to a file keep their taint there (taint through files)."""
        key = self._file(fd)
        if key is None:
            return
        stored = self._files.setdefault(key, {})
        for i, label in enumerate(labels):
            if label:
                stored[offset + i] = label
            else:
                stored.pop(offset + i, None)

    def _read_back(self, fd: int, buf: int, count: int, offset: int) -> None:
        """Bytes read from a file take the taint written there earlier."""
        key = self._file(fd)
        stored = self._files.get(key) if key is not None else None
        if not stored:
            return
        # the file's tainted bytes in range, looked up the cheaper way (a mapping may be
        # far larger than what was ever written with taint)
        hits = ((o, stored[o]) for o in range(offset, offset + count) if o in stored) \
            if count <= len(stored) else \
            ((o, t) for o, t in stored.items() if offset <= o < offset + count)
        for o, label in hits:
            self.shadow.store(buf + o - offset, [label])

    def _position(self, fd: int) -> int:
        """The file offset of guest ``fd`` now (0 when it has none, e.g. a pipe)."""
        try:
            host = self._syscall.kernel.fds.get(fd).host_fd  # type: ignore[union-attr]
            return os.lseek(host, 0, os.SEEK_CUR)
        except (OSError, AttributeError, LookupError):
            return 0

    def _segments(self, vectored: bool, buf: int, count: int) -> list[tuple[int, int]]:
        """The guest buffers of a transfer: (address, length) — one, or an iovec array."""
        if not vectored:
            return [(buf, count)]
        out = []
        for i in range(min(count, MAX_IOVECS)):
            try:
                base, length = struct.unpack("<QQ", self.mem.read(buf + 16 * i, 16))
            except GuestMemoryFault:  # unmapped: the kernel fails the call too
                break
            out.append((base, length))
        return out

    def _on_syscall(self, machine: Machine) -> None:
        """Data that comes from outside is clean — a read's buffers, a fresh mapping, the
        registers the kernel writes (rax, rcx, r11) — except what the program wrote to a
        file earlier with taint and reads back (also through readv/preadv or a mapping of
        the file), and what a read source says is secret."""
        nr = machine.reg("rax")
        fd, buf, count, where = (machine.reg(r) for r in ("rdi", "rsi", "rdx", "r10"))
        sh = self.shadow
        transfer = _TRANSFERS.get(nr)
        segments = self._segments(transfer.vectored, buf, count) if transfer else []
        written: list[int] = []
        clone_flags = fd if nr == SYS_CLONE else self._clone3_flags(fd) if nr == SYS_CLONE3 \
            else 0
        if transfer and not transfer.reads:
            for address, length in segments:
                written += sh.load(address, min(length, MAX_FILE_TAINT - len(written)))
        assert self._syscall is not None
        self._syscall(machine)
        result = machine.reg("rax")
        moved = transfer is not None and 0 < result <= sum(n for _, n in segments)
        if transfer and moved:
            offset = where if transfer.positioned else self._position(fd) - result
            if transfer.reads:
                left = result
                for address, length in segments:
                    n = min(length, left)
                    if n:
                        self._arrived(fd, address, n, offset)
                    offset, left = offset + n, left - n
            elif any(written):
                self._remember(fd, written[:result], offset)
        elif nr == SYS_MMAP and result < 0xFFFF_FFFF_FFFF_F000:
            sh.clear(result, buf)  # rsi: the length
            flags, file_fd, file_offset = (machine.reg(r) for r in ("r10", "r8", "r9"))
            if not flags & MAP_ANONYMOUS and file_fd < 1 << 31:
                self._arrived(file_fd, result, buf, file_offset)
        for name in ("rax", "rcx", "r11"):
            sh.set_reg_named(name, [0] * 8)
        self._thread_made(nr, clone_flags, result)

    def _clone3_flags(self, args: int) -> int:
        try:
            return int(struct.unpack("<Q", self.mem.read(args, 8))[0])
        except GuestMemoryFault:
            return 0

    def _arrived(self, fd: int, address: int, count: int, offset: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` are now at ``address`` (read or mapped):
        clean, but for the taint written to the file earlier and the read sources'."""
        self.shadow.clear(address, count)
        self._read_back(fd, address, count, offset)
        for source in self.read_sources:
            source(fd, address, count, offset)

