"""Chunked full traces (leakdbt.leakage.chunks) and the aligner that reads them chunk by
chunk: the C and Python chunkers cut alike, a stored trace reads back exactly, identical
chunks are stored once (across trials and processes), and the chunked aligner finds
exactly what the aligner that held whole traces found (reference_align.py, the code
before) and what the block-by-block walk finds — on random traces and on real runs."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage import align, chunks
from leakdbt.leakage.chunks import ChunkStore, StoredTrace, TraceChunks, store_for
from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.observe import Trace
from leakdbt.leakage.trials import Observation, TrialSetup, trial_inputs
from tests.conftest import REPO, binary
from tests.unit.leakage import reference_align

STACK = 0x7FFF_0000


def _trace(rng: random.Random, pattern: list[int], noise: float = 0.0) -> Trace:
    """Blocks from ``pattern`` (block ids): ids 8-11 are a called function (a lower stack
    pointer), each block has 0-3 accesses (units varying with probability ``noise``), the
    blocks of id 3 a latency event; a few accesses and a latency event before any block."""
    t = Trace(blocks=BlockTrace(), memory=AccessTrace())
    t.memory.extend(-1, 0x999, False, [1, 2])
    t.latency.append((-1, 0x998, "dividend:1 divisor:1"))
    for k, block in enumerate(pattern):
        rsp = STACK - (16 if 8 <= block < 12 else 0)
        t.blocks.append((0x1000 + 16 * block, 0x1008 + 16 * block, rsp))
        for n in range(block % 4):
            unit = 6 if rng.random() < noise else 5
            t.memory.extend(k, 0x1000 + 16 * block + n, n == 2, [unit])
        if block == 3:
            t.latency.append((k, 0x1030, "x" if rng.random() < noise else "dividend:3 d:2"))
    return t


def _loop(rng: random.Random, iterations: int) -> list[int]:
    """A loop whose body calls a function (ids 8-11) and branches on a random bit."""
    out: list[int] = []
    for _ in range(iterations):
        out += [0, 1, 8, 9, 10, 11, 2]
        out += [3] if rng.random() < 0.5 else [4, 5]
        out += [6, 7]
    return out


def _found(ds: list) -> list[tuple]:
    return [(d.kind, d.address, d.first, d.second, d.blocks) for d in ds]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4 to 32 blocks and a short window: many chunks, windows read afresh."""
    monkeypatch.setattr(chunks, "MIN_BLOCKS", 4)
    monkeypatch.setattr(chunks, "MAX_BLOCKS", 32)
    monkeypatch.setattr(align, "KEEP", 64)


def test_the_c_and_python_chunkers_cut_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chunks._helpers() is not None  # built at install: the comparison is real
    rng = random.Random(3)
    for _ in range(30):
        t = _trace(rng, [rng.randrange(16) for _ in range(rng.randrange(0, 3000))])
        native = chunks.chunk_bounds(t.blocks), chunks.block_counts(t.memory.blocks,
                                                                    len(t.blocks))
        with monkeypatch.context() as m:
            m.setattr(chunks, "_helpers", lambda: None)
            python = chunks.chunk_bounds(t.blocks), chunks.block_counts(t.memory.blocks,
                                                                        len(t.blocks))
        assert native == python
        bounds = native[0]
        assert bounds[0] == 0 and bounds[-1] == len(t.blocks)
        assert all(0 < b - a <= chunks.MAX_BLOCKS
                   for a, b in zip(bounds, bounds[1:], strict=False))
        starts, rsps = t.blocks.starts, t.blocks.rsps
        for before, k in zip(bounds, bounds[1:-1], strict=False):  # returns or forced
            assert k - before == chunks.MAX_BLOCKS or rsps[k] > rsps[k - 1] \
                or chunks._address_hash(starts[k]) & chunks.CUT_MASK == 0
        assert native[1][1] == 2  # the two accesses before any block


def test_a_recorder_built_before_the_helpers_falls_back_to_python(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chunks._helpers.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(chunks, "native_library", lambda: object())  # no tr_chunk_cuts
        assert chunks._helpers() is None
        t = _trace(random.Random(6), _loop(random.Random(6), 50))
        python = chunks.chunk_bounds(t.blocks)
    chunks._helpers.cache_clear()
    assert chunks._helpers() is not None and chunks.chunk_bounds(t.blocks) == python


def test_runs_that_part_and_meet_again_cut_alike_again() -> None:
    rng = random.Random(5)
    body = _loop(rng, 400)
    other = body[:100] + [12, 13, 14] * 7 + body[100:]  # a detour, then the same run
    a, b = TraceChunks(*_parts(_trace(rng, body))), TraceChunks(*_parts(_trace(rng, other)))
    ends_a = {len(body) - x for x in a.bounds}
    ends_b = {len(other) - x for x in b.bounds}
    late = {x for x in ends_a if x < len(body) - 200}
    assert late and late <= ends_b  # every cut well after the detour is at the same block


def _parts(t: Trace) -> tuple[BlockTrace, AccessTrace, list[tuple[int, int, str]]]:
    return t.blocks, t.memory, t.latency


def test_a_stored_trace_reads_back_exactly_and_repeats_are_stored_once(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    t = _trace(rng, _loop(random.Random(1), 2000))
    store = ChunkStore(str(tmp_path))
    stored = store.put(*_parts(t), [(1, 2)], [(0, 0), (5, 1)])
    blocks, memory, latency = stored.full()
    assert blocks == t.blocks and memory == t.memory and latency == t.latency
    assert stored.operands == [(1, 2)] and stored.threads == [(0, 0), (5, 1)]
    raw = t.blocks.nbytes() + t.memory.nbytes()
    assert 0 < store.written < raw / 10  # the loop's iterations repeat: stored once each
    first = store.written
    again = store.put(*_parts(t), [], [])
    assert store.written == first and again.digests == stored.digests  # nothing new
    # Another process (its own pack) learns from the index what is there already.
    other = ChunkStore(str(tmp_path))
    assert other.pack != store.pack
    other.put(*_parts(t), [], [])
    assert other.written == 0
    changed = _trace(rng, _loop(random.Random(1), 2000), noise=0.001)
    other.put(*_parts(changed), [], [])
    assert 0 < other.written < raw / 10  # the chunks around the few changed accesses


def test_a_forked_store_writes_its_own_pack_and_knows_its_parents_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trace(random.Random(2), _loop(random.Random(2), 300))
    parent = store_for(str(tmp_path))
    parent.put(*_parts(t), [], [])
    assert store_for(str(tmp_path)) is parent
    monkeypatch.setattr(chunks.os, "getpid", lambda: parent.pid + 1)
    child = store_for(str(tmp_path))
    assert child is not parent and child.pack != parent.pack
    child.put(*_parts(t), [], [])
    assert child.written == 0
    child.close()
    parent.close()


def test_chunks_cut_short_on_disk_are_an_error(tmp_path: Path) -> None:
    t = _trace(random.Random(4), _loop(random.Random(4), 50))
    stored = ChunkStore(str(tmp_path)).put(*_parts(t), [], [])
    for pack in tmp_path.glob("pack-*"):
        pack.write_bytes(pack.read_bytes()[:10])
    chunks._DECODED.clear()
    with pytest.raises(OSError, match="cut short"):
        stored.full()


def _compare(a: Trace, b: Trace, directory: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """The differences of ``a`` and ``b`` found by the aligner before (whole traces), by the
    chunked aligner on the traces in memory and stored, and block by block: all equal."""
    old = _found(reference_align.differences(a, b, 64))
    directory.mkdir()
    store = ChunkStore(str(directory))
    sa, sb = (store.put(*_parts(t), [], []) for t in (a, b))
    chunks._DECODED.clear()
    assert _found(align.differences(a, b, 64)) == old
    assert _found(align.differences(sa, sb, 64)) == old
    assert _found(align.Baseline(sa).differences(b, 64)) == old
    with monkeypatch.context() as m:
        m.setattr(align, "FIRST_STEP", 0)  # one block at a time, no chunk passed over
        assert _found(align.differences(sa, sb, 64)) == old
    return old


@pytest.mark.parametrize("chunking", ["default", "small"])
def test_the_chunked_aligner_finds_what_the_whole_trace_aligner_finds(
        chunking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    """Loops with rare differences in branches, accesses and latency classes, detours,
    early ends; long enough for many chunks, windows and resynchronisations."""
    if chunking == "small":
        request.getfixturevalue("small_chunks")
    rng = random.Random(16)
    seen = 0
    for n in range(60):
        pattern = _loop(rng, rng.randrange(20, 300))
        other = list(pattern)
        for _ in range(rng.randrange(0, 5)):
            k = rng.randrange(len(other))
            other[k:k + 1] = [rng.randrange(16)] * rng.randrange(0, 40)
        if rng.random() < 0.2:
            other = other[:rng.randrange(len(other))]
        a = _trace(random.Random(1), pattern, noise=0.002)
        b = _trace(rng, other, noise=0.002 if rng.random() < 0.5 else 0.0)
        seen += bool(_compare(a, b, tmp_path / str(n), monkeypatch))
    assert seen > 30  # most pairs differ somewhere: there was something to find


def test_equal_traces_differ_nowhere_and_empty_traces_work(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    t = _trace(random.Random(8), _loop(random.Random(8), 100))
    assert _compare(t, t, tmp_path / "same", monkeypatch) == []
    empty = Trace(blocks=BlockTrace(), memory=AccessTrace())
    assert _compare(empty, empty, tmp_path / "empty", monkeypatch) == []
    ends = _compare(t, empty, tmp_path / "one", monkeypatch)
    assert ends == []  # nothing in common: no block decided it
    (tmp_path / "e").mkdir()
    store = ChunkStore(str(tmp_path / "e"))
    stored = store.put(*_parts(empty), [], [])
    assert stored.bounds == [0] and stored.full()[0] == BlockTrace()


PROGRAMS = {"sbox_round": "sbox_round", "ossl_modexp_leaky": "ossl_modexp",
            "secret_div": "secret_div"}


@pytest.mark.parametrize("contract", sorted(PROGRAMS))
def test_real_traces_old_and_new_aligners_agree(built: Path, contract: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    exe = binary("static", PROGRAMS[contract])
    c = load(REPO / "contracts" / f"{contract}.toml", binary=exe)
    setup = TrialSetup(exe, c, Mode.FAST)
    full = Observation(tuple(LeakKind), 64, ("int-div",), full=True)
    runs = [setup.run(t, full).trace for t in trial_inputs(c, 4, c.check.seed)]
    found = 0
    for x, a in enumerate(runs):
        for y, b in enumerate(runs):
            found += bool(_compare(a, b, tmp_path / f"{x}-{y}", monkeypatch))
    assert found  # the trials differ somewhere


def test_stored_trace_pickles_small(tmp_path: Path) -> None:
    """What a trial's file holds: digests and places, not the events."""
    t = _trace(random.Random(9), _loop(random.Random(9), 3000))
    stored = ChunkStore(str(tmp_path)).put(*_parts(t), [], [])
    assert isinstance(stored, StoredTrace)
    bounds = stored.bounds
    assert len(bounds) > 100 and bounds[-1] == len(t.blocks)
    data = pickle.dumps(stored, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < (t.blocks.nbytes() + t.memory.nbytes()) / 5
    again = pickle.loads(data)
    assert again._bounds is None and again.bounds == bounds  # computed again, the same
    assert len(stored.digests) < len(bounds) * chunks.DIGEST / 10  # a table of distinct ones


def test_a_store_that_ran_out_of_room_forgets_what_it_did_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trace(random.Random(10), _loop(random.Random(10), 3000), noise=0.01)
    store = ChunkStore(str(tmp_path))
    first_pack = store.pack
    writev = chunks.os.writev
    calls = []

    def full_disk(fd: int, views: list) -> int:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return writev(fd, views)

    with monkeypatch.context() as m:
        m.setattr(chunks.os, "writev", full_disk)
        with pytest.raises(OSError):
            store.put(*_parts(t), [], [])
    assert len(calls) > 1  # it did fail after writing some
    stored = store.put(*_parts(t), [], [])
    assert store.pack != first_pack  # a new pack: the old one's end is unknown
    chunks._DECODED.clear()
    blocks, memory, latency = stored.full()
    assert blocks == t.blocks and memory == t.memory and latency == t.latency
