"""From a bound contract to what a protected run takes: the contract's plan on a CPU
profile, its regions as the translator takes them, and the hardener that applies the
installed passes to them.

``leakdbt exec --contract``, ``leakdbt check`` (hardened trials), ``leakdbt analyze`` (its
run with suggested regions) and the benchmarks all go through :func:`protection`.
"""

from __future__ import annotations

from dataclasses import dataclass

from leakdbt.contract.mapping import Plan, plan
from leakdbt.contract.model import Contract
from leakdbt.contract.profiles import Profile
from leakdbt.dbt.dispatch import RegionRequest, requests_from_contract
from leakdbt.dbt.harden import Hardener
from leakdbt.dbt.passes import LoadedPass, load_passes


@dataclass(frozen=True)
class Protection:
    """A contract's protection on one CPU profile, ready for runs."""

    contract: Contract
    profile: Profile
    plan: Plan
    regions: tuple[RegionRequest, ...]  # the contract's regions, with the passes each needs
    passes: tuple[LoadedPass, ...]  # the installed passes, loaded once
    allow_unhardened: bool = False  # run regions no pass can harden as they are

    def hardener(self) -> Hardener:
        """A fresh hardener for one run (it records the outcome of each region it hardens)."""
        return Hardener(self.passes, self.contract, self.profile, self.allow_unhardened)


def protection(contract: Contract, profile: Profile, allow_unhardened: bool = False
               ) -> Protection:
    """Plan ``contract`` (bound to a binary) on ``profile`` and load the installed passes.

    Raises ContractError/TranslationError for a contract that cannot be planned or is not
    bound, PluginError for a broken pass: now, not in the middle of a run."""
    the_plan = plan(contract, profile)
    return Protection(contract, profile, the_plan,
                      tuple(requests_from_contract(contract, the_plan)),
                      tuple(load_passes()), allow_unhardened)
