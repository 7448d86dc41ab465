"""Finding the installed hardening passes and putting them in the order they run.

Passes are found through the ``leakdbt.passes`` entry-point group — built-in ones (in
``plugins/``, declared in our pyproject.toml) exactly like third-party ones.  A pass that
cannot be loaded, declares another API version, lacks part of the interface, reuses a name,
or takes part in an ordering cycle is rejected with a :class:`~leakdbt.errors.PluginError`
that names it and where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from leakdbt.contract.mapping import PASS_ORDER
from leakdbt.errors import PluginError
from leakdbt.plugin_api import API_VERSION, HardeningPass
from leakdbt.pluginload import Candidate, installed, load_all

ENTRY_POINT_GROUP = "leakdbt.passes"


@dataclass(frozen=True)
class LoadedPass:
    """An accepted pass and where it was found."""

    hardening: HardeningPass
    origin: str

    @property
    def name(self) -> str:
        return self.hardening.name


def load_passes(candidates: Iterable[Candidate] | None = None) -> list[LoadedPass]:
    """The passes of ``candidates`` (default: the installed ones) in the order they run."""
    found = load_all(installed(ENTRY_POINT_GROUP) if candidates is None else candidates,
                     "PASS")
    loaded = [LoadedPass(_checked(obj, origin), origin) for obj, origin in found]
    by_name: dict[str, LoadedPass] = {}
    for p in loaded:
        if p.name in by_name:
            raise PluginError(f"pass {p.name!r} is defined twice: by {by_name[p.name].origin} "
                              f"and by {p.origin}")
        by_name[p.name] = p
    return [by_name[name] for name in _order(by_name)]


def _checked(obj: object, origin: str) -> HardeningPass:
    if obj is None:
        raise PluginError(f"{origin}: defines no PASS")
    version = getattr(obj, "api_version", None)
    if version != API_VERSION:
        raise PluginError(f"{origin}: written for plugin API version {version!r}; this "
                          f"leakdbt provides version {API_VERSION}")
    if not isinstance(obj, HardeningPass):
        missing = [a for a in ("name", "before", "after", "applies", "harden")
                   if not hasattr(obj, a)]
        raise PluginError(f"{origin}: not a hardening pass (missing {', '.join(missing)})")
    name = obj.name
    if not isinstance(name, str) or not name:
        raise PluginError(f"{origin}: the pass name must be a non-empty string")
    for attr in ("before", "after"):
        value = getattr(obj, attr)
        if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
            raise PluginError(f"{origin}: pass {name!r}: {attr} must be a tuple of pass names")
    return obj


def _order(passes: dict[str, LoadedPass]) -> list[str]:
    """An order satisfying every before/after constraint that otherwise follows the
    contract mapping's PASS_ORDER (then names) as closely as possible.  It is built from
    the back: of the passes nothing else must follow, the one ranked last goes last.  A
    cycle is an error naming the passes in it."""
    edges: dict[str, set[str]] = {n: set() for n in passes}  # n -> passes that follow n
    for name, p in passes.items():
        for later in p.hardening.before:
            if later in passes:
                edges[name].add(later)
        for earlier in p.hardening.after:
            if earlier in passes:
                edges[earlier].add(name)
    def rank(n: str) -> tuple[int, str]:
        return (PASS_ORDER.index(n) if n in PASS_ORDER else len(PASS_ORDER), n)

    backwards: list[str] = []
    left = set(passes)
    while left:
        free = [n for n in left if not edges[n] & left]  # nothing left must follow them
        if not free:
            cycle = _cycle(edges, left)
            raise PluginError("ordering cycle: " + " -> ".join(
                f"{n!r} ({passes[n].origin})" for n in cycle) + f" -> {cycle[0]!r}")
        last = max(free, key=rank)
        backwards.append(last)
        left.remove(last)
    return backwards[::-1]


def _cycle(edges: dict[str, set[str]], stuck: set[str]) -> list[str]:
    """A cycle among ``stuck``: each of them must be followed by another stuck pass, so
    walking from one to a follower must come back to a pass already seen."""
    path: list[str] = []
    node = min(stuck)
    while node not in path:
        path.append(node)
        node = min(edges[node] & stuck)
    return path[path.index(node):]
