"""How `check` records long runs (issue 16): the native recorder (leakdbt/leakage/_trace.c)
gives exactly the traces and digests of the Python hooks; a spilled full trace reads back
as the full trace of a run; aligning by stretches finds exactly what the block-by-block
walk finds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage import align, observe
from leakdbt.leakage import trials as trials_module
from leakdbt.leakage.align import differences
from leakdbt.leakage.check import CheckOptions, default_jobs, run_check
from leakdbt.leakage.compact import AccessTrace, BlockTrace
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.native import mix, native_library
from leakdbt.leakage.observe import Trace
from leakdbt.leakage.trials import Observation, TrialRun, TrialSetup, trial_inputs
from tests.conftest import REPO, binary

ALL = tuple(LeakKind)
FULL = Observation(ALL, 64, ("int-div",), full=True)
# contract -> program: a latency leak, a table lookup, a bignum with both (OpenSSL)
PROGRAMS = {"secret_div": "secret_div", "sbox_round": "sbox_round",
            "ossl_modexp_leaky": "ossl_modexp"}


def _setup(contract: str, program: str) -> tuple[TrialSetup, list]:
    exe = binary("static", program)
    c = load(REPO / "contracts" / f"{contract}.toml", binary=exe)
    return TrialSetup(exe, c, Mode.FAST), trial_inputs(c, 3, c.check.seed)


def _run(setup: TrialSetup, trial: object, what: Observation, native: bool,
         monkeypatch: pytest.MonkeyPatch) -> TrialRun:
    init = observe.RunObserver.__init__

    def with_recorder(self: observe.RunObserver, *args: object, **kw: object) -> None:
        kw["native"] = native
        init(self, *args, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(observe.RunObserver, "__init__", with_recorder)
        return setup.run(trial, what)  # type: ignore[arg-type]


def _same(a: Trace, b: Trace) -> None:
    assert a.digests == b.digests
    assert (a.instructions, a.cost) == (b.instructions, b.cost)
    assert a.blocks == b.blocks and a.memory == b.memory
    assert a.latency == b.latency and a.operands == b.operands


def test_the_native_recorder_is_built() -> None:
    """`make install` builds it (a C compiler is there); without it the Python hooks run."""
    assert native_library() is not None


@pytest.mark.parametrize("contract", sorted(PROGRAMS))
def test_native_and_python_recording_give_the_same_trace(
        built: Path, contract: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, trials = _setup(contract, PROGRAMS[contract])
    for t in trials[:2]:
        native = _run(setup, t, FULL, True, monkeypatch)
        python = _run(setup, t, FULL, False, monkeypatch)
        assert len(native.trace.blocks) > 10 and native.trace.instructions > 100
        _same(native.trace, python.trace)
        assert native.where == python.where
        digest = _run(setup, t, Observation(ALL, 64, ("int-div",)), True, monkeypatch)
        assert digest.trace.digests == native.trace.digests
        assert len(digest.trace.blocks) == 0


def test_memory_digest_counts_every_unit_an_access_touches(
        built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte units: an 8-byte access is 8 units, in order (native and Python alike)."""
    setup, trials = _setup("sbox_round", "sbox_round")
    what = Observation(ALL, 1, ("int-div",), full=True)
    native = _run(setup, trials[0], what, True, monkeypatch)
    python = _run(setup, trials[0], what, False, monkeypatch)
    _same(native.trace, python.trace)
    digest = 0
    for _, _, kind, u in native.trace.memory:
        digest = mix(digest, u * 2 + (kind == "w"))
    assert digest == native.trace.digests[LeakKind.MEMORY_ACCESS]


def test_a_spilled_full_trace_reads_back_as_the_full_run(
        built: Path, tmp_path: Path) -> None:
    setup, trials = _setup("ossl_modexp_leaky", "ossl_modexp")
    spilled = setup.run(trials[1], Observation(ALL, 64, ("int-div",), spill=str(tmp_path)))
    assert spilled.spilled and Path(spilled.spilled).parent == tmp_path
    assert len(spilled.trace.blocks) == 0 and spilled.where == {}
    back = spilled.with_full_trace()
    full = setup.run(trials[1], FULL)
    _same(back.trace, full.trace)
    assert back.where == full.where and not back.spilled
    assert back.without_full_trace().trace.digests == full.trace.digests


@pytest.mark.parametrize("contract", sorted(PROGRAMS))
def test_stretches_find_what_the_block_by_block_walk_finds(
        built: Path, contract: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup, trials = _setup(contract, PROGRAMS[contract])
    runs = [setup.run(t, FULL) for t in trials]
    compared = 0
    for a in runs:
        for b in runs:
            fast = differences(a.trace, b.trace, 64)
            with monkeypatch.context() as m:
                m.setattr(align, "FIRST_STEP", 0)  # one block at a time
                slow = differences(a.trace, b.trace, 64)
            assert fast == slow
            compared += bool(fast)
    assert compared  # the trials differ somewhere: there was something to find


def _synthetic(rng: random.Random, pattern: list[int]) -> Trace:
    """A trace of blocks from ``pattern`` (block ids), each with 0-3 accesses."""
    t = Trace(blocks=BlockTrace(), memory=AccessTrace())
    for k, block in enumerate(pattern):
        t.blocks.append((0x1000 + 16 * block, 0x1008 + 16 * block, 0x7000))
        for n in range(block % 4):
            t.memory.extend(k, 0x1000 + 16 * block + n, n == 2, [rng.choice((5, 5, 5, 6))])
        if block == 3:
            t.latency.append((k, 0x1030, rng.choice(("dividend:3 divisor:2",) * 3 + ("x",))))
    return t


def test_stretches_match_the_walk_on_random_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loops with rare differences in branches, accesses and latency classes."""
    rng = random.Random(16)
    for _ in range(200):
        body = [rng.randrange(8) for _ in range(rng.randrange(1, 6))]
        pattern = body * rng.randrange(50, 200)
        other = list(pattern)
        for _ in range(rng.randrange(0, 4)):
            k = rng.randrange(len(other))
            other[k:k + 1] = [rng.randrange(8)] * rng.randrange(0, 3)
        a, b = _synthetic(random.Random(1), pattern), _synthetic(rng, other)
        fast = differences(a, b, 64)
        with monkeypatch.context() as m:
            m.setattr(align, "FIRST_STEP", 0)
            assert fast == differences(a, b, 64)


def test_jobs_default_to_the_cores_present() -> None:
    assert default_jobs() == len(os.sched_getaffinity(0))


def test_a_check_without_room_for_traces_runs_its_witnesses_again(
        built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spilling that fails (a full disk) keeps digests only; the trials to trace in full run
    again, and the findings are the same."""
    exe = binary("static", "secret_div")
    c = load(REPO / "contracts" / "secret_div.toml", binary=exe)
    # Every trial afresh (no forked snapshot): the runs of TrialSetup.run are counted.
    options = CheckOptions(trials=4, jobs=1, directed_rounds=0, snapshots=False)
    profile = get_profile("intel-skylake")
    spilled = run_check(exe, c, profile, options)
    ran: list[int] = []
    run = TrialSetup.run

    def counting(self: TrialSetup, t: object, what: Observation) -> TrialRun:
        ran.append(bool(what.full))
        return run(self, t, what)  # type: ignore[arg-type]

    def no_room(*_args: object, **_kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TrialSetup, "run", counting)
    monkeypatch.setattr(trials_module.pickle, "dump", no_room)
    again = run_check(exe, c, profile, options)
    assert spilled.findings and again.findings == spilled.findings
    assert ran.count(False) == 4 and ran.count(True) >= 2  # witnesses traced by running again
