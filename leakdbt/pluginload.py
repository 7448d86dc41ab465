"""Loading plugins from entry points: the part that passes and detectors share.

An entry point names a plugin object, or a module that defines it under a known attribute
(``PASS``, ``DETECTOR``).  :func:`load_plugins` loads every candidate of one
:class:`PluginKind` and rejects, with a :class:`~leakdbt.errors.PluginError` naming where it
came from, a plugin that cannot be imported, defines no such attribute, declares another API
version, lacks part of the interface, fails the kind's own checks or reuses a name.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from leakdbt.errors import PluginError

Candidate = tuple[str, Callable[[], object]]
"""Where a plugin comes from (for messages) and how to load it."""


class Named(Protocol):
    """Every plugin has a name, unique among the plugins of its kind."""

    name: str


P = TypeVar("P", bound=Named)


@dataclass(frozen=True)
class PluginKind(Generic[P]):
    """One kind of plugin: where it is found, what it must provide, and how messages call it."""

    noun: str  # "pass": "pass 'x' is defined twice"
    title: str  # "a hardening pass": "not a hardening pass (missing ...)"
    group: str  # the entry-point group
    attribute: str  # what a module entry point defines: PASS, DETECTOR
    api: str  # "plugin API": "written for plugin API version 0"
    version: int  # the API version this leakdbt provides
    members: tuple[str, ...]  # the interface: attributes and methods it must have
    check: Callable[[Any, str], P]  # the kind's own checks (with the origin); the plugin typed


def installed(group: str) -> list[Candidate]:
    """The entry points of ``group``, as load candidates."""
    from importlib.metadata import entry_points

    return [(f"entry point {ep.name!r} ({ep.value})", ep.load)
            for ep in entry_points(group=group)]


def load_plugins(kind: PluginKind[P], candidates: Iterable[Candidate] | None = None
                 ) -> dict[str, tuple[P, str]]:
    """The plugins of ``candidates`` (default: the installed ones of ``kind``), each checked,
    by name in load order, with their origins."""
    by_name: dict[str, tuple[P, str]] = {}
    for origin, load in installed(kind.group) if candidates is None else candidates:
        plugin = _accepted(kind, _load(load, origin, kind.attribute), origin)
        if plugin.name in by_name:
            raise PluginError(f"{kind.noun} {plugin.name!r} is defined twice: by "
                              f"{by_name[plugin.name][1]} and by {origin}")
        by_name[plugin.name] = (plugin, origin)
    return by_name


def _load(load: Callable[[], object], origin: str, attribute: str) -> object:
    """The candidate's object: a module's ``attribute`` when it names a module (None when
    the module has none)."""
    try:
        obj = load()
    except Exception as e:  # noqa: BLE001 - any import-time failure rejects the plugin
        raise PluginError(f"{origin}: cannot be loaded: {type(e).__name__}: {e}") from None
    if isinstance(obj, types.ModuleType):
        return getattr(obj, attribute, None)
    return obj


def _accepted(kind: PluginKind[P], obj: object, origin: str) -> P:
    if obj is None:
        raise PluginError(f"{origin}: defines no {kind.attribute}")
    version = getattr(obj, "api_version", None)
    if version != kind.version:
        raise PluginError(f"{origin}: written for {kind.api} version {version!r}; this "
                          f"leakdbt provides version {kind.version}")
    missing = [a for a in kind.members if not hasattr(obj, a)]
    if missing:
        raise PluginError(f"{origin}: not {kind.title} (missing {', '.join(missing)})")
    return kind.check(obj, origin)
