"""What the loader sees in an ELF file: a pure description, never touching the emulator.

Addresses in an :class:`Image` are link-time virtual addresses (for a PIE or shared object they
start near 0); whoever maps the image adds the load bias.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from functools import cached_property

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
        return self.vaddr + self.memsz


@dataclass(frozen=True)
class Symbol:
    """A named function or object from .symtab or .dynsym."""

    name: str
    value: int
    size: int
    kind: str  # "func" or "object"


@dataclass(frozen=True)
class Image:
    """A parsed x86-64 ELF file."""

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
    symbols: tuple[Symbol, ...]
    has_symtab: bool
    has_dwarf_lines: bool
    data: bytes = field(repr=False)

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
            if s.kind == "func" and s.value and (s.value not in seen or seen[s.value].size < s.size):
                seen[s.value] = s
        return tuple(sorted(seen.values(), key=lambda s: s.value))

    @cached_property
    def _by_address(self) -> tuple[list[int], list[Symbol]]:
        syms = sorted((s for s in self.symbols if s.value), key=lambda s: (s.value, -s.size))
        return [s.value for s in syms], syms

    def symbol(self, name: str) -> Symbol | None:
        """The symbol called ``name`` (functions preferred), or None."""
        found = [s for s in self.symbols if s.name == name]
        found.sort(key=lambda s: (s.kind != "func", s.value == 0))
        return found[0] if found else None

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
