"""``leakdbt analyze``: run the program once with its secrets tainted, and turn what the taint
reaches into findings and contract regions.

The secrets get concrete values (the check's first trial) and a label each; the run is the
same as a check trial (public inputs, virtual time).  Sources: ``argv`` and ``env`` (their
strings on the initial stack), ``stdin`` and ``file`` (the bytes read(2) returns from their
offsets; a file secret's file is written into a fresh working directory, as ``leakdbt
check`` does), ``register`` and ``pointer`` (at every entry of their function) and
``symbol`` (at start).  With
``protect.functions``, findings are kept only inside those functions (their code, not their
callees': a library routine that merely copies or prints the secret is the caller's
business); without it, everywhere.

Suggested regions are merged per block: a branch region covers the divisions, table
accesses and floating point inside it (the contract mapping gives it those passes), so
findings in the blocks of a suggested branch region add nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from unicorn import UC_HOOK_CODE

from leakdbt.analysis.taint import TaintTracker
from leakdbt.contract.edit import RegionEntry
from leakdbt.contract.model import (
    ArgvSource,
    Contract,
    EnvSource,
    FileSource,
    PointerSource,
    RegisterSource,
    StdinSource,
    SymbolSource,
)
from leakdbt.contract.profiles import Profile
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.dispatch import Dispatcher, Mode
from leakdbt.dbt.insn import decode
from leakdbt.dbt.region import form_region
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.findings import CheckReport, Finding, LeakKind, SourceLine
from leakdbt.leakage.locate import function_at, image_of, source_line, suggest_region
from leakdbt.leakage.observe import entries_in
from leakdbt.leakage.trials import Place, TrialSetup, trial_inputs
from leakdbt.linux.launch import execute
from leakdbt.linux.modules import LoadedModule, ModuleMap
from leakdbt.loader.image import Image
from leakdbt.machine.machine import Machine

KINDS = {k.value: k for k in LeakKind}


@dataclass(frozen=True)
class AnalysisFinding:
    """An instruction the secrets reach in an observable way."""

    kind: LeakKind
    location: str  # module:symbol+offset
    address: int  # runtime
    link_address: int
    module: str
    instruction: str
    source: SourceLine | None
    secrets: tuple[str, ...]  # the secrets it depends on
    count: int  # how often it ran tainted
    confirmed: str = ""  # with --confirm: the checker's witness, when it saw the leak too
    table: str | None = None  # memory accesses: the data object they hit, when one


@dataclass
class AnalysisReport:
    """What ``leakdbt analyze`` found."""

    binary: str
    contract: str
    findings: list[AnalysisFinding] = field(default_factory=list)
    regions: list[RegionEntry] = field(default_factory=list)
    covering: dict[str, RegionEntry] = field(default_factory=dict)  # location -> its region
    instructions: int = 0
    default_rule: dict[str, int] = field(default_factory=dict)  # mnemonic -> instructions
    seconds: float = 0.0


def analyze(binary: str, contract: Contract, args: list[str] | None = None,
            rw: Sequence[str] = ()) -> AnalysisReport:
    """Run ``binary`` once with the contract's secrets tainted (see the module doc); ``rw``:
    host directories the guest may write to, as ``exec --rw``."""
    started = time.monotonic()
    if args is not None:
        contract = replace(contract, check=replace(contract.check, args=tuple(args)))
    trial = trial_inputs(contract, 1, contract.check.seed)[0]
    setup = TrialSetup(binary, contract, Mode.FAST)
    box: dict[str, Any] = {}

    def on_modules(modules: ModuleMap) -> None:
        box["modules"] = modules

    def on_start(machine: Machine, _dispatcher: Dispatcher | None) -> None:
        box["tracker"] = _taint_sources(machine, box["modules"], contract)

    with setup.inputs(trial) as (options, _out, _err):  # the same run as a check trial
        options.on_modules = on_modules
        options.on_start = on_start
        options.rw = rw
        # a crash or limit ends the run: what was seen until then still counts
        with contextlib.suppress(LeakDBTError):
            execute(binary, options)
    tracker: TaintTracker = box["tracker"]
    modules: ModuleMap = box["modules"]
    report = AnalysisReport(binary, contract.path, instructions=tracker.instructions,
                            default_rule=dict(tracker.default_counts.most_common()))
    scoped = _scope(contract, modules)
    for f in tracker.findings():
        place = _place(modules, f.address)
        if scoped is not None and not any(lo <= f.address < hi for lo, hi in scoped):
            continue
        image = image_of(place.module_path) if place.module_path else None
        text = "?"
        if image is not None:
            insn = decode(image.read(place.link_address, 15), place.link_address)
            text = insn.text if insn else "?"
        names = tuple(s.name for i, s in enumerate(contract.secrets) if f.labels >> i & 1)
        report.findings.append(AnalysisFinding(
            KINDS[f.kind], place.symbolic, f.address, place.link_address, place.module, text,
            source_line(place.module_path, place.link_address) if place.module_path else None,
            names, f.count, table=_table(modules, f.targets)))
    report.regions, report.covering = _regions(report.findings, modules)
    report.seconds = time.monotonic() - started
    return report


def _taint_sources(machine: Machine, modules: ModuleMap, contract: Contract) -> TaintTracker:
    """A tracker with every secret's source tainted, now or when it enters."""
    tracker = TaintTracker(machine)
    binding = contract.binding
    assert binding is not None
    hooks: list[tuple[tuple[str | None, int], Any]] = []
    symbols: list[tuple[str | None, int, int, int]] = []
    for i, (secret, resolved) in enumerate(zip(contract.secrets, binding.secrets,
                                               strict=True)):
        label = 1 << i
        source = secret.source
        if isinstance(source, ArgvSource):
            tracker.taint_argv(source.index, label)
        elif isinstance(source, EnvSource):
            value = _env_value(machine, source.name)
            if value is not None:
                tracker.taint_memory(*value, label)
        elif isinstance(source, StdinSource | FileSource):
            tracker.read_sources.append(_read_source(tracker, source, label, secret.length))
        elif isinstance(source, RegisterSource | PointerSource) and resolved is not None \
                and resolved.function is not None:
            hooks.append(((resolved.function.module, resolved.function.start),
                          _entry_source(tracker, machine, source, label, secret.length)))
        elif isinstance(source, SymbolSource) and resolved is not None \
                and resolved.span is not None:
            symbols.append((resolved.span.start.module, resolved.span.start.address,
                            secret.length, label))

    def on_module(mod: LoadedModule) -> None:
        for where, hook in hooks:
            for entry in entries_in([where], mod):
                machine.uc.hook_add(UC_HOOK_CODE, machine.guard(hook), None, entry, entry)
        for module, address, length, label in symbols:
            if mod.is_named(module):
                tracker.taint_memory(address + mod.base, length, label)

    for mod in modules.modules():
        on_module(mod)
    modules.listeners.append(on_module)
    return tracker


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


def _env_value(machine: Machine, name: str) -> tuple[int, int] | None:
    """(address, length) of the value of environment variable ``name`` on the initial
    stack (argc, argv[], NULL, envp[], NULL), or None when it is not set."""
    rsp = machine.reg("rsp")
    argc = int.from_bytes(machine.mem.read(rsp, 8), "little")
    slot = rsp + 8 * (argc + 2)
    prefix = name.encode() + b"="
    while (ptr := int.from_bytes(machine.mem.read(slot, 8), "little")) != 0:
        head = machine.mem.read(ptr, len(prefix))
        if head == prefix:
            start = ptr + len(prefix)
            end = start
            while machine.mem.read(end, 1) != b"\0":
                end += 1
            return start, end - start
        slot += 8
    return None


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


def _entry_source(tracker: TaintTracker, machine: Machine,
                  source: RegisterSource | PointerSource, label: int, length: int) -> Any:
    def hook(uc: Any, address: int, size: int, _ud: object) -> None:
        if isinstance(source, PointerSource):
            tracker.taint_memory(machine.reg(source.register), length, label)
        else:
            tracker.taint_register(source.register, label, min(length, 16))
    return hook


def _scope(contract: Contract, modules: ModuleMap) -> list[tuple[int, int]] | None:
    """Runtime [start, end) of the contract's functions (None: no scope given)."""
    binding = contract.binding
    if binding is None or not binding.functions:
        return None
    out = []
    for f in binding.functions:
        for mod in modules.modules():
            for entry in entries_in([(f.module, f.start)], mod):
                out.append((entry, entry + max(f.size, 1)))
    return out


def _table(modules: ModuleMap, targets: set[int]) -> str | None:
    """The one data object (ELF symbol with a size) all ``targets`` lie in, by name (as a
    contract names it: ``lib.so:name`` outside the main program), or None."""
    names = set()
    for target in targets:
        mod = modules.find(target)
        sym = mod.image.object_at(target - mod.base) if mod and mod.image else None
        if sym is None or mod is None:
            return None
        names.add(sym.name if mod.is_main else f"{mod.name}:{sym.name}")
    return names.pop() if len(names) == 1 else None


def _place(modules: ModuleMap, address: int) -> Place:
    mod = modules.find(address)
    if mod is None:
        return Place(address, "", "", address, f"{address:#x}", False)
    return Place(address, mod.name, mod.host_path, address - mod.base,
                 modules.symbolize(address), mod.is_main)


def _regions(findings: list[AnalysisFinding], modules: ModuleMap
             ) -> tuple[list[RegionEntry], dict[str, RegionEntry]]:
    """One region per block, branch regions absorbing what lies inside them; and the
    region that covers each finding (by location)."""
    entries: dict[str, RegionEntry] = {}
    covered: dict[str, RegionEntry] = {}  # block -> the branch region holding it
    covering: dict[str, RegionEntry] = {}
    for f in sorted(findings, key=lambda f: f.kind is not LeakKind.CONTROL_FLOW):
        place = _place(modules, f.address)
        image = image_of(place.module_path) if place.module_path else None
        if image is None:
            continue
        entry = suggest_region(f.kind, place, image, f.instruction, "leakdbt analyze")
        if entry is None:
            continue
        if entry.kind == "table" and f.table is not None:
            entry = replace(entry, table=f.table)
        owner = covered.get(entry.at) or entries.get(entry.at)
        if owner is not None:
            covering[f.location] = owner
            continue
        entries[entry.at] = covering[f.location] = entry
        if entry.kind == "branch":
            covered.update(dict.fromkeys(_branch_blocks(entry, place, image), entry))
    return list(entries.values()), covering


def _branch_blocks(entry: RegionEntry, place: Place, image: Image) -> set[str]:
    """The names of the blocks a branch region starting at ``entry.at`` holds."""
    func = function_at(image, place.link_address)
    if func is None:
        return set()
    try:
        cfg = function_cfg(image, func)
        block = cfg.block_at(place.link_address)
        if block is None:
            return set()
        region = form_region(cfg, block.start, entry.at, True)
    except LeakDBTError:
        return set()
    prefix = "" if place.is_main else f"{place.module}:"
    return {prefix + (image.symbolize(b) or f"{b:#x}") for b in region.blocks}


def as_check_report(report: AnalysisReport, contract: Contract) -> CheckReport:
    """The findings as a check report (without witnesses), for the SARIF writer."""
    out = CheckReport(report.binary, tuple(contract.check.args), report.contract, "",
                      contract.protect.adversary.value, ("taint",), "", contract.check.seed)
    for f in report.findings:
        region = report.covering.get(f.location)
        out.findings.append(Finding(
            f.kind, "original", f.address, f.location, f.module, "", f.link_address,
            f.instruction, f.source, 0, 0, None, region.toml() if region else None))
    return out
