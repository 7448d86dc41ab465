"""``leakdbt analyze``: run the program with its secrets tainted, and turn what the taint
reaches into findings and contract regions.

The secrets get concrete values (the check's first trial; with ``trials`` N, its first N
trials, one tainted run each, the findings merged) and a label each; a run is the same as a
check trial (public inputs, virtual time).  Sources: ``argv`` and ``env`` (their
strings on the initial stack), ``stdin`` and ``file`` (the bytes read(2) returns from their
offsets; a file secret's file is written into a fresh working directory, as ``leakdbt
check`` does), ``register`` and ``pointer`` (at every entry of their function) and
``symbol`` (at start).  With
``protect.functions``, findings are kept only while one of those functions is active,
callees included — the scope ``leakdbt check`` observes (:mod:`leakdbt.run.scope`); taint
itself flows everywhere.  Without it, findings are kept everywhere.

Memory accesses the secret moves only within one cache line (of the CPU profile's size) are
findings only against an adversary who sees offsets within a line (``same-core`` on a CPU
that leaks them, :func:`leakdbt.contract.mapping.observers`); otherwise they are counted in
:attr:`AnalysisReport.within_line` and dropped.

The suggested regions (whole functions, loops with their bounds, blocks) and the region
covering each finding come from :mod:`leakdbt.analysis.suggest`; whole functions and loop
bounds take a run each (``AnalysisReport.runs``), loop bounds one more for each loop that
run never reached (:func:`leakdbt.analysis.loops.count_loops`).  Growing a refused region
takes one more, which for a dynamic program also copies the GOTs at the first entry of the
regions it judges: their calls through the PLT are then resolved as exec resolves them
(:mod:`leakdbt.analysis.linking`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from leakdbt.analysis.findings import AnalysisFinding, AnalysisReport, TableObject
from leakdbt.analysis.functions import function_regions
from leakdbt.analysis.grow import (
    Candidates,
    Growth,
    Judge,
    call_site_branch,
    enclosing_loops,
    function_branch,
    grow,
    judge_with,
    refused_comment,
)
from leakdbt.analysis.linking import GotRecord, Snapshot
from leakdbt.analysis.loops import Counted, LoopCounter, count_loops, insn_budget, trip_budget
from leakdbt.analysis.public import EntryTaint, JoinOracle, with_public
from leakdbt.analysis.suggest import TOOL, LoopCandidate, _inner_bounds, exit_loops, regions
from leakdbt.analysis.taint import LINE, WITHIN_LINE, TaintedUse, TaintTracker
from leakdbt.contract import loads
from leakdbt.contract.dump import dumps
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.contract.mapping import Observer, observers
from leakdbt.contract.model import Contract, FileSource, StdinSource
from leakdbt.contract.profiles import Profile, host_profile
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.dispatch import Dispatcher, Mode
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.check import trial_setup
from leakdbt.leakage.findings import CheckReport, Finding, LeakKind
from leakdbt.leakage.locate import image_of, source_line
from leakdbt.leakage.trials import Place, TrialInput, TrialSetup, trial_inputs
from leakdbt.loader.modules import LoadedModule, ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.run.scope import FunctionScope, scoped_functions
from leakdbt.run.secrets import place_in_process
from leakdbt.run.session import execute
from leakdbt.x86.insn import Flow, decode


def analyze(binary: str, contract: Contract, args: list[str] | None = None,
            rw: Sequence[str] = (), profile: Profile | None = None, trials: int = 1
            ) -> AnalysisReport:
    """Run ``binary`` with the contract's secrets tainted (see the module doc); ``rw``:
    host directories the guest may write to, as ``exec --rw``; ``profile``: the CPU whose
    cache lines and intra-line leaks decide the memory-access findings (default: the
    host's); ``trials``: tainted runs, with the secrets ``leakdbt check`` would give its
    first trials (test vectors first), their findings merged: a path one secret does not
    take, another may."""
    started = time.monotonic()
    profile = profile or host_profile()
    if args is not None:
        contract = replace(contract, check=replace(contract.check, args=tuple(args)))
    inputs = trial_inputs(contract, max(trials, 1), contract.check.seed)
    trial = inputs[0]
    report = AnalysisReport(binary, contract.path, runs=0)
    uses: list[list[TaintedUse]] = []
    default_rule: Counter[str] = Counter()
    modules: ModuleMap | None = None
    entry_taint = EntryTaint()
    for t in inputs:
        tracker, run_modules = _run(TrialSetup(binary, contract, Mode.FAST), t, rw, profile)
        assert tracker is not None
        if modules is None:  # the same binary, loaded the same way: the same addresses
            modules = run_modules
        uses.append(tracker.findings())
        entry_taint.add(tracker)
        report.instructions += tracker.instructions
        report.taint_seconds += tracker.elapsed
        default_rule.update(tracker.default_counts)
        report.runs += 1
    assert modules is not None
    report.default_rule = dict(default_rule.most_common())
    sub_line = _sees_within_lines(contract, profile)
    for f in merge_uses(uses):
        place = _place(modules, f.address)
        if f.kind is LeakKind.MEMORY_ACCESS and f.reach == WITHIN_LINE and not sub_line:
            report.within_line += 1
            continue
        image = image_of(place.module_path) if place.module_path else None
        text = "?"
        if image is not None:
            insn = decode(image.read(place.link_address, 15), place.link_address)
            text = insn.text if insn else "?"
        names = tuple(s.name for i, s in enumerate(contract.secrets) if f.labels >> i & 1)
        tables, untabled = _tables(modules, f.targets) if f.kind is LeakKind.MEMORY_ACCESS \
            else ((), False)
        report.findings.append(AnalysisFinding(
            kind=f.kind, address=f.address, location=place.symbolic, module=place.module,
            link_address=place.link_address, instruction=text,
            source=source_line(place.module_path, place.link_address)
            if place.module_path else None,
            secrets=names, count=f.count, table=tables[0].name or None
            if len(tables) == 1 and not untabled else None, tables=tables, untabled=untabled))
    places = {f.location: _place(modules, f.address) for f in report.findings}
    report.regions, report.covering, report.growth, more = _suggest(
        report.findings, places, binary, contract, profile, trial, rw,
        insn_budget(report.instructions), partial(with_public, taint=entry_taint,
                                                  modules=modules))
    report.runs += more
    report.seconds = time.monotonic() - started
    return report


def merge_uses(runs: Sequence[Sequence[TaintedUse]]) -> list[TaintedUse]:
    """The tainted uses of several runs as one list: the same kind at the same address is one
    use, with the counts added, the secrets and memory targets joined, and a memory access
    that could cross lines in one run crossing lines."""
    merged: dict[tuple[LeakKind, int], TaintedUse] = {}
    for run in runs:
        for u in run:
            seen = merged.get((u.kind, u.address))
            if seen is None:
                merged[(u.kind, u.address)] = replace(u, targets=set(u.targets))
                continue
            seen.count += u.count
            seen.labels |= u.labels
            seen.targets |= u.targets
            if u.reach == LINE:
                seen.reach = LINE
    return sorted(merged.values(), key=lambda u: (u.address, u.kind))


def _run(setup: TrialSetup, trial: TrialInput, rw: Sequence[str], profile: Profile,
         watch: Callable[[Machine, ModuleMap], None] | None = None, taint: bool = True,
         ended: list[str] | None = None) -> tuple[TaintTracker | None, ModuleMap]:
    """One run of ``trial`` (the same run as a check trial: leakdbt.run.secrets places the
    secrets), with the secrets tainted when ``taint``; ``watch`` attaches more hooks at the
    start; ``ended`` gets the error that ended the run, if one did."""
    box: dict[str, Any] = {}

    def on_modules(modules: ModuleMap) -> None:
        box["modules"] = modules

    def on_start(machine: Machine, _translator: Dispatcher | None) -> None:
        values = [v for _, v in trial.values]
        if taint:
            box["tracker"] = _taint_sources(machine, box["modules"], setup.contract, values,
                                            profile.line_size)
        else:
            place_in_process(machine, box["modules"], setup.contract, values)
        if watch is not None:
            watch(machine, box["modules"])

    with setup.inputs(trial) as (options, _out, _err):
        options.on_modules = on_modules
        options.on_start = on_start
        options.rw = rw
        try:
            execute(setup.binary, options)
        except LeakDBTError as e:
            if "modules" not in box:
                raise  # the program did not start
            if ended is not None:
                ended.append(e.one_line())
            # a crash or limit ends the run: what was seen until then still counts
    return box.get("tracker"), box["modules"]


def _suggest(findings: list[AnalysisFinding], places: dict[str, Place], binary: str,
             contract: Contract, profile: Profile, trial: TrialInput, rw: Sequence[str],
             budget: int = 0, publish: Callable[[RegionEntry], RegionEntry] | None = None
             ) -> tuple[list[RegionEntry], dict[str, RegionEntry], list[Growth], int]:
    """The regions for ``findings`` (leakdbt.analysis.suggest), grown until a pass accepts
    them (leakdbt.analysis.grow), the region covering each finding, what growing tried, and
    the runs it took.  Whole-function regions take a run hardened with them, to see which
    findings they remove; loop bounds take a run that counts the iterations of the loops
    that secret branches leave (and one per loop it never reached, counted alone: capped);
    growing takes one more when a suggestion is refused.
    ``budget``: the instructions each of these untainted runs may execute (0: no limit;
    leakdbt.analysis.loops: counting with a secret exit suppressed may not end by itself).
    ``publish``: a branch region with the registers public at its entry
    (leakdbt.analysis.public), applied to every region before it is judged or grown."""
    functions = function_regions(places.values(), contract, profile)
    removed = _removed_by(functions, findings, binary, contract, profile, trial, rw) \
        if functions else set()
    loops = exit_loops(findings, places, set(functions))
    counted = Counted()
    if loops:
        def count(names: Sequence[str]) -> tuple[LoopCounter | None, str]:
            counter: list[LoopCounter] = []
            watched = [loop for loop in loops.values() if loop.at in names]

            def watch(machine: Machine, modules: ModuleMap) -> None:
                counter.append(LoopCounter(machine))

                def on_module(mod: LoadedModule) -> None:
                    for loop in watched:
                        if mod.is_named(loop.module):
                            counter[0].watch(loop.at, loop.region, loop.branch, mod.base,
                                             trip_budget(loop.seen))

                for mod in modules.modules():
                    on_module(mod)
                modules.listeners.append(on_module)

            ended: list[str] = []
            _run(TrialSetup(binary, contract, Mode.FAST, max_insns=budget), trial, rw,
                 profile, watch, taint=False, ended=ended)
            return (counter[0] if counter else None), (ended[0] if ended else "")

        counted = count_loops(list(dict.fromkeys(loop.at for loop in loops.values())), count)
    entries, covering = regions(findings, places, functions, removed, loops, counted.trips,
                                counted.inner, counted.unknown)
    if publish is not None:
        published = {e: publish(e) for e in entries}
        entries = list(published.values())
        covering = {k: published.get(v, v) for k, v in covering.items()}
    grown, covering, growths, more = _grow(entries, covering, places, binary, contract,
                                           profile, trial, rw, budget, publish)
    return grown, covering, growths, bool(functions) + counted.runs + more


def _grow(entries: list[RegionEntry], covering: dict[str, RegionEntry],
          places: dict[str, Place], binary: str, contract: Contract, profile: Profile,
          trial: TrialInput, rw: Sequence[str], budget: int = 0,
          publish: Callable[[RegionEntry], RegionEntry] | None = None
          ) -> tuple[list[RegionEntry], dict[str, RegionEntry], list[Growth], int]:
    """Each suggested region, or the smallest region grown around it that a pass accepts
    (leakdbt.analysis.grow); a region none is accepted for stays, with a comment saying so.
    The loops and callers growing needs are measured in one untainted run, made only when
    a suggestion is refused; for a dynamic program the same run copies the GOTs at the
    first entry of each region growing judges, and the refused regions are judged again
    with their calls through the GOT resolved from those copies, as exec would resolve
    them (leakdbt.analysis.linking)."""
    if not entries:
        return entries, covering, [], 0
    judge = judge_with(contract, profile)
    judge(entries)  # one batch: later calls hit its memo
    holding: dict[RegionEntry, list[str]] = {}
    for location, e in covering.items():
        holding.setdefault(e, []).append(location)
    refused = [e for e, (ok, _) in zip(entries, judge(entries), strict=True) if not ok]
    linked = contract.binding is not None and contract.binding.binary_kind == "dynamic"
    sites = _GrowSites(places, refused, holding, GotRecord() if linked else None, publish)
    runs = 0
    if refused and (sites.loops or sites.functions):
        _run(TrialSetup(binary, contract, Mode.FAST, max_insns=budget), trial, rw, profile,
             sites.watch, taint=False)
        runs = 1
    if sites.got is not None and runs:
        judge = _relinked(judge, judge_with(contract, profile, sites.got.linker))
    out: list[RegionEntry] = []
    growths = []
    chosen: dict[RegionEntry, RegionEntry] = {}
    for e in entries:
        g = grow(e, holding.get(e, []), judge, partial(sites.candidates, e))
        growths.append(g)
        if g.chosen:
            out += g.chosen
            chosen[e] = g.chosen[0]
        else:
            out.append(chosen.setdefault(e, replace(e, comment=refused_comment(g))))
    return (list(dict.fromkeys(out)), {k: chosen.get(v, v) for k, v in covering.items()},
            growths, runs)


def _relinked(plain: Judge, linked: Judge) -> Judge:
    """A judge that keeps ``plain``'s acceptances and asks ``linked`` (calls through the
    GOT resolved as the run bound them) about the rest: a region accepted with every GOT
    call unresolved made none that needs resolving."""
    def judge(entries: Sequence[RegionEntry]) -> list[tuple[bool, str]]:
        first = plain(entries)
        again = [e for e, (ok, _) in zip(entries, first, strict=True) if not ok]
        second = dict(zip(again, linked(again), strict=True)) if again else {}
        return [second.get(e, v) for e, v in zip(entries, first, strict=True)]
    return judge


class _GrowSites:
    """Where growing looks for a refused region: the loops holding its first finding's
    block and the function holding it (whose callers a run records).  With ``got``, the
    same run copies the GOTs at the first run of each region growing may judge
    (leakdbt.analysis.linking)."""

    def __init__(self, places: dict[str, Place], refused: list[RegionEntry],
                 holding: dict[RegionEntry, list[str]], got: GotRecord | None = None,
                 publish: Callable[[RegionEntry], RegionEntry] | None = None) -> None:
        self.got = got
        self.publish = publish or (lambda e: e)  # a grown branch region's public registers
        self.entries: list[tuple[str | None, int]] = []  # (module, link-time) to copy at
        self.loops: dict[str, LoopCandidate] = {}  # by the header as contracts write it
        self.functions: dict[tuple[str | None, int], Any] = {}  # (module, entry) -> symbol
        self.where: dict[RegionEntry, tuple[Place, Any, Any, list[str]]] = {}
        self.returns: dict[tuple[str | None, int], list[int]] = {}  # runtime addresses
        self.modules: ModuleMap | None = None
        self.counter: LoopCounter | None = None
        self.called: dict[int, Snapshot] = {}  # return address -> the GOTs at the call
        for e in refused:
            located = [places[loc] for loc in holding.get(e, []) if loc in places]
            place = next((p for p in located if p.module_path), None)
            image = image_of(place.module_path) if place is not None else None
            func = image.function_containing(place.link_address) \
                if image is not None and place is not None else None
            if place is None or image is None or func is None:
                continue
            try:
                cfg = function_cfg(image, func)
            except LeakDBTError:
                continue
            block = cfg.block_at(place.link_address)
            if block is None:
                continue
            module = None if place.is_main else place.module
            name = _namer(place, image)
            at_loops = []
            for loop in enclosing_loops(cfg, block.start, name):
                at = name(loop.entry)
                self.loops[at] = LoopCandidate(at, module, loop, -1)
                at_loops.append(at)
                self.entries.append((module, loop.entry))
            self.functions[(module, func.value)] = func
            self.where[e] = (place, cfg, block.start, at_loops)
            whole = function_branch(cfg, block.start, name)
            self.entries += [(module, b) for b in cfg.blocks
                             if name(b) in (e.at, whole)]

    def watch(self, machine: Machine, modules: ModuleMap) -> None:
        """The hooks of the growing run: loops counted as they run, callers recorded."""
        self.modules = modules
        self.counter = counter = LoopCounter(machine)
        got = self.got
        if got is not None:
            got.attach(machine, modules)

        def returns_to(key: tuple[str | None, int]) -> Callable[[int, int], None]:
            seen = self.returns.setdefault(key, [])

            def hook(_address: int, _size: int) -> None:
                back = int.from_bytes(machine.mem.read(machine.reg("rsp"), 8), "little")
                if back not in seen:
                    seen.append(back)
                    if got is not None:
                        self.called[back] = got.snapshot()
            return hook

        def on_module(mod: LoadedModule) -> None:
            for loop in self.loops.values():
                if mod.is_named(loop.module):
                    counter.watch(loop.at, loop.region, loop.branch, mod.base)
            for (module, entry) in self.functions:
                if mod.is_named(module):
                    machine.hooks.at(entry + mod.base, returns_to((module, entry)))
            if got is not None:
                for module, link in dict.fromkeys(self.entries):
                    if mod.is_named(module):
                        got.first_run(link + mod.base)

        for mod in modules.modules():
            on_module(mod)
        modules.listeners.append(on_module)

    def candidates(self, e: RegionEntry) -> Candidates:
        """Steps 2 to 4 of growing ``e`` (leakdbt.analysis.grow)."""
        out = Candidates()
        if e not in self.where:
            return out
        place, cfg, block, at_loops = self.where[e]
        image = image_of(place.module_path)
        assert image is not None
        for at in at_loops:
            trips = self.counter.trips(at) if self.counter is not None else ()
            if not trips:
                out.loops.append(f"the loop at {at} ended no entry in the run: no bound")
                continue
            inner = self.counter.inner_trips(at) if self.counter is not None else {}
            bound = max(trips)
            why = (f"{TOOL}: grown from {e.at} (refused); the run entered it {len(trips)} "
                   f"time(s), at most {bound} iterations (the bound)")
            if min(trips) < bound:
                why += (f", {min(trips)} on some: check that every buffer it walks has room "
                        f"for {bound}")
            bounds, why = _inner_bounds(at, inner, why)
            out.loops.append(RegionEntry(at, "loop", why, bound=bound, inner_bounds=bounds))
        name = _namer(place, image)
        whole = function_branch(cfg, block, name)
        if whole is not None:
            out.function = self.publish(RegionEntry(
                whole, "branch", f"{TOOL}: grown from {e.at} (refused) to the whole function"))
        module = None if place.is_main else place.module
        func = image.function_containing(place.link_address)
        assert func is not None
        for back in self.returns.get((module, func.value), []):
            out.call_sites.append(self._call_site(back, e, cfg.name))
        return out

    def _call_site(self, back: int, e: RegionEntry, callee: str) -> RegionEntry | str:
        """The branch region around the call that returns to runtime ``back``."""
        mod = self.modules.find(back) if self.modules is not None else None
        image = mod.image if mod is not None else None
        func = image.function_containing(back - mod.base) \
            if image is not None and mod is not None else None
        if mod is None or image is None or func is None:
            return f"a call from {back:#x}, outside every function symbol"
        link = back - mod.base
        try:
            cfg = function_cfg(image, func)
        except LeakDBTError as err:
            return f"the caller {func.name}: {err.one_line()}"
        block = next((b for b in cfg.blocks.values()
                      if b.last.next == link and b.last.flow is Flow.CALL), None)
        where = f"{func.name}+{link - func.value:#x}"
        if block is None:
            return f"the return address {where} follows no direct call"
        place = Place(back, mod.name, mod.host_path, link, where, mod.is_main)
        name = _namer(place, image)
        at = call_site_branch(cfg, block.start, name)
        if at is None:
            return f"no branch region of {func.name} holds its call to {callee}"
        start = next((b for b in cfg.blocks if name(b) == at), None)
        if self.got is not None and back in self.called and start is not None:
            self.got.copy(start + mod.base, self.called[back])  # the GOTs at the call
        return self.publish(RegionEntry(at, "branch", f"{TOOL}: grown from {e.at} (refused) "
                                                      f"to the call of {callee} in {func.name}"))


def _namer(place: Place, image: Any) -> Callable[[int], str]:
    """A link-time address of ``place``'s module as contracts write it."""
    def name(address: int) -> str:
        text: str = image.symbolize(address) or f"{address:#x}"
        return text if place.is_main else f"{place.module}:{text}"
    return name


def _removed_by(functions: dict[str, RegionEntry], findings: list[AnalysisFinding],
                binary: str, contract: Contract, profile: Profile, trial: TrialInput,
                rw: Sequence[str]) -> set[str]:
    """The locations of the ``findings`` that a tainted run hardened with the ``functions``
    regions no longer shows (none when that run cannot be made: the contract with them
    does not validate, or its own regions cannot be hardened)."""
    try:
        text, _ = add_regions(dumps(contract), list(functions.values()), contract.path)
        hardened = replace(loads(text, contract.path, binary), check=contract.check)
        setup = trial_setup(binary, hardened, profile, "hardened", 0)
    except LeakDBTError:
        return set()
    tracker, modules = _run(setup, trial, rw, profile)
    if tracker is None:
        return set()
    left = {(f.kind, _place(modules, f.address).symbolic) for f in tracker.findings()}
    return {f.location for f in findings if (f.kind, f.location) not in left}


def _sees_within_lines(contract: Contract, profile: Profile) -> bool:
    """Does the contract's adversary see which part of a cache line is accessed?"""
    return any(v.observer is Observer.INTRA_LINE and v.observed
               for v in observers(contract.protect.adversary, profile))


def _taint_sources(machine: Machine, modules: ModuleMap, contract: Contract,
                   values: list[bytes], line_size: int = 64) -> TaintTracker:
    """A tracker with every secret tainted where it is placed (leakdbt.run.secrets), now or
    when it enters, and where read(2) brings standard input and file secrets.  It follows
    all code but the dynamic loader's (the one module mapped at start besides the program):
    its start-up — relocating every library, most of a dynamic program's instructions — and
    its lazy binding handle no secret."""
    skip = sorted((m.start, m.end) for m in modules.modules() if not m.is_main)
    ranges, at = [], 1
    for start, end in skip:
        ranges.append((at, start))
        at = end
    scope = FunctionScope(machine, scoped_functions(contract))
    scope.watch(modules)
    tracker = TaintTracker(machine, ranges=[], line_size=line_size,
                           in_scope=None if scope.everywhere else scope.active)
    tracker.joins = JoinOracle(modules)  # implicit flows to each branch's join (``public``)
    for i, secret in enumerate(contract.secrets):
        if isinstance(secret.source, StdinSource | FileSource):
            tracker.read_sources.append(_read_source(tracker, secret.source, 1 << i,
                                                     secret.length))
    place_in_process(machine, modules, contract, values, _Tainter(tracker))
    # The tracker's hooks after the sources' (the engine runs hooks in the order added): a
    # register or pointer secret is tainted at its function's entry before the tracker
    # propagates the entry instruction and records the registers there.
    for begin, end in [*ranges, (at, 1 << 64)]:
        tracker.track(begin, end)
    machine.hooks.retranslate()
    return tracker


class _Tainter:
    """Taints each secret where it was placed, with its label: bit ``index`` of the mask."""

    def __init__(self, tracker: TaintTracker) -> None:
        self.tracker = tracker

    def memory(self, index: int, address: int, length: int) -> None:
        self.tracker.taint_memory(address, length, 1 << index)

    def register(self, index: int, register: str, length: int) -> None:
        self.tracker.taint_register(register, 1 << index, length)


def _read_source(tracker: TaintTracker, source: StdinSource | FileSource, label: int,
                 length: int) -> Callable[[int, int, int, int], None]:
    """A read watcher tainting the secret's bytes of standard input or of its file."""
    def is_ours(fd: int) -> bool:
        if isinstance(source, StdinSource):
            return fd == 0
        try:
            path = tracker.guest_path(fd)
        except LookupError:
            return False
        wanted = os.path.normpath(source.path)
        return path is not None and (os.path.normpath(path) == wanted
                                     or os.path.normpath(path).endswith("/" + wanted))

    def watch(fd: int, buf: int, count: int, offset: int) -> None:
        if not is_ours(fd):
            return
        lo, hi = max(offset, source.offset), min(offset + count, source.offset + length)
        if lo < hi:
            tracker.taint_memory(buf + lo - offset, hi - lo, label)
    return watch


def confirm(report: AnalysisReport, binary: str, contract: Contract, profile: Profile,
            trials: int, args: list[str] | None = None) -> None:
    """Mark the findings ``leakdbt check`` also sees (same kind, same instruction) with its
    witness: a confirmed finding is a leak shown by two concrete secrets."""
    from leakdbt.leakage.check import CheckOptions, run_check

    checked = run_check(binary, contract, profile, CheckOptions(trials=trials), args)
    witnesses = {(f.kind, f.location): f.witness for f in checked.findings}
    for i, f in enumerate(report.findings):
        w = witnesses.get((f.kind, f.location))
        if w is not None:
            report.findings[i] = replace(f, confirmed=(
                f"trial {w.first.index} ({w.first.describe()}) {w.observed[0]}; trial "
                f"{w.second.index} ({w.second.describe()}) {w.observed[1]}"))


def _tables(modules: ModuleMap, targets: set[int]) -> tuple[tuple[TableObject, ...], bool]:
    """The data objects (ELF symbols with a size) the ``targets`` lie in, by address, and
    whether some target lies in none (a heap or stack table, or no table at all)."""
    found: dict[tuple[str | None, int], TableObject] = {}
    untabled = False
    for target in sorted(targets):
        mod = modules.find(target)
        image = mod.image if mod is not None else None
        sym = image.object_at(target - mod.base) if mod is not None and image else None
        if sym is None or mod is None or image is None:
            untabled = True
            continue
        module = None if mod.is_main else mod.name
        if (module, sym.value) in found:
            continue
        seg = next((s for s in image.segments
                    if s.vaddr <= sym.value and sym.value + sym.size <= s.end), None)
        named = image.symbol(sym.name)
        name = sym.name if named is not None and named.value == sym.value else ""
        if not name and mod.is_main and not image.is_pie:
            name = f"{sym.value:#x}"  # a local symbol whose name another one has
        found[(module, sym.value)] = TableObject(
            name if mod.is_main or not name else f"{mod.name}:{name}", module, sym.value,
            sym.size, seg.vaddr if seg is not None else -1, sym.name)
    return tuple(sorted(found.values(), key=lambda t: (t.module or "", t.start))), untabled


def _place(modules: ModuleMap, address: int) -> Place:
    mod = modules.find(address)
    if mod is None:
        return Place(address, "", "", address, f"{address:#x}", False)
    return Place(address, mod.name, mod.host_path, address - mod.base,
                 modules.symbolize(address), mod.is_main)


def as_check_report(report: AnalysisReport, contract: Contract) -> CheckReport:
    """The findings as a check report (without witnesses), for the SARIF writer."""
    out = CheckReport(report.binary, tuple(contract.check.args), report.contract, "",
                      contract.protect.adversary.value, ("taint",), "", contract.check.seed)
    for f in report.findings:
        region = report.covering.get(f.location)
        out.findings.append(Finding(
            kind=f.kind, address=f.address, location=f.location, module=f.module,
            link_address=f.link_address, instruction=f.instruction, source=f.source,
            mode="original", module_path="", distinct=0, trials=0, witness=None,
            suggestion=region.toml() if region else None))
    return out
