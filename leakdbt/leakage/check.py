"""``leakdbt check``: run a program with different secrets and report what an adversary could
tell apart.

For each checked mode (original code, hardened code):

1. every trial runs once; trials whose digests agree observed the same;
2. if some observer saw more than one digest, one trial per distinct digest (up to
   :data:`MAX_WITNESS_RUNS`) is traced in full, each is aligned with the first
   (:mod:`leakdbt.leakage.align`), and every point where they differ becomes a finding, with
   two concrete trials as its witness;
3. outputs that differ between trials and are not declassified are reported too.

Full traces without running again: when the trials run here (not by a ``runner``), each
records its full trace as it runs (the native recorder makes that cheap) and writes it to a
file of a temporary directory, returning only its digests; step 2 reads back the traces
it needs, two at a time, and the directory goes at the end.  So no trial runs twice and no
process holds more than two full traces.  With a ``runner`` the trials record digests only
and step 2 runs its trials again with full traces.

Directed trials (:mod:`leakdbt.leakage.directed`): before that, the trials run on the
original code recording the comparisons in scope, and for ``directed_rounds`` rounds new
trials are derived from them that take those comparisons' other outcomes; every checked
mode then runs the seed and the derived trials.

Output-sensitive: trials are compared only with trials whose declassified views are equal
(:mod:`leakdbt.leakage.declassify`: the declassified outputs and declassification points).
When those views tell every trial apart, nothing could be compared: all trials are then
compared as if nothing were declassified, and the report says so (a conservative verdict).

Trials run in worker processes with ``jobs`` > 1 (forked: the engine is per process); 0
means one per CPU core this process may use.  Where it is sound (argv and env secrets,
:mod:`leakdbt.leakage.snapshot`), they are forked instead from one run up to the first
access of a secret, ``jobs`` at a time; each run is the trial's plain run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from leakdbt.contract import Contract, plan
from leakdbt.contract.mapping import Observer, Plan
from leakdbt.contract.model import Output
from leakdbt.contract.profiles import LATENCY_CLASSES, Profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.errors import UsageError
from leakdbt.leakage.align import Baseline, Difference, differences
from leakdbt.leakage.chunks import forget_store
from leakdbt.leakage.directed import DEFAULT_ROUNDS, DERIVED_PER_ROUND, Derivation, derive
from leakdbt.leakage.findings import (
    CheckReport,
    Finding,
    LeakKind,
    ModeSummary,
    Witness,
)
from leakdbt.leakage.locate import describe_point
from leakdbt.leakage.snapshot import Snapshot, unsound_reason
from leakdbt.leakage.trials import (
    Observation,
    Place,
    TrialInput,
    TrialRun,
    TrialSetup,
    discard_spilled,
    trial_inputs,
)
from leakdbt.run.protect import protection

MAX_WITNESS_RUNS = 8  # full-trace runs per mode, one per distinct digest
GRANULARITY = {"line": None, "page": 4096, "byte": 1}  # None: the profile's line size


@dataclass(frozen=True)
class CheckOptions:
    """How to check (the command line's options)."""

    modes: tuple[str, ...] = ("original",)  # "original", "hardened"
    trials: int | None = None  # None: the contract's
    seed: int | None = None
    jobs: int = 1  # 0: one per CPU core (default_jobs)
    granularity: str | None = None  # None: what the adversary sees
    max_insns: int = 0
    progress: Callable[[str], None] | None = None
    directed_rounds: int = DEFAULT_ROUNDS  # 0: random and given trials only
    # Runs a batch of trials elsewhere — (setup, trials, observation, progress label) -> runs
    # in trial order — as ``leakdbt suite`` does on Dask; None: here, in ``jobs`` processes.
    runner: Callable[[TrialSetup, Sequence[TrialInput], Observation, str],
                     list[TrialRun]] | None = None
    # Run the trials from one forked snapshot of the run up to the first access of a secret
    # when that is sound (leakdbt.leakage.snapshot); False: every trial runs afresh.
    snapshots: bool = True


def observation_for(the_plan: Plan, profile: Profile, granularity: str | None
                    ) -> Observation:
    """What the contract's adversary observes on the profile (docs/checking.md)."""
    seen = set(the_plan.observed)
    observers = [LeakKind.CONTROL_FLOW]
    classes = tuple(c for c in LATENCY_CLASSES if profile.variable(c))
    if Observer.TIME in seen and classes:
        observers.append(LeakKind.VARIABLE_LATENCY)
    unit = profile.line_size
    if Observer.INTRA_LINE in seen:
        unit = profile.intra_line_unit
    if granularity is not None:
        unit = GRANULARITY[granularity] or profile.line_size
    if Observer.CACHE_LINE in seen or granularity is not None:
        observers.append(LeakKind.MEMORY_ACCESS)
    return Observation(tuple(k for k in LeakKind if k in observers), unit, classes)


def run_check(binary: str, contract: Contract, profile: Profile, options: CheckOptions,
              args: Sequence[str] | None = None) -> CheckReport:
    """Check ``binary`` against ``contract`` (bound to it); see the module doc."""
    started = time.monotonic()
    planned = plan_check(binary, contract, profile, options, args)
    with contextlib.ExitStack() as stack:
        if options.runner is None:  # full traces kept in files as the trials run
            spill = stack.enter_context(tempfile.TemporaryDirectory(prefix="leakdbt-traces-"))
            stack.callback(forget_store, spill)  # before the directory goes
            planned.what = replace(planned.what, spill=spill)
        recorded = add_directed_trials(planned, binary, profile, options)
        for mode in options.modes:
            setup = trial_setup(binary, planned.contract, profile, mode, options.max_insns)
            if mode == "original" and recorded:
                runs = recorded  # the directed rounds ran them already
            else:
                runs = _run_all(setup, planned.inputs, planned.what, options, f"{mode}: ")
            add_mode(planned, setup, runs, mode, options)
            discard_spilled(runs)  # the mode's traces are compared: free the disk now
    planned.report.seconds = time.monotonic() - started
    return planned.report


def default_jobs() -> int:
    """One worker per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class PlannedCheck:
    """What every mode of one check shares — the contract with its public arguments, what is
    observed, the trials — and the report the modes fill in."""

    contract: Contract
    what: Observation
    inputs: list[TrialInput]
    report: CheckReport


def with_args(contract: Contract, args: Sequence[str] | None) -> Contract:
    """``contract`` with the program's public arguments ``args`` (None: the contract's)."""
    if args is None:
        return contract
    return replace(contract, check=replace(contract.check, args=tuple(args)))


def plan_check(binary: str, contract: Contract, profile: Profile, options: CheckOptions,
               args: Sequence[str] | None = None) -> PlannedCheck:
    """The trials and the empty report of a check (see :class:`PlannedCheck`)."""
    the_plan = plan(contract, profile)
    what = observation_for(the_plan, profile, options.granularity)
    contract = with_args(contract, args)
    count = options.trials or contract.check.trials
    seed = contract.check.seed if options.seed is None else options.seed
    inputs = trial_inputs(contract, count, seed)
    report = CheckReport(binary, tuple(contract.check.args), contract.path, profile.name,
                         contract.protect.adversary.value, what.observers,
                         _granularity_name(what.unit, profile), seed)
    return PlannedCheck(contract, what, inputs, report)


def add_mode(planned: PlannedCheck, setup: TrialSetup, runs: list[TrialRun], mode: str,
             options: CheckOptions) -> None:
    """Compare the trial ``runs`` of ``mode`` (in trial order) and add the mode's figures,
    findings and output leaks to the report; witnesses are traced in full here."""
    report, what = planned.report, planned.what
    classes, note = comparison_classes(runs, what)
    summary = ModeSummary(mode, len(runs), runs[0].trace.instructions, runs[0].trace.cost,
                          {o: len({r.trace.digests[o] for r in runs})
                           for o in what.observers}, note)
    report.modes.append(summary)
    report.findings += _findings(setup, classes, len(runs), what, mode, options)
    report.outputs += _undeclared_outputs(planned.contract, classes, mode)


def add_directed_trials(planned: PlannedCheck, binary: str, profile: Profile,
                        options: CheckOptions) -> list[TrialRun]:
    """Run the planned trials on the original code recording their comparisons, and add
    the directed trials derived from them, round by round (see the module doc), to
    ``planned``'s trials and report; the original-code runs of all of them (they recorded
    alike: a mode's digests compare only such runs), or [] without directed rounds."""
    if options.directed_rounds <= 0:
        return []
    setup = trial_setup(binary, planned.contract, profile, "original", options.max_insns)
    recording = replace(planned.what, comparisons=True)
    inputs = planned.inputs
    runs = _run_all(setup, inputs, recording, options, "original: ")
    known = {t.values for t in inputs}
    done: set[Derivation] = set()
    frontier = runs
    for round_ in range(1, options.directed_rounds + 1):
        new = derive([(r.trial.index, r.trial.values, r.comparisons) for r in frontier],
                     known, len(inputs), DERIVED_PER_ROUND, done)
        if not new:
            break
        added = [TrialInput(d.index, values) for values, d in new]
        planned.report.derived += [d for _, d in new]
        inputs += added
        frontier = _run_all(setup, added, recording, options,
                            f"original: directed round {round_}: ")
        runs += frontier
    for r in runs:
        r.comparisons = []  # derived from already: no need to keep them
    return runs


def _granularity_name(unit: int, profile: Profile) -> str:
    if unit == profile.line_size:
        return f"cache line ({unit} bytes)"
    if unit == 4096:
        return "page (4096 bytes)"
    return f"{unit}-byte units"


def trial_setup(binary: str, contract: Contract, profile: Profile, mode: str, max_insns: int
                ) -> TrialSetup:
    """What every trial of ``mode`` ("original" or "hardened") shares."""
    if mode == "original":
        return TrialSetup(binary, contract, Mode.FAST, max_insns=max_insns)
    protected = protection(contract, profile)  # a broken pass errors now, not in every trial
    return TrialSetup(binary, contract, Mode.HARDENED, protected.regions, protected.hardener,
                      max_insns)


_WORKER_SETUP: TrialSetup | None = None


def _worker(trial: TrialInput, what: Observation) -> TrialRun:
    assert _WORKER_SETUP is not None
    return _WORKER_SETUP.run(trial, what)


def _run_all(setup: TrialSetup, inputs: Sequence[TrialInput], what: Observation,
             options: CheckOptions, label: str) -> list[TrialRun]:
    """Run the trials (in ``jobs`` forked workers, or by ``options.runner``), telling
    progress as they finish."""
    global _WORKER_SETUP
    if options.runner is not None:
        return options.runner(setup, inputs, what, label)
    started = time.monotonic()
    runs: list[TrialRun] = []

    def tell(done: int) -> None:
        if options.progress is not None:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(inputs) - done) if done else 0.0
            options.progress(f"{label}trials {done}/{len(inputs)}, ETA {eta:.0f} s")

    jobs = options.jobs or default_jobs()
    if options.snapshots and not unsound_reason(setup, inputs):
        # every trial, or (the snapshot abandoned) the first: the others run afresh below
        runs = Snapshot(setup, inputs, what, jobs, tell).run_all()
    rest = inputs[len(runs):]
    if jobs <= 1 or len(rest) < 2:
        for t in rest:
            runs.append(setup.run(t, what))
            tell(len(runs))
        return runs
    _WORKER_SETUP = setup
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(rest)),
                                                mp_context=context) as pool:
        futures = [pool.submit(_worker, t, what) for t in rest]
        for done, _ in enumerate(concurrent.futures.as_completed(futures), len(runs) + 1):
            tell(done)
        runs += [f.result() for f in futures]
    _WORKER_SETUP = None
    return runs


def comparison_classes(runs: list[TrialRun], what: Observation
                       ) -> tuple[list[list[TrialRun]], str]:
    """The groups of trials to compare with each other — trials with equal declassified views
    (see the module doc) — and a sentence on what the declassified values did ("" when
    nothing declassified varies)."""
    by_view: dict[tuple[tuple[str, object], ...], list[TrialRun]] = {}
    for r in runs:
        by_view.setdefault(r.declassified, []).append(r)
    if len(by_view) < 2:
        return [runs], ""
    names = [name for k, (name, _) in enumerate(runs[0].declassified)
             if len({r.declassified[k][1] for r in runs}) > 1]
    varying = ", ".join(names)
    # Only trials with different secrets tell anything apart (a value may repeat).
    comparable = [g for g in by_view.values() if len({r.trial.values for r in g}) > 1]
    if not comparable:
        return [runs], (f"the declassified values ({varying}) tell all {len(runs)} trials "
                        "apart: nothing could be compared within equal values, so all trials "
                        "were compared as if nothing were declassified")
    sizes = ", ".join(str(len(g)) for g in by_view.values())
    note = (f"the declassified values ({varying}) separate the {len(runs)} trials into "
            f"{len(by_view)} classes (sizes {sizes}); trials are compared only within a class")
    separated = _separated(list(by_view.values()), what)
    return comparable, note + (f"; {separated}" if separated else "")


def _separated(groups: list[list[TrialRun]], what: Observation) -> str:
    """Two trials of different classes that observe differently, and which declassified
    values separate them (what output-sensitivity excused), or ""."""
    def digests(r: TrialRun) -> tuple[int, ...]:
        return tuple(r.trace.digests[o] for o in what.observers)

    for g, group in enumerate(groups):
        for other in groups[g + 1:]:
            a, b = group[0], other[0]
            if digests(a) != digests(b):
                names = [x[0] for x, y in zip(a.declassified, b.declassified, strict=True)
                         if x != y]
                return (f"trials {a.trial.index} and {b.trial.index} observe differently but "
                        f"are separated by the declassified {', '.join(names)}: no leak there")
    return ""


def _findings(setup: TrialSetup, classes: list[list[TrialRun]], total: int,
              what: Observation, mode: str, options: CheckOptions) -> list[Finding]:
    """Localise the differences between trials of one class whose digests differ (see the
    module doc)."""
    chosen: list[list[TrialRun]] = []
    budget = MAX_WITNESS_RUNS
    distinct = 0
    for runs in classes:
        groups: dict[tuple[int, ...], TrialRun] = {}
        for r in runs:
            groups.setdefault(tuple(r.trace.digests[o] for o in what.observers), r)
        distinct += len(groups)
        if len(groups) > 1 and budget > 1:
            chosen.append(list(groups.values())[:budget])
            budget -= len(chosen[-1])
    if not chosen:
        return []
    full = Observation(what.observers, what.unit, what.latency_classes, full=True)
    if options.progress is not None:
        options.progress(f"{mode}: {distinct} distinct traces; tracing "
                         f"{sum(map(len, chosen))} of them in full")
    # per leak point: the two trials, the difference, and the threads it was seen in
    seen: dict[tuple[LeakKind, int],
               list[tuple[TrialRun, TrialRun, Difference, tuple[str, str]]]] = {}
    for reps in chosen:
        base = _traced(setup, reps[0], full)
        baseline = Baseline(base.stored or base.trace)
        for r in reps[1:]:
            other = _traced(setup, r, full)
            found = baseline.differences(other.stored or other.trace, what.unit)
            threads = [(_thread(base, d.blocks[0]), _thread(other, d.blocks[1]))
                       for d in found]
            other = other.without_full_trace()  # only its trial and places are reported
            for d, in_threads in zip(found, threads, strict=True):
                seen.setdefault((d.kind, _place(base, d.address).original), []).append(
                    (base, other, d, in_threads))
        del baseline
        base.trace = base.without_full_trace().trace
    findings = []
    for (kind, _), cases in seen.items():
        first, second, d, (thread_a, thread_b) = cases[0]
        values = {d.first} | {c[2].second for c in cases}
        where = _place(first, d.address)
        witness = Witness(first.trial.public(), second.trial.public(),
                          (_render(first, d.first, kind) + thread_a,
                           _render(second, d.second, kind) + thread_b))
        findings.append(describe_point(kind, mode, where, len(values), total, witness,
                                       suggest=mode == "original"))
    findings.sort(key=lambda f: (f.module, f.link_address, f.kind.value))
    return findings


def _traced(setup: TrialSetup, run: TrialRun, full: Observation) -> TrialRun:
    """``run`` with its full trace: its stored chunks (read as the aligner needs them), or
    run again."""
    return run.with_stored_trace() if run.spilled else setup.run(run.trial, full)


def _place(run: TrialRun, address: int) -> Place:
    return run.where.get(address) or Place(address, "", "", address, f"{address:#x}", False)


def _thread(run: TrialRun, block: int) -> str:
    """Which guest thread ran ``block`` of ``run``'s full trace, for a multi-threaded guest
    (threads numbered in creation order, 0 the main one); nothing for one thread."""
    switches = run.trace.threads
    if not switches or block < 0:
        return ""
    thread = 0
    for at, index in switches:  # (first block of the turn, thread), in block order
        if at > block:
            break
        thread = index
    return f" (in thread {thread})"


def _render(run: TrialRun, observed: str, kind: LeakKind) -> str:
    """Control flow is observed as a runtime address: show the original it stands for."""
    if kind is not LeakKind.CONTROL_FLOW or observed == "end":
        return observed if observed != "end" else "left the scope"
    return f"went to {_place(run, int(observed, 16)).symbolic}"


def _undeclared_outputs(contract: Contract, classes: list[list[TrialRun]], mode: str
                        ) -> list[str]:
    """Outputs not declassified that differ between two trials of one class."""
    declassified = set(contract.check.declassify)
    out = []
    checks = ((Output.STDOUT, "standard output", lambda r: r.stdout),
              (Output.STDERR, "standard error", lambda r: r.stderr),
              (Output.EXIT_STATUS, "exit status", lambda r: (r.status, r.error)))
    for output, name, get in checks:
        if output in declassified:
            continue
        for runs in classes:
            first = runs[0]
            other = next((r for r in runs[1:] if get(r) != get(first)), None)
            if other is not None:
                out.append(f"{mode}: the {name} depends on the secrets (trials "
                           f"{first.trial.index} and {other.trial.index} differ) and is not "
                           "declassified")
                break
    return out


def progress_printer() -> Callable[[str], None] | None:
    """A one-line progress display on a terminal; nothing in a CI log."""
    if not sys.stderr.isatty():
        return None

    def show(text: str) -> None:
        sys.stderr.write(f"\r\x1b[K{text}")
        sys.stderr.flush()
    return show


def replay_trials(binary: str, contract: Contract, profile: Profile, options: CheckOptions,
                  first: int, second: int, args: Sequence[str] | None = None) -> str:
    """Trials ``first`` and ``second`` run again with full traces; every point where their
    observations differ, per checked mode, as text."""
    planned = plan_check(binary, contract, profile, options, args)
    contract, what, inputs = planned.contract, planned.what, planned.inputs
    if max(first, second) >= len(inputs):  # a directed trial: derive them again (the same)
        add_directed_trials(planned, binary, profile, options)
        if max(first, second) >= len(inputs):
            raise UsageError(f"--replay: this check has trials 0 to {len(inputs) - 1}")
    full = Observation(what.observers, what.unit, what.latency_classes, full=True)
    lines = []
    for mode in options.modes:
        setup = trial_setup(binary, contract, profile, mode, options.max_insns)
        a, b = (setup.run(inputs[n], full) for n in (first, second))
        lines.append(f"{mode}: trial {first} ({a.trial.public().describe()}) vs trial "
                     f"{second} ({b.trial.public().describe()})")
        diffs = differences(a.trace, b.trace, what.unit)
        if not diffs:
            lines.append("  no difference")
        for d in diffs:
            lines.append(f"  {d.kind.value} at {_place(a, d.address).symbolic}: "
                         f"{_render(a, d.first, d.kind)} / {_render(b, d.second, d.kind)}")
    return "\n".join(lines) + "\n"
