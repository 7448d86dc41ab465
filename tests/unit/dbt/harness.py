"""Differential execution: run a region's original code and a translation of it from the same
random states on a raw Unicorn engine, and compare what they did.

House rule: a translated block must compute exactly what the original computes.  This module is
the check every translation pass reuses: give it a :class:`Sandbox` (an image), a region and a
``Translation`` and :meth:`RegionCheck.check` reports every state on which the two differ.

Set-up (no leakdbt Machine: nothing of the translator's own runtime is trusted here):

- the image's PT_LOAD segments at their link addresses plus ``bias``, with their permissions
  (no relocations applied: both sides read the same unrelocated data);
- a code cache 256 MiB above the image (in rel32 reach) where translations are placed;
- a stack and a scratch area of random words (a quarter of them pointers into the scratch
  area); ``fs`` points into the scratch area, so thread-local reads see data too;
- random general registers (the argument registers point into the scratch area with
  probability 0.6-0.75, callee-saved ones 0.5, the rest 0.3), arithmetic flags and xmm0-15;
- one page of ``hlt`` whose address is the return address at ``[rsp]``.

Stop rule.  A side stops when control reaches an address outside its code — the region's
original blocks for the original, the copy for the translation (plus the original blocks when
the region has an indirect jump: a jump table in the copy lands in the original's case blocks,
and equivalence then means "copy, then original" computes what the original computes).  Calls
are the exception: a call from the region runs the callee (original code on both sides) and
the side goes on when the callee returns to the call's return site, so code after a call runs
in the copy, as the translator intends.  A side also stops on a fault (at the faulting
instruction), an interrupt, ``syscall``, ``hlt``, after ``MAX_ENTRIES`` entries into region
blocks (counted at block starts on both sides, so both stop at the same block) or after
``MAX_CALLEE_BLOCKS`` engine blocks in callees (the same code on both sides).  The engine's
instruction count is a last safety net; a side that hits it is inconclusive (not compared), and
so is one whose callee overwrote its own return address (the random state made it overflow a
buffer): the copy's return address then sends it elsewhere.

Compared: the stop (kind and ORIGINAL address: copy addresses are mapped back through
``Translation.origin``), the 16 general registers (rip via the stop), CF PF AF ZF SF OF DF
(flags an instruction leaves undefined are deterministic in Unicorn, so all are compared),
xmm0-15, mxcsr, the stack, the scratch area and the image's writable segments.  One difference
is allowed: where the copy's call pushed the copy's return address the original pushed its own,
and a callee may copy that word elsewhere (memcpy from the stack).
"""

from __future__ import annotations

import bisect
import random
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import x86_const as x

from leakdbt.dbt.region import CodeRegion, merge_ranges
from leakdbt.dbt.relocate import Translation
from leakdbt.loader.image import PF_R, PF_W, PF_X, Image
from leakdbt.x86.asm import decode_one
from leakdbt.x86.insn import Flow, Insn

MASK64 = (1 << 64) - 1
PAGE = 0x1000
PIE_BIAS = 0x5555_5555_4000  # where Linux puts a PIE main program (ASLR off)

STACK = 0x7FFE_0000_0000
STACK_SIZE = 0x4000
SCRATCH = 0x7FFD_0000_0000
SCRATCH_SIZE = 0x4000
SENTINEL = 0x7FFC_0000_0000  # a page of hlt: the return address at [rsp]
UNTIL = SENTINEL + 0x800  # the engine's stop address (0 would stop a jump to 0)
CACHE_OFFSET = 0x1000_0000  # code cache: this far above the image's end (in rel32 reach)
CACHE_SIZE = 0x40_0000

MEMORY_POOL = 48  # distinct stack/scratch images
MAX_ENTRIES = 300  # entries into region blocks before both sides stop
MAX_CALLEE_BLOCKS = 5000  # engine blocks run in callees before both sides stop
MAX_INSNS = 1_000_000  # engine cap, a safety net: a side that runs this long is inconclusive

GPRS: tuple[tuple[str, int], ...] = (
    ("rax", x.UC_X86_REG_RAX), ("rbx", x.UC_X86_REG_RBX), ("rcx", x.UC_X86_REG_RCX),
    ("rdx", x.UC_X86_REG_RDX), ("rsi", x.UC_X86_REG_RSI), ("rdi", x.UC_X86_REG_RDI),
    ("rbp", x.UC_X86_REG_RBP), ("rsp", x.UC_X86_REG_RSP), ("r8", x.UC_X86_REG_R8),
    ("r9", x.UC_X86_REG_R9), ("r10", x.UC_X86_REG_R10), ("r11", x.UC_X86_REG_R11),
    ("r12", x.UC_X86_REG_R12), ("r13", x.UC_X86_REG_R13), ("r14", x.UC_X86_REG_R14),
    ("r15", x.UC_X86_REG_R15),
)
XMMS = tuple(getattr(x, f"UC_X86_REG_XMM{i}") for i in range(16))
# CF PF AF ZF SF OF, and DF (string instructions depend on it)
FLAGS_MASK = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800 | 0x400
ARITH_FLAGS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800
# Probability that a register holds a pointer into the scratch area: high for the argument
# registers, medium for callee-saved ones (they carry pointers through function bodies).
POINTER_P = {"rdi": 0.75, "rsi": 0.75, "rdx": 0.6, "rcx": 0.5, "r8": 0.6, "r9": 0.6,
             "rbx": 0.5, "rbp": 0.5, "r12": 0.5, "r13": 0.5, "r14": 0.5, "r15": 0.5,
             "rax": 0.3, "r10": 0.3, "r11": 0.3}
TRAPS = frozenset({1, 3, 4})  # interrupts reported after the instruction (others: at it)
NONDETERMINISTIC = frozenset({"rdtsc", "rdtscp", "rdrand", "rdseed", "rdpid"})
# Callees that keep their return address — a copy's address when called from a copy — in a
# form the comparison cannot map back: setjmp mangles it into the jmp_buf, the unwinder stores
# it minus one to find the call's unwind info (which a copy does not have).
RETURN_ADDRESS_READERS = frozenset({
    "_setjmp", "setjmp", "__sigsetjmp", "sigsetjmp", "__setjmp", "getcontext", "__getcontext",
    "uw_init_context_1", "backtrace", "__backtrace", "_Unwind_Backtrace",
    "_Unwind_RaiseException", "_Unwind_ForcedUnwind", "_Unwind_Resume",
    "_Unwind_Resume_or_Rethrow",
})


# ---------------------------------------------------------------------------------------------
# Random machine states


@dataclass(frozen=True)
class State:
    """Everything a run starts from."""

    gprs: tuple[int, ...]  # in GPRS order
    rflags: int
    xmm: tuple[int, ...]
    stack: bytes
    scratch: bytes


def _pointer(rng: random.Random) -> int:
    offset = SCRATCH_SIZE // 4 + rng.randrange(SCRATCH_SIZE // 2)
    return SCRATCH + (offset & ~7 if rng.random() < 0.8 else offset)


def _value(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.3:
        return rng.getrandbits(64)
    if pick < 0.5:
        return rng.getrandbits(32)
    if pick < 0.75:
        return rng.randrange(0, 64)
    if pick < 0.85:
        return -rng.randrange(1, 64) & MASK64
    return 1 << rng.randrange(64)


def _memory(rng: random.Random, size: int, pointer_base: int, pointer_span: int) -> bytes:
    """Words that are aligned pointers into ``pointer_base + [0, pointer_span)`` (a quarter),
    small numbers (a quarter), 32-bit numbers (an eighth) or random bits."""
    n = size // 8
    words = struct.unpack(f"<{n}Q", rng.randbytes(8 * n))
    kinds = rng.randbytes(n)
    return struct.pack(f"<{n}Q", *[
        w if k < 96 else
        pointer_base + (w % pointer_span & ~7) if k < 160 else
        w & 0xFFFF_FFFF if k < 192 else
        w & 63 if k < 240 else
        -(w & 63) & MASK64
        for w, k in zip(words, kinds, strict=True)])


@cache
def memory_image(index: int) -> tuple[bytes, bytes]:
    """Stack and scratch contents number ``index`` of a fixed pool (generating 32 KiB of
    random words costs more than running most regions, so states share them)."""
    rng = random.Random(f"memory image {index}")
    span = SCRATCH_SIZE // 2
    return (_memory(rng, STACK_SIZE, SCRATCH + span // 2, span),
            _memory(rng, SCRATCH_SIZE, SCRATCH + span // 2, span))


Chooser = Callable[[random.Random], int]


def random_state(rng: random.Random, choose: dict[str, Chooser] | None = None) -> State:
    """A state whose pointer-like registers mostly point into mapped scratch memory;
    ``choose`` draws the named registers instead (e.g. a switch index in range)."""
    gprs = []
    for name, _ in GPRS:
        if choose and name in choose:
            gprs.append(choose[name](rng) & MASK64)
        elif name == "rsp":
            # At a function entry (8 mod 16) or inside a body (16-aligned).
            gprs.append(STACK + STACK_SIZE // 2 - rng.choice((0, 8)))
        elif rng.random() < POINTER_P[name]:
            gprs.append(_pointer(rng))
        else:
            gprs.append(_value(rng))
    flags = 0x2
    for bit in (0, 2, 4, 6, 7, 11):
        if rng.random() < 0.5:
            flags |= 1 << bit
    xmm = tuple(rng.getrandbits(128) for _ in XMMS)
    stack_image, scratch = memory_image(rng.randrange(MEMORY_POOL))
    stack = bytearray(stack_image)
    top = gprs[7] - STACK
    stack[top:top + 8] = SENTINEL.to_bytes(8, "little")
    return State(tuple(gprs), flags, xmm, bytes(stack), scratch)


# ---------------------------------------------------------------------------------------------
# Outcomes


@dataclass(repr=False)  # the memory images are too big to print
class Outcome:
    """Where a side stopped and the machine state it left."""

    kind: str  # exit, cap, fault:<error>, interrupt:<n>, syscall, halt, insn-cap, smashed-return
    address: int  # ORIGINAL runtime address (copy addresses mapped back)
    gprs: tuple[int, ...]
    rflags: int
    xmm: tuple[int, ...]
    mxcsr: int
    memory: dict[str, bytes]
    entries: int  # entries into region blocks
    reentries: int = 0  # copy side: entries into original region code (indirect jumps)
    raw_address: int = 0  # the address as the side saw it

    @property
    def conclusive(self) -> bool:
        return self.kind not in ("insn-cap", "smashed-return")

    def __repr__(self) -> str:
        return f"Outcome({describe(self)})"


def describe(a: Outcome) -> str:
    return f"{a.kind} at {a.address:#x} after {a.entries} block entries"


def differences(orig: Outcome, copy: Outcome, return_map: dict[int, int]) -> list[str]:
    """What differs between the two outcomes (empty: the same).

    A copy's call pushes the copy's return address where the original pushes its own, and a
    callee may copy that word around (memcpy from the stack); ``return_map`` (copy return
    address -> original) says which values stand for each other.
    """
    out: list[str] = []
    if (orig.kind, orig.address) != (copy.kind, copy.address):
        out.append(f"stop: original {describe(orig)}, copy {describe(copy)} "
                   f"(copy address {copy.raw_address:#x})")
    for (name, _), a, b in zip(GPRS, orig.gprs, copy.gprs, strict=True):
        if a != b and return_map.get(b) != a:
            out.append(f"{name}: {a:#x} != {b:#x}")
    if orig.rflags != copy.rflags:
        out.append(f"rflags: {orig.rflags:#x} != {copy.rflags:#x}")
    for i, (xa, xb) in enumerate(zip(orig.xmm, copy.xmm, strict=True)):
        va, vb = xa.to_bytes(16, "little"), xb.to_bytes(16, "little")
        if va != vb and _normalised(va, vb, return_map) != va:
            out.append(f"xmm{i}: {xa:#x} != {xb:#x}")
    if orig.mxcsr != copy.mxcsr:
        out.append(f"mxcsr: {orig.mxcsr:#x} != {copy.mxcsr:#x}")
    for area, ma in orig.memory.items():
        mb = copy.memory[area]
        if ma != mb:
            mb = _normalised(ma, mb, return_map)
        if ma != mb:
            first = next(i for i in range(len(ma)) if ma[i] != mb[i])
            count = sum(1 for i in range(0, len(ma), 8) if ma[i:i + 8] != mb[i:i + 8])
            word = slice(first & ~7, (first & ~7) + 8)
            out.append(f"{area}: {count} words differ, first byte at +{first:#x}: "
                       f"{ma[word].hex()} != {mb[word].hex()}")
    return out


def _normalised(a: bytes, b: bytes, return_map: dict[int, int]) -> bytes:
    """``b`` with each copy return address replaced where ``a`` has the original's."""
    out = bytearray(b)
    for copy_ret, orig_ret in return_map.items():
        cv, ov = copy_ret.to_bytes(8, "little"), orig_ret.to_bytes(8, "little")
        at = out.find(cv)
        while at >= 0:
            if a[at:at + 8] == ov:
                out[at:at + 8] = ov
            at = out.find(cv, at + 1)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# The engine


def _prot(flags: int) -> int:
    return ((UC_PROT_READ if flags & PF_R else 0) | (UC_PROT_WRITE if flags & PF_W else 0)
            | (UC_PROT_EXEC if flags & PF_X else 0))


@dataclass
class _Run:
    """What the hooks need to know about the run in progress."""

    copy_side: bool
    inside: Callable[[int], bool]
    return_sites: frozenset[int]
    call_targets: frozenset[int]  # direct call targets that are region code themselves
    max_entries: int
    frames: list[tuple[int, int]] = field(default_factory=list)  # (return address, rsp)
    entries: int = 0
    callee_blocks: int = 0
    reentries: int = 0
    stop: tuple[str, int] | None = None


class Sandbox:
    """A raw Unicorn engine holding one image at ``bias``, plus stack, scratch and code cache."""

    def __init__(self, image: Image, bias: int = 0) -> None:
        self.image = image
        self.bias = bias
        # Any: the binding's class is chosen at run time and its stubs lack the batch calls
        self.uc: Any = Uc(UC_ARCH_X86, UC_MODE_64)
        uc = self.uc
        pages: dict[int, int] = {}
        for seg in image.segments:
            lo = (seg.vaddr + bias) & ~(PAGE - 1)
            hi = (seg.vaddr + bias + seg.memsz + PAGE - 1) & ~(PAGE - 1)
            for p in range(lo, hi, PAGE):
                pages[p] = pages.get(p, 0) | _prot(seg.flags)
        for start, size, prot in _runs(pages):
            uc.mem_map(start, size, prot)
        self.writable: list[tuple[int, bytes]] = []
        for seg in image.segments:
            data = image.read(seg.vaddr, seg.filesz).ljust(seg.memsz, b"\0")
            uc.mem_write(seg.vaddr + bias, data)
            if seg.flags & PF_W:
                self.writable.append((seg.vaddr + bias, data))
        uc.mem_map(STACK, STACK_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(SCRATCH, SCRATCH_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mem_map(SENTINEL, PAGE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_write(SENTINEL, b"\xf4" * PAGE)
        self.cache = (image.high + bias + CACHE_OFFSET) & ~(PAGE - 1)
        uc.mem_map(self.cache, CACHE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        self._free = self.cache
        self.run: _Run | None = None
        # A fresh CPU: an exception that a hook stopped at stays "in flight" in the engine
        # (QEMU's old_exception), and the next #DE would then be reported as a double fault.
        self.clean = uc.context_save()
        uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x.UC_X86_INS_SYSCALL)

    # -- code cache ----------------------------------------------------------------------------

    def place(self, size: int) -> int:
        """An address for ``size`` bytes of translated code (the ``place`` of ``relocate``)."""
        if self._free + size + 64 > self.cache + CACHE_SIZE:
            self.uc.mem_write(self.cache, b"\xcc" * (self._free - self.cache))
            self.uc.ctl_remove_cache(self.cache, self.cache + CACHE_SIZE)
            self._free = self.cache
        at = self._free
        self._free = (at + size + 64 + 15) & ~15
        return at

    def install(self, t: Translation) -> None:
        """Write a translation's code (followed by int3s) to its place in the cache."""
        assert self.cache <= t.base and t.end + 16 <= self.cache + CACHE_SIZE
        self.uc.mem_write(t.base, t.code + b"\xcc" * 16)
        self.uc.ctl_remove_cache(t.base, t.end + 16)

    # -- hooks ---------------------------------------------------------------------------------

    def _finish(self, run: _Run, kind: str, address: int) -> None:
        if run.stop is None:
            run.stop = (kind, address)
        self.uc.emu_stop()

    def _on_block(self, uc: Uc, address: int, size: int, _: Any) -> None:
        run = self.run
        if run is None or run.stop is not None:
            return
        if run.frames:
            ret, rsp = run.frames[-1]
            if address != ret or uc.reg_read(x.UC_X86_REG_RSP) != rsp:
                # Inside a callee: the same original code on both sides, so the engine's
                # blocks are the same and counting them caps both sides alike.
                run.callee_blocks += 1
                if run.callee_blocks > MAX_CALLEE_BLOCKS:
                    self._finish(run, "cap", address)
                return
            run.frames.pop()
        if run.inside(address) and address not in run.call_targets:
            return
        rsp = uc.reg_read(x.UC_X86_REG_RSP)
        try:
            top = int.from_bytes(uc.mem_read(rsp, 8), "little")
        except UcError:
            top = None
        if top in run.return_sites:
            run.frames.append((top, rsp + 8))  # a call from the region: let the callee run
        elif not run.inside(address):
            self._finish(run, "exit", address)

    def _on_block_start(self, uc: Uc, address: int, size: int, _: Any) -> None:
        run = self.run
        if run is None or run.stop is not None or run.frames:
            return
        run.entries += 1
        if run.entries > run.max_entries:
            self._finish(run, "cap", address)

    def _on_original_start(self, uc: Uc, address: int, size: int, _: Any) -> None:
        run = self.run
        if run is None or run.stop is not None or run.frames:
            return
        if run.copy_side:
            if not run.inside(address):
                return  # the block hook stops there
            run.reentries += 1
        self._on_block_start(uc, address, size, None)

    def _on_exit_address(self, uc: Uc, address: int, size: int, _: Any) -> None:
        # Fall-through out of the region: the engine's block may run on past it.
        run = self.run
        if run is None or run.stop is not None or run.frames or run.inside(address):
            return
        self._finish(run, "exit", address)

    def _on_interrupt(self, uc: Uc, number: int, _: Any) -> None:
        if self.run is not None:
            self._finish(self.run, f"interrupt:{number}", uc.reg_read(x.UC_X86_REG_RIP))

    def _on_syscall(self, uc: Uc, _: Any) -> None:
        if self.run is not None:
            self._finish(self.run, "syscall", uc.reg_read(x.UC_X86_REG_RIP))

    # -- running -------------------------------------------------------------------------------

    def load(self, state: State) -> None:
        uc = self.uc
        uc.context_restore(self.clean)
        uc.reg_write_batch([
            *((reg, value) for (_, reg), value in zip(GPRS, state.gprs, strict=True)),
            (x.UC_X86_REG_RFLAGS, state.rflags),
            *zip(XMMS, state.xmm, strict=True),
            (x.UC_X86_REG_MXCSR, 0x1F80),
            (x.UC_X86_REG_FS_BASE, SCRATCH + SCRATCH_SIZE // 2),
            (x.UC_X86_REG_GS_BASE, 0),
        ])
        uc.mem_write(STACK, state.stack)
        uc.mem_write(SCRATCH, state.scratch)
        for address, data in self.writable:
            uc.mem_write(address, data)

    def execute(self, start: int, run: _Run, state: State) -> tuple[str, int, dict[str, Any]]:
        """Run from ``start`` on ``state``: (stop kind, address as seen, final state)."""
        uc = self.uc
        self.load(state)
        self.run = run
        try:
            uc.emu_start(start, UNTIL, count=MAX_INSNS)
        except UcError as e:
            if run.stop is None:
                run.stop = (f"fault:{e.errno}", uc.reg_read(x.UC_X86_REG_RIP))
        finally:
            self.run = None
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        if run.stop is None and rip == UNTIL:
            run.stop = ("exit", rip)
        if run.stop is None:
            try:
                halted = uc.mem_read(rip - 1, 1) == b"\xf4"
            except UcError:
                halted = False
            run.stop = ("halt", rip) if halted else ("insn-cap", rip)
        for ret, rsp in run.frames:
            # A callee that overwrote its own return address (random sizes make string code
            # overflow its buffers) mixes it into what it computes: the copy's return address
            # then leads elsewhere than the original's, which no mapping can undo.
            try:
                slot = int.from_bytes(uc.mem_read(rsp - 8, 8), "little")
            except UcError:
                slot = None
            if slot != ret:
                run.stop = ("smashed-return", run.stop[1])
        regs = uc.reg_read_batch([*(r for _, r in GPRS), x.UC_X86_REG_RFLAGS,
                                  x.UC_X86_REG_MXCSR, *XMMS])
        final = {
            "gprs": regs[:16],
            "rflags": regs[16] & FLAGS_MASK,
            "mxcsr": regs[17],
            "xmm": regs[18:],
            "memory": {"stack": bytes(uc.mem_read(STACK, STACK_SIZE)),
                       "scratch": bytes(uc.mem_read(SCRATCH, SCRATCH_SIZE)),
                       **{f"data@{a:#x}": bytes(uc.mem_read(a, len(d)))
                          for a, d in self.writable}},
        }
        return run.stop[0], run.stop[1], final


def _runs(pages: dict[int, int]) -> Iterable[tuple[int, int, int]]:
    """Maximal runs of consecutive pages with equal protection: (start, size, prot)."""
    start = size = prot = 0
    for p in sorted(pages):
        if size and p == start + size and pages[p] == prot:
            size += PAGE
            continue
        if size:
            yield start, size, prot
        start, size, prot = p, PAGE, pages[p]
    if size:
        yield start, size, prot


# ---------------------------------------------------------------------------------------------
# Comparing a region with its translation


class _Ranges:
    """Membership in a set of [lo, hi) ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged = merge_ranges(ranges)
        self.lows = [lo for lo, _ in merged]
        self.highs = [hi for _, hi in merged]

    def __call__(self, address: int) -> bool:
        i = bisect.bisect_right(self.lows, address) - 1
        return i >= 0 and address < self.highs[i]


@dataclass
class Mismatch:
    seed: str
    problems: list[str]
    original: Outcome
    copy: Outcome

    def __repr__(self) -> str:
        return f"Mismatch({self})"

    def __str__(self) -> str:
        return (f"state {self.seed}: original {describe(self.original)}, copy "
                f"{describe(self.copy)}: " + "; ".join(self.problems[:6]))


@dataclass
class Report:
    """Results of one region's differential runs."""

    region: str
    compared: int = 0
    inconclusive: int = 0
    stops: dict[str, int] = field(default_factory=dict)  # original stop kinds
    reentries: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)


class RegionCheck:
    """A region and its translation, ready to be run from many states::

        sandbox = Sandbox(image, bias)
        t = my_pass(region, bias, sandbox.place)   # any translation of the region
        with RegionCheck(sandbox, region, t) as check:
            report = check.check(f"{region.name}:{i}" for i in range(30))
        assert not report.mismatches
    """

    def __init__(self, sandbox: Sandbox, region: CodeRegion, translation: Translation,
                 *, scratch_below_red_zone: bool = False, flags: int = FLAGS_MASK,
                 dead_below: int = 128) -> None:
        """``scratch_below_red_zone``: the translation may use the stack below the red zone
        (hardened sequences do), so stack bytes more than ``dead_below`` (128) below RSP are
        not compared (0 for a region that calls: a call clobbers the red zone itself);
        ``flags``: the RFLAGS bits compared (a pass may leave undefined flags different)."""
        self.sandbox = sandbox
        self.scratch_below_red_zone = scratch_below_red_zone
        self.dead_below = dead_below
        self.flags = flags
        self.region = region
        self.t = translation
        bias = sandbox.bias
        blocks = region.block_list()
        self.insns: dict[int, Insn] = {i.address + bias: i for b in blocks for i in b.insns}
        starts = {b.start + bias for b in blocks}
        self.original_inside = _Ranges((lo + bias, hi + bias) for lo, hi in region.byte_ranges)
        copy_only = _Ranges([(translation.base, translation.end)])
        self.allow_reentry = any(b.last.flow is Flow.INDIRECT_JUMP or b.dead_end
                                 for b in blocks)
        if self.allow_reentry:
            # A jump-table jump in the copy lands in the original's case blocks, a dead end's
            # exit at the original call that does not return; from there the original runs
            # (equivalence then means: copy prefix + original rest = original).
            orig = self.original_inside
            self.copy_inside: Callable[[int], bool] = lambda a: copy_only(a) or orig(a)
        else:
            self.copy_inside = copy_only
        self.call_targets = frozenset(i.target + bias for i in self.insns.values()
                                      if i.flow is Flow.CALL and i.target is not None
                                      and self.original_inside(i.target + bias))
        self.original_returns = frozenset(a + i.size for a, i in self.insns.items()
                                          if i.flow in (Flow.CALL, Flow.INDIRECT_CALL))
        # Copy addresses after each copied call -> the original return address; and after any
        # copied instruction -> the original's next (traps report the address after).
        self.return_map: dict[int, int] = {}
        self.after: dict[int, int] = {}
        for at, orig_at in translation.origin.items():
            insn = self.insns.get(orig_at)
            if insn is None:
                continue  # an instruction of a callee's clone (plugins/support/clone.py)
            copied = decode_one(translation.code[at - translation.base:], at)
            assert copied is not None, f"undecodable copy at {at:#x}"
            self.after[at + copied.size] = orig_at + insn.size
            if insn.flow in (Flow.CALL, Flow.INDIRECT_CALL):
                self.return_map[at + copied.size] = orig_at + insn.size
        self.exits = sorted({b.end + bias for b in blocks
                             if b.last.flow in (Flow.NEXT, Flow.BRANCH, Flow.CALL,
                                                Flow.INDIRECT_CALL)
                             and not self.original_inside(b.end + bias)})
        self.starts = sorted(starts)
        self.hooks: list[int] = []

    def __enter__(self) -> RegionCheck:
        sb, uc = self.sandbox, self.sandbox.uc
        sb.install(self.t)
        for a in self.starts:
            self.hooks.append(uc.hook_add(UC_HOOK_CODE, sb._on_original_start, None, a, a))
        for a in self.t.blocks:
            self.hooks.append(uc.hook_add(UC_HOOK_CODE, sb._on_block_start, None, a, a))
        for a in [*self.exits, self.t.end]:
            self.hooks.append(uc.hook_add(UC_HOOK_CODE, sb._on_exit_address, None, a, a))
        uc.ctl_flush_tb()  # code hooks apply to blocks translated from now on
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.hooks:
            self.sandbox.uc.hook_del(h)
        self.hooks.clear()
        self.sandbox.uc.ctl_flush_tb()

    def to_original(self, kind: str, address: int) -> int:
        """A stop address of the copy side as the original address it stands for."""
        t = self.t
        if not t.base <= address < t.end + 16:
            return address
        trap = kind == "halt" or (kind.startswith("interrupt:")
                                  and int(kind.split(":")[1]) in TRAPS)
        if trap and address in self.after:
            return self.after[address]
        if address in t.origin:
            return t.origin[address]
        return -1  # inside the copy, at no instruction that stands for an original one

    def outcome(self, side_copy: bool, state: State) -> Outcome:
        sb = self.sandbox
        if side_copy:
            # Re-entered original code calls as the original does (a dead end's call).
            returns = frozenset(self.return_map) | (self.original_returns
                                                    if self.allow_reentry else frozenset())
            run = _Run(True, self.copy_inside, returns, self.call_targets, MAX_ENTRIES)
            start = self.t.entry
        else:
            run = _Run(False, self.original_inside, self.original_returns, self.call_targets,
                       MAX_ENTRIES)
            start = self.region.entry + sb.bias
        kind, raw, final = sb.execute(start, run, state)
        address = self.to_original(kind, raw) if side_copy else raw
        return Outcome(kind, address, final["gprs"], final["rflags"], final["xmm"],
                       final["mxcsr"], final["memory"], run.entries, run.reentries, raw)

    def check(self, seeds: Iterable[str], choose: dict[str, Chooser] | None = None) -> Report:
        """Run both sides from the state each seed makes (see :func:`random_state`)."""
        return self.compare((seed, random_state(random.Random(seed), choose)) for seed in seeds)

    def compare(self, states: Iterable[tuple[str, State]]) -> Report:
        """Run both sides from each (name, state) and compare what they leave."""
        report = Report(self.region.name)
        for seed, state in states:
            orig = self.outcome(False, state)
            copy = self.outcome(True, state)
            report.stops[orig.kind] = report.stops.get(orig.kind, 0) + 1
            report.reentries += copy.reentries
            if not (orig.conclusive and copy.conclusive):
                report.inconclusive += 1
                continue
            report.compared += 1
            if self.scratch_below_red_zone:
                low = min(state.gprs[7], orig.gprs[7]) - self.dead_below - STACK
                for side in (orig, copy):
                    stack = side.memory["stack"]
                    if low > 0:
                        side.memory["stack"] = bytes(min(low, len(stack))) + stack[low:]
            orig.rflags &= self.flags
            copy.rflags &= self.flags
            problems = differences(orig, copy, self.return_map)
            if problems:
                report.mismatches.append(Mismatch(seed, problems, orig, copy))
        return report


def nondeterministic(region: CodeRegion) -> bool:
    """Does the region read a clock or random source (the two runs would differ)?"""
    return any(i.mnemonic in NONDETERMINISTIC for b in region.block_list() for i in b.insns)


def calls_return_address_reader(region: CodeRegion, image: Image) -> bool:
    """Does the region call a function that keeps its return address in a form the
    comparison cannot map (see ``RETURN_ADDRESS_READERS``)?"""
    for block in region.block_list():
        target = block.call_target
        if target is not None and (image.symbolize(target) or "") in RETURN_ADDRESS_READERS:
            return True
    return False


def comparable(region: CodeRegion, image: Image) -> bool:
    """Can the harness judge this region's translation (see the two predicates above)?"""
    return not nondeterministic(region) and not calls_return_address_reader(region, image)


# ---------------------------------------------------------------------------------------------
# Test programs written by the tests themselves

BUILD_FLAGS = {
    "static": ["-static", "-no-pie"],
    "static-pie": ["-static-pie", "-fPIE"],
}


def compile_program(directory: Path, name: str, sources: dict[str, str], kind: str,
                    extra: Sequence[str] = ()) -> Path:
    """Write ``sources`` (file name -> text) to ``directory`` and link them with gcc -O2 into
    ``directory/name-kind`` (kind: static or static-pie)."""
    paths = []
    for file, text in sources.items():
        path = directory / file
        if not path.exists():
            path.write_text(text)
        paths.append(str(path))
    out = directory / f"{name}-{kind}"
    subprocess.run(["gcc", "-O2", "-g0", *BUILD_FLAGS[kind], *extra, "-o", str(out), *paths],
                   check=True, capture_output=True)
    return out


def nm_symbols(path: Path) -> dict[str, int]:
    """Every symbol nm lists with an address (labels of .S files included), by name."""
    out = subprocess.run(["nm", str(path)], check=True, capture_output=True, text=True).stdout
    symbols: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols.setdefault(parts[2], int(parts[0], 16))
    return symbols
