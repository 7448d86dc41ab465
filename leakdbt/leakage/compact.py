"""Full traces stored compactly: each field of an event in its own array of 64-bit numbers,
not a Python tuple per event (about 8 bytes a field instead of some 40), read back as the
tuples the aligner works with.

A long run's trace may be stored while it is recorded (leakdbt.leakage.chunks.TraceWriter):
its first blocks and their events are then dropped from these arrays (:meth:`BlockTrace.drop`,
:meth:`AccessTrace.drop`), and ``BlockTrace.offset`` counts the blocks dropped, so that
block numbers stay those of the whole run."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field


def _numbers() -> array[int]:
    return array("Q")


@dataclass
class BlockTrace:
    """The executed blocks: (address, address of its last instruction, RSP at its start)."""

    starts: array[int] = field(default_factory=_numbers)
    lasts: array[int] = field(default_factory=_numbers)
    rsps: array[int] = field(default_factory=_numbers)
    offset: int = 0  # blocks dropped before starts[0] (see the module doc)
    # watch(): when the arrays hold `_next` blocks, call `_on_full`
    _next: int = field(default=sys.maxsize, repr=False, compare=False)
    _limit: int = field(default=0, repr=False, compare=False)
    _on_full: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    def append(self, block: tuple[int, int, int]) -> None:
        self.starts.append(block[0])
        self.lasts.append(block[1])
        self.rsps.append(block[2])
        if len(self.starts) >= self._next and self._on_full is not None:
            self._on_full()  # drops blocks
            self._next = len(self.starts) + self._limit

    def watch(self, limit: int, on_full: Callable[[], object]) -> None:
        """Call ``on_full`` after an append when the arrays hold ``limit`` blocks more than
        after the call before (the first time: ``limit`` blocks)."""
        self._limit, self._on_full = limit, on_full
        self._next = len(self.starts) + limit

    def drop(self, count: int) -> None:
        """Drop the first ``count`` blocks held (numbered on from the rest)."""
        for a in (self.starts, self.lasts, self.rsps):
            del a[:count]
        self.offset += count

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_next": sys.maxsize, "_on_full": None}

    def __len__(self) -> int:
        """Blocks recorded: those held and those dropped before them."""
        return self.offset + len(self.starts)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        """Block number ``i`` (a held one)."""
        i -= self.offset
        return self.starts[i], self.lasts[i], self.rsps[i]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """The blocks held."""
        return zip(self.starts, self.lasts, self.rsps, strict=True)

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.starts, self.lasts, self.rsps))


@dataclass
class AccessTrace:
    """The data accesses: (index of the block, pc, "r" or "w", unit number)."""

    blocks: array[int] = field(default_factory=lambda: array("q"))  # -1: before any block
    pcs: array[int] = field(default_factory=_numbers)
    units: array[int] = field(default_factory=_numbers)
    writes: array[int] = field(default_factory=lambda: array("B"))

    def extend(self, block: int, pc: int, is_write: bool, units: Iterable[int]) -> None:
        """One access, of every unit it touches."""
        for u in units:
            self.blocks.append(block)
            self.pcs.append(pc)
            self.units.append(u)
            self.writes.append(is_write)

    def drop(self, count: int) -> None:
        """Drop the first ``count`` events."""
        for a in (self.blocks, self.pcs, self.units, self.writes):
            del a[:count]

    def __len__(self) -> int:
        return len(self.pcs)

    def __iter__(self) -> Iterator[tuple[int, int, str, int]]:
        for block, pc, w, u in zip(self.blocks, self.pcs, self.writes, self.units,
                                   strict=True):
            yield block, pc, "w" if w else "r", u

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.blocks, self.pcs, self.units, self.writes))
