"""Scripted tenancy detectors, for tests and experiments: ``fixed`` and ``schedule``.

``--detector fixed:STATE`` always answers STATE: ``alone`` (no co-tenant) or ``core``,
``cache``, ``machine`` (one co-tenant named ``fixed`` sharing that).

``--detector schedule:ITEM,ITEM,...`` plays a timeline advanced by observation: each
``observe()`` call is one tick, so tests are deterministic.  An ITEM is ``STATE[*COUNT]``
(COUNT ticks, default 1) with STATE one of alone/core/cache/machine/error (``error``: the
observation raises); the last item repeats forever.  Example:
``schedule:alone*3,core*2,alone*5,error*1,alone``.

``--detector schedule:@ms:T=STATE,T=STATE,...`` is timed instead: T is milliseconds since
the first ``observe()`` (the first T must be 0, the others increasing) and each state holds
until the next one starts; the last holds forever.  Example: ``schedule:@ms:0=alone,100=core``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from leakdbt.plugin_api import DETECTOR_API_VERSION, CoTenant, DetectorContext, Tenancy

STATES = ("alone", "core", "cache", "machine")


class ScriptedError(RuntimeError):
    """The ``error`` state of a schedule."""


def answer(state: str, evidence: str) -> Tenancy:
    if state == "alone":
        return Tenancy((), evidence)
    return Tenancy((CoTenant(shares=state, name="fixed" if evidence.startswith("fixed")
                             else "scripted", evidence=evidence),), evidence)


class FixedDetector:
    def __init__(self, state: str) -> None:
        self.state = state

    def observe(self) -> Tenancy:
        return answer(self.state, f"fixed:{self.state}")


class FixedFactory:
    name = "fixed"
    api_version = DETECTOR_API_VERSION
    description = "always the same answer: fixed:alone|core|cache|machine"

    def create(self, context: DetectorContext) -> FixedDetector:
        if context.argument not in STATES:
            raise ValueError(f"fixed needs one of {', '.join(STATES)} (fixed:core), not "
                             f"{context.argument!r}")
        return FixedDetector(context.argument)


def _state(text: str) -> str:
    if text not in (*STATES, "error"):
        raise ValueError(f"unknown state {text!r} (alone, core, cache, machine or error)")
    return text


def parse_ticks(text: str) -> list[tuple[str, int]]:
    """``alone*3,core`` → [("alone", 3), ("core", 1)]."""
    items: list[tuple[str, int]] = []
    for item in text.split(","):
        state, star, count = item.strip().partition("*")
        n = 1
        if star:
            try:
                n = int(count)
            except ValueError:
                raise ValueError(f"{item.strip()!r}: the count must be a number") from None
            if n < 1:
                raise ValueError(f"{item.strip()!r}: the count must be at least 1")
        items.append((_state(state), n))
    return items


def parse_timed(text: str) -> list[tuple[float, str]]:
    """``0=alone,100=core`` → [(0.0, "alone"), (0.1, "core")] (seconds)."""
    items: list[tuple[float, str]] = []
    for item in text.split(","):
        at, eq, state = item.strip().partition("=")
        try:
            ms = float(at)
        except ValueError:
            raise ValueError(f"{item.strip()!r}: expected MILLISECONDS=STATE") from None
        if not eq:
            raise ValueError(f"{item.strip()!r}: expected MILLISECONDS=STATE")
        if not items and ms != 0:
            raise ValueError("the first item must start at 0 ms")
        if items and ms <= items[-1][0] * 1000:
            raise ValueError(f"{item.strip()!r}: times must increase")
        items.append((ms / 1000, _state(state.strip())))
    return items


class ScheduleDetector:
    """Per-tick (``ticks``) or timed (``timed``) schedule; ``clock`` is for tests."""

    def __init__(self, ticks: list[tuple[str, int]] | None = None,
                 timed: list[tuple[float, str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ticks = ticks or []
        self.timed = timed or []
        self.clock = clock
        self.tick = 0  # observations made so far
        self.start: float | None = None

    def current(self) -> str:
        """The state of the observation being made (advances nothing)."""
        if self.timed:
            now = self.clock()
            if self.start is None:
                self.start = now
            elapsed = now - self.start
            return [state for at, state in self.timed if at <= elapsed][-1]
        left = self.tick
        for state, count in self.ticks[:-1]:
            if left < count:
                return state
            left -= count
        return self.ticks[-1][0]

    def observe(self) -> Tenancy:
        state = self.current()
        self.tick += 1
        where = f"schedule tick {self.tick}"
        if self.timed and self.start is not None:
            where += f" at {(self.clock() - self.start) * 1000:.0f} ms"
        if state == "error":
            raise ScriptedError(f"{where}: scripted error")
        return answer(state, f"{where}: {state}")


class ScheduleFactory:
    name = "schedule"
    api_version = DETECTOR_API_VERSION
    description = ("a scripted timeline: schedule:alone*3,core*2,error,alone (per observation) "
                   "or schedule:@ms:0=alone,100=core (timed)")

    def create(self, context: DetectorContext) -> ScheduleDetector:
        arg = context.argument.strip()
        if not arg:
            raise ValueError("schedule needs a timeline, e.g. schedule:alone*3,core")
        if arg.startswith("@ms:"):
            return ScheduleDetector(timed=parse_timed(arg[4:]))
        return ScheduleDetector(ticks=parse_ticks(arg))


FIXED = FixedFactory()
SCHEDULE = ScheduleFactory()
