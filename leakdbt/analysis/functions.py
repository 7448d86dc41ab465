"""Whole-function regions for ``leakdbt analyze``: a function with findings that an installed
pass can replace as a whole (``kind = "function"``, e.g. by a known constant-time
equivalent) is suggested as one region instead of a region per block."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from leakdbt.contract.edit import RegionEntry
from leakdbt.contract.mapping import PASS_KIND
from leakdbt.contract.model import RegionKind
from leakdbt.dbt.cfg import function_cfg
from leakdbt.dbt.harden import contract_view, profile_view, region_view
from leakdbt.dbt.passes import load_passes
from leakdbt.dbt.region import form_region
from leakdbt.errors import LeakDBTError
from leakdbt.leakage.locate import image_of
from leakdbt.leakage.trials import Place
from leakdbt.plugin_api import ContractView, HardeningPass, ProfileView, RegionView, Rewrite

if TYPE_CHECKING:
    from leakdbt.contract.model import Contract
    from leakdbt.contract.profiles import Profile


def function_regions(places: Iterable[Place], contract: Contract, profile: Profile
                     ) -> dict[str, RegionEntry]:
    """For each function holding one of ``places`` that a whole-function pass rewrites: its
    name (as contracts write it: ``lib.so:name`` outside the main program) → the region."""
    passes = [p for p in load_passes() if PASS_KIND.get(p.name) is RegionKind.FUNCTION
              and p.name not in contract.protect.passes_off]
    seen_contract, seen_profile = contract_view(contract), profile_view(profile)
    out: dict[str, RegionEntry] = {}
    tried: set[str] = set()
    for place in places:
        image = image_of(place.module_path) if place.module_path else None
        func = image.function_containing(place.link_address) if image is not None else None
        if image is None or func is None:
            continue
        name = func.name if place.is_main else f"{place.module}:{func.name}"
        if name in tried:
            continue
        tried.add(name)
        try:
            region = form_region(function_cfg(image, func), func.value, name, function=True)
        except LeakDBTError:
            continue
        view = region_view(region, RegionKind.FUNCTION.value, 0, {}, None, image)
        for p in passes:
            if _rewrites(p.hardening, view, seen_contract, seen_profile):
                out[name] = RegionEntry(name, RegionKind.FUNCTION.value,
                                        f"leakdbt analyze: findings in {func.name}; "
                                        f"{p.name} replaces it whole")
                break
    return out


def _rewrites(hardening: HardeningPass, view: RegionView, contract: ContractView,
              profile: ProfileView) -> bool:
    """Does the pass rewrite ``view``?  (A pass that raises is broken: then it does not;
    exec reports the plugin error when the region is used.)"""
    try:
        return hardening.applies(view, contract, profile) is True and \
            isinstance(hardening.harden(view, contract, profile), Rewrite)
    except Exception:  # noqa: BLE001 - a plugin bug must not stop the analysis
        return False
