"""The ``[[protect.region]]`` entries ``leakdbt analyze`` suggests, and the region that covers
each finding.

Three kinds of suggestion, tried in this order for each finding:

1. **a whole function** (``kind = "function"``, :mod:`leakdbt.analysis.functions`) when an
   installed pass replaces the function holding the finding.  A second run with those
   regions applied shows which findings they remove: also those in callees (``BN_is_bit_set``
   called by ``BN_mod_exp_mont``);
2. **a loop** (``kind = "loop"`` with its ``bound``, :mod:`leakdbt.analysis.loops`) for a
   secret branch that leaves a loop: a branch region would contain the loop, which
   if-conversion refuses;
3. **the block** holding the finding (:func:`leakdbt.leakage.locate.suggest_region`): a
   branch region covers the divisions, table accesses and floating point inside it (the
   contract mapping gives it those passes), so findings in its blocks add nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from leakdbt.analysis.findings import AnalysisFinding, TableObject
from leakdbt.analysis.loops import exit_loop, run_time_bound
from leakdbt.contract.edit import RegionEntry
from leakdbt.contract.load import parse_location
from leakdbt.contract.model import Location, offset_by
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.locate import image_of, suggest_region
from leakdbt.leakage.trials import Place
from leakdbt.loader.image import Image

TOOL = "leakdbt analyze"


@dataclass(frozen=True)
class LoopCandidate:
    """A loop that a secret branch leaves (link-time addresses of its module)."""

    at: str  # the header, as contracts write it
    module: str | None  # None: the main program (as LoadedModule.is_named takes it)
    region: CodeRegion
    branch: int  # the secret exit
    seen: int = 0  # how often the tainted run(s) ran the secret exit (its trip budget)


def exit_loops(findings: list[AnalysisFinding], places: Mapping[str, Place],
               skip: Collection[str] = ()) -> dict[str, LoopCandidate]:
    """Finding location → the innermost loop its secret branch leaves (control-flow findings
    whose function is not in ``skip``, function names as contracts write them)."""
    out: dict[str, LoopCandidate] = {}
    for f in findings:
        place = places[f.location]
        image = image_of(place.module_path) if place.module_path else None
        if f.kind is not LeakKind.CONTROL_FLOW or image is None:
            continue
        func = image.function_containing(place.link_address)
        if func is None or _qualified(place, func.name) in skip:
            continue
        try:
            loop = exit_loop(function_cfg(image, func), place.link_address, func.name)
        except LeakDBTError:
            continue
        if loop is not None:
            header = image.symbolize(loop.entry) or f"{loop.entry:#x}"
            out[f.location] = LoopCandidate(_qualified(place, header),
                                            None if place.is_main else place.module, loop,
                                            place.link_address, f.count)
    return out


def regions(findings: list[AnalysisFinding], places: Mapping[str, Place],
            functions: Mapping[str, RegionEntry], removed: set[str],
            loops: Mapping[str, LoopCandidate], trips: Mapping[str, tuple[int, ...]],
            inner: Mapping[str, Mapping[int, int]] | None = None,
            unknown: Mapping[str, str] | None = None
            ) -> tuple[list[RegionEntry], dict[str, RegionEntry]]:
    """The regions to suggest, and the one covering each finding (by location).

    ``functions``: function regions by function name; ``removed``: locations of the
    findings that running those regions removes; ``loops``: loop candidates by finding
    location, ``trips`` the trip counts a run saw per entry, by header (loops.py), and
    ``inner`` their inner loops' bounds (offset from the header -> most trips), ``unknown``
    why a loop without trip counts has no bound (LoopCounter.unknown)."""
    entries: dict[str, RegionEntry] = {}
    covered: dict[str, RegionEntry] = {}  # block -> the branch or loop region holding it
    # table regions: every data object their findings touched, and the findings that
    # touched memory in none
    tables: dict[str, tuple[dict[TableObject, None], list[str]]] = {}
    covering: dict[str, RegionEntry] = {}
    first_function = next(iter(functions.values()), None)
    secret = {(None if places[f.location].is_main else places[f.location].module,
               places[f.location].link_address)
              for f in findings if f.kind is LeakKind.CONTROL_FLOW}
    order = sorted(findings, key=lambda f: (f.location not in loops,
                                            f.kind is not LeakKind.CONTROL_FLOW))
    for f in order:
        place = places[f.location]
        image = image_of(place.module_path) if place.module_path else None
        if image is None:
            continue
        func = image.function_containing(place.link_address)
        whole = functions.get(_qualified(place, func.name)) if func is not None else None
        if whole is None and f.location in removed:
            whole = first_function
        if whole is not None:
            entries[whole.at] = covering[f.location] = whole
            continue
        loop = loops.get(f.location)
        entry = _loop_entry(loop, trips.get(loop.at, ()), f, (inner or {}).get(loop.at, {}),
                            (unknown or {}).get(loop.at, ""),
                            {a for m, a in secret if loop.module == m}) \
            if loop is not None else \
            suggest_region(f.kind, place, image, f.instruction, TOOL)
        if entry is None:
            continue
        owner = covered.get(entry.at) or entries.get(entry.at)
        if (owner or entry).kind == "table" and f.kind is LeakKind.MEMORY_ACCESS:
            objects, misses = tables.setdefault((owner or entry).at, ({}, []))
            objects.update(dict.fromkeys(f.tables))
            if f.untabled:
                misses.append(f.location)
        if owner is not None:
            covering[f.location] = owner
            continue
        entries[entry.at] = covering[f.location] = entry
        if loop is not None:
            covered.update(dict.fromkeys(_names(loop.region.blocks, place, image), entry))
        elif entry.kind == "branch":
            covered.update(dict.fromkeys(_branch_blocks(entry, place, image), entry))
    bounded = {e: table_bounds(e, list(tables[e.at][0]), tables[e.at][1])
               if e.kind == "table" and e.at in tables else e for e in entries.values()}
    return list(bounded.values()), {k: bounded.get(v, v) for k, v in covering.items()}


def table_bounds(entry: RegionEntry, objects: list[TableObject], unknown: list[str]
                 ) -> RegionEntry:
    """``entry`` (a table region) with the bounds that cover every data object its
    secret-indexed accesses touched in the run(s):

    - one object: its symbol (the pass reads its size);
    - several, all in one PT_LOAD segment of one module: the first object's symbol with the
      length up to the last's end (a table's ``length`` may run past its symbol, inside
      its segment), the objects named in ``why``.  A block that indexes SP1..SP8 or
      TE0..TE3 then has every lookup in contract; the bytes between the objects are read
      too (cost, not correctness: they are in the segment);
    - otherwise (objects in several modules or segments, or an access that also touched
      memory in no object: ``unknown``): no bounds, and ``why`` says why: the pass then
      ties each access to the object at its address where it can (docs/passes.md)."""
    if not objects:
        return entry
    objects = sorted(objects, key=lambda o: (o.module or "", o.start))
    names = ", ".join(o.name or o.symbol for o in objects)
    if unknown:
        return replace(entry, why=f"{entry.why}; no table named: {unknown[0]} also touched "
                                  f"memory in no data object (besides {names})")
    first = objects[0]
    if not first.name:
        return replace(entry, why=f"{entry.why}; no table named: another symbol has the name "
                                  f"of {first.symbol}, where {names} start")
    if len(objects) == 1:
        return replace(entry, table=first.name)
    end = max(o.end for o in objects)
    if len({(o.module, o.segment) for o in objects}) != 1 or first.segment < 0:
        return replace(entry, why=f"{entry.why}; no table named: it indexes {names}, which "
                                  "lie in different segments (no one span covers them)")
    return replace(entry, table=first.name, length=end - first.start,
                   why=f"{entry.why}; it indexes {len(objects)} tables ({names}): the span "
                       f"from {first.name} covers them")


def _loop_entry(loop: LoopCandidate, trips: tuple[int, ...], f: AnalysisFinding,
                inner: Mapping[int, int] | None = None, unknown: str = "",
                secret: Collection[int] = ()) -> RegionEntry:
    """A loop region whose bound is the largest trip count seen.  Entries that ran fewer
    iterations are named: the bounded loop runs the bound on them too, so every buffer the
    loop walks must have room for it (docs/passes.md, bounded-loop).  No trip count: the
    region has no bound ("loop bound unknown", ``unknown`` saying why), which bounded-loop
    refuses until the user gives one.  A run-time bound (loops.run_time_bound: the
    header's public test of a stepped pointer against a fixed limit; with no trip count,
    also a register counted down to zero) comes first: it holds for every input length,
    the measured one only for the run's."""
    why = f"{TOOL}: control-flow leak at {f.location} ({f.instruction}) leaves the loop"
    runtime = run_time_bound(loop.region, secret, counted=not trips)
    if runtime is not None:
        why += (f"; its public exit test bounds it: at most {runtime} iterations from each "
                "entry (a run-time bound, from the registers at the entry, which must be "
                "public: the hardened loop's trip count shows them)")
        inner_bounds, why = _inner_bounds(loop.at, inner or {}, why)
        return RegionEntry(loop.at, "loop", why, bound=runtime, inner_bounds=inner_bounds)
    if not trips:
        why += (f"; loop bound unknown: with that exit suppressed "
                f"{unknown or 'no other exit ended it'}: add bound = the loop's maximum "
                "number of iterations")
        return RegionEntry(loop.at, "loop", why)
    bound = max(trips)
    why += f"; with that exit suppressed it ran {bound} iterations (the bound)"
    if min(trips) < bound:
        why += (f", {min(trips)} on some of its {len(trips)} entries: check that every "
                f"buffer it walks has room for {bound}")
    inner_bounds, why = _inner_bounds(loop.at, inner or {}, why)
    return RegionEntry(loop.at, "loop", why, bound=bound, inner_bounds=inner_bounds)


def _inner_bounds(at: str, inner: Mapping[int, int], why: str
                  ) -> tuple[tuple[tuple[str, int], ...], str]:
    """The inner loops' bounds as contracts write them (the most trips one entry ran), and
    ``why`` saying which inner loops never ran (their bound is left to the user)."""
    loc = parse_location(at)
    out: list[tuple[str, int]] = []
    for delta, most in sorted(inner.items()):
        header = offset_by(loc, delta) if isinstance(loc, Location) else None
        if header is None:
            continue
        if most:
            out.append((str(header), most))
        else:
            why += f"; its inner loop at {header} never ran: add its bound to inner_bounds"
    if out:
        why += "; inner loops' bounds: the most iterations one entry of each ran"
    return tuple(out), why


def _qualified(place: Place, name: str) -> str:
    """``name`` as a contract writes it: ``lib.so:name`` outside the main program."""
    return name if place.is_main else f"{place.module}:{name}"


def _names(blocks: tuple[int, ...], place: Place, image: Image) -> set[str]:
    return {_qualified(place, image.symbolize(b) or f"{b:#x}") for b in blocks}


def _branch_blocks(entry: RegionEntry, place: Place, image: Image) -> set[str]:
    """The names of the blocks a branch region starting at ``entry.at`` holds."""
    func = image.function_containing(place.link_address)
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
    return _names(region.blocks, place, image)
