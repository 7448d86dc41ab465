"""The guest's live heap allocations, learnt from its allocator calls, and the bounds of the
memory holding an address: what a heap table's hardened code sweeps (docs/passes.md, "Heap
tables"; leakdbt.plugin_api.allocation_bounds).

How allocations are learnt.  The C allocator's entry points (:data:`ALLOCATORS`: ``malloc``,
``calloc``, ``realloc``, ``reallocarray``, ``aligned_alloc``, ``memalign``,
``posix_memalign``, ``valloc``, ``pvalloc``, ``free``) are found by symbol in every module
that defines them — glibc's ``libc.so.6``, or the executable itself when it links a static
copy — and watched through their calling convention only (System V AMD64), not any
allocator's internals:

- at a function's entry, a code hook reads its arguments (RDI, RSI, RDX) and the return
  address at [RSP], and remembers the call under the stack pointer it returns with;
- the return address gets a code hook of its own (once per call site; the engine's
  translation of that address is dropped, in case it was made before the hook); there,
  when RSP matches a remembered call to that site, RAX is the result;
- ``free(p)`` forgets ``p`` at its entry.  Nested calls (a ``calloc`` that calls
  ``malloc``) record the same block twice, which is harmless: a new block replaces any it
  overlaps.

The watch is installed only when it may be needed (:meth:`activate`): from the start of a
run whose contract has a ``table`` region without bounds in its module (the session), and
at the latest when hardened code first asks for bounds.  A region of a library ``dlopen``ed
later, under a contract that gave the table's bounds in another module, would see only
allocations made after that.

Bounds (:meth:`AllocationBounds.bounds`), the first that contains the address of:

1. a live allocation (its requested size, not the allocator's rounded-up one);
2. a sized ELF data object of a loaded module (a table the code reaches through a pointer
   the pass could not trace at translation time, e.g. a ``lea`` hoisted out of the loop);
3. an anonymous mapping the guest made (``mmap``): tables placed in their own mapping, or
   programs whose allocator is not found (stripped static binaries, custom allocators).

Bounds larger than :data:`MAX_TABLE_BYTES`, or none (the stack, unsized module data, the
``brk`` heap outside any allocation), are refused: (0, 0) is returned, the hardened code
then runs the original access, and the refusal is counted per access and reported once on
stderr — that access is not hardened in that execution.

A ``mapped`` query (``.bounds REG, OFF, mapped``) is for the public start of a value-range
span, whose length the hardened code bounds itself: the live allocation holding it, else
the sized ELF data object, else the readable guest mapping holding it (the stack, a
module's segment, any ``mmap``), of any size; only an address in no readable guest mapping
is refused.
"""

from __future__ import annotations

import bisect
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from leakdbt.loader.image import PF_X
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.machine.memory import PAGE, PROT_READ, page_up

MAX_TABLE_BYTES = 0x10000
"""The largest allocation (or mapping) a heap-table lookup sweeps: 64 KiB, 1024 cache lines
(16384 4-byte units) per lookup.  Larger ones are refused at run time."""
ANONYMOUS = "[anon]"  # the label of the guest's anonymous mmap()s (linux.sys_mem)
MASK64 = (1 << 64) - 1

Args = tuple[int, int, int]  # RDI, RSI, RDX at the entry
Word = Callable[[int], int | None]  # reads a guest quadword (None: unreadable)


@dataclass(frozen=True)
class Change:
    """What one returning allocator call did: freed ``freed``, allocated [start, start+size)."""

    freed: int | None = None
    start: int | None = None
    size: int = 0


def _block(start: int | None, size: int) -> Change:
    return Change(None, start, size) if start else Change()  # NULL: nothing allocated


def _malloc(a: Args, ret: int, word: Word) -> Change:
    return _block(ret, a[0])


def _calloc(a: Args, ret: int, word: Word) -> Change:
    return _block(ret, a[0] * a[1])


def _aligned(a: Args, ret: int, word: Word) -> Change:  # aligned_alloc, memalign
    return _block(ret, a[1])


def _pvalloc(a: Args, ret: int, word: Word) -> Change:
    return _block(ret, page_up(a[0]) or PAGE)


def _resize(p: int, size: int, ret: int) -> Change:
    if ret:
        return Change(p or None, ret, size)
    if p and size == 0:
        return Change(p)  # realloc(p, 0) freed p (glibc returns NULL)
    return Change()  # failed: p is unchanged


def _realloc(a: Args, ret: int, word: Word) -> Change:
    return _resize(a[0], a[1], ret)


def _reallocarray(a: Args, ret: int, word: Word) -> Change:
    return _resize(a[0], a[1] * a[2], ret)


def _posix_memalign(a: Args, ret: int, word: Word) -> Change:
    if ret & 0xFFFF_FFFF:  # an errno: nothing allocated
        return Change()
    return _block(word(a[0]), a[2])


ALLOCATORS: dict[str, Callable[[Args, int, Word], Change] | None] = {
    "malloc": _malloc,
    "valloc": _malloc,
    "pvalloc": _pvalloc,
    "calloc": _calloc,
    "realloc": _realloc,
    "reallocarray": _reallocarray,
    "aligned_alloc": _aligned,
    "memalign": _aligned,
    "posix_memalign": _posix_memalign,
    "free": None,  # handled at its entry
}
"""Allocator function → what its return means (its arguments, RAX, a memory reader)."""


class AllocationMap:
    """Live allocations as an interval map: start → size, by start (bisect)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._sizes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, start: int, size: int) -> None:
        """Record [start, start + size); blocks it overlaps are gone (their ``free`` was
        missed, or a nested call recorded them)."""
        end = start + max(size, 1)
        i = bisect.bisect_left(self._starts, start)
        if i > 0 and self._starts[i - 1] + max(self._sizes[self._starts[i - 1]], 1) > start:
            i -= 1
        j = i
        while j < len(self._starts) and self._starts[j] < end:
            del self._sizes[self._starts[j]]
            j += 1
        self._starts[i:j] = [start]
        self._sizes[start] = size

    def remove(self, start: int) -> bool:
        """Forget the block at ``start`` (False: there was none)."""
        if start not in self._sizes:
            return False
        del self._sizes[start]
        del self._starts[bisect.bisect_left(self._starts, start)]
        return True

    def find(self, address: int) -> tuple[int, int] | None:
        """(start, size) of the block containing ``address``, or None."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        start = self._starts[i]
        size = self._sizes[start]
        return (start, size) if address < start + size else None


@dataclass
class SiteReport:
    """How one hardened access got its bounds, per execution."""

    allocation: int = 0
    object: int = 0
    mapping: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> executions


class AllocationBounds:
    """Watches the allocator functions of a run's modules (once :meth:`activate`d) and
    answers :meth:`bounds` for hardened code (leakdbt.dbt.dispatch.BoundsSource)."""

    def __init__(self, machine: Machine, modules: ModuleMap,
                 warn: Callable[[str], object] | None = None,
                 limit: int = MAX_TABLE_BYTES) -> None:
        self.machine = machine
        self.modules = modules
        self.map = AllocationMap()
        self.limit = limit
        self.warn = warn if warn is not None else _stderr
        self.active = False
        self.allocators: list[str] = []  # "module:function" watched
        self.sites: dict[int, SiteReport] = {}
        self._hooked: set[tuple[str, int]] = set()  # (module path, base) already watched
        self._pending: dict[int, tuple[int, str, Args]] = {}  # rsp at return -> call
        self._return_sites: set[int] = set()
        self._warned: set[tuple[int, str]] = set()
        self._rsp = machine.reg_reader("rsp")
        self._args = tuple(machine.reg_reader(r) for r in ("rdi", "rsi", "rdx"))
        self._rax = machine.reg_reader("rax")
        modules.listeners.append(self._on_module)

    # -- learning allocations ---------------------------------------------------------------

    def activate(self) -> None:
        """Start watching the allocator functions (of modules loaded now and later)."""
        if self.active:
            return
        self.active = True
        for mod in self.modules.modules():
            self._on_module(mod)

    def _on_module(self, mod: LoadedModule) -> None:
        image = mod.image
        if not self.active or image is None or (mod.host_path, mod.base) in self._hooked:
            return
        self._hooked.add((mod.host_path, mod.base))
        seen: set[int] = set()
        for name in ALLOCATORS:
            sym = image.symbol(name)
            if sym is None or sym.kind != "func" or not sym.value or sym.value in seen:
                continue
            seg = image.segment_at(sym.value)
            if seg is None or not seg.flags & PF_X:
                continue
            seen.add(sym.value)
            self.allocators.append(f"{mod.name}:{name}")
            self.machine.hooks.at(sym.value + mod.base, self._entry(name))

    def _entry(self, name: str) -> Callable[[int, int], None]:
        if ALLOCATORS[name] is None:  # free
            def on_free(_address: int, _size: int) -> None:
                self.map.remove(self._args[0]())
            return on_free

        def on_entry(_address: int, _size: int) -> None:
            rsp = self._rsp()
            ret = self._word(rsp)
            if ret is None:
                return
            args = (self._args[0](), self._args[1](), self._args[2]())
            self._pending[rsp + 8] = (ret, name, args)
            if ret not in self._return_sites:
                self._return_sites.add(ret)
                self.machine.hooks.at(ret, self._on_return)
                # A translation of the return site made before its hook would not call it.
                self.machine.defer(lambda: self.machine.invalidate_code(ret, ret + 1))
        return on_entry

    def _on_return(self, address: int, _size: int) -> None:
        rsp = self._rsp()
        call = self._pending.get(rsp)
        if call is None or call[0] != address:
            return
        del self._pending[rsp]
        _, name, args = call
        meaning = ALLOCATORS[name]
        assert meaning is not None
        change = meaning(args, self._rax(), self._word)
        if change.freed is not None:
            self.map.remove(change.freed)
        if change.start is not None:
            self.map.add(change.start, change.size & MASK64)

    def _word(self, address: int) -> int | None:
        try:
            return int(struct.unpack("<Q", self.machine.mem.read(address, 8))[0])
        except Exception:  # noqa: BLE001 - an unreadable guest pointer: nothing to learn
            return None

    # -- answering ----------------------------------------------------------------------------

    def bounds(self, address: int, where: int, mapped: bool = False) -> tuple[int, int]:
        """(start, size) of the memory holding ``address`` for the hardened access at
        ``where`` (runtime address of its original instruction), or (0, 0): see the module
        docstring (``mapped``: the start of a value-range span, see there).  The address
        itself (secret-dependent) is never reported."""
        report = self.sites.setdefault(where, SiteReport())
        found, source = self.map.find(address), "allocation"
        if mapped:
            return self._mapped(address, where, report, found)
        if found is None:
            found, source = self._object(address), "object"
        if found is None:
            vma = self.machine.mem.find(address)
            if vma is not None and vma.guest and vma.name == ANONYMOUS:
                found, source = (vma.start, vma.end - vma.start), "mapping"
        if found is None:
            why = ("the address is in no live allocation (allocator functions watched: "
                   f"{len(self.allocators)}), no sized ELF data object and no anonymous "
                   "mapping of the guest")
        elif found[1] > self.limit:
            why = (f"its {source} is {found[1]} bytes, more than the {self.limit}-byte "
                   "cap on a swept table")
        else:
            setattr(report, source, getattr(report, source) + 1)
            return found
        self._refuse(report, where, why)
        return 0, 0

    def _mapped(self, address: int, where: int, report: SiteReport,
                found: tuple[int, int] | None) -> tuple[int, int]:
        """Bounds for the public start of a value-range span: its allocation, else its sized
        ELF data object, else the readable guest mapping holding it, whatever its size (the
        span bounds the scan)."""
        if found is not None:
            report.allocation += 1
            return found
        found = self._object(address)
        if found is not None:
            report.object += 1
            return found
        vma = self.machine.mem.find(address)
        if vma is not None and vma.guest and vma.prot & PROT_READ:
            report.mapping += 1
            return vma.start, vma.end - vma.start
        self._refuse(report, where, "the start of its value-range span is in no readable "
                     "mapping of the guest")
        return 0, 0

    def _refuse(self, report: SiteReport, where: int, why: str) -> None:
        report.refused[why] = report.refused.get(why, 0) + 1
        if (where, why) not in self._warned:
            self._warned.add((where, why))
            self.warn(f"leakdbt: {self.modules.symbolize(where)}: heap-table access not "
                      f"hardened: {why}; it ran its original code")

    def _object(self, address: int) -> tuple[int, int] | None:
        mod = self.modules.find(address)
        if mod is None or mod.image is None:
            return None
        sym = mod.image.object_at(address - mod.base)
        return None if sym is None else (sym.value + mod.base, sym.size)

    def report(self) -> dict[str, object]:
        """Figures for --stats: per hardened access, how often each bound was used."""
        out: dict[str, object] = {}
        for where, r in sorted(self.sites.items()):
            parts = [f"allocation {r.allocation}", f"object {r.object}",
                     f"mapping {r.mapping}"]
            parts += [f"unhardened {n} ({why})" for why, n in sorted(r.refused.items())]
            out[self.modules.symbolize(where)] = ", ".join(parts)
        return out


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
