"""Finding the installed hardening passes and putting them in the order they run.

Passes are found through the ``leakdbt.passes`` entry-point group — built-in ones (in
``plugins/``, declared in our pyproject.toml) exactly like third-party ones.  A pass that
cannot be loaded, declares another API version, lacks part of the interface, reuses a name
(:mod:`leakdbt.pluginload`), or takes part in an ordering cycle is rejected with a
:class:`~leakdbt.errors.PluginError` that names it and where it came from.

The order is the passes' own: each declares which passes it runs ``before`` and ``after``,
and nothing else (the contract mapping chooses passes, it does not order them).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from leakdbt.errors import PluginError
from leakdbt.plugin_api import API_VERSION, HardeningPass
from leakdbt.pluginload import Candidate, PluginKind, load_plugins

ENTRY_POINT_GROUP = "leakdbt.passes"


@dataclass(frozen=True)
class LoadedPass:
    """An accepted pass and where it was found."""

    hardening: HardeningPass
    origin: str

    @property
    def name(self) -> str:
        return self.hardening.name


def _checked(obj: Any, origin: str) -> HardeningPass:
    """What the shared loader does not check: the name and the order constraints."""
    name = obj.name
    if not isinstance(name, str) or not name:
        raise PluginError(f"{origin}: the pass name must be a non-empty string")
    for attr in ("before", "after"):
        value = getattr(obj, attr)
        if not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
            raise PluginError(f"{origin}: pass {name!r}: {attr} must be a tuple of pass names")
    return obj  # the loader checked every member of the interface


PASSES = PluginKind[HardeningPass](
    noun="pass", title="a hardening pass", group=ENTRY_POINT_GROUP, attribute="PASS",
    api="plugin API", version=API_VERSION,
    members=("name", "before", "after", "applies", "harden"), check=_checked)


def load_passes(candidates: Iterable[Candidate] | None = None) -> list[LoadedPass]:
    """The passes of ``candidates`` (default: the installed ones) in the order they run."""
    by_name = {name: LoadedPass(p, origin)
               for name, (p, origin) in load_plugins(PASSES, candidates).items()}
    return [by_name[name] for name in _order(by_name)]


def _order(passes: dict[str, LoadedPass]) -> list[str]:
    """An order satisfying every before/after constraint between installed passes (names
    of others are ignored); of the passes free to go next, the first by name goes, so the
    order is deterministic.  A cycle is an error naming the passes in it."""
    follows: dict[str, set[str]] = {n: set() for n in passes}  # n -> passes that run after n
    for name, p in passes.items():
        follows[name] |= {later for later in p.hardening.before if later in passes}
        for earlier in p.hardening.after:
            if earlier in passes:
                follows[earlier].add(name)
    waiting = {n: 0 for n in passes}  # n -> passes that must still run before it
    for followers in follows.values():
        for n in followers:
            waiting[n] += 1
    free = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(free)
    order: list[str] = []
    while free:
        name = heapq.heappop(free)
        order.append(name)
        for later in follows[name]:
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(free, later)
    if len(order) < len(passes):
        cycle = _cycle(follows, set(passes) - set(order))
        raise PluginError("ordering cycle: " + " -> ".join(
            f"{n!r} ({passes[n].origin})" for n in cycle) + f" -> {cycle[0]!r}")
    return order


def _cycle(follows: dict[str, set[str]], stuck: set[str]) -> list[str]:
    """A cycle among ``stuck`` (the passes the order could not place), from its first pass
    by name.  Each stuck pass waits for another stuck pass, so walking from one to a pass
    it waits for must come back to a pass already seen; the walk runs against the edges, so
    the cycle found is reversed."""
    waits_for = {n: {m for m in stuck if n in follows[m]} for n in stuck}
    path: list[str] = []
    node = min(stuck)
    while node not in path:
        path.append(node)
        node = min(waits_for[node])
    cycle = path[path.index(node):][::-1]
    first = cycle.index(min(cycle))
    return cycle[first:] + cycle[:first]
