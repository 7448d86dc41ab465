"""The aligner as it was before chunked traces (commit 666429c, leakdbt/leakage/align.py),
kept as the reference the chunked aligner is compared with (test_align_chunks.py): it holds
both whole traces and walks them by stretches of arrays.  Not used by leakdbt."""
from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

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
    blocks: tuple[int, int] = (-1, -1)  # where in each trace (block indices; -1: unknown)


def differences(a: Trace, b: Trace, unit: int) -> list[Difference]:
    """Every leak point where ``a`` and ``b`` (full traces) observe different things."""
    return Baseline(a).differences(b, unit)


class Baseline:
    """One full trace prepared once for comparisons with many (check compares the first
    trial of each class with the others)."""

    def __init__(self, trace: Trace) -> None:
        self.side = _Side(trace)

    def differences(self, other: Trace, unit: int) -> list[Difference]:
        """:func:`differences` of this trace and ``other``."""
        return _walk(self.side, _Side(other), unit)


def _walk(sa: _Side, sb: _Side, unit: int) -> list[Difference]:
    found: dict[tuple[LeakKind, int], Difference] = {}
    a, b = sa.t, sb.t

    def branch(i: int, j: int, first: str, second: str) -> None:
        if i > 0 and j > 0:
            at = a.blocks.lasts[i - 1]
            found.setdefault((LeakKind.CONTROL_FLOW, at), Difference(
                LeakKind.CONTROL_FLOW, at, first, second, (i - 1, j - 1)))

    i = j = 0
    na, nb = len(a.blocks), len(b.blocks)
    step = FIRST_STEP
    while i < na and j < nb:
        # Alike for a stretch (compared as arrays): nothing differs there.
        if step and _alike(sa, sb, i, j, step):
            i, j = i + step, j + step
            step = min(step * 2, MAX_STEP)
            continue
        step = FIRST_STEP
        start_a, start_b = a.blocks.starts[i], b.blocks.starts[j]
        if sa.keys[i] == sb.keys[j]:
            # The engine's blocks end at the same instruction: in step (a block may start
            # earlier in one run, when a branch arm falls into code the other run enters).
            if start_a != start_b:
                branch(i, j, f"{start_a:#x}", f"{start_b:#x}")
            for pc, x, y in _pairs(sa.memory(i), sb.memory(j)):
                if x != y:
                    found.setdefault((LeakKind.MEMORY_ACCESS, pc), Difference(
                        LeakKind.MEMORY_ACCESS, pc, _unit(x, unit), _unit(y, unit), (i, j)))
            for pc, x, y in _pairs(sa.latency(i), sb.latency(j)):
                if x != y:
                    found.setdefault((LeakKind.VARIABLE_LATENCY, pc), Difference(
                        LeakKind.VARIABLE_LATENCY, pc, str(x[0]), str(y[0]), (i, j)))
            i += 1
            j += 1
            continue
        branch(i, j, f"{start_a:#x}", f"{start_b:#x}")
        again = _resync(sa, sb, i, j)
        if again is None:
            break
        i, j = again
    if (i < na) != (j < nb):
        # One run leaves the scope where the other goes on: the last common block decided.
        branch(i, j, *(f"{t.blocks.starts[k]:#x}" if k < len(t.blocks) else "end"
                       for t, k in ((a, i), (b, j))))
    return list(found.values())


FIRST_STEP = 8  # blocks compared at once after a difference; doubled while alike
MAX_STEP = 4096


class _Side:
    """One trace prepared for the walk: each block's (last instruction, stack pointer), and
    where each block's events start in the event arrays (they are in block order)."""

    def __init__(self, t: Trace) -> None:
        self.t = t
        blocks = t.blocks
        n = len(blocks)
        self.keys = list(zip(blocks.lasts, blocks.rsps, strict=True))
        self.mem_at, self.mem_count = _offsets(t.memory.blocks, n)
        self.lat_at, self.lat_count = _offsets([e[0] for e in t.latency], n)
        self.lat_events = [(pc, props) for _, pc, props in t.latency]

    def memory(self, k: int) -> list[tuple[int, tuple[str, int]]]:
        """Block ``k``'s accesses: (pc, ("r" or "w", unit))."""
        m, lo, hi = self.t.memory, self.mem_at[k], self.mem_at[k + 1]
        return [(pc, ("w" if w else "r", u)) for pc, w, u in
                zip(m.pcs[lo:hi], m.writes[lo:hi], m.units[lo:hi], strict=True)]

    def latency(self, k: int) -> list[tuple[int, tuple[str]]]:
        """Block ``k``'s variable-latency events: (pc, (operand classes,))."""
        return [(pc, (props,)) for pc, props in
                self.lat_events[self.lat_at[k]:self.lat_at[k + 1]]]


def _offsets(event_blocks: Iterable[int], n: int) -> tuple[array[int], array[int]]:
    """For events in block order (their blocks' indices, -1 before any block): where each
    of blocks 0..n-1 starts in the events (and where the last ends), and how many each
    has."""
    per_block = Counter(event_blocks)  # counted in C: no Python step per event
    counts = array("q", [per_block.get(k, 0) for k in range(n)])
    starts = array("q", accumulate(counts, initial=per_block.get(-1, 0)))
    return starts, counts


def _alike(a: _Side, b: _Side, i: int, j: int, n: int) -> bool:
    """Do blocks [i, i+n) of ``a`` and [j, j+n) of ``b`` start, end and stack alike, with
    the same accesses and latency events, block by block?"""
    ba, bb = a.t.blocks, b.t.blocks
    if i + n > len(ba) or j + n > len(bb):
        return False
    if ba.lasts[i:i + n] != bb.lasts[j:j + n] or ba.starts[i:i + n] != bb.starts[j:j + n] \
            or ba.rsps[i:i + n] != bb.rsps[j:j + n] \
            or a.mem_count[i:i + n] != b.mem_count[j:j + n] \
            or a.lat_count[i:i + n] != b.lat_count[j:j + n]:
        return False
    ma, mb = a.t.memory, b.t.memory
    lo_a, hi_a, lo_b, hi_b = a.mem_at[i], a.mem_at[i + n], b.mem_at[j], b.mem_at[j + n]
    if ma.units[lo_a:hi_a] != mb.units[lo_b:hi_b] or ma.pcs[lo_a:hi_a] != mb.pcs[lo_b:hi_b] \
            or ma.writes[lo_a:hi_a] != mb.writes[lo_b:hi_b]:
        return False
    return a.lat_events[a.lat_at[i]:a.lat_at[i + n]] == b.lat_events[b.lat_at[j]:b.lat_at[j + n]]


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


def _resync(a: _Side, b: _Side, i: int, j: int) -> tuple[int, int] | None:
    """Where the runs meet again after parting at (i, j): the pair of blocks ending at the
    same instruction with the smallest combined skip, looking no further in either run
    than the next execution of the block they parted after (a loop's next iteration), so
    that iterations are not paired off by one."""
    parted = a.keys[i - 1] if i > 0 else None
    first_in_b: dict[tuple[int, int], int] = {}
    for k in range(j, min(len(b.keys), j + WINDOW)):
        first_in_b.setdefault(b.keys[k], k)
        if b.keys[k] == parted:
            break
    best: tuple[int, int, int] | None = None
    for k in range(i, min(len(a.keys), i + WINDOW)):
        if best is not None and k - i >= best[0]:
            break
        m = first_in_b.get(a.keys[k])
        if m is not None and (best is None or (k - i) + (m - j) < best[0]):
            best = ((k - i) + (m - j), k, m)
        if a.keys[k] == parted:
            break
    return None if best is None else (best[1], best[2])
