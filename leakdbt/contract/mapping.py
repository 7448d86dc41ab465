"""From security terms to mechanisms: adversary + CPU profile → observers → passes.

Three explicit steps, each a table or a small rule a reviewer can check:

1. :data:`ADVERSARY_OBSERVERS` — what each kind of adversary can observe in principle;
   :func:`observers` narrows it by what the CPU actually leaks (intra-line offsets need a
   core that leaks them *and* an SMT sibling to observe them from).
2. :data:`PASS_KIND` and one rule per pass (:data:`RULES`) — which pass a region of each
   kind needs against those observers on this CPU, with which parameters, and why.
3. :func:`plan` — the whole contract: one :class:`RegionPlan` per region and the
   de-duplicated list of passes the translator applies, plus what no pass covers (gaps).

The pass names are the interface with the translator's pass registry.  The mapping chooses
passes; it does not order them: passes declare their own order (``before``/``after``,
docs/passes.md), and plans list them in the order of :data:`PASS_KIND`, for reading.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from leakdbt.contract.model import (
    Adversary,
    Contract,
    Location,
    Policy,
    Region,
    RegionKind,
    ResolvedRegion,
    header_offset,
)
from leakdbt.contract.profiles import Profile


class Observer(enum.Enum):
    """Something an adversary can measure about the program's execution."""

    TIME = "time"
    CACHE_LINE = "cache-line"
    INTRA_LINE = "intra-line"


OBSERVER_TEXT: dict[Observer, str] = {
    Observer.TIME: "total running time: which instructions run (control flow) and how long "
                   "instructions with operand-dependent latency take",
    Observer.CACHE_LINE: "which cache lines the program touches (data and code), through a "
                         "shared cache (Flush+Reload, Prime+Probe), and predictor state left "
                         "behind",
    Observer.INTRA_LINE: "which part of a cache line an access touches (cache-bank conflicts, "
                         "4K-aliasing false dependencies), from a sibling thread on the same "
                         "core",
}

ADVERSARY_TEXT: dict[Adversary, str] = {
    Adversary.REMOTE: "measures how long the program takes, from another machine",
    Adversary.CO_RESIDENT: "runs on the same machine (another core or virtual machine) and "
                           "shares its caches",
    Adversary.SAME_CORE: "runs on the same core: as an SMT sibling thread, or time-sliced "
                         "with the program",
}

ADVERSARY_OBSERVERS: dict[Adversary, tuple[Observer, ...]] = {
    Adversary.REMOTE: (Observer.TIME,),
    Adversary.CO_RESIDENT: (Observer.TIME, Observer.CACHE_LINE),
    Adversary.SAME_CORE: (Observer.TIME, Observer.CACHE_LINE, Observer.INTRA_LINE),
}
"""What each adversary can observe on a CPU that leaks everything."""


@dataclass(frozen=True)
class ObserverView:
    """Whether an observer applies to this contract on this CPU, and why."""

    observer: Observer
    observed: bool
    reason: str


def observers(adversary: Adversary, profile: Profile) -> tuple[ObserverView, ...]:
    """Every observer, marked observed or not for ``adversary`` on ``profile``."""
    possible = ADVERSARY_OBSERVERS[adversary]
    views = []
    for obs in Observer:
        if obs not in possible:
            reason = {
                Observer.CACHE_LINE: "needs an adversary on the same machine",
                Observer.INTRA_LINE: "needs an adversary on the same core",
            }.get(obs, "")
            views.append(ObserverView(obs, False, reason))
        elif obs is Observer.INTRA_LINE and not profile.intra_line_leaks:
            views.append(ObserverView(obs, False, f"{profile.name} does not leak offsets "
                                                   "within a cache line"))
        elif obs is Observer.INTRA_LINE and not profile.has_smt:
            views.append(ObserverView(obs, False, f"{profile.name} has no SMT: a time-sliced "
                                                   "adversary sees the cache lines left "
                                                   "behind, not offsets within them"))
        else:
            views.append(ObserverView(obs, True, OBSERVER_TEXT[obs]))
    return tuple(views)


Param = int | str | bool


@dataclass(frozen=True)
class PassStep:
    """A hardening pass to apply, with its parameters and the reason it is needed."""

    name: str
    params: tuple[tuple[str, Param], ...] = ()
    reason: str = ""
    condition: str = ""  # for regions without a kind: which instructions it applies to

    def param(self, key: str) -> Param | None:
        return dict(self.params).get(key)


@dataclass(frozen=True)
class Skipped:
    """A pass a region's kind would call for, left out on this CPU, and why."""

    name: str
    reason: str


PASS_KIND: dict[str, RegionKind] = {
    "ct-equivalent": RegionKind.FUNCTION,
    "bounded-loop": RegionKind.LOOP,
    "if-conversion": RegionKind.BRANCH,
    "ct-division": RegionKind.DIVIDE,
    "oblivious-table": RegionKind.TABLE,
    "fp-ftz-daz": RegionKind.FLOAT,
}
"""The region kind each pass serves (a region without a kind may need any of them): every
pass the mapping knows, whole-function first, then those that shape a region, then the
per-instruction ones — the order plans list them in, not the order they run in."""

PASS_TEXT: dict[str, str] = {
    "ct-equivalent": "runs a known constant-time equivalent of the function instead (same "
                     "arguments, same result)",
    "bounded-loop": "runs the loop for a fixed public number of iterations, masking the "
                    "extra ones",
    "if-conversion": "replaces the branch by straight-line code that computes both sides and "
                     "selects the result (CMOV)",
    "ct-division": "replaces DIV/IDIV by a division whose time does not depend on the operands",
    "oblivious-table": "reads every unit of the table on each lookup and selects the wanted "
                       "entry, so the addresses touched do not depend on the index",
    "fp-ftz-daz": "sets MXCSR.FTZ and MXCSR.DAZ in the region so subnormal values are treated "
                  "as zero and take no slow path (this changes results that involve them)",
}

EXPOSED: dict[RegionKind, tuple[str, ...]] = {
    RegionKind.BRANCH: ("ct-division", "oblivious-table", "fp-ftz-daz"),
    RegionKind.LOOP: ("ct-division", "oblivious-table", "fp-ftz-daz"),
}
"""Instruction-level passes a branch or loop region also gets: once both sides of a branch
(or every iteration of a loop) run, their divisions, table lookups and floating-point
operations run on secret-dependent values whichever way the secret goes."""

KIND_CONDITION: dict[RegionKind, str] = {
    RegionKind.FUNCTION: "for a function whose work on a secret is not constant-time",
    RegionKind.LOOP: "for a loop whose trip count depends on a secret",
    RegionKind.BRANCH: "for a conditional branch on a secret",
    RegionKind.DIVIDE: "for DIV/IDIV with a secret operand",
    RegionKind.TABLE: "for a load or store at a secret-dependent address",
    RegionKind.FLOAT: "for floating-point arithmetic on secrets",
}


def _seen(views: tuple[ObserverView, ...]) -> set[Observer]:
    return {v.observer for v in views if v.observed}


def _channels(seen: set[Observer]) -> str:
    return ", ".join(o.value for o in Observer if o in seen)


Rule = Callable[[str, set[Observer], Profile, "Region | None"], "PassStep | Skipped"]


INNER_BOUND = "inner_bound"
"""bounded-loop's parameter for an inner loop's bound: ``inner_bound+0xD`` (or ``-0xD``) for
the inner loop whose header lies ``D`` bytes after (before) the region's ``at``."""


def inner_bound_key(at: Location, header: Location) -> str:
    """The parameter carrying the bound of the inner loop at ``header`` (load.py checked
    that it is written like ``at``)."""
    delta = header_offset(at, header)
    assert delta is not None
    return f"{INNER_BOUND}+{delta:#x}" if delta >= 0 else f"{INNER_BOUND}-{-delta:#x}"


def _bounded_loop(name: str, seen: set[Observer], profile: Profile,
                  region: Region | None) -> PassStep | Skipped:
    params: tuple[tuple[str, Param], ...] = ()
    if region is not None and region.bound is not None:
        params = (("bound", region.bound),)
    if region is not None:
        params += tuple((inner_bound_key(region.at, h), n) for h, n in region.inner_bounds)
    return PassStep(name, params, "the number of iterations depends on the secret and "
                                  f"shows in total time; the pass {PASS_TEXT[name]}")


def _if_conversion(name: str, seen: set[Observer], profile: Profile,
                   region: Region | None) -> PassStep | Skipped:
    extra = (", and in the code cache lines and branch-predictor state it leaves"
             if Observer.CACHE_LINE in seen else "")
    return PassStep(name, (), "which side of the branch runs depends on the secret and "
                              f"shows in total time{extra}; the pass {PASS_TEXT[name]}")


def _latency_rule(latency_class: str, slow: str, fast: str,
                  params: tuple[tuple[str, Param], ...] = ()) -> Rule:
    """A pass needed exactly when the profile says ``latency_class`` depends on the data:
    ``slow``/``fast`` say why (``{cpu}``: the profile's name, ``{basis}``: its source)."""
    def rule(name: str, seen: set[Observer], profile: Profile,
             region: Region | None) -> PassStep | Skipped:
        fact = profile.latency_fact(latency_class)
        words = {"cpu": profile.name, "basis": fact.basis}
        if not fact.value:
            return Skipped(name, fast.format(**words))
        return PassStep(name, params, f"{slow.format(**words)}; the pass {PASS_TEXT[name]}")
    return rule


def _oblivious_table(name: str, seen: set[Observer], profile: Profile,
                     region: Region | None) -> PassStep | Skipped:
    line = profile.line_size
    if Observer.INTRA_LINE in seen:
        granularity = profile.intra_line_unit
        why = (f"a sibling thread sees which {granularity}-byte unit of a line is touched "
               f"on {profile.name} ({profile.intra_line.basis})")
    elif Observer.CACHE_LINE in seen:
        granularity = line
        why = "an adversary sharing the cache sees which cache line is touched"
    else:
        granularity = line
        why = ("a remote adversary sees only total time, but which table lines are cached "
               "changes it (Bernstein, cache-timing attacks on AES, 2005): conservatively, "
               "every line of the table is touched")
    table: list[tuple[str, Param]] = [("granularity", granularity), ("line_size", line)]
    if region is not None and region.table is not None:
        if region.table.symbol is not None:
            table.append(("table", str(region.table.symbol)))
        if region.table.length is not None:
            table.append(("length", region.table.length))
    return PassStep(name, tuple(table), f"{why}; the pass {PASS_TEXT[name]} "
                                         f"({granularity}-byte units)")


def _ct_equivalent(name: str, seen: set[Observer], profile: Profile,
                   region: Region | None) -> PassStep | Skipped:
    return PassStep(name, (), "the function's branches, memory accesses or divisions depend "
                              f"on the secret; the pass {PASS_TEXT[name]}")


RULES: dict[str, Rule] = {
    "ct-equivalent": _ct_equivalent,
    "bounded-loop": _bounded_loop,
    "if-conversion": _if_conversion,
    "ct-division": _latency_rule(
        "int-div", slow="DIV/IDIV latency depends on the operand values on {cpu} ({basis}) "
                        "and shows in total time",
        fast="DIV/IDIV latency does not depend on the operands on {cpu} ({basis})"),
    "oblivious-table": _oblivious_table,
    "fp-ftz-daz": _latency_rule(
        "fp-subnormal", slow="subnormal operands or results take a slow path on {cpu} "
                             "({basis}), visible in total time",
        fast="subnormal values take no slow path on {cpu} ({basis})",
        params=(("ftz", True), ("daz", True))),
}
"""One rule per pass: is it needed against the observers seen on a profile, and how?"""


def _float_gaps(profile: Profile) -> tuple[str, ...]:
    gaps = []
    for cls, what in (("fp-div", "floating-point division"),
                      ("fp-sqrt", "floating-point square root")):
        fact = profile.latency_fact(cls)
        if fact.value:
            gaps.append(f"{what} has operand-dependent latency on {profile.name} "
                        f"({fact.basis}); no pass rewrites it yet")
    return tuple(gaps)


@dataclass(frozen=True)
class RegionPlan:
    """What happens to one region: its passes, what was left out, what is uncovered."""

    index: int  # position in protect.region; -1 for the scope plan
    region: Region | None  # None: any block of the protected scope
    resolved: ResolvedRegion | None
    passes: tuple[PassStep, ...]
    skipped: tuple[Skipped, ...] = ()
    gaps: tuple[str, ...] = ()


CLONING = ("if-conversion", "ct-division")
"""The passes that clone a branch region's callees: they get the region's ``clone_depth``,
``clone_insns`` and ``public`` (docs/passes.md, "Predicated calls")."""


def _with_budget(decision: PassStep | Skipped, region: Region | None) -> PassStep | Skipped:
    """``decision`` with the region's clone budget among its parameters, if it clones, and
    its public registers as one string, ``public = "rdx,r12"`` (GENERAL_REGISTERS order)."""
    if isinstance(decision, Skipped) or decision.name not in CLONING or region is None:
        return decision
    public = ",".join(region.public) or None
    budget = tuple((key, value) for key, value in (("clone_depth", region.clone_depth),
                                                   ("clone_insns", region.clone_insns),
                                                   ("public", public))
                   if value is not None)
    return replace(decision, params=decision.params + budget) if budget else decision


SWITCHED_OFF = "switched off by protect.passes_off"
"""Why a pass the contract switches off is not in a plan (every command plans the same way,
so exec, check and analyze all leave it out)."""


def plan_region(region: Region | None, seen: set[Observer], profile: Profile,
                index: int = -1, resolved: ResolvedRegion | None = None,
                off: tuple[str, ...] = ()) -> RegionPlan:
    """The passes for one region (``None``: any block of the protected scope); the passes
    named in ``off`` are left out, as skipped."""
    kind = region.kind if region is not None else None
    steps: list[PassStep] = []
    skipped: list[Skipped] = []
    for name in PASS_KIND:
        exposed = kind is not None and name in EXPOSED.get(kind, ())
        if kind is not None and PASS_KIND[name] is not kind and not exposed:
            continue
        if kind is None and PASS_KIND[name] is RegionKind.FUNCTION:
            continue  # a whole-function region is always asked for by its kind
        if name in off:
            skipped.append(Skipped(name, SWITCHED_OFF))
            continue
        decision = _with_budget(RULES[name](name, seen, profile, region), region)
        if isinstance(decision, Skipped):
            skipped.append(decision)
        elif kind is None or exposed:
            steps.append(PassStep(decision.name, decision.params, decision.reason,
                                  KIND_CONDITION[PASS_KIND[name]]))
        else:
            steps.append(decision)
    gaps = _float_gaps(profile) if kind in (None, RegionKind.FLOAT) else ()
    return RegionPlan(index, region, resolved, tuple(steps), tuple(skipped), gaps)


@dataclass(frozen=True)
class Plan:
    """The mechanisms a contract needs on one CPU."""

    contract: Contract
    profile: Profile
    observers: tuple[ObserverView, ...]
    mode: Policy  # the policy in effect (adaptive against a remote adversary is always)
    mode_reason: str
    passes: tuple[PassStep, ...]  # program-wide, one per pass name, in PASS_KIND's order
    regions: tuple[RegionPlan, ...]  # one per protect.region
    scope: RegionPlan | None  # when no region is named: what applies across the scope
    skipped: tuple[Skipped, ...]
    gaps: tuple[str, ...]

    @property
    def observed(self) -> tuple[Observer, ...]:
        return tuple(v.observer for v in self.observers if v.observed)

    def step(self, name: str) -> PassStep | None:
        """The program-wide step for pass ``name``, if it is applied."""
        return next((s for s in self.passes if s.name == name), None)


def _mode(policy: Policy, adversary: Adversary) -> tuple[Policy, str]:
    if policy is Policy.NEVER:
        return policy, ("nothing is hardened (a baseline for measurement); the passes listed "
                        "are what would run")
    if policy is Policy.ALWAYS:
        return policy, "every protected block always runs hardened"
    if adversary is Adversary.REMOTE:
        return Policy.ALWAYS, ("adaptive, but a remote adversary cannot be detected from this "
                               "machine, so protected blocks always run hardened")
    who = ("another tenant sharing the machine's caches" if adversary is Adversary.CO_RESIDENT
           else "a sibling thread or another program scheduled on the program's core")
    return policy, (f"protected blocks run hardened while the monitor detects {who}, and "
                    "as originally compiled otherwise")


def plan(contract: Contract, profile: Profile) -> Plan:
    """Map ``contract`` to the mechanisms ``profile`` needs."""
    views = observers(contract.protect.adversary, profile)
    seen = _seen(views)
    mode, mode_reason = _mode(contract.protect.policy, contract.protect.adversary)
    binding = contract.binding
    off = contract.protect.passes_off
    regions = tuple(
        plan_region(r, seen, profile, i, binding.regions[i] if binding else None, off)
        for i, r in enumerate(contract.protect.regions)
    )
    scope = None if regions else plan_region(None, seen, profile, off=off)
    sources = regions if regions else (scope,) if scope else ()
    passes: list[PassStep] = []
    skipped: list[Skipped] = []
    gaps: list[str] = []
    for name in PASS_KIND:
        steps = [s for rp in sources for s in rp.passes if s.name == name]
        if steps:
            # Program-wide parameters: those every region agrees on (table bounds differ).
            common = tuple(p for p in steps[0].params
                           if all(p in s.params for s in steps[1:]) and p[0] not in
                           ("table", "length", "bound", "clone_depth",
                                            "clone_insns", "public")
                           and not p[0].startswith(INNER_BOUND))
            passes.append(PassStep(name, common, steps[0].reason, steps[0].condition))
        for rp in sources:
            for skip in rp.skipped:
                if skip.name == name and skip not in skipped:
                    skipped.append(skip)
    for rp in sources:
        for gap in rp.gaps:
            if gap not in gaps:
                gaps.append(gap)
    return Plan(contract=contract, profile=profile, observers=views, mode=mode,
                mode_reason=mode_reason, passes=tuple(passes), regions=regions, scope=scope,
                skipped=tuple(skipped), gaps=tuple(gaps))
