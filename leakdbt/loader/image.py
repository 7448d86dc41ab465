"""What the loader sees in an ELF file: a pure description, never touching the emulator.

Addresses in an :class:`Image` are link-time virtual addresses (for a PIE or shared object they
start near 0); whoever maps the image adds the load bias.
"""

from __future__ import annotations

import bisect
import enum
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar, overload

PF_X = 1
PF_W = 2
PF_R = 4


class ElfKind(enum.Enum):
    """How the file is meant to be started."""

    STATIC = "static"  # ET_EXEC without PT_INTERP
    STATIC_PIE = "static-pie"  # ET_DYN without PT_INTERP, with an entry point
    DYNAMIC = "dynamic"  # PT_INTERP present (ET_EXEC or ET_DYN)
    SHARED = "shared-object"  # ET_DYN library (no interpreter, loaded by ld.so)


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int
    align: int

    @property
    def end(self) -> int:
        """First address after the segment's memory image."""
        return self.vaddr + self.memsz

    @property
    def perms(self) -> str:
        """The flags as ``rwx`` letters (``-`` for absent), as /proc/PID/maps shows them."""
        return (
            ("r" if self.flags & PF_R else "-")
            + ("w" if self.flags & PF_W else "-")
            + ("x" if self.flags & PF_X else "-")
        )


@dataclass(frozen=True)
class Symbol:
    """A named function or object from .symtab or .dynsym."""

    name: str
    value: int
    size: int
    kind: str  # "func", "object" or "tls" (value is then an offset in the TLS block)


SymbolSource = tuple[Symbol, ...] | Callable[[], tuple[Symbol, ...]]


class _LazySymbols:
    """Data descriptor for ``Image.symbols``: a tuple, or a parser run once on first access.

    Symbol tables of big libraries are slow to decode in Python, and most runs never need them,
    so the loader hands over a callable instead of the decoded tuple.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}_source"

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _LazySymbols: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> tuple[Symbol, ...]: ...

    def __get__(
        self, obj: object | None, objtype: type | None = None
    ) -> _LazySymbols | tuple[Symbol, ...]:
        if obj is None:
            # Class access: raising tells the dataclass machinery the field has no default.
            raise AttributeError("symbols")
        source: SymbolSource = obj.__dict__[self._slot]
        if callable(source):
            source = tuple(source())
            obj.__dict__[self._slot] = source
        return source

    def __set__(self, obj: object, value: SymbolSource) -> None:
        obj.__dict__[self._slot] = value


@dataclass(frozen=True, repr=False)
class Image:
    """A parsed x86-64 ELF file.

    ``symbols`` may be given as a tuple or as a zero-argument callable returning one; the
    callable runs on first access.  ``warnings`` lists problems that did not stop loading
    (typically corrupt section headers, which Linux ignores but which cost us the symbols).
    """

    path: str
    kind: ElfKind
    is_pie: bool  # ET_DYN: must be relocated by a load bias
    entry: int
    phoff: int
    phentsize: int
    phnum: int
    segments: tuple[Segment, ...]
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None
    symbols: _LazySymbols = _LazySymbols()
    has_symtab: bool = False
    has_dwarf_lines: bool = False
    data: bytes = b""
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Image(path={self.path!r}, kind={self.kind.value}, entry={self.entry:#x}, "
            f"segments={len(self.segments)}, interpreter={self.interpreter!r})"
        )

    @property
    def low(self) -> int:
        """Lowest page-aligned address of the loaded image."""
        return min(s.vaddr for s in self.segments) & ~0xFFF

    @property
    def high(self) -> int:
        """End of the loaded image, page-aligned."""
        return (max(s.end for s in self.segments) + 0xFFF) & ~0xFFF

    @cached_property
    def functions(self) -> tuple[Symbol, ...]:
        """Function symbols with a non-zero address, sorted by address, one per address."""
        seen: dict[int, Symbol] = {}
        for s in self.symbols:
            if s.kind != "func" or not s.value:
                continue
            old = seen.get(s.value)
            if old is None or old.size < s.size:
                seen[s.value] = s
        return tuple(sorted(seen.values(), key=lambda s: s.value))

    def extent(self, func: Symbol) -> tuple[int, int]:
        """[start, end) of a function; an unsized one runs to the next function symbol."""
        if func.size:
            return func.value, func.value + func.size
        seg = self.segment_at(func.value)
        end = seg.vaddr + seg.filesz if seg else func.value + 1
        later = [f.value for f in self.functions if func.value < f.value < end]
        return func.value, min(later, default=end)

    def function_containing(self, address: int) -> Symbol | None:
        """The function symbol whose extent holds link-time ``address`` (symbols only: the
        ``sub_ADDR`` functions of a stripped binary are leakdbt.loader.functions')."""
        funcs = self.functions
        i = bisect.bisect_right(self._function_starts, address) - 1
        if i < 0:
            return None
        lo, hi = self.extent(funcs[i])
        return funcs[i] if lo <= address < hi else None

    @cached_property
    def _function_starts(self) -> list[int]:
        return [f.value for f in self.functions]

    def segment_at(self, address: int) -> Segment | None:
        """The segment whose file-backed part holds link-time ``address``."""
        return next((s for s in self.segments if s.vaddr <= address < s.vaddr + s.filesz),
                    None)

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of the file image at link-time ``address`` (clipped to its segment)."""
        seg = self.segment_at(address)
        if seg is None:
            return b""
        size = min(size, seg.vaddr + seg.filesz - address)
        offset = seg.offset + (address - seg.vaddr)
        if self.data:
            return bytes(self.data[offset:offset + size])
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    @cached_property
    def _by_address(self) -> tuple[list[int], list[Symbol]]:
        # TLS symbol values are offsets into the TLS block, not addresses.
        syms = sorted(
            (s for s in self.symbols if s.value and s.kind != "tls"),
            key=lambda s: (s.value, -s.size),
        )
        return [s.value for s in syms], syms

    @cached_property
    def _by_name(self) -> dict[str, Symbol]:
        best: dict[str, Symbol] = {}
        for s in self.symbols:
            old = best.get(s.name)
            if old is None or _preference(s) < _preference(old):
                best[s.name] = s
        return best

    def object_at(self, address: int) -> Symbol | None:
        """The sized data symbol (an ELF object) that contains link-time ``address``."""
        addrs, syms = self._by_address
        i = bisect.bisect_right(addrs, address) - 1
        for j in range(i, max(i - 8, -1), -1):
            s = syms[j]
            if s.kind == "object" and s.value <= address < s.value + s.size:
                return s
        return None

    def functions_at(self, address: int) -> tuple[str, ...]:
        """The names of the function symbols at link-time ``address`` (aliases included)."""
        addrs, syms = self._by_address
        lo, hi = bisect.bisect_left(addrs, address), bisect.bisect_right(addrs, address)
        return tuple(s.name for s in syms[lo:hi] if s.kind == "func")

    def symbol(self, name: str) -> Symbol | None:
        """The symbol called ``name`` (functions preferred), or None."""
        return self._by_name.get(name)

    def symbolize(self, address: int) -> str | None:
        """``symbol+0xOFF`` for a link-time address inside a known symbol, else None.

        A sized symbol must contain the address; an unsized one (common in hand-written
        assembly) is accepted when it is the nearest symbol below the address.
        """
        addrs, syms = self._by_address
        i = bisect.bisect_right(addrs, address) - 1
        # Look back over a few neighbours: sizes may overlap (aliases, nested labels).
        for j in range(i, max(i - 8, -1), -1):
            s = syms[j]
            if address < s.value + s.size or (s.size == 0 and j == i):
                off = address - s.value
                return f"{s.name}+{off:#x}" if off else s.name
        return None


def _preference(s: Symbol) -> tuple[Any, ...]:
    """Sort key choosing among same-named symbols: functions first, then defined addresses."""
    return (s.kind != "func", s.value == 0)


_T = TypeVar("_T")


def per_image(fn: Callable[[Image], _T]) -> Callable[[Image], _T]:
    """Cache ``fn(image)`` for as long as that Image object lives.

    Keyed by identity: hashing an Image would hash its whole symbol table on every call.
    """
    results: dict[int, _T] = {}

    @functools.wraps(fn)
    def cached(image: Image) -> _T:
        key = id(image)
        if key not in results:
            results[key] = fn(image)
            weakref.finalize(image, results.pop, key, None)
        return results[key]

    return cached
