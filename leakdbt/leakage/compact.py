"""Full traces stored compactly: each field of an event in its own array of 64-bit numbers,
not a Python tuple per event (about 8 bytes a field instead of some 40), read back as the
tuples the aligner works with."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


def _numbers() -> array[int]:
    return array("Q")


@dataclass
class BlockTrace:
    """The executed blocks: (address, address of its last instruction, RSP at its start)."""

    starts: array[int] = field(default_factory=_numbers)
    lasts: array[int] = field(default_factory=_numbers)
    rsps: array[int] = field(default_factory=_numbers)

    def append(self, block: tuple[int, int, int]) -> None:
        self.starts.append(block[0])
        self.lasts.append(block[1])
        self.rsps.append(block[2])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.starts[i], self.lasts[i], self.rsps[i]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
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

    def __len__(self) -> int:
        return len(self.pcs)

    def __iter__(self) -> Iterator[tuple[int, int, str, int]]:
        for block, pc, w, u in zip(self.blocks, self.pcs, self.writes, self.units,
                                   strict=True):
            yield block, pc, "w" if w else "r", u

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.blocks, self.pcs, self.units, self.writes))
