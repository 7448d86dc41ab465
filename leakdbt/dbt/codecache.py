"""The code cache: guest memory that holds translated code, near the code it came from.

Copies keep RIP-relative operands and rel32 jumps back to their module, so each copy is
placed within 2 GiB of its module.  Chunks are mapped read+execute, pinned (the guest cannot
unmap or change them), and filled once: a byte of the cache is written before anything runs
there and never changes afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from leakdbt.machine.memory import PROT_EXEC, PROT_READ, AddressSpace, page_up

CHUNK = 1 << 20
REACH = (1 << 31) - (1 << 24)  # a chunk within this distance of a module reaches all of it


@dataclass
class _Chunk:
    start: int
    end: int
    used: int = 0


class CodeCache:
    """Bump allocator over pinned chunks of guest memory."""

    def __init__(self, mem: AddressSpace) -> None:
        self.mem = mem
        self.chunks: list[_Chunk] = []
        self.bytes_used = 0

    def reserve(self, size: int, lo: int, hi: int) -> int:
        """Address of ``size`` fresh bytes within reach of the module at [lo, hi)."""
        for c in self.chunks:
            at = c.start + c.used
            # every byte of the copy within REACH of every byte of the module
            if at + size <= c.end and at + size - REACH <= lo and hi <= at + REACH:
                c.used += size
                self.bytes_used += size
                return at
        length = max(CHUNK, page_up(size))
        start = self.mem.find_free_near(lo, hi, length, REACH)
        self.mem.map_pinned(start, length, PROT_READ | PROT_EXEC, "[leakdbt code cache]")
        self.chunks.append(_Chunk(start, start + length, size))
        self.bytes_used += size
        return start

    def write(self, address: int, code: bytes) -> None:
        """Fill reserved bytes (never executed before: no translation to invalidate)."""
        self.mem.write(address, code)
