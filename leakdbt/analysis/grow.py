"""Region growing for ``leakdbt analyze``: when no pass accepts a suggested region, try larger
ones around the same finding and keep the smallest one a pass accepts.

The order (each step is tried only when every earlier one is refused):

1. the suggested region itself;
2. each natural loop that holds the finding's block, innermost first, as a ``loop`` region
   with the bound a run measured (:class:`~leakdbt.analysis.loops.LoopCounter`: the most
   iterations one entry ran); a loop the run never entered has no bound and is not tried;
3. the whole function: a ``branch`` region at the first block of the function that ends in a
   conditional branch (reached from the entry through blocks with one successor), when that
   region holds the finding's block;
4. the caller's call site: for every call site the run saw call the function, the innermost
   ``branch`` region of the caller that holds the call (its arms then run the call under a
   predicate: predicated calls into clones).  Accepted only when every site is.

"Accepted" is the verdict of :func:`leakdbt.run.protect.verdicts` (the hardener's own steps,
without running anything) *and* a pass of the region's kind applied: a branch region where
only ct-division applied would still branch on the secret.  Each attempt and each refusal
reason is recorded (:class:`Growth`); a finding none of them covers keeps its suggested
region, which ``--write`` writes with a comment saying no pass accepts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from leakdbt.contract import loads
from leakdbt.contract.dump import dumps
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.contract.mapping import PASS_KIND
from leakdbt.contract.model import Contract, ResolvedAddress
from leakdbt.contract.profiles import Profile
from leakdbt.dbt.calls import Linker
from leakdbt.dbt.cfg import FunctionCFG
from leakdbt.dbt.region import CodeRegion, form_region
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.locate import image_of
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.run.protect import protection, verdicts
from leakdbt.x86.insn import Flow

SUGGESTED, LOOP, FUNCTION, CALL_SITE = "suggested", "enclosing loop", "whole function", \
    "call site"
STEPS = (SUGGESTED, LOOP, FUNCTION, CALL_SITE)  # the growing order


@dataclass(frozen=True)
class Attempt:
    """One region tried for a finding, and the verdict."""

    step: str  # one of STEPS
    entry: RegionEntry | None  # None: no region could be formed for this step
    accepted: bool
    reason: str = ""  # why not


@dataclass
class Growth:
    """What was tried for one suggested region (and the findings it covers)."""

    suggested: RegionEntry
    findings: list[str] = field(default_factory=list)  # the locations it covers
    attempts: list[Attempt] = field(default_factory=list)
    chosen: tuple[RegionEntry, ...] = ()  # the accepted region(s); () when none is

    @property
    def grown(self) -> bool:
        return bool(self.chosen) and self.chosen != (self.suggested,)

    @property
    def refused(self) -> bool:
        return not self.chosen

    def refusal(self) -> str:
        """Why no region was accepted: each step's reason, one line."""
        return "; ".join(f"{a.step} {a.entry.at if a.entry else ''}".rstrip()
                         + f": {a.reason}" for a in self.attempts)


Judge = Callable[[Sequence[RegionEntry]], list[tuple[bool, str]]]


def judge_with(contract: Contract, profile: Profile,
               linkers: Callable[[ResolvedAddress], Linker | None] | None = None) -> Judge:
    """A judge of regions for ``contract`` (bound): each entry alone in the contract,
    asked of the hardener without a run; (accepted, why not) per entry.  ``linkers``: how
    a region's calls through the GOT resolve (leakdbt.analysis.linking; without them, they
    do not)."""
    binding = contract.binding
    assert binding is not None
    bare = replace(contract, protect=replace(contract.protect, regions=()))
    base = dumps(bare)

    def verdict_of(entries: Sequence[RegionEntry]) -> list[tuple[bool, str]]:
        text, added = add_regions(base, entries, contract.path)
        if len(added) != len(entries):
            raise LeakDBTError("duplicate region in one batch")
        bound = loads(text, contract.path, binding.binary)
        said = verdicts(protection(bound, profile), _image, linkers)
        return [(v.accepted and _serves(e.kind, v.passes),
                 v.reason or f"no pass for a {e.kind} region applied (applied: "
                             f"{', '.join(v.passes) or 'none'})")
                for e, v in zip(entries, said, strict=True)]

    memo: dict[RegionEntry, tuple[bool, str]] = {}

    def judge(entries: Sequence[RegionEntry]) -> list[tuple[bool, str]]:
        unique = [e for e in dict.fromkeys(entries) if e not in memo]
        if not unique:
            return [memo[e] for e in entries]
        try:
            got = dict(zip(unique, verdict_of(unique), strict=True))
        except LeakDBTError:  # one of them does not bind or plan: judge them one by one
            got = {}
            for e in unique:
                try:
                    got[e] = verdict_of([e])[0]
                except LeakDBTError as err:
                    got[e] = (False, err.one_line())
        memo.update(got)
        return [memo[e] for e in entries]
    return judge


def _image(path: str) -> Image:
    """The module's image, loaded once for the whole analysis (the one analyze's run and
    suggestions use): the CFGs and callee verdicts cached per Image (leakdbt.dbt.cfg) then
    serve every judgement instead of being rebuilt for each region.  A file that does not
    load raises load_image's error, as a fresh load would."""
    image = image_of(path)
    return image if image is not None else load_image(path)


def _serves(kind: str, passes: Iterable[str]) -> bool:
    return any(PASS_KIND[p].value == kind for p in passes if p in PASS_KIND)


def enclosing_loops(cfg: FunctionCFG, block: int, name: Callable[[int], str]
                    ) -> list[CodeRegion]:
    """The natural loops of ``cfg`` holding the block at ``block``, innermost first."""
    out = []
    for header in cfg.blocks:
        if header not in cfg.dominators or not cfg.dominates(header, block) or not any(
                cfg.dominates(header, p) for p in cfg.blocks[header].preds):
            continue
        try:
            loop = form_region(cfg, header, name(header), loop=True)
        except LeakDBTError:
            continue
        if block in loop.blocks:
            out.append(loop)
    return sorted(out, key=lambda r: (len(r.blocks), r.entry))


def function_branch(cfg: FunctionCFG, block: int, name: Callable[[int], str]) -> str | None:
    """The start of the branch region that spans the function from its first conditional
    branch (reached from the entry through blocks with one successor), if it holds
    ``block``."""
    at, seen = cfg.entry, set()
    while at in cfg.blocks and at not in seen:
        seen.add(at)
        b = cfg.blocks[at]
        if b.last.flow is Flow.BRANCH:
            try:
                region = form_region(cfg, at, name(at), branch=True)
            except LeakDBTError:
                return None
            return name(at) if block in region.blocks else None
        succs = b.inside_succs()
        if len(succs) != 1:
            return None
        at = succs[0]
    return None


def call_site_branch(cfg: FunctionCFG, call_block: int, name: Callable[[int], str]
                     ) -> str | None:
    """The start of the innermost branch region of ``cfg`` that holds ``call_block``."""
    at = cfg.dominators.get(call_block)
    while at is not None:
        if cfg.blocks[at].last.flow is Flow.BRANCH:
            try:
                region = form_region(cfg, at, name(at), branch=True)
            except LeakDBTError:
                region = None
            if region is not None and call_block in region.blocks:
                return name(at)
        at = cfg.dominators.get(at)
    return None


@dataclass
class Candidates:
    """The regions steps 2 to 4 offer for one suggested region (built by analyze.py)."""

    loops: list[RegionEntry | str] = field(default_factory=list)  # str: why no bound
    function: RegionEntry | None = None
    call_sites: list[RegionEntry | str] = field(default_factory=list)  # str: why none


def grow(suggested: RegionEntry, findings: list[str], judge: Judge,
         offer: Callable[[], Candidates]) -> Growth:
    """Try ``suggested``, then what ``offer`` gives, in the growing order (module doc)."""
    g = Growth(suggested, findings)
    ok, why = judge([suggested])[0]
    g.attempts.append(Attempt(SUGGESTED, suggested, ok, why if not ok else ""))
    if ok:
        g.chosen = (suggested,)
        return g
    more = offer()
    for step, options in ((LOOP, more.loops),
                          (FUNCTION, [more.function] if more.function else [])):
        for option in options:
            if isinstance(option, str):
                g.attempts.append(Attempt(step, None, False, option))
                continue
            if any(a.entry is not None and (a.entry.at, a.entry.kind) ==
                   (option.at, option.kind) for a in g.attempts):
                continue  # the same region as an earlier step: already refused
            ok, why = judge([option])[0]
            g.attempts.append(Attempt(step, option, ok, why if not ok else ""))
            if ok:
                g.chosen = (option,)
                return g
    if not more.function:
        g.attempts.append(Attempt(FUNCTION, None, False,
                                  "no branch region spans the function from its entry"))
    sites = [s for s in more.call_sites if not isinstance(s, str)]
    for s in more.call_sites:
        if isinstance(s, str):
            g.attempts.append(Attempt(CALL_SITE, None, False, s))
    if not more.call_sites:
        g.attempts.append(Attempt(CALL_SITE, None, False, "the run saw no call to the "
                                                          "function"))
    verdicts_ = judge(sites) if sites else []
    for s, (ok, why) in zip(sites, verdicts_, strict=True):
        g.attempts.append(Attempt(CALL_SITE, s, ok, why if not ok else ""))
    if sites and len(sites) == len(more.call_sites) and all(ok for ok, _ in verdicts_):
        g.chosen = tuple(sites)
    return g


def refused_comment(g: Growth) -> str:
    """The TOML comment ``--write`` puts above a region no pass accepts."""
    return (f"leakdbt analyze: no pass accepts this region, nor any region grown around it "
            f"({', '.join(STEPS)}): {g.refusal()}. exec runs it unhardened in a "
            "whole-program contract (an error with protect.functions or --strict)")
