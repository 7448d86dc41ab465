"""Full traces in chunks: cut by content, named by digest, stored once.

A full trace (:class:`leakdbt.leakage.observe.Trace`) is cut into *chunks* of consecutive
blocks, each with the access and latency events of its blocks.  The cuts depend only on
the blocks: a block is a candidate when it starts with a higher stack pointer than the
block before (a return) or its address hashes to 0 (one in :data:`CUT_MASK` + 1); a chunk
starts at a candidate :data:`MIN_BLOCKS` or more blocks after the candidate before it, and
after :data:`MAX_BLOCKS` anyway (``tr_chunk_cuts`` in _trace.c, the same rule in Python).
Whether a block starts a chunk depends on the blocks before it, not on where the chunk
before started, so two runs that part and meet again cut at the same blocks again soon
after, and the iterations of a loop that calls a function make the same chunks again.

A chunk's bytes (:func:`_parts`) hold only what is relative to its first block: the
blocks' start, last instruction and stack pointer, each block's number of access events,
the events' pc, unit and kind, and the latency events (block within the chunk, pc,
operand classes).  Its digest (BLAKE2b, 128 bits) names it: equal digests, equal chunks.

:class:`ChunkStore` keeps the chunks of every trial of a check in one directory, each
distinct chunk once (each process appends to a pack file of its own and tells the others
what it wrote through an append-only index; two processes storing the same new chunk at
the same moment both keep it), so that a trial adds to the store only the few chunks no
earlier trial had, and its :class:`StoredTrace` is the sequence of its chunks as indices
into a table of its distinct chunks: a repeated loop iteration, or the same stretch in
another trial, costs 4 bytes.  The aligner
(leakdbt.leakage.align) reads a trace chunk by chunk through :class:`ChunkSource` and
skips a pair of chunks with equal digests without reading them.

A trace need not be whole to be stored: :class:`TraceWriter` stores it while it is
recorded (leakdbt.leakage.trials does, every :data:`leakdbt.leakage.trials.FLUSH_BLOCKS`
blocks), each time the chunks that end before the last cut so far, which it then drops
from the recording's arrays, so that a trial holds at most that many blocks and one chunk,
however long it runs.  The cuts come from :class:`Cutter`, the same rule fed block by
block; the stored trace is the one :meth:`ChunkStore.put` stores of the whole trace.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import struct
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Protocol

from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.native import native_library

MIN_BLOCKS = 8  # blocks from one candidate cut to the next that may start a chunk
MAX_BLOCKS = 1024  # a chunk has at most this many blocks
CUT_MASK = 31  # a return, or one block address in 32 (by hash), is a candidate
DIGEST = 16  # bytes of a chunk's digest
_K = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
_HEADER = struct.Struct("<QQQ")  # blocks, access events, latency events
_LATENCY = struct.Struct("<QQI")  # block within the chunk, pc, bytes of operand classes
_RECORD = struct.Struct(f"<{DIGEST}sQQQ")  # index: digest, pack, offset, length


def _address_hash(address: int) -> int:
    """``tr_hash`` in _trace.c."""
    h = (address * _K) & _M64
    return h ^ (h >> 29)


class Cutter:
    """Where chunks begin, for blocks that come in pieces (``tr_chunk_cuts_from`` in
    _trace.c; the rule of ``tr_chunk_cuts``): :meth:`feed` the blocks in order, each once."""

    def __init__(self) -> None:
        # the next block's number, the last cut, the last candidate, whether there was
        # one, the stack pointer of the block before
        self.state = array("Q", bytes(40))

    @property
    def fed(self) -> int:
        """Blocks fed so far."""
        return self.state[0]

    def feed(self, starts: array[int], rsps: array[int], lo: int = 0) -> list[int]:
        """The cuts (block numbers, counted from the first block ever fed) among the blocks
        ``starts[lo:]``, ``rsps[lo:]``, which follow those fed before."""
        n = len(starts) - lo
        if n <= 0:
            return []
        lib = _helpers()
        if lib is not None:
            out = (ctypes.c_uint64 * n)()
            s = (ctypes.c_uint64 * n).from_buffer(starts, 8 * lo)
            r = (ctypes.c_uint64 * n).from_buffer(rsps, 8 * lo)
            st = (ctypes.c_uint64 * 5).from_buffer(self.state)
            count = lib.tr_chunk_cuts_from(s, r, n, MIN_BLOCKS, MAX_BLOCKS, CUT_MASK, st, out)
            del s, r, st  # the arrays may change size again
            return out[:count]
        k0, last, candidate, seen, prev = self.state
        cuts = []
        for i in range(lo, lo + n):
            k = k0 + i - lo
            rsp = rsps[i]
            is_candidate = k > 0 and (rsp > prev or _address_hash(starts[i]) & CUT_MASK == 0)
            if k == 0 or k - last >= MAX_BLOCKS or (
                    is_candidate and (not seen or k - candidate >= MIN_BLOCKS)):
                cuts.append(k)
                last = k
            if is_candidate:
                candidate, seen = k, 1
            prev = rsp
        self.state = array("Q", (k0 + n, last, candidate, seen, prev))
        return cuts


def chunk_bounds(blocks: BlockTrace) -> list[int]:
    """Where each chunk of a block trace begins, and the trace's length last (``[0, ...,
    n]``; ``[0]`` for no blocks; numbered from the first block held).  See ``tr_chunk_cuts``
    in _trace.c for the rule."""
    return [*Cutter().feed(blocks.starts, blocks.rsps), len(blocks.starts)]


def block_counts(event_blocks: array[int], n: int, first: int = 0
                 ) -> tuple[array[int], int]:
    """How many access events each of blocks first..first+n-1 has (events in block order, -1
    before any block), and how many come before any block."""
    counts = array("Q", bytes(8 * n))
    lib = _helpers()
    if lib is not None and n and len(event_blocks):
        src = (ctypes.c_uint64 * len(event_blocks)).from_buffer(event_blocks)
        dst = (ctypes.c_uint64 * n).from_buffer(counts)
        before = int(lib.tr_block_counts_from(src, len(event_blocks), first, n, dst))
        del src, dst
        return counts, before
    before = 0
    for b in event_blocks:
        if b < 0:
            before += 1
        elif first <= b < first + n:
            counts[b - first] += 1
    return counts, before


@functools.cache
def _helpers() -> ctypes.CDLL | None:
    """The recorder's shared object with the chunking helpers declared, or None (not
    built, or built before they existed: the Python loops then do the same)."""
    lib = native_library()
    if lib is None:
        return None
    p = ctypes.POINTER(ctypes.c_uint64)
    try:
        lib.tr_chunk_cuts.argtypes = [p, p, ctypes.c_uint64, ctypes.c_uint64,
                                      ctypes.c_uint64, ctypes.c_uint64, p]
        lib.tr_chunk_cuts.restype = ctypes.c_uint64
        lib.tr_block_counts.argtypes = [p, ctypes.c_uint64, ctypes.c_uint64, p]
        lib.tr_block_counts.restype = ctypes.c_uint64
        lib.tr_chunk_cuts_from.argtypes = [p, p, ctypes.c_uint64, ctypes.c_uint64,
                                           ctypes.c_uint64, ctypes.c_uint64, p, p]
        lib.tr_chunk_cuts_from.restype = ctypes.c_uint64
        lib.tr_block_counts_from.argtypes = [p, ctypes.c_uint64, ctypes.c_uint64,
                                             ctypes.c_uint64, p]
        lib.tr_block_counts_from.restype = ctypes.c_uint64
    except AttributeError:
        return None
    return lib


@dataclass
class Chunk:
    """One chunk, decoded: per block its start, last instruction, stack pointer and number
    of access events; the access events (pc, unit, 1 for a write); the latency events
    (block within the chunk, pc, operand classes)."""

    starts: array[int]
    lasts: array[int]
    rsps: array[int]
    counts: array[int]
    pcs: array[int]
    units: array[int]
    writes: array[int]
    latency: list[tuple[int, int, str]]
    _keys: list[tuple[int, int]] | None = None

    def keys(self) -> list[tuple[int, int]]:
        """Each block's (last instruction, stack pointer): what the aligner matches."""
        if self._keys is None:
            self._keys = list(zip(self.lasts, self.rsps, strict=True))
        return self._keys

    def nbytes(self) -> int:
        return 32 * len(self.starts) + 17 * len(self.pcs)


class ChunkSource(Protocol):
    """A full trace, chunk by chunk (the aligner's view of it)."""

    @property
    def bounds(self) -> Sequence[int]:
        """The first block of each chunk, then the number of blocks."""

    def digest(self, c: int) -> bytes:
        """Chunk ``c``'s digest (equal digests: equal chunks)."""

    def load(self, c: int) -> Chunk:
        """Chunk ``c``."""


def _parts(chunk: Chunk) -> list[bytes | memoryview]:
    """A chunk's bytes, in pieces (see the module doc)."""
    latency = b"".join(_LATENCY.pack(k, pc, len(p.encode())) + p.encode()
                       for k, pc, p in chunk.latency)
    return [_HEADER.pack(len(chunk.starts), len(chunk.pcs), len(chunk.latency)),
            memoryview(chunk.starts), memoryview(chunk.lasts), memoryview(chunk.rsps),
            memoryview(chunk.counts), memoryview(chunk.pcs), memoryview(chunk.units),
            memoryview(chunk.writes), latency]


def _digest(parts: Sequence[bytes | memoryview]) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST)
    for p in parts:
        h.update(p)
    return h.digest()


def _decode(data: bytes) -> Chunk:
    """A chunk from its bytes (:func:`_parts` joined)."""
    n, m, nl = _HEADER.unpack_from(data)
    view = memoryview(data)
    at = _HEADER.size
    arrays = []
    for code, count in (("Q", n), ("Q", n), ("Q", n), ("Q", n), ("Q", m), ("Q", m),
                        ("B", m)):
        a = array(code)
        size = a.itemsize * count
        a.frombytes(view[at:at + size])
        at += size
        arrays.append(a)
    latency = []
    for _ in range(nl):
        k, pc, size = _LATENCY.unpack_from(data, at)
        at += _LATENCY.size
        latency.append((k, pc, bytes(view[at:at + size]).decode()))
        at += size
    starts, lasts, rsps, counts, pcs, units, writes = arrays
    return Chunk(starts, lasts, rsps, counts, pcs, units, writes, latency)


class TraceChunks:
    """The chunks of a full trace held in memory (see the module doc): of the blocks held
    (``blocks.offset`` dropped before them) and their events, cut at ``bounds`` (numbered
    from the first block held; ``None``: cut by the rule)."""

    def __init__(self, blocks: BlockTrace, memory: AccessTrace,
                 latency: list[tuple[int, int, str]], bounds: list[int] | None = None
                 ) -> None:
        self.blocks, self.memory = blocks, memory
        self.bounds = chunk_bounds(blocks) if bounds is None else bounds
        self.offset = offset = blocks.offset
        self.counts, before = block_counts(memory.blocks, self.bounds[-1], offset)
        # where each chunk's access events start (events are in block order)
        self.events = [before]
        for lo, hi in zip(self.bounds, self.bounds[1:], strict=False):
            self.events.append(self.events[-1] + sum(self.counts[lo:hi]))
        self.latency = latency
        self.latency_blocks = [b - offset if b >= 0 else -1 for b, _, _ in latency]
        self._digests: dict[int, bytes] = {}

    def digest(self, c: int) -> bytes:
        found = self._digests.get(c)
        if found is None:
            found = self._digests[c] = _digest(_parts(self.load(c)))
        return found

    def load(self, c: int) -> Chunk:
        lo, hi = self.bounds[c], self.bounds[c + 1]
        b, m = self.blocks, self.memory
        mlo, mhi = self.events[c], self.events[c + 1]
        llo = bisect_left(self.latency_blocks, lo)
        lhi = bisect_left(self.latency_blocks, hi)
        return Chunk(b.starts[lo:hi], b.lasts[lo:hi], b.rsps[lo:hi], self.counts[lo:hi],
                     m.pcs[mlo:mhi], m.units[mlo:mhi], m.writes[mlo:mhi],
                     [(k - self.offset - lo, pc, p) for k, pc, p in self.latency[llo:lhi]])

    def before(self) -> tuple[AccessTrace, list[tuple[int, int, str]]]:
        """The events before the first block (not in any chunk)."""
        m, k = self.memory, self.events[0]
        out = AccessTrace(m.blocks[:k], m.pcs[:k], m.units[:k], m.writes[:k])
        return out, self.latency[:bisect_left(self.latency_blocks, 0)]


@dataclass
class StoredTrace:
    """A full trace in a :class:`ChunkStore`: the sequence of its chunks, as indices into a
    table of its distinct chunks (digest, place in the store, number of blocks), and what
    is in no chunk (events before the first block, the latency events' operand values, the
    thread switches).  Small: it is what a trial's file holds (4 bytes a chunk, 56 a
    distinct chunk)."""

    directory: str
    sequence: array[int]  # per chunk: its index in the table
    digests: bytes  # the table: DIGEST bytes per distinct chunk...
    packs: array[int]  # ...its pack file, its offset there and its length...
    offsets: array[int]
    lengths: array[int]
    sizes: array[int]  # ...and its number of blocks
    before: AccessTrace = field(default_factory=AccessTrace)
    latency_before: list[tuple[int, int, str]] = field(default_factory=list)
    operands: list[tuple[int, ...]] = field(default_factory=list)
    threads: list[tuple[int, int]] = field(default_factory=list)
    _bounds: list[int] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_bounds": None}  # computed again when read

    @property
    def bounds(self) -> list[int]:
        """The first block of each chunk, then the number of blocks."""
        if self._bounds is None:
            sizes = self.sizes
            self._bounds = list(accumulate((sizes[t] for t in self.sequence), initial=0))
        return self._bounds

    def digest(self, c: int) -> bytes:
        t = self.sequence[c]
        return self.digests[t * DIGEST:(t + 1) * DIGEST]

    def load(self, c: int) -> Chunk:
        d = self.digest(c)
        chunk = _DECODED.get(d)
        if chunk is not None:
            _DECODED.move_to_end(d)
            return chunk
        chunk = self._read(self.sequence[c])
        _DECODED[d] = chunk
        _decoded_bytes[0] += chunk.nbytes()
        while _decoded_bytes[0] > DECODED_BYTES and len(_DECODED) > 1:
            _decoded_bytes[0] -= _DECODED.popitem(last=False)[1].nbytes()
        return chunk

    def _read(self, t: int) -> Chunk:
        """Distinct chunk ``t``, from its pack."""
        path = os.path.join(self.directory, _pack_name(self.packs[t]))
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, self.lengths[t], self.offsets[t])
        finally:
            os.close(fd)
        if len(data) != self.lengths[t]:
            raise OSError(f"{path}: chunk cut short")
        return _decode(data)

    def full(self) -> tuple[BlockTrace, AccessTrace, list[tuple[int, int, str]]]:
        """The whole trace again: blocks, accesses and latency events."""
        blocks = BlockTrace()
        memory = AccessTrace(array("q", self.before.blocks), array("Q", self.before.pcs),
                             array("Q", self.before.units), array("B", self.before.writes))
        latency = list(self.latency_before)
        for c in range(len(self.bounds) - 1):
            chunk, base = self.load(c), self.bounds[c]
            blocks.starts.extend(chunk.starts)
            blocks.lasts.extend(chunk.lasts)
            blocks.rsps.extend(chunk.rsps)
            for k, count in enumerate(chunk.counts):
                memory.blocks.extend([base + k] * count)
            memory.pcs.extend(chunk.pcs)
            memory.units.extend(chunk.units)
            memory.writes.extend(chunk.writes)
            latency.extend((base + k, pc, p) for k, pc, p in chunk.latency)
        return blocks, memory, latency


# Chunks read lately, by digest (the same chunk recurs: a loop's iterations, other trials).
_DECODED: OrderedDict[bytes, Chunk] = OrderedDict()
_decoded_bytes = [0]
DECODED_BYTES = 16 << 20


def _pack_name(pack: int) -> str:
    return f"pack-{pack:016x}"


INDEX = "chunks.index"


class ChunkStore:
    """The chunks of one check's full traces, in a directory shared by its processes.

    Each process appends the chunks it is first to see to its own pack file (so it alone
    writes there and knows each chunk's offset), then appends one record per new chunk to
    the directory's index (one ``write`` to a file opened for appending); before storing a
    trace it reads the records the others added since.  Two processes storing the same new
    chunk at once both keep it: the store is smaller, never wrong."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.pack = int.from_bytes(os.urandom(8), "little") >> 1
        self._fd = -1  # the pack, opened at the first new chunk
        self._size = 0
        self._known: dict[bytes, tuple[int, int, int]] = {}
        self._index_read = 0
        self.written = 0  # bytes this store wrote to its pack

    def put(self, blocks: BlockTrace, memory: AccessTrace,
            latency: list[tuple[int, int, str]], operands: list[tuple[int, ...]],
            threads: list[tuple[int, int]]) -> StoredTrace:
        """Store a full trace; raises OSError (no room: what this call wrote is then
        forgotten, and later calls write to a new pack)."""
        return TraceWriter(self.directory, lambda: self).finish(blocks, memory, latency,
                                                                operands, threads)

    def _lost(self) -> None:
        """Writing failed: forget the pack, write to a new one from now on."""
        self.close()
        self.pack = int.from_bytes(os.urandom(8), "little") >> 1
        self._size = 0

    def _write(self, pending: list[bytes | memoryview]) -> None:
        """Append the pieces to this process's pack (and empty the list)."""
        if not pending:
            return
        if self._fd < 0:
            self._fd = os.open(os.path.join(self.directory, _pack_name(self.pack)),
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = _pending_size(pending)
        _write_all(self._fd, pending)
        self._size += size
        self.written += size
        pending.clear()

    def _refresh(self) -> None:
        """Learn the chunks the other processes stored since the last look."""
        try:
            fd = os.open(os.path.join(self.directory, INDEX), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            data = b""
            while chunk := os.pread(fd, 1 << 20, self._index_read + len(data)):
                data += chunk
        finally:
            os.close(fd)
        whole = len(data) - len(data) % _RECORD.size  # a record being written: next time
        for d, pack, offset, length in _RECORD.iter_unpack(data[:whole]):
            self._known.setdefault(d, (pack, offset, length))
        self._index_read += whole

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pending_size(pending: list[bytes | memoryview]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pending)


def _write_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """Write every piece (writev may write less than asked)."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        done = os.writev(fd, views)
        while views and done >= views[0].nbytes:
            done -= views[0].nbytes
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]


class TraceWriter:
    """A full trace stored as it is recorded, chunk by chunk (see the module doc).

    :meth:`flush` stores the chunks of the blocks held (``blocks.offset`` dropped before
    them) that end before the last cut so far and drops them; :meth:`finish` stores the
    rest (leaving the arrays as they are) and returns the :class:`StoredTrace`, the same
    as :meth:`ChunkStore.put` of the whole trace.  ``store`` gives the store to write to
    at each step (``store_for``: a forked process writes to a pack of its own).  A flush
    that finds no room stores nothing more (it still drops what it would have stored) and
    :meth:`finish` raises OSError."""

    def __init__(self, directory: str, store: Callable[[], ChunkStore]) -> None:
        self.directory = directory
        self._store = store
        self._cutter = Cutter()
        self._cuts: list[int] = []  # cuts among the blocks held (block numbers)
        self._started = False  # the events before the first block are taken
        self.failed = False
        self.addresses: set[int] = set()  # code addresses of what was dropped
        self.sequence = array("I")
        self._table: dict[bytes, int] = {}  # digest -> index in this trace's table
        self._digests = bytearray()
        self._places = array("Q"), array("Q"), array("Q"), array("Q")  # pack, offset,...
        self._before = AccessTrace()
        self._latency_before: list[tuple[int, int, str]] = []

    def flush(self, blocks: BlockTrace, memory: AccessTrace,
              latency: list[tuple[int, int, str]]) -> None:
        """Store and drop the chunks held that end before the last cut so far."""
        try:
            self._flush(blocks, memory, latency, False)
        except OSError:
            self.failed = True

    def finish(self, blocks: BlockTrace, memory: AccessTrace,
               latency: list[tuple[int, int, str]], operands: list[tuple[int, ...]],
               threads: list[tuple[int, int]]) -> StoredTrace:
        """Store the rest of the trace (and drop it); raises OSError (no room, now or at a
        flush before)."""
        self._flush(blocks, memory, latency, True)
        if self.failed:
            raise OSError(28, "no room for a full trace's chunks")
        packs, offsets, lengths, sizes = self._places
        return StoredTrace(self.directory, self.sequence, bytes(self._digests), packs,
                           offsets, lengths, sizes, self._before, self._latency_before,
                           list(operands), list(threads))

    def _flush(self, blocks: BlockTrace, memory: AccessTrace,
               latency: list[tuple[int, int, str]], final: bool) -> None:
        offset, n = blocks.offset, len(blocks.starts)
        self._cuts += self._cutter.feed(blocks.starts, blocks.rsps,
                                        self._cutter.fed - offset)
        bounds = [c - offset for c in self._cuts]
        if final:
            bounds.append(n)
        if len(bounds) < 2 and self._started:
            return  # no chunk ends yet
        chunks = TraceChunks(blocks, memory, latency, bounds or [0])
        count = len(chunks.bounds) - 1
        if not self._started:
            self._started = True
            self._before, self._latency_before = chunks.before()
        end = chunks.bounds[count]  # blocks stored
        events = chunks.events[count]
        held = bisect_left(chunks.latency_blocks, end)
        try:
            if not self.failed:
                self._add(chunks, count)
        finally:
            self._cuts = self._cuts[count:]
            if not final:  # drop it, keeping the addresses the trial's `where` needs
                self.addresses.update(blocks.starts[:end], blocks.lasts[:end],
                                      memory.pcs[:events], (pc for _, pc, _ in latency[:held]))
                blocks.drop(end)
                memory.drop(events)
                del latency[:held]

    def _add(self, chunks: TraceChunks, count: int) -> None:
        """Store the first ``count`` chunks."""
        store = self._store()
        store._refresh()
        try:
            self._put(store, chunks, count)
        except OSError:
            store._lost()
            raise

    def _put(self, store: ChunkStore, chunks: TraceChunks, count: int) -> None:
        table, digests = self._table, self._digests
        packs, offsets, lengths, sizes = self._places
        pending: list[bytes | memoryview] = []
        pending_size = 0
        records: list[bytes] = []
        fresh: dict[bytes, tuple[int, int, int]] = {}  # known once written and announced
        for c in range(count):
            chunk = chunks.load(c)
            parts = _parts(chunk)
            d = _digest(parts)
            t = table.get(d)
            if t is None:
                place = store._known.get(d)
                if place is None:
                    size = _pending_size(parts)
                    place = fresh[d] = (store.pack, store._size + pending_size, size)
                    pending.extend(parts)
                    pending_size += size
                    records.append(_RECORD.pack(d, *place))
                    if len(pending) > 900:  # writev takes at most IOV_MAX (1024) pieces
                        store._write(pending)
                        pending_size = 0
                t = table[d] = len(table)
                digests += d
                packs.append(place[0])
                offsets.append(place[1])
                lengths.append(place[2])
                sizes.append(len(chunk.starts))
            self.sequence.append(t)
        store._write(pending)
        if records:
            fd = os.open(os.path.join(store.directory, INDEX),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, [b"".join(records)])
            finally:
                os.close(fd)
        store._known.update(fresh)


_STORES: dict[str, ChunkStore] = {}


def store_for(directory: str) -> ChunkStore:
    """This process's store in ``directory`` (a forked process gets its own pack, and
    starts knowing what its parent knew)."""
    store = _STORES.get(directory)
    if store is not None and store.pid == os.getpid():
        return store
    fresh = ChunkStore(directory)
    if store is not None:  # inherited across a fork: the parent's chunks are on disk
        fresh._known = dict(store._known)
        fresh._index_read = store._index_read
    _STORES[directory] = fresh
    return fresh


def forget_store(directory: str) -> None:
    """The check using ``directory`` is over: close this process's store there and let go
    of the chunks read lately."""
    store = _STORES.pop(directory, None)
    if store is not None and store.pid == os.getpid():
        store.close()
    _DECODED.clear()
    _decoded_bytes[0] = 0
