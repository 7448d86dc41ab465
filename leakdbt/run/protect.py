"""From a bound contract to what a protected run takes: the contract's plan on a CPU
profile, its regions as the translator takes them, and the hardener that applies the
installed passes to them.

``leakdbt exec --contract``, ``leakdbt check`` (hardened trials), ``leakdbt analyze`` (its
run with suggested regions) and the benchmarks all go through :func:`protection`;
:func:`verdicts` asks the same hardener, without running anything, whether each region would
be hardened (``leakdbt analyze`` grows the regions it suggests until one is).

A whole-program contract (no ``protect.functions``) hardens what can be hardened: a region
no pass accepts runs as it is, reported (``report``, and ``--stats``), unless ``strict``.
A contract that names its functions keeps the stricter rule: such a region is an error
unless the user allows unhardened regions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from leakdbt.contract.mapping import Plan, plan
from leakdbt.contract.model import Contract, ResolvedAddress
from leakdbt.contract.profiles import Profile
from leakdbt.dbt.calls import Linker
from leakdbt.dbt.dispatch import RegionRequest, request_region, requests_from_contract
from leakdbt.dbt.harden import Hardener, RegionNeeds
from leakdbt.dbt.passes import LoadedPass, load_passes
from leakdbt.dbt.region import CodeRegion
from leakdbt.dbt.relocate import Translation
from leakdbt.errors import LeakDBTError, PluginError
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.machine.memory import PAGE


@dataclass(frozen=True)
class Protection:
    """A contract's protection on one CPU profile, ready for runs."""

    contract: Contract
    profile: Profile
    plan: Plan
    regions: tuple[RegionRequest, ...]  # the contract's regions, with the passes each needs
    passes: tuple[LoadedPass, ...]  # the installed passes, loaded once
    allow_unhardened: bool = False  # run regions no pass can harden as they are
    report: Callable[[str], None] | None = None  # told of each region run unhardened

    def hardener(self) -> Hardener:
        """A fresh hardener for one run (it records the outcome of each region it hardens)."""
        if self.report is not None:
            return ReportingHardener(self.passes, self.contract, self.profile,
                                     self.allow_unhardened, self.report)
        return Hardener(self.passes, self.contract, self.profile, self.allow_unhardened)


class ReportingHardener(Hardener):
    """A hardener that reports, in one line, each region it lets run unhardened and why."""

    def __init__(self, passes: tuple[LoadedPass, ...], contract: Contract, profile: Profile,
                 allow_unhardened: bool, report: Callable[[str], None]) -> None:
        super().__init__(passes, contract, profile, allow_unhardened)
        self.report_line = report

    def translate(self, region: CodeRegion, needs: RegionNeeds, bias: int,
                  place: Callable[[int], int] | int, image: Image | None = None,
                  linker: Linker | None = None) -> Translation:
        t = super().translate(region, needs, bias, place, image, linker)
        outcome = self.outcomes[-1]
        if not outcome.hardened:
            self.report_line(f"leakdbt: region {outcome.name} runs unhardened: "
                             f"{outcome.reason()}")
        return t

    def not_formed(self, name: str, reason: str) -> None:
        super().not_formed(name, reason)
        self.report_line(f"leakdbt: region {name} runs unhardened: "
                         f"{self.outcomes[-1].reason()}")


def protection(contract: Contract, profile: Profile, allow_unhardened: bool = False,
               strict: bool = False, report: Callable[[str], None] | None = None
               ) -> Protection:
    """Plan ``contract`` (bound to a binary) on ``profile`` and load the installed passes.

    Regions no pass can harden run as they are when ``allow_unhardened``, or when the
    contract is whole-program (no ``protect.functions``) and not ``strict`` (see the module
    doc); ``report`` is told of each.  Raises ContractError/TranslationError for a contract
    that cannot be planned or is not bound, PluginError for a broken pass: now, not in the
    middle of a run."""
    the_plan = plan(contract, profile)
    allow = allow_unhardened or (not contract.protect.functions and not strict)
    return Protection(contract, profile, the_plan,
                      tuple(requests_from_contract(contract, the_plan)),
                      tuple(load_passes()), allow, report)


@dataclass(frozen=True)
class Verdict:
    """Would a run harden one region of the contract, and if not, why (one line)."""

    name: str  # the region as the contract writes it
    accepted: bool
    passes: tuple[str, ...] = ()  # the passes that applied
    reason: str = ""  # why it is not hardened: each pass's refusal, or why it cannot be formed


def verdicts(protected: Protection, images: Callable[[str], Image] = load_image,
             linkers: Callable[[ResolvedAddress], Linker | None] | None = None
             ) -> list[Verdict]:
    """For each region of the contract (in order): would ``exec --mode hardened`` harden it?

    The same steps as a run, without one: the region formed from its function's control
    flow as the dispatcher forms it, every pass of its plan asked, the rewrites merged and
    laid out (at link-time addresses, or where a ``linkers`` run loaded the module; the
    copy placed after the module's last segment).
    ``images``: the ELF image of a module's file; ``linkers``: the linker that resolves
    the calls through the GOT of the region at an address, as exec's would on its first
    entry (leakdbt.dbt.calls; without one, such calls are not resolved).  A broken pass is
    a PluginError, not a verdict."""
    binding = protected.contract.binding
    if binding is None:
        raise LeakDBTError("the contract is not bound to a binary")
    hardener = Hardener(protected.passes, protected.contract, protected.profile, True)
    out = []
    for req, where in zip(protected.regions, binding.regions, strict=True):
        seen = len(hardener.outcomes)
        try:
            image = images(where.at.module_path)
            region = request_region(image, req, where.at.module
                                    or os.path.basename(binding.binary))
            assert req.needs is not None  # a planned contract says what each region needs
            linker = linkers(where.at) if linkers is not None else None
            bias = linker.bias if linker is not None else 0  # as the run loaded the module
            hardener.translate(region, req.needs, bias,
                               ((image.high + 2 * PAGE) & -PAGE) + bias, image, linker)
        except PluginError:
            raise
        except LeakDBTError as e:
            if len(hardener.outcomes) > seen and not hardener.outcomes[-1].hardened:
                out.append(Verdict(req.name, False, reason=hardener.outcomes[-1].reason()))
            else:
                out.append(Verdict(req.name, False, reason=e.one_line()))
            continue
        outcome = hardener.outcomes[-1]
        out.append(Verdict(req.name, outcome.hardened, tuple(outcome.applied),
                           "" if outcome.hardened else outcome.reason()))
    return out
