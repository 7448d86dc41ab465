"""Loading plugins from entry points: the part that passes and detectors share.

An entry point names a plugin object, or a module that defines it under a known attribute
(``PASS``, ``DETECTOR``).  A plugin that cannot be imported is a
:class:`~leakdbt.errors.PluginError` naming where it came from; checking what was loaded is
up to the caller.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable

from leakdbt.errors import PluginError

Candidate = tuple[str, Callable[[], object]]
"""Where a plugin comes from (for messages) and how to load it."""


def installed(group: str) -> list[Candidate]:
    """The entry points of ``group``, as load candidates."""
    from importlib.metadata import entry_points

    return [(f"entry point {ep.name!r} ({ep.value})", ep.load)
            for ep in entry_points(group=group)]


def load_all(candidates: Iterable[Candidate], attribute: str) -> list[tuple[object, str]]:
    """Each candidate's object (a module's ``attribute`` when it names a module, None when
    the module has none) with its origin."""
    out = []
    for origin, load in candidates:
        try:
            obj = load()
        except Exception as e:  # noqa: BLE001 - any import-time failure rejects the plugin
            raise PluginError(f"{origin}: cannot be loaded: {type(e).__name__}: {e}") from None
        if isinstance(obj, types.ModuleType):
            obj = getattr(obj, attribute, None)
        out.append((obj, origin))
    return out
