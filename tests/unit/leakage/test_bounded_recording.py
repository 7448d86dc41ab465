"""Bounded memory for long runs (issue 16): a spilled trial stores its full trace while it
runs (leakdbt.leakage.chunks.TraceWriter), holding at most FLUSH_BLOCKS blocks and one
chunk, and stores exactly what storing the whole trace at the end stores — the same
chunks, the same pack bytes, the same StoredTrace — with the C helpers and without, and
for real runs recorded by the C hooks and by the Python hooks."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage import chunks, observe, trials
from leakdbt.leakage.check import CheckOptions, run_check
from leakdbt.leakage.chunks import ChunkStore, Cutter, StoredTrace, TraceWriter
from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.observe import Trace
from leakdbt.leakage.trials import Observation, TrialRun, TrialSetup, trial_inputs
from tests.conftest import REPO, binary

STACK = 0x7FFF_0000


def _pattern(rng: random.Random, iterations: int) -> list[int]:
    """A loop whose body calls a function (ids 8-11), branches on a random bit, and now
    and then runs a long stretch without a return (ids 12-15: few candidate cuts)."""
    out: list[int] = []
    for _ in range(iterations):
        out += [0, 1, 8, 9, 10, 11, 2]
        out += [3] if rng.random() < 0.5 else [4, 5]
        if rng.random() < 0.02:
            out += [rng.randrange(12, 16) for _ in range(rng.randrange(50, 400))]
        out += [6, 7]
    return out


class _Recorder:
    """Records a synthetic run the way RunObserver does: blocks appended one by one, each
    event numbered by the blocks recorded so far (``len(blocks)``, dropped ones
    included)."""

    def __init__(self) -> None:
        self.trace = Trace(blocks=BlockTrace(), memory=AccessTrace())
        self.held: list[int] = []  # blocks held after each block

    def record(self, rng: random.Random, pattern: list[int]) -> Trace:
        t = self.trace
        t.memory.extend(-1, 0x999, False, [1, 2])  # before any block
        t.latency.append((-1, 0x998, "dividend:1 divisor:1"))
        t.operands.append((1, 2))
        for block in pattern:
            rsp = STACK - (16 if 8 <= block < 12 else 0)
            t.blocks.append((0x1000 + 16 * block, 0x1008 + 16 * block, rsp))
            k = len(t.blocks) - 1
            for n in range(block % 4):
                t.memory.extend(k, 0x1000 + 16 * block + n, n == 2, [rng.randrange(5, 7)])
            if block == 3:
                t.latency.append((k, 0x1030, rng.choice(("dividend:3 d:2", "x"))))
                t.operands.append((k,))
            if k % 1000 == 0:
                t.threads.append((k, k // 1000 % 2))
            self.held.append(len(t.blocks.starts))
        return t


def _store(directory: Path) -> ChunkStore:
    directory.mkdir()
    store = ChunkStore(str(directory))
    store.pack = 1  # the same pack name in both stores: their bytes compare
    return store


def _same_stored(a: StoredTrace, b: StoredTrace) -> None:
    assert (a.sequence, a.digests, a.packs, a.offsets, a.lengths, a.sizes) == \
        (b.sequence, b.digests, b.packs, b.offsets, b.lengths, b.sizes)
    assert (a.before, a.latency_before, a.operands, a.threads) == \
        (b.before, b.latency_before, b.operands, b.threads)


def _streamed(tmp_path: Path, pattern: list[int], limit: int, seed: int
              ) -> tuple[StoredTrace, StoredTrace, _Recorder, TraceWriter, Trace]:
    """The trace of ``pattern`` stored at the end and stored while recorded."""
    whole = _Recorder().record(random.Random(seed), pattern)
    at_end = _store(tmp_path / "end")
    expected = at_end.put(whole.blocks, whole.memory, whole.latency, whole.operands,
                          whole.threads)
    at_end.close()
    streaming = _store(tmp_path / "stream")
    writer = TraceWriter(streaming.directory, lambda: streaming)
    rec = _Recorder()
    t = rec.trace
    t.blocks.watch(limit, lambda: writer.flush(t.blocks, t.memory, t.latency))
    rec.record(random.Random(seed), pattern)
    stored = writer.finish(t.blocks, t.memory, t.latency, t.operands, t.threads)
    streaming.close()
    return expected, stored, rec, writer, whole


@pytest.mark.parametrize("helpers", ["c", "python"])
@pytest.mark.parametrize(("min_blocks", "max_blocks", "limit"),
                         [(8, 1024, 300), (4, 32, 10), (4, 32, 1)])
def test_a_trace_stored_while_recorded_is_the_trace_stored_at_the_end(
        helpers: str, min_blocks: int, max_blocks: int, limit: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "MIN_BLOCKS", min_blocks)
    monkeypatch.setattr(chunks, "MAX_BLOCKS", max_blocks)
    if helpers == "python":
        monkeypatch.setattr(chunks, "_helpers", lambda: None)
    else:
        assert chunks._helpers() is not None
    pattern = _pattern(random.Random(limit), 700)
    expected, stored, rec, writer, whole = _streamed(tmp_path, pattern, limit, 3)
    assert len(expected.bounds) > 20 and expected.bounds[-1] == len(pattern)
    _same_stored(stored, expected)
    for name in ("pack-0000000000000001", chunks.INDEX):  # byte for byte
        assert (tmp_path / "stream" / name).read_bytes() == \
            (tmp_path / "end" / name).read_bytes()
    # memory stayed bounded: at most the limit and one chunk held, ever
    assert max(rec.held) <= limit + max_blocks
    assert len(rec.trace.blocks) == len(pattern) > rec.trace.blocks.offset > 0
    # the events still held point at the right blocks, and what was dropped is remembered
    held = rec.trace
    assert all(b >= held.blocks.offset for b in held.memory.blocks)
    addresses = set(whole.blocks.starts) | set(whole.blocks.lasts) | set(whole.memory.pcs) \
        | {pc for _, pc, _ in whole.latency}
    assert writer.addresses | set(held.blocks.starts) | set(held.blocks.lasts) \
        | set(held.memory.pcs) | {pc for _, pc, _ in held.latency} == addresses
    chunks._DECODED.clear()
    blocks, memory, latency = stored.full()
    assert blocks == whole.blocks and memory == whole.memory and latency == whole.latency


def test_short_and_empty_traces_are_stored_alike(tmp_path: Path) -> None:
    for n, pattern in enumerate(([], [3], _pattern(random.Random(1), 3))):
        (tmp_path / str(n)).mkdir()
        expected, stored, rec, _, _ = _streamed(tmp_path / str(n), pattern, 10_000, 5)
        _same_stored(stored, expected)
        assert expected.bounds[-1] == len(pattern)
        assert rec.trace.blocks.offset == 0  # never full: nothing dropped


def test_cuts_fed_in_pieces_are_the_cuts_of_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    for helpers in (True, False):
        with monkeypatch.context() as m:
            if not helpers:
                m.setattr(chunks, "_helpers", lambda: None)
            for _ in range(20):
                t = _Recorder().record(rng, _pattern(rng, rng.randrange(1, 200)))
                whole = chunks.chunk_bounds(t.blocks)
                cutter, cuts, at = Cutter(), [], 0
                starts, rsps = t.blocks.starts, t.blocks.rsps
                while at < len(starts):
                    step = rng.randrange(1, 300)
                    cuts += cutter.feed(starts[:at + step], rsps[:at + step], at)
                    at = min(len(starts), at + step)
                assert [*cuts, len(starts)] == whole and cutter.fed == len(starts)


def test_a_flush_without_room_drops_what_it_held_and_the_trial_keeps_digests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path / "s")
    writer = TraceWriter(store.directory, lambda: store)
    rec = _Recorder()
    t = rec.trace
    t.blocks.watch(100, lambda: writer.flush(t.blocks, t.memory, t.latency))
    writev = chunks.os.writev

    def full_disk(fd: int, views: list) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunks.os, "writev", full_disk)
    rec.record(random.Random(2), _pattern(random.Random(2), 200))
    assert writer.failed and max(rec.held) <= 100 + chunks.MAX_BLOCKS
    monkeypatch.setattr(chunks.os, "writev", writev)
    with pytest.raises(OSError):
        writer.finish(t.blocks, t.memory, t.latency, t.operands, t.threads)


# -- real runs --------------------------------------------------------------------------


def _spilled(setup: TrialSetup, trial: object, directory: Path, native: bool,
             monkeypatch: pytest.MonkeyPatch) -> tuple[TrialRun, list[tuple[int, int]]]:
    """A spilled run, and at each flush (blocks held in Python, blocks held by the C
    hooks: 0 for the Python hooks)."""
    init = observe.RunObserver.__init__
    flushes: list[tuple[int, int]] = []
    recorders: list[observe.RunObserver] = []

    def with_recorder(self: observe.RunObserver, *args: object, **kw: object) -> None:
        kw["native"] = native
        init(self, *args, **kw)  # type: ignore[arg-type]
        recorders.append(self)

    flush = TraceWriter.flush

    def counting(self: TraceWriter, blocks: BlockTrace, *args: object) -> None:
        c = recorders[0]._native
        flushes.append((len(blocks.starts), int(c.state.starts.len) if c else 0))
        flush(self, blocks, *args)  # type: ignore[arg-type]

    directory.mkdir()
    with monkeypatch.context() as m:
        m.setattr(observe.RunObserver, "__init__", with_recorder)
        m.setattr(TraceWriter, "flush", counting)
        what = Observation(tuple(LeakKind), 64, ("int-div",), spill=str(directory))
        return setup.run(trial, what), flushes  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [True, False])
def test_a_real_run_stored_while_recorded_is_stored_as_at_the_end(
        built: Path, native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = binary("static", "ossl_modexp")
    c = load(REPO / "contracts" / "ossl_modexp_leaky.toml", binary=exe)
    setup = TrialSetup(exe, c, Mode.FAST)
    trial = trial_inputs(c, 2, c.check.seed)[1]
    monkeypatch.setattr(trials, "FLUSH_BLOCKS", 1 << 40)
    at_end, none = _spilled(setup, trial, tmp_path / "end", native, monkeypatch)
    assert none == []  # never full: stored at the end
    limit = 300
    monkeypatch.setattr(trials, "FLUSH_BLOCKS", limit)
    bounded, flushes = _spilled(setup, trial, tmp_path / "bounded", native, monkeypatch)
    a, b = at_end.with_stored_trace(), bounded.with_stored_trace()
    assert a.stored is not None and b.stored is not None
    assert len(a.stored.bounds) > 10 and a.stored.bounds[-1] > 10 * limit
    assert len(flushes) >= a.stored.bounds[-1] // (limit + chunks.MAX_BLOCKS)
    assert max(held for held, _ in flushes) <= limit + chunks.MAX_BLOCKS
    assert all(in_c <= limit for _, in_c in flushes)
    if native:
        assert all(in_c > 0 for _, in_c in flushes)
    x, y = a.stored, b.stored
    assert (x.sequence, x.digests, x.lengths, x.sizes) == \
        (y.sequence, y.digests, y.lengths, y.sizes)
    assert (x.before, x.latency_before, x.operands, x.threads) == \
        (y.before, y.latency_before, y.operands, y.threads)
    assert a.where == b.where and a.trace.digests == b.trace.digests
    chunks._DECODED.clear()
    assert x.full() == y.full()


@pytest.mark.parametrize(("program", "snapshots", "jobs"),
                         [("sbox_round", True, 2), ("ossl_modexp_leaky", False, 1)])
def test_a_check_storing_traces_as_they_run_reports_the_same(
        built: Path, program: str, snapshots: bool, jobs: int, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials forked from a snapshot (the template may have stored chunks before the fork:
    each child goes on in a pack of its own) and trials run afresh, in worker processes or
    not: the report is the one of the check that stores each trace at its end."""
    exe = binary("static", "ossl_modexp" if program.startswith("ossl") else program)
    c = load(REPO / "contracts" / f"{program}.toml", binary=exe)
    options = CheckOptions(trials=6, jobs=jobs, snapshots=snapshots)
    reports = []
    counter = tmp_path / "flushes"
    flush = TraceWriter.flush

    def counting(self: TraceWriter, *args: object) -> None:
        with open(counter, "ab") as f:  # from every process: forked ones too
            f.write(b".")
        flush(self, *args)  # type: ignore[arg-type]

    for limit in (1 << 40, 40):
        with monkeypatch.context() as m:
            m.setattr(trials, "FLUSH_BLOCKS", limit)
            m.setattr(TraceWriter, "flush", counting)
            report = run_check(exe, c, get_profile("intel-skylake"), options)
        reports.append({k: v for k, v in dataclasses.asdict(report).items()
                        if k != "seconds"})
        if limit != 40:
            assert not counter.exists()  # never full: each trace stored at its end
    assert reports[0]["findings"] and reports[0] == reports[1]
    assert counter.stat().st_size > 6  # every trial stored chunks as it ran
