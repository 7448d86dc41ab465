"""The ``file`` tenancy detector: an orchestrator writes who shares our resources to a file.

``--detector file:PATH`` or ``file:PATH?max_age=SECONDS`` (default 10).

The file is JSON::

    {"updated": 1718000000.5,
     "cotenants": [{"shares": "core", "name": "batch-7", "pid": 0}]}

- ``updated`` (required): when the state was written, in Unix time (seconds, may be
  fractional).  The orchestrator rewrites the file (atomically: write a temporary file, then
  rename it over PATH) at least every ``max_age`` seconds, also when nothing changed.
- ``cotenants`` (required; ``[]`` means alone): each has ``shares`` (required: ``core`` — our
  logical CPU or its SMT sibling, ``cache`` — a core sharing our last-level cache,
  ``machine`` — anything else), and optionally ``name`` (string), ``pid``, ``uid``, ``cpu``
  (integers) and ``evidence`` (string).
- Other keys are ignored.

``observe()`` raises (and the monitor then runs hardened) when the file cannot be read, is
not such JSON, or is stale: older than ``max_age`` seconds, or dated more than ``max_age``
seconds in the future (a wrong clock must not make a state last forever).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from leakdbt.plugin_api import DETECTOR_API_VERSION, SHARES, CoTenant, DetectorContext, Tenancy

DEFAULT_MAX_AGE = 10.0


class TenancyFileError(RuntimeError):
    """The state file is unreadable, malformed or stale."""


class FileDetector:
    def __init__(self, path: str, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_age = max_age
        self.clock = clock

    def observe(self) -> Tenancy:
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
        except OSError as e:
            raise TenancyFileError(f"{self.path}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise TenancyFileError(f"{self.path}: not JSON: {e}") from None
        if not isinstance(state, dict):
            raise TenancyFileError(f"{self.path}: expected a JSON object")
        updated = state.get("updated")
        if not isinstance(updated, int | float) or isinstance(updated, bool) \
                or not math.isfinite(updated):
            raise TenancyFileError(f"{self.path}: 'updated' must be a Unix time")
        age = self.clock() - updated
        if abs(age) > self.max_age:
            when = "old" if age > 0 else "in the future"
            raise TenancyFileError(f"{self.path}: stale: written {abs(age):.1f} s {when} "
                                   f"(max_age {self.max_age:g} s)")
        items = state.get("cotenants")
        if not isinstance(items, list):
            raise TenancyFileError(f"{self.path}: 'cotenants' must be a list")
        cotenants = tuple(self._cotenant(i, item) for i, item in enumerate(items))
        return Tenancy(cotenants, f"file {self.path}: written {age:.1f} s ago")

    def _cotenant(self, i: int, item: Any) -> CoTenant:
        where = f"{self.path}: cotenants[{i}]"
        if not isinstance(item, dict):
            raise TenancyFileError(f"{where}: expected an object")
        if item.get("shares") not in SHARES:
            raise TenancyFileError(f"{where}: 'shares' must be one of {', '.join(SHARES)}")
        fields: dict[str, Any] = {"shares": item["shares"]}
        for key, kind in (("name", str), ("evidence", str), ("pid", int), ("uid", int),
                          ("cpu", int)):
            if key in item:
                value = item[key]
                if not isinstance(value, kind) or isinstance(value, bool):
                    what = "an integer" if kind is int else "a string"
                    raise TenancyFileError(f"{where}: {key!r} must be {what}")
                fields[key] = value
        fields.setdefault("evidence", f"reported by {self.path}")
        return CoTenant(**fields)


def parse_argument(argument: str) -> tuple[str, float]:
    """``PATH[?max_age=SECONDS]`` → (PATH, max_age)."""
    path, question, query = argument.partition("?")
    if not path:
        raise ValueError("file needs a path: file:/run/tenancy.json[?max_age=SECONDS]")
    max_age = DEFAULT_MAX_AGE
    if question:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(params) - {"max_age"})
        if unknown:
            raise ValueError(f"file: unknown parameter {unknown[0]!r} (only max_age)")
        if "max_age" in params:
            try:
                max_age = float(params["max_age"][-1])
            except ValueError:
                raise ValueError(f"file: max_age must be a number of seconds, not "
                                 f"{params['max_age'][-1]!r}") from None
            if not math.isfinite(max_age) or max_age <= 0:
                raise ValueError("file: max_age must be positive")
    return path, max_age


class FileFactory:
    name = "file"
    api_version = DETECTOR_API_VERSION
    description = "the state an orchestrator writes to a JSON file: file:PATH[?max_age=SECONDS]"

    def create(self, context: DetectorContext) -> FileDetector:
        path, max_age = parse_argument(context.argument)
        return FileDetector(path, max_age)


DETECTOR = FileFactory()
