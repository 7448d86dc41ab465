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

Long traces: the traces are read chunk by chunk (leakdbt.leakage.chunks: chunks cut by
content, so two runs that meet again cut alike again).  Where both walks are at the start
of a chunk and the two chunks have equal digests, the pair is passed over unread: nothing
differs there.  Elsewhere the walk compares stretches of blocks at once where both runs
are alike — the same blocks, stack pointers, accesses and latency events, block by block
— as slices of the arrays of the chunks read (doubling the stretch while they stay alike,
up to the next chunk start), and looks at single blocks only around the places where they
differ.  Only a window of each trace is held: the chunks from the block the walk parted
after (or the last :data:`KEEP` blocks) to the end of the resynchronisation window.  What
it finds is what the block-by-block walk finds (tests/unit/leakage/test_align_chunks.py
compares the two, and with the aligner that held whole traces).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate, islice

from leakdbt.leakage.chunks import Chunk, ChunkSource, TraceChunks
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


def differences(a: Trace | ChunkSource, b: Trace | ChunkSource, unit: int
                ) -> list[Difference]:
    """Every leak point where ``a`` and ``b`` (full traces) observe different things."""
    return Baseline(a).differences(b, unit)


def _chunks(trace: Trace | ChunkSource) -> ChunkSource:
    if isinstance(trace, Trace):
        return TraceChunks(trace.blocks, trace.memory, trace.latency)
    return trace


class Baseline:
    """One full trace prepared once for comparisons with many (check compares the first
    trial of each class with the others): its chunks' digests are computed once."""

    def __init__(self, trace: Trace | ChunkSource) -> None:
        self.source = _chunks(trace)

    def differences(self, other: Trace | ChunkSource, unit: int) -> list[Difference]:
        """:func:`differences` of this trace and ``other``."""
        return _walk(_Side(self.source), _Side(_chunks(other)), unit)


def _walk(sa: _Side, sb: _Side, unit: int) -> list[Difference]:
    found: dict[tuple[LeakKind, int], Difference] = {}

    def branch(i: int, j: int, first: str, second: str) -> None:
        if i > 0 and j > 0:
            at = sa.last(i - 1)
            found.setdefault((LeakKind.CONTROL_FLOW, at), Difference(
                LeakKind.CONTROL_FLOW, at, first, second, (i - 1, j - 1)))

    i = j = 0
    na, nb = sa.n, sb.n
    step = FIRST_STEP
    while i < na and j < nb:
        if step:
            # Two equal chunks, both walks at their start: nothing differs there (unread).
            ca, cb = sa.chunk_starting(i), sb.chunk_starting(j)
            if ca >= 0 and cb >= 0 and sa.source.digest(ca) == sb.source.digest(cb):
                i, j = sa.bounds[ca + 1], sb.bounds[cb + 1]
                continue
        sa.focus(i)
        sb.focus(j)
        if step:
            # Alike for a stretch (compared as arrays): nothing differs there.
            n = min(step, sa.next_start(i) - i, sb.next_start(j) - j)
            sa.cover(i + n)
            sb.cover(j + n)
            if _alike(sa, sb, i, j, n):
                i, j = i + n, j + n
                step = min(step * 2, MAX_STEP)
                continue
        step = FIRST_STEP
        sa.cover(i + 1)
        sb.cover(j + 1)
        start_a, start_b = sa.start(i), sb.start(j)
        if sa.key(i) == sb.key(j):
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
        ends = []
        for side, k in ((sa, i), (sb, j)):
            if k < side.n:
                side.focus(k)
                side.cover(k + 1)
                ends.append(f"{side.start(k):#x}")
            else:
                ends.append("end")
        if i > 0 and j > 0:
            sa.focus(i)
            sa.cover(i)
        branch(i, j, *ends)
    return list(found.values())


FIRST_STEP = 8  # blocks compared at once after a difference; doubled while alike
MAX_STEP = 4096
KEEP = 1 << 16  # blocks of a window kept behind the walk before it is read afresh


class _Side:
    """One trace as the walk reads it: a window of consecutive chunks, blocks [lo, hi) —
    each block's start, (last instruction, stack pointer), and where its events start in
    the window's event arrays (they are in block order)."""

    def __init__(self, source: ChunkSource) -> None:
        self.source = source
        self.bounds = list(source.bounds)
        self.n = self.bounds[-1]
        self._reset(0)

    def _reset(self, c: int) -> None:
        """An empty window at chunk ``c``."""
        self.next_chunk = c
        self.lo = self.hi = self.bounds[c]
        self.starts, self.lasts, self.rsps = array("Q"), array("Q"), array("Q")
        self.keys: list[tuple[int, int]] = []
        self.mem_at, self.mem_count = array("q", [0]), array("Q")
        self.pcs, self.units, self.writes = array("Q"), array("Q"), array("B")
        self.lat_at, self.lat_count = array("q", [0]), array("q")
        self.lat_events: list[tuple[int, str]] = []

    def chunk_starting(self, k: int) -> int:
        """The chunk that starts at block ``k`` (-1: none does)."""
        c = bisect_right(self.bounds, k) - 1
        return c if self.bounds[c] == k else -1

    def next_start(self, k: int) -> int:
        """The first chunk start after block ``k`` (the end of the trace at most)."""
        return self.bounds[bisect_right(self.bounds, k)]

    def focus(self, k: int) -> None:
        """The walk is at block ``k``: the window must hold block k-1 (the block the runs
        may part after) and need not hold more than :data:`KEEP` blocks before it."""
        back = max(k - 1, 0)
        if not self.lo <= back <= self.hi or back - self.lo > KEEP:
            self._reset(bisect_right(self.bounds, back) - 1)

    def cover(self, end: int) -> None:
        """Read chunks until the window holds the blocks before ``end`` (or all)."""
        end = min(end, self.n)
        while self.hi < end:
            self._append(self.source.load(self.next_chunk))

    def _append(self, ch: Chunk) -> None:
        self.starts.extend(ch.starts)
        self.lasts.extend(ch.lasts)
        self.rsps.extend(ch.rsps)
        self.keys.extend(ch.keys())
        self.mem_count.extend(ch.counts)
        self.mem_at.extend(islice(accumulate(ch.counts, initial=self.mem_at[-1]), 1, None))
        self.pcs.extend(ch.pcs)
        self.units.extend(ch.units)
        self.writes.extend(ch.writes)
        per_block = array("q", bytes(8 * len(ch.starts)))
        for k, _, _ in ch.latency:
            per_block[k] += 1
        self.lat_count.extend(per_block)
        self.lat_at.extend(islice(accumulate(per_block, initial=self.lat_at[-1]), 1, None))
        self.lat_events.extend((pc, props) for _, pc, props in ch.latency)
        self.next_chunk += 1
        self.hi = self.bounds[self.next_chunk]

    def key(self, k: int) -> tuple[int, int]:
        """Block ``k``'s (last instruction, stack pointer) (in the window)."""
        return self.keys[k - self.lo]

    def start(self, k: int) -> int:
        return self.starts[k - self.lo]

    def last(self, k: int) -> int:
        return self.lasts[k - self.lo]

    def memory(self, k: int) -> list[tuple[int, tuple[str, int]]]:
        """Block ``k``'s accesses: (pc, ("r" or "w", unit))."""
        x = k - self.lo
        lo, hi = self.mem_at[x], self.mem_at[x + 1]
        return [(pc, ("w" if w else "r", u)) for pc, w, u in
                zip(self.pcs[lo:hi], self.writes[lo:hi], self.units[lo:hi], strict=True)]

    def latency(self, k: int) -> list[tuple[int, tuple[str]]]:
        """Block ``k``'s variable-latency events: (pc, (operand classes,))."""
        x = k - self.lo
        return [(pc, (props,)) for pc, props in
                self.lat_events[self.lat_at[x]:self.lat_at[x + 1]]]


def _alike(a: _Side, b: _Side, i: int, j: int, n: int) -> bool:
    """Do blocks [i, i+n) of ``a`` and [j, j+n) of ``b`` (in the windows) start, end and
    stack alike, with the same accesses and latency events, block by block?"""
    if i + n > a.n or j + n > b.n:
        return False
    x, y = i - a.lo, j - b.lo
    if a.lasts[x:x + n] != b.lasts[y:y + n] or a.starts[x:x + n] != b.starts[y:y + n] \
            or a.rsps[x:x + n] != b.rsps[y:y + n] \
            or a.mem_count[x:x + n] != b.mem_count[y:y + n] \
            or a.lat_count[x:x + n] != b.lat_count[y:y + n]:
        return False
    lo_a, hi_a, lo_b, hi_b = a.mem_at[x], a.mem_at[x + n], b.mem_at[y], b.mem_at[y + n]
    if a.units[lo_a:hi_a] != b.units[lo_b:hi_b] or a.pcs[lo_a:hi_a] != b.pcs[lo_b:hi_b] \
            or a.writes[lo_a:hi_a] != b.writes[lo_b:hi_b]:
        return False
    return a.lat_events[a.lat_at[x]:a.lat_at[x + n]] \
        == b.lat_events[b.lat_at[y]:b.lat_at[y + n]]


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
    parted = a.key(i - 1) if i > 0 else None
    first_in_b: dict[tuple[int, int], int] = {}
    for k in range(j, min(b.n, j + WINDOW)):
        if k >= b.hi:
            b.cover(k + 1)  # a chunk more (the search usually stops within a loop's body)
        key = b.keys[k - b.lo]
        first_in_b.setdefault(key, k)
        if key == parted:
            break
    best: tuple[int, int, int] | None = None
    for k in range(i, min(a.n, i + WINDOW)):
        if best is not None and k - i >= best[0]:
            break
        if k >= a.hi:
            a.cover(k + 1)
        key = a.keys[k - a.lo]
        m = first_in_b.get(key)
        if m is not None and (best is None or (k - i) + (m - j) < best[0]):
            best = ((k - i) + (m - j), k, m)
        if key == parted:
            break
    return None if best is None else (best[1], best[2])
