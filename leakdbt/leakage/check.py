"""``leakdbt check``: run a program with different secrets and report what an adversary could
tell apart.

For each checked mode (original code, hardened code):

1. every trial runs with digests only (cheap): trials whose digests agree observed the same;
2. if some observer saw more than one digest, one trial per distinct digest (up to
   :data:`MAX_WITNESS_RUNS`) runs again with full traces, each is aligned with the first
   (:mod:`leakdbt.leakage.align`), and every point where they differ becomes a finding, with
   two concrete trials as its witness;
3. outputs that differ between trials and are not declassified are reported too.

Trials run in worker processes with ``jobs`` > 1 (forked: the engine is per process).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from leakdbt.contract import Contract, plan
from leakdbt.contract.mapping import Observer, Plan
from leakdbt.contract.model import Output
from leakdbt.contract.profiles import LATENCY_CLASSES, Profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.leakage.align import Difference, differences
from leakdbt.leakage.findings import CheckReport, Finding, LeakKind, ModeSummary, Witness
from leakdbt.leakage.locate import describe_point
from leakdbt.leakage.trials import (
    Observation,
    Place,
    TrialInput,
    TrialRun,
    TrialSetup,
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
    jobs: int = 1
    granularity: str | None = None  # None: what the adversary sees
    max_insns: int = 0
    progress: Callable[[str], None] | None = None


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
    the_plan = plan(contract, profile)
    what = observation_for(the_plan, profile, options.granularity)
    if args is not None:
        contract = replace(contract, check=replace(contract.check, args=tuple(args)))
    count = options.trials or contract.check.trials
    seed = contract.check.seed if options.seed is None else options.seed
    inputs = trial_inputs(contract, count, seed)
    report = CheckReport(binary, tuple(contract.check.args), contract.path, profile.name,
                         contract.protect.adversary.value, what.observers,
                         _granularity_name(what.unit, profile), seed)
    for mode in options.modes:
        setup = trial_setup(binary, contract, profile, mode, options.max_insns)
        runs = _run_all(setup, inputs, what, options, f"{mode}: ")
        summary = ModeSummary(mode, count, runs[0].trace.instructions, runs[0].trace.cost,
                              {o: len({r.trace.digests[o] for r in runs})
                               for o in what.observers})
        report.modes.append(summary)
        report.findings += _findings(setup, runs, what, mode, options)
        report.outputs += _undeclared_outputs(contract, runs, mode)
    report.seconds = time.monotonic() - started
    return report


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
    """Run the trials (in ``jobs`` forked workers), telling progress as they finish."""
    global _WORKER_SETUP
    started = time.monotonic()
    runs: list[TrialRun] = []

    def tell(done: int) -> None:
        if options.progress is not None:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(inputs) - done) if done else 0.0
            options.progress(f"{label}trials {done}/{len(inputs)}, ETA {eta:.0f} s")

    if options.jobs <= 1 or len(inputs) < 2:
        for t in inputs:
            runs.append(setup.run(t, what))
            tell(len(runs))
        return runs
    _WORKER_SETUP = setup
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(options.jobs, mp_context=context) as pool:
        futures = [pool.submit(_worker, t, what) for t in inputs]
        for done, _ in enumerate(concurrent.futures.as_completed(futures), 1):
            tell(done)
        runs = [f.result() for f in futures]
    _WORKER_SETUP = None
    return runs


def _findings(setup: TrialSetup, runs: list[TrialRun], what: Observation, mode: str,
              options: CheckOptions) -> list[Finding]:
    """Localise the differences between trials whose digests differ (see the module doc)."""
    groups: dict[tuple[int, ...], TrialRun] = {}
    for r in runs:
        groups.setdefault(tuple(r.trace.digests[o] for o in what.observers), r)
    if len(groups) < 2:
        return []
    chosen = list(groups.values())[:MAX_WITNESS_RUNS]
    full = Observation(what.observers, what.unit, what.latency_classes, full=True)
    if options.progress is not None:
        options.progress(f"{mode}: {len(groups)} distinct traces; tracing {len(chosen)} of "
                         "them in full")
    traced = [setup.run(r.trial, full) for r in chosen]
    seen: dict[tuple[LeakKind, int], list[tuple[TrialRun, TrialRun, Difference]]] = {}
    base = traced[0]
    for other in traced[1:]:
        for d in differences(base.trace, other.trace, what.unit):
            seen.setdefault((d.kind, _place(base, d.address).original), []).append(
                (base, other, d))
    findings = []
    for (kind, _), cases in seen.items():
        first, second, d = cases[0]
        values = {d.first} | {c[2].second for c in cases}
        where = _place(first, d.address)
        witness = Witness(first.trial.public(), second.trial.public(),
                          (_render(first, d.first, kind), _render(second, d.second, kind)))
        findings.append(describe_point(kind, mode, where, len(values), len(runs), witness,
                                       suggest=mode == "original"))
    findings.sort(key=lambda f: (f.module, f.link_address, f.kind.value))
    return findings


def _place(run: TrialRun, address: int) -> Place:
    return run.where.get(address) or Place(address, "", "", address, f"{address:#x}", False)


def _render(run: TrialRun, observed: str, kind: LeakKind) -> str:
    """Control flow is observed as a runtime address: show the original it stands for."""
    if kind is not LeakKind.CONTROL_FLOW or observed == "end":
        return observed if observed != "end" else "left the scope"
    return f"went to {_place(run, int(observed, 16)).symbolic}"


def _undeclared_outputs(contract: Contract, runs: list[TrialRun], mode: str) -> list[str]:
    declassified = set(contract.check.declassify)
    out = []
    checks = ((Output.STDOUT, "standard output", lambda r: r.stdout),
              (Output.STDERR, "standard error", lambda r: r.stderr),
              (Output.EXIT_STATUS, "exit status", lambda r: (r.status, r.error)))
    for output, name, get in checks:
        if output in declassified:
            continue
        first = runs[0]
        other = next((r for r in runs[1:] if get(r) != get(first)), None)
        if other is not None:
            out.append(f"{mode}: the {name} depends on the secrets (trials {first.trial.index} "
                       f"and {other.trial.index} differ) and is not declassified")
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
    if args is not None:
        contract = replace(contract, check=replace(contract.check, args=tuple(args)))
    the_plan = plan(contract, profile)
    what = observation_for(the_plan, profile, options.granularity)
    seed = contract.check.seed if options.seed is None else options.seed
    inputs = trial_inputs(contract, max(first, second) + 1, seed)
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
