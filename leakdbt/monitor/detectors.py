"""Finding the installed tenancy detectors and creating one from ``--detector NAME[:ARG]``.

Detectors are found through the ``leakdbt.detectors`` entry-point group — built-in ones (in
``plugins/tenancy_*.py``, declared in our pyproject.toml) exactly like third-party ones.  An
entry point names a :class:`~leakdbt.plugin_api.DetectorFactory` (or a module whose
``DETECTOR`` is one).  A detector that cannot be loaded, declares another API version, lacks
part of the interface or reuses a name (:mod:`leakdbt.pluginload`), or whose name or
description is malformed, is rejected with a :class:`~leakdbt.errors.PluginError` that names
it and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from leakdbt.errors import PluginError, UsageError
from leakdbt.plugin_api import (
    DETECTOR_API_VERSION,
    DetectorContext,
    DetectorFactory,
    TenancyDetector,
)
from leakdbt.pluginload import Candidate, PluginKind, load_plugins

ENTRY_POINT_GROUP = "leakdbt.detectors"
DEFAULT_DETECTORS = ("procfs", "cpuset")


@dataclass(frozen=True)
class LoadedDetector:
    """An accepted detector factory and where it was found."""

    factory: DetectorFactory
    origin: str

    @property
    def name(self) -> str:
        return self.factory.name


def _checked(obj: Any, origin: str) -> DetectorFactory:
    """What the shared loader does not check: create is a method, the name and description."""
    if not callable(obj.create):
        raise PluginError(f"{origin}: create must be a method")
    name = obj.name
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise PluginError(f"{origin}: the detector name must be a non-empty string without "
                          f"':' or surrounding spaces, not {name!r}")
    if not isinstance(obj.description, str):
        raise PluginError(f"{origin}: detector {name!r}: description must be a string")
    return obj  # the loader checked every member of the interface


DETECTORS = PluginKind[DetectorFactory](
    noun="detector", title="a detector factory", group=ENTRY_POINT_GROUP, attribute="DETECTOR",
    api="detector API", version=DETECTOR_API_VERSION,
    members=("name", "api_version", "description", "create"), check=_checked)


def load_detectors(candidates: Iterable[Candidate] | None = None) -> dict[str, LoadedDetector]:
    """The detectors of ``candidates`` (default: the installed ones) by name, sorted."""
    return {name: LoadedDetector(factory, origin)
            for name, (factory, origin) in sorted(load_plugins(DETECTORS, candidates).items())}


def create_detector(spec: str, context: DetectorContext,
                    detectors: dict[str, LoadedDetector] | None = None) -> TenancyDetector:
    """The detector ``spec`` (``NAME`` or ``NAME:ARG``) names, created with ``context`` (its
    ``argument`` replaced by ARG).  An unknown name or an argument the detector refuses is a
    :class:`UsageError`; ``detectors`` defaults to the installed ones."""
    name, _, argument = spec.partition(":")
    available = load_detectors() if detectors is None else detectors
    loaded = available.get(name)
    if loaded is None:
        close = difflib.get_close_matches(name, list(available), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"--detector {spec}: no detector named {name!r} (installed: "
                         f"{', '.join(available) or 'none'}){hint}")
    try:
        detector = loaded.factory.create(dataclasses.replace(context, argument=argument))
    except ValueError as e:
        raise UsageError(f"--detector {spec}: {e}") from None
    if not isinstance(detector, TenancyDetector):
        raise PluginError(f"{loaded.origin}: create() returned {type(detector).__name__}, "
                          "which has no observe()")
    return detector


def default_context(trusted_uids: Iterable[int] = (), trusted_names: Iterable[str] = (),
                    trusted_cgroups: Iterable[str] = ()) -> DetectorContext:
    """The context of this process: its pid and CPU affinity, and the trusted tenants."""
    return DetectorContext(argument="", pid=os.getpid(), cpus=frozenset(os.sched_getaffinity(0)),
                           trusted_uids=frozenset(trusted_uids),
                           trusted_names=frozenset(trusted_names),
                           trusted_cgroups=frozenset(trusted_cgroups))
