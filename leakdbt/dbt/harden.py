"""Hardening a region: ask the passes the contract's mapping selects, merge their rewrites,
and lay the result out in the code cache.

For each region, every pass of its plan (``leakdbt contract explain``) that is installed is
asked, in the order the passes declare (``leakdbt passes``), whether it applies; it sees
read-only views of the region, the contract and the CPU profile
(:class:`~leakdbt.plugin_api.RegionView`, ``ContractView``, ``ProfileView``); those
that do return a rewrite or a refusal.  Rewrites are merged: two passes may replace the same
instruction only when the later one wraps the earlier one (its lines stand for the
instruction once, as ``.insn``), and only one may replace the whole region (its code then
carries the other passes' replacements through ``.insn`` lines).  A region for which some
pass refused, or no pass applied, cannot be hardened: that is an error naming the region
and each pass's reason, unless the user allowed unhardened regions (the successful rewrites
are kept, and the region is reported).  So are two rewrites that conflict and a merged
rewrite that cannot be laid out; allowed (a whole-program contract: leakdbt.run.protect),
the later of two conflicting passes counts as refused (the earlier one's rewrite is kept),
and a rewrite that cannot be laid out gives way to the region's original code, the reason
recorded as the translator's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from leakdbt.contract.mapping import PASS_KIND, SWITCHED_OFF, PassStep, Skipped
from leakdbt.dbt.calls import Linker, ResolveLater
from leakdbt.dbt.cfg import Block, function_cfg
from leakdbt.dbt.passes import LoadedPass
from leakdbt.dbt.region import CodeRegion
from leakdbt.dbt.relocate import Translation, relocate
from leakdbt.errors import LeakDBTError, PluginError, TranslationError
from leakdbt.loader.functions import code_functions
from leakdbt.loader.image import Image
from leakdbt.plugin_api import (
    BlockView,
    ContractView,
    DataObject,
    Insn,
    ProfileView,
    Refusal,
    RegionView,
    Rewrite,
    original,
)
from leakdbt.x86.asm import rename_labels

if TYPE_CHECKING:
    from leakdbt.contract.model import Contract
    from leakdbt.contract.profiles import Profile


class HardeningError(TranslationError):
    """A region no pass could harden (with each pass's reason)."""


@dataclass(frozen=True)
class RegionNeeds:
    """What the contract asks for one region: its kind, the plan's passes, a table, and the
    passes the plan left out."""

    kind: str | None
    steps: tuple[PassStep, ...]
    table: tuple[int, int] | None = None  # link-time (address, length) in the same module
    skipped: tuple[Skipped, ...] = ()


@dataclass
class Outcome:
    """What happened to one region.

    A region of a kind (``branch``, ``table``, ``divide``, ...) is hardened only when a pass
    of that kind applied (:data:`~leakdbt.contract.mapping.PASS_KIND`: ``if-conversion`` for
    a branch, ``oblivious-table`` for a table, ...) and no pass refused: the per-instruction
    passes a branch or loop region also gets (``ct-division`` on its divisions, ...) do not
    remove the leak it was named for.  A region without a kind is hardened when any pass
    applied and none refused."""

    name: str
    applied: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (pass, reason)
    passed_over: list[tuple[str, str]] = field(default_factory=list)  # (pass, why not)
    kind: str | None = None  # the contract's kind for the region
    needed: tuple[str, ...] = ()  # the passes of that kind (one must apply)

    @property
    def hardened(self) -> bool:
        if self.refused or not self.applied:
            return False
        return not self.needed or any(p in self.applied for p in self.needed)

    def reason(self) -> str:
        """Why the region is not (fully) hardened, one line."""
        if self.refused:
            return "; ".join(f"{p}: {why}" for p, why in self.refused)
        parts = [f"{p}: {why}" for p, why in self.passed_over]
        if self.applied and self.needed:  # the wording analyze's region growing uses
            return (f"no pass for a {self.kind} region applied (applied: "
                    + ", ".join(self.applied) + ")")
        return "no pass applies (" + ("; ".join(parts) or "the plan has no pass") + ")"


def kind_passes(kind: str | None) -> tuple[str, ...]:
    """The passes that remove the leak a region of ``kind`` is named for (none: any)."""
    return tuple(name for name, k in PASS_KIND.items() if k.value == kind)


def region_view(region: CodeRegion, kind: str | None, bias: int = 0,
                params: dict[str, int | str | bool] | None = None,
                table: tuple[int, int] | None = None, image: Image | None = None,
                callees: Callees | None = None) -> RegionView:
    """What a pass sees of ``region`` (see leakdbt.plugin_api.RegionView); ``callees``:
    the functions it may clone (default: decoded from ``image`` on demand), and through
    its linker (while the program runs) what GOT slots are bound to."""
    blocks = _block_views(region.block_list())
    if image is None:
        return RegionView(region.name, kind, region.kind, region.entry, blocks, bias, table,
                          params or {})
    callees = callees or Callees(image)
    view = RegionView(region.name, kind, region.kind, region.entry, blocks, bias, table,
                      params or {}, _objects(image), image.functions_at(region.entry),
                      _functions(image), callees)
    if callees.linker is not None:
        view = dataclasses.replace(view, resolve_indirect=callees.linker.resolve)
    return view


def _block_views(blocks: Sequence[Block]) -> tuple[BlockView, ...]:
    return tuple(BlockView(b.start, tuple(b.insns), tuple(e.target for e in b.succs))
                 for b in blocks)


class Callees:
    """``RegionView.callee``: the blocks of the function at a (link-time) address of
    ``image`` — or, with a ``linker``, of another loaded module (leakdbt.dbt.calls) —
    decoded once; :meth:`instructions` are those handed out, which a rewrite's ``.insn``
    lines may name besides the region's own."""

    def __init__(self, image: Image, linker: Linker | None = None) -> None:
        self.image = image
        self.linker = linker
        self.decoded: dict[int, tuple[BlockView, ...] | None] = {}

    def __call__(self, address: int) -> tuple[BlockView, ...] | None:
        if address not in self.decoded:
            func = next((f for f in code_functions(self.image) if f.value == address), None)
            blocks = None
            if func is not None:
                try:
                    cfg = function_cfg(self.image, func)
                    blocks = _block_views([cfg.blocks[b] for b in sorted(cfg.reachable)])
                except LeakDBTError:
                    blocks = None
            elif self.linker is not None:
                elsewhere = self.linker.callee(address)
                if elsewhere is not None:
                    blocks = tuple(
                        dataclasses.replace(b, insns=tuple(self.linker.shown(i)
                                                           for i in b.insns))
                        for b in _block_views([elsewhere.blocks[b]
                                               for b in sorted(elsewhere.reachable)]))
            self.decoded[address] = blocks
        return self.decoded[address]

    def instructions(self) -> dict[int, Insn]:
        """Every instruction of the functions handed out, by link-time address."""
        return {i.address: i for blocks in self.decoded.values() for b in blocks or ()
                for i in b.insns}


def contract_view(contract: Contract) -> ContractView:
    """What a pass sees of ``contract`` (see leakdbt.plugin_api.ContractView)."""
    return ContractView(contract.protect.adversary.value, contract.protect.policy.value)


def profile_view(profile: Profile) -> ProfileView:
    """What a pass sees of ``profile`` (see leakdbt.plugin_api.ProfileView)."""
    return ProfileView(profile.name, profile.line_size,
                       frozenset(cls for cls, fact in profile.latency if fact.value))


def _objects(image: Image) -> Callable[[int], DataObject | None]:
    def object_at(address: int) -> DataObject | None:
        sym = image.object_at(address)
        return None if sym is None else DataObject(sym.name, sym.value, sym.size)
    return object_at


def _functions(image: Image) -> Callable[[str], int | None]:
    def function_address(name: str) -> int | None:
        sym = image.symbol(name)
        return sym.value if sym is not None and sym.kind == "func" and sym.value else None
    return function_address


def _merge(result: Rewrite, name: str, replace: dict[int, tuple[str, ...]],
           owners: dict[int, str], code_owner: str | None, bias: int, tag: str
           ) -> dict[int, tuple[str, ...]] | str:
    """The lines pass ``name``'s ``result`` puts at each instruction, wrapped around an
    earlier pass's replacement where it stands for it once (:func:`_nest`), given the
    replacements so far (``replace``, by ``owners``) and the pass that replaced the whole
    region (``code_owner``); or why they conflict (one line): then none of them is
    taken."""
    merged = {}
    for address, lines in result.replace.items():
        if address in owners:
            nested = _nest(tuple(lines), replace[address], address, tag)
            if nested is None:
                return (f"passes {owners[address]!r} and {name!r} both replace the "
                        f"instruction at {address + bias:#x}")
            lines = nested
        merged[address] = tuple(lines)
    if result.code is not None and code_owner is not None:
        return f"passes {code_owner!r} and {name!r} both replace the whole region"
    return merged


def _nest(outer: tuple[str, ...], inner: tuple[str, ...], address: int, tag: str
          ) -> tuple[str, ...] | None:
    """``outer`` with its one ``.insn address`` line replaced by ``inner`` (an earlier
    pass's replacement for the same instruction, its labels renamed apart) — how two passes
    wrap one instruction — or None when ``outer`` does not stand for it exactly once."""
    marker = original(address)
    if sum(line.strip() == marker for line in outer) != 1:
        return None
    renamed = tuple(str(line) for line in rename_labels(inner, f"__n{tag}"))
    at = next(i for i, line in enumerate(outer) if line.strip() == marker)
    return outer[:at] + renamed + outer[at + 1:]


class Hardener:
    """Applies the installed passes to regions, as the contract's plan says."""

    def __init__(self, passes: Sequence[LoadedPass], contract: Contract, profile: Profile,
                 allow_unhardened: bool = False) -> None:
        self.passes = list(passes)
        self.contract = contract
        self.profile = profile
        self.contract_view = contract_view(contract)  # what the passes see of them
        self.profile_view = profile_view(profile)
        self.allow_unhardened = allow_unhardened
        self.outcomes: list[Outcome] = []

    def translate(self, region: CodeRegion, needs: RegionNeeds, bias: int,
                  place: Callable[[int], int] | int, image: Image | None = None,
                  linker: Linker | None = None) -> Translation:
        """The hardened copy of ``region`` (module loaded at ``bias``); ``linker`` resolves
        calls through the GOT (leakdbt.dbt.calls).  Raises ResolveLater when a pass needed
        a resolution the linker could not give yet, and the region is not hardened."""
        outcome = Outcome(region.name, kind=needs.kind, needed=kind_passes(needs.kind))
        installed = {p.name: p for p in self.passes}
        outcome.passed_over = [(s.name, s.reason) for s in needs.skipped
                               if s.reason == SWITCHED_OFF]
        outcome.passed_over += [(s.name, "not installed") for s in needs.steps
                                if s.name not in installed]
        steps = {s.name: s for s in needs.steps}
        callees = Callees(image, linker) if image is not None else None
        replace: dict[int, tuple[str, ...]] = {}
        owners: dict[int, str] = {}
        code: tuple[str, ...] | None = None
        code_owner = ""
        for loaded in self.passes:
            step = steps.get(loaded.name)
            if step is None:
                continue
            view = region_view(region, needs.kind, bias, dict(step.params), needs.table, image,
                               callees)
            result = self._ask(loaded, view)
            if result is None:
                outcome.passed_over.append((loaded.name, "does not apply"))
                continue
            if isinstance(result, Refusal):
                outcome.refused.append((loaded.name, result.reason))
                continue
            merged = _merge(result, loaded.name, replace, owners,
                            code_owner if code is not None else None, bias,
                            f"{len(outcome.applied)}")
            if isinstance(merged, str):  # it conflicts with an earlier pass's rewrite
                if not self.allow_unhardened:
                    raise HardeningError(f"{region.name}: {merged}")
                outcome.refused.append((loaded.name, merged))  # the earlier one is kept
                continue
            for address, lines in merged.items():
                owners[address] = loaded.name
                replace[address] = lines
            if result.code is not None:
                code, code_owner = tuple(result.code), loaded.name
            outcome.applied.append(loaded.name)
        if linker is not None and linker.put_off and not outcome.hardened:
            raise ResolveLater(f"{region.name}: its calls through the GOT are resolved when "
                               "it is first entered")
        order = [s.name for s in needs.skipped] + [s.name for s in needs.steps]
        outcome.passed_over.sort(key=lambda item: order.index(item[0]))
        self.outcomes.append(outcome)
        if not outcome.hardened and not self.allow_unhardened:
            raise HardeningError(f"region {region.name} cannot be hardened: "
                                 f"{outcome.reason()} (--allow-unhardened runs it anyway)")
        try:
            return relocate(region, bias, place, replace, code,
                            callees.instructions() if callees is not None else None)
        except LeakDBTError as e:
            passes = ", ".join(outcome.applied) or "no pass"
            why = f"the rewrite of {passes} cannot be laid out: {e.one_line()}"
            if not self.allow_unhardened or not (replace or code is not None):
                raise HardeningError(f"{region.name}: {why}") from None
            # unhardened regions allowed: its original code runs, reported with the reason
            outcome.refused.append(("translator", why))
        return relocate(region, bias, place)

    def not_formed(self, name: str, reason: str) -> None:
        """Record a region the translator could not form (leakdbt.dbt.region: ``reason``,
        one line): an error unless unhardened regions are allowed, else its original code
        runs and the outcome says why."""
        if not self.allow_unhardened:
            raise HardeningError(reason)
        self.outcomes.append(Outcome(name, refused=[("translator", reason)]))

    def _ask(self, loaded: LoadedPass, view: RegionView) -> Rewrite | Refusal | None:
        """The pass's answer for ``view`` (None: it does not apply).  A pass that raises is
        a broken plugin, reported as such."""
        p = loaded.hardening
        try:
            applies = p.applies(view, self.contract_view, self.profile_view)
            if applies is False:
                return None
            if isinstance(applies, Refusal):
                return applies
            result = p.harden(view, self.contract_view, self.profile_view)
        except Exception as e:  # noqa: BLE001 - a plugin bug must not look like ours
            raise PluginError(f"pass {p.name!r} ({loaded.origin}) failed on {view.name}: "
                              f"{type(e).__name__}: {e}") from None
        if not isinstance(result, Rewrite | Refusal):
            raise PluginError(f"pass {p.name!r} ({loaded.origin}) returned "
                              f"{type(result).__name__}, not a Rewrite or Refusal")
        return result

    def report(self) -> dict[str, object]:
        """Per region: the passes applied, and why it is not hardened if it is not."""
        return {o.name: {"passes": o.applied} | ({} if o.hardened
                                                 else {"unhardened": o.reason()})
                for o in self.outcomes}
