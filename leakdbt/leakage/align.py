"""Aligning two full traces and finding the points where what they observe differs.

The block sequences are walked in step.  Blocks are matched by their last instruction and
the stack pointer they start with: the engine's blocks end at branches (a block that starts
earlier in one run, where a branch arm falls through into the join, still ends at the same
instruction), and the stack pointer tells calls of a function from different depths apart.
Where the runs go to different blocks, the last instruction of the block before — a
conditional or indirect branch — is a control-flow leak point, observed as where each run
went next; when the blocks do not even end alike, the walk resynchronises at the nearest
pair that does (:func:`_resync`).  In blocks the two runs executed in step, their memory
accesses and variable-latency operands are compared in order: the same instruction touching
another unit, or running on operands of another class, is a memory-access or
variable-latency leak point.  Differences inside blocks that only one run executed are
consequences of a control-flow leak already reported, not new points.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.observe import Trace

WINDOW = 4096  # blocks searched ahead for a common one after the runs part


@dataclass(frozen=True)
class Difference:
    """One leak point seen between two runs: at runtime ``address``, what each observed
    (runtime addresses or unit numbers or operand classes, as text)."""

    kind: LeakKind
    address: int
    first: str
    second: str


def differences(a: Trace, b: Trace, unit: int) -> list[Difference]:
    """Every leak point where ``a`` and ``b`` (full traces) observe different things."""
    found: dict[tuple[LeakKind, int], Difference] = {}
    mem_a, mem_b = _by_block(a.memory), _by_block(b.memory)
    lat_a, lat_b = _by_block(a.latency), _by_block(b.latency)

    def branch(i: int, j: int, first: str, second: str) -> None:
        if i > 0 and j > 0:
            at = a.blocks[i - 1][1]
            found.setdefault((LeakKind.CONTROL_FLOW, at), Difference(
                LeakKind.CONTROL_FLOW, at, first, second))

    i = j = 0
    while i < len(a.blocks) and j < len(b.blocks):
        (start_a, last_a, sp_a), (start_b, last_b, sp_b) = a.blocks[i], b.blocks[j]
        if (last_a, sp_a) == (last_b, sp_b):
            # The engine's blocks end at the same instruction: in step (a block may start
            # earlier in one run, when a branch arm falls into code the other run enters).
            if start_a != start_b:
                branch(i, j, f"{start_a:#x}", f"{start_b:#x}")
            for pc, x, y in _pairs(mem_a.get(i, ()), mem_b.get(j, ())):
                if x != y:
                    found.setdefault((LeakKind.MEMORY_ACCESS, pc), Difference(
                        LeakKind.MEMORY_ACCESS, pc, _unit(x, unit), _unit(y, unit)))
            for pc, x, y in _pairs(lat_a.get(i, ()), lat_b.get(j, ())):
                if x != y:
                    found.setdefault((LeakKind.VARIABLE_LATENCY, pc), Difference(
                        LeakKind.VARIABLE_LATENCY, pc, str(x[0]), str(y[0])))
            i += 1
            j += 1
            continue
        branch(i, j, f"{start_a:#x}", f"{start_b:#x}")
        again = _resync(a, b, i, j)
        if again is None:
            break
        i, j = again
    if (i < len(a.blocks)) != (j < len(b.blocks)):
        # One run leaves the scope where the other goes on: the last common block decided.
        branch(i, j, *(f"{t.blocks[k][0]:#x}" if k < len(t.blocks) else "end"
                       for t, k in ((a, i), (b, j))))
    return list(found.values())


def _by_block(events: Iterable[tuple]) -> dict[int, list[tuple[int, tuple]]]:
    """Events grouped by the index of the block they happened in: (pc, the rest)."""
    out: dict[int, list[tuple[int, tuple]]] = defaultdict(list)
    for block, pc, *rest in events:
        out[block].append((pc, tuple(rest)))
    return out


def _pairs(xs: list[tuple[int, tuple]] | tuple, ys: list[tuple[int, tuple]] | tuple
           ) -> list[tuple[int, tuple, tuple]]:
    """Events of one block in both runs, paired in order while their instructions agree."""
    out = []
    for (pa, x), (pb, y) in zip(xs, ys, strict=False):
        if pa != pb:
            break
        out.append((pa, x, y))
    return out


def _unit(event: tuple, unit: int) -> str:
    kind, number = event
    what = "write" if kind == "w" else "read"
    return f"{what} {number * unit:#x}" + (f"+{unit}" if unit > 1 else "")


def _resync(a: Trace, b: Trace, i: int, j: int) -> tuple[int, int] | None:
    """Where the runs meet again after parting at (i, j): the pair of blocks ending at the
    same instruction with the smallest combined skip, looking no further in either run
    than the next execution of the block they parted after (a loop's next iteration), so
    that iterations are not paired off by one."""
    parted = a.blocks[i - 1][1:] if i > 0 else None
    first_in_b: dict[tuple[int, int], int] = {}
    for k in range(j, min(len(b.blocks), j + WINDOW)):
        first_in_b.setdefault(b.blocks[k][1:], k)
        if b.blocks[k][1:] == parted:
            break
    best: tuple[int, int, int] | None = None
    for k in range(i, min(len(a.blocks), i + WINDOW)):
        if best is not None and k - i >= best[0]:
            break
        m = first_in_b.get(a.blocks[k][1:])
        if m is not None and (best is None or (k - i) + (m - j) < best[0]):
            best = ((k - i) + (m - j), k, m)
        if a.blocks[k][1:] == parted:
            break
    return None if best is None else (best[1], best[2])
