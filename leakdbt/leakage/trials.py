"""Trials: the program run once per set of secret values, everything else fixed.

Trial values come from a generator seeded with the check's seed (``TrialInput``); a trial
writes them where the contract says — argv, environment, standard input, a file (relative
path), a register or buffer at each entry of a function, or a global object at start — and
runs the program under :mod:`leakdbt.leakage.observe`.  Every trial starts from the same
state: the same binary, public inputs and environment, and virtual time (fixed AT_RANDOM,
seeded getrandom, a clock that advances by a fixed step per reading), so two trials with
equal secrets observe exactly the same thing; whatever differs between trials with
different secrets depends on the secrets.  (``leakdbt check`` may fork the trials of argv and
env secrets from one run up to the first access of a secret: leakdbt.leakage.snapshot.)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Protocol

from leakdbt.contract.model import Contract
from leakdbt.dbt.dispatch import Dispatcher, Mode, RegionRequest
from leakdbt.dbt.harden import Hardener
from leakdbt.errors import GuestError
from leakdbt.leakage.chunks import StoredTrace, TraceWriter, store_for
from leakdbt.leakage.declassify import (
    DeclassifiedRecorder,
    check_points_found,
    declassified_view,
)
from leakdbt.leakage.directed import Comparison, ComparisonRecorder
from leakdbt.leakage.findings import LeakKind, Trial
from leakdbt.leakage.observe import RunObserver, Trace
from leakdbt.loader.modules import ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.run.scope import FunctionScope, scoped_functions
from leakdbt.run.secrets import SecretInputs, place_in_process
from leakdbt.run.session import ExecOptions, execute

VIRTUAL_TIME_SEED = 0  # the same in every trial: only the secrets differ
# A spilled trial stores its trace while it runs, each time this many more blocks are held
# (then holds at most this many and one chunk: leakdbt.leakage.chunks.TraceWriter).
FLUSH_BLOCKS = 1 << 14


@dataclass(frozen=True)
class TrialInput:
    """One trial's secret values (raw bytes, ``length`` of each secret)."""

    index: int
    values: tuple[tuple[str, bytes], ...]

    def public(self) -> Trial:
        """The trial as reports show it (values in hex)."""
        return Trial(self.index, tuple((name, v.hex()) for name, v in self.values))


def trial_inputs(contract: Contract, count: int, seed: int) -> list[TrialInput]:
    """``count`` trials of values for every secret, reproducible by ``seed``.

    The contract's ``check.values`` come first (a secret without a given value for a trial
    gets a generated one).  Of the rest, most are uniformly random.  Random values almost
    never take a path guarded by a special value, so of every six trials from the second
    on, four are instead: all zero bytes, all 0xff bytes, random with each 16-bit word
    zeroed with probability 1/2, and the first trial's value with a random suffix."""
    rng = random.Random(seed)
    given = dict(contract.check.values)
    first: dict[str, bytes] = {}
    trials = []
    for i in range(count):
        values = []
        for s in contract.secrets:
            n = s.length
            shape = i % 6 if i else 0
            if i < len(given.get(s.name, ())):
                value = given[s.name][i]
            elif shape == 1:
                value = bytes(n)
            elif shape == 2:
                value = b"\xff" * n
            elif shape == 3:
                words = bytearray(rng.randbytes(n))
                for w in range(0, n, 2):
                    if rng.random() < 0.5:
                        words[w:w + 2] = bytes(len(words[w:w + 2]))
                value = bytes(words)
            elif shape == 4 and n > 1:
                keep = rng.randrange(1, n)
                value = first[s.name][:keep] + rng.randbytes(n - keep)
            else:
                value = rng.randbytes(n)
            first.setdefault(s.name, value)
            values.append((s.name, value))
        trials.append(TrialInput(i, tuple(values)))
    return trials


@dataclass
class TrialRun:
    """What one trial did and showed."""

    trial: TrialInput
    trace: Trace
    status: int
    stdout: bytes
    stderr: bytes
    error: str = ""  # the one-line report of a guest error (crash, limit), if any
    where: dict[int, Place] = field(default_factory=dict)  # full runs: the trace's code
    declassified: tuple[tuple[str, object], ...] = ()  # what it reveals on purpose
    comparisons: list[Comparison] = field(default_factory=list)  # recorded: directed trials
    spilled: str = ""  # the file holding the full trace's chunk list and ``where`` (spill)
    stored: StoredTrace | None = None  # with_stored_trace: the full trace, chunk by chunk

    def with_stored_trace(self) -> TrialRun:
        """This run with its full trace as the chunks stored for it (``stored``: read chunk
        by chunk, leakdbt.leakage.chunks) and its ``where`` and thread switches read back
        from its file (itself when not spilled)."""
        if not self.spilled:
            return self
        with open(self.spilled, "rb") as f:
            stored, where = pickle.load(f)
        return replace(self, trace=replace(self.trace, threads=list(stored.threads)),
                       where=where, spilled="", stored=stored)

    def with_full_trace(self) -> TrialRun:
        """This run with its whole full trace read back (itself when not spilled)."""
        run = self.with_stored_trace()
        if run.stored is None:
            return run
        blocks, memory, latency = run.stored.full()
        t = run.trace
        trace = Trace(dict(t.digests), t.instructions, t.cost, t.scope_ns, blocks, memory,
                      latency, list(run.stored.operands), list(run.stored.threads))
        return replace(run, trace=trace, stored=None)

    def without_full_trace(self) -> TrialRun:
        """This run with its trace reduced to the figures and digests (``where`` kept)."""
        t = self.trace
        return replace(self, trace=Trace(dict(t.digests), t.instructions, t.cost, t.scope_ns),
                       stored=None)


@dataclass(frozen=True)
class Place:
    """Where a runtime address of a trace is in the program: the original instruction it
    stands for (code-cache addresses map back to it), its module and symbolic name."""

    original: int  # runtime address of the original instruction
    module: str  # file name of its module ("" when in no module)
    module_path: str
    link_address: int  # in the module's own numbering
    symbolic: str  # ``symbol+0xOFF`` (main program) or ``lib.so:symbol+0xOFF``
    is_main: bool


@dataclass(frozen=True)
class Observation:
    """What to record: observers, the memory unit, latency classes, full traces or not."""

    observers: tuple[LeakKind, ...]
    unit: int
    latency_classes: tuple[str, ...]
    full: bool = False
    comparisons: bool = False  # record the comparisons run in scope (directed trials)
    # A directory: record in full, but store the full trace there (its chunks in the
    # check's chunk store, its chunk list and ``where`` in a file of its own) and return the
    # run with digests only (TrialRun.spilled), so that a run whose trace is needed later
    # need not run again and no process holds every trace at once.
    spill: str = ""


class RunWatcher(Protocol):
    """Watches a trial's run from the inside (leakdbt.leakage.snapshot.Snapshot)."""

    def set_stdio(self, stdio: tuple[int, int, int]) -> None:
        """The host fds of the run's guest fds 0-2, before it starts."""

    def attach(self, machine: Machine) -> None:
        """The run starts on ``machine`` (its observers attached)."""

    def finish(self, run: TrialRun) -> TrialRun:
        """The run is over: what to return for it (a forked trial ends here instead)."""


@dataclass
class TrialSetup:
    """Everything that is the same in every trial."""

    binary: str
    contract: Contract
    mode: Mode
    regions: Sequence[RegionRequest] = ()
    hardener_factory: Callable[[], Hardener] | None = None
    max_insns: int = 0
    timeout: float = 0.0  # host seconds per trial, loading included (0: none)

    def secrets(self, t: TrialInput) -> SecretInputs:
        """The run's inputs with the trial's secret values in place."""
        return SecretInputs(self.contract, [v for _, v in t.values])

    @contextlib.contextmanager
    def inputs(self, t: TrialInput) -> Iterator[tuple[ExecOptions, IO[bytes], IO[bytes]]]:
        """The trial's inputs in place — argv, environment, standard input, file secrets in a
        fresh working directory — as the options of its run, with the files that collect
        its standard output and error."""
        inputs = self.secrets(t)
        files = inputs.files()
        with tempfile.TemporaryDirectory(prefix="leakdbt-trial-") as work, \
                tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:
            stdin.write(inputs.stdin())
            stdin.seek(0)
            for path, data in files.items():
                full = os.path.join(work, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(data)
            yield ExecOptions(
                argv=inputs.argv(self.binary), env=inputs.env(), cwd=work if files else None,
                max_insns=self.max_insns, timeout=self.timeout, regions=self.regions,
                mode=self.mode,
                hardener=self.hardener_factory() if self.hardener_factory else None,
                stdio=(stdin.fileno(), out.fileno(), err.fileno()),
                virtual_time=VIRTUAL_TIME_SEED), out, err

    def run(self, t: TrialInput, what: Observation, snapshot: RunWatcher | None = None
            ) -> TrialRun:
        """Run one trial and observe it (as the template of ``snapshot``: see
        :mod:`leakdbt.leakage.snapshot`; a trial forked from it ends inside this call)."""
        observers: list[RunObserver] = []
        recorders: list[DeclassifiedRecorder] = []
        compared: list[ComparisonRecorder] = []
        translators: list[Dispatcher | None] = []
        maps: list[ModuleMap] = []
        writer = TraceWriter(what.spill, lambda: store_for(what.spill)) \
            if what.spill and not what.full else None
        with self.inputs(t) as (options, out, err):
            if snapshot is not None:
                assert options.stdio is not None
                snapshot.set_stdio(options.stdio)

            def start(machine: Machine, translator: Dispatcher | None) -> None:
                translators.append(translator)
                observers.append(self._attach(machine, maps[0], t, what))
                if writer is not None and len(observers) == 1:
                    observers[0].flush_every(FLUSH_BLOCKS, lambda trace: writer.flush(
                        trace.blocks, trace.memory, trace.latency))
                if what.comparisons:
                    compared.append(ComparisonRecorder(machine, observers[0].scope,
                                                       maps[0].symbolize))
                recorders.append(DeclassifiedRecorder(machine, maps[0],
                                                      self.contract.check.declassify_at))
                if snapshot is not None:
                    snapshot.attach(machine)

            options.on_modules = maps.append
            options.on_start = start
            error = ""
            started = time.perf_counter_ns()
            try:
                status = execute(self.binary, options).exit_status
            except GuestError as e:
                status, error = e.exit_status, e.one_line()
            if observers[0].everywhere:  # the whole run is the scope
                observers[0].trace.scope_ns = time.perf_counter_ns() - started
            out.seek(0)
            err.seek(0)
            run = TrialRun(t, observers[0].trace, status, out.read(), err.read(), error)
            if recorders:
                check_points_found(recorders[0])
            run.declassified = declassified_view(self.contract, run.stdout, run.stderr,
                                                 (status, error),
                                                 recorders[0].values if recorders else {})
            if compared:
                run.comparisons = compared[0].comparisons
            if what.full or what.spill:
                run.where = _locations(observers[0], maps[0], translators[0],
                                       writer.addresses if writer is not None else set())
            observers[0].release()  # run.trace keeps the trace
            if writer is not None:
                run = _spill(run, what.spill, writer)
            return run if snapshot is None else snapshot.finish(run)

    def _attach(self, machine: Machine, modules: ModuleMap, t: TrialInput, what: Observation
                ) -> RunObserver:
        """Observers, and the trial's register, buffer and global secrets in place — for the
        modules loaded now and for those the guest loads later."""
        scope = FunctionScope(machine, scoped_functions(self.contract))
        scope.watch(modules, returns=False)  # the observer checks at every block
        observer = RunObserver(machine, what.observers, what.unit, what.latency_classes,
                               scope, what.full or bool(what.spill))
        place_in_process(machine, modules, self.contract, [v for _, v in t.values])
        return observer


def _spill(run: TrialRun, directory: str, writer: TraceWriter) -> TrialRun:
    """``run`` with its full trace moved to ``directory``: its chunks to the check's chunk
    store there (those no trial stored before; ``writer`` has stored those of the blocks
    it dropped while the trial ran), the list of its chunks and its ``where`` to a new
    file of its own."""
    light = replace(run.without_full_trace(), where={})
    path = ""
    try:
        t = run.trace
        stored = writer.finish(t.blocks, t.memory, t.latency, t.operands, t.threads)
        fd, path = tempfile.mkstemp(prefix=f"trial-{run.trial.index}-", suffix=".trace",
                                    dir=directory)
        with os.fdopen(fd, "wb") as f:
            pickle.dump((stored, run.where), f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError:  # no room: keep digests only (a trial traced later runs again)
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return light
    return replace(light, spilled=path)


def discard_spilled(runs: Sequence[TrialRun]) -> None:
    """Remove the files of the runs' full traces (no longer needed; their chunks stay in
    the store until its directory goes: other runs may share them)."""
    for r in runs:
        if r.spilled:
            with contextlib.suppress(OSError):
                os.unlink(r.spilled)
            r.spilled = ""


def _locations(observer: RunObserver, modules: ModuleMap, translator: Dispatcher | None,
               dropped: set[int]) -> dict[int, Place]:
    """Where every address of a full trace is (see :class:`Place`); ``dropped``: those of
    the part stored and dropped while it ran."""
    t = observer.trace
    addresses = set(t.blocks.starts) | set(t.blocks.lasts) | set(t.memory.pcs) \
        | {pc for _, pc, _ in t.latency} | dropped
    out = {}
    files: dict[str, tuple[str, int, int, int] | None] = {}
    for a in addresses:
        orig = translator.original_of(a) if translator is not None else None
        target = a if orig is None else orig
        mod = modules.find(target)
        if mod is None:
            out[a] = Place(target, "", "", target, f"{target:#x}", False)
        else:
            if mod.host_path not in files:
                files[mod.host_path] = _file_identity(mod.host_path)
            key = (files[mod.host_path], mod.name, mod.is_main, mod.base, target)
            symbolic = SYMBOLIC.get(key) if key[0] is not None else None
            if symbolic is None:
                symbolic = modules.symbolize(target)
                if key[0] is not None and len(SYMBOLIC) < MAXSYMBOLIC:
                    SYMBOLIC[key] = symbolic
            out[a] = Place(target, mod.name, mod.host_path, target - mod.base, symbolic,
                           mod.is_main)
    return out


# Symbolic names of addresses in a module file, kept across the trials a process runs (a
# trial loads the program afresh: without this, every full trace decodes the symbol tables
# again).  Keyed by the file's identity, so a file changed on disk is not misnamed.
SYMBOLIC: dict[tuple[object, ...], str] = {}
MAXSYMBOLIC = 1 << 20


def _file_identity(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_ino, st.st_size, st.st_mtime_ns
