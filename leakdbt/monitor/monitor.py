"""The runtime monitor: polls a tenancy detector off the emulation thread and switches the
contract's regions between the fast and the hardened cache.

Which sharing matters follows the contract's adversary: a ``same-core`` adversary needs our
core (``core``: our logical CPU or its SMT sibling); a ``co-resident`` one also gets at us
through the last-level cache (``cache``).  Sharing only the machine matters to neither.
(A ``remote`` adversary cannot be detected: the contract mapping makes ``adaptive`` mean
``always`` against it, and no monitor runs.)

Conservative by design:

- the first observation, made before the guest starts, picks the starting cache;
- a co-tenant that matters switches to hardened at once — the translator installs the entry
  jumps at its next safe point, so the next region entry runs hardened;
- back to fast only after no co-tenant that matters was seen for the hold-down time;
- a detector that fails counts as a co-tenant: hardened.

In steady state the monitor adds no per-block work: it is a thread that sleeps between
polls, and the guest enters regions through entry jumps (docs/translation.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from leakdbt.contract.model import Adversary
from leakdbt.dbt.mode import Mode
from leakdbt.plugin_api import CoTenant, Tenancy, TenancyDetector

MATTERS: dict[Adversary, frozenset[str]] = {
    Adversary.SAME_CORE: frozenset({"core"}),
    Adversary.CO_RESIDENT: frozenset({"core", "cache"}),
    Adversary.REMOTE: frozenset(),
}
"""Which kinds of sharing (plugin_api.SHARES) let each adversary observe the program."""

DEFAULT_POLL_MS = 20  # procfs scans in about 1 ms on an idle machine (3 ms for 400 tasks)
DEFAULT_HOLD_MS = 200


@dataclass
class MonitorStats:
    """What --stats reports about the monitor."""

    polls: int = 0
    switches: int = 0
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"fast": 0.0, "hardened": 0.0})


class ModeSwitch(Protocol):
    """What the monitor switches: the translator of ``exec --mode adaptive``
    (:class:`~leakdbt.dbt.dispatch.Dispatcher`) or the mode file of hardened files
    (:class:`~leakdbt.monitor.modefile.ModeFile`, ``leakdbt monitor``)."""

    mode: Mode

    def set_mode(self, mode: Mode) -> None: ...


class Monitor:
    """Watches ``detector`` every ``poll_ms`` and sets ``translator``'s mode (module doc)."""

    def __init__(self, detector: TenancyDetector, translator: ModeSwitch, adversary: Adversary,
                 poll_ms: float = DEFAULT_POLL_MS, hold_ms: float = DEFAULT_HOLD_MS,
                 events: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.detector = detector
        self.translator = translator
        self.matters = MATTERS[adversary]
        self.poll = poll_ms / 1000
        self.hold = hold_ms / 1000
        self.events = events
        self.clock = clock
        self.stats = MonitorStats()
        self.mode = translator.mode
        self._started = clock()
        self._since = self._started  # when the current mode began
        self._last_seen: float | None = None  # when a co-tenant that matters was last seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one decision -----------------------------------------------------------------------

    def step(self) -> Mode:
        """Observe once and switch if needed; returns the mode now wanted."""
        now = self.clock()
        self.stats.polls += 1
        try:
            tenancy = self.detector.observe()
            seen = [c for c in tenancy.cotenants if c.shares in self.matters]
            reason = (f"{len(seen)} co-tenant(s) sharing {_shares(seen)}" if seen
                      else "no co-tenant that the adversary needs")
        except Exception as e:  # noqa: BLE001 - any detector failure means: assume the worst
            self.stats.errors += 1
            tenancy, seen = Tenancy(evidence=f"error: {e}"), []
            reason = f"detector error ({type(e).__name__}: {e}): assuming a co-tenant"
            self._last_seen = now
        if seen:
            self._last_seen = now
        if self._last_seen == now:
            want = Mode.HARDENED
        elif self.mode is Mode.HARDENED and self._last_seen is not None \
                and now - self._last_seen < self.hold:
            want = Mode.HARDENED  # hold-down: the neighbour may be back
            reason = (f"no co-tenant for {(now - self._last_seen) * 1000:.0f} ms of "
                      f"{self.hold * 1000:.0f} ms hold-down")
        else:
            want = Mode.FAST
        if want is not self.mode or self.stats.polls == 1:  # the first decision is logged
            self._switch(want, now, reason, seen, tenancy)
        return want

    def _switch(self, mode: Mode, now: float, reason: str, seen: list[CoTenant],
                tenancy: Tenancy) -> None:
        self.stats.seconds[self.mode.value] += now - self._since
        self._since = now
        first = self.stats.polls == 1
        if mode is not self.mode or mode is not self.translator.mode:
            self.translator.set_mode(mode)
            self.stats.switches += 0 if first else 1
        self.mode = mode
        if self.events is not None:
            self.events.write(json.dumps({
                "time": round(now - self._started, 6), "mode": mode.value, "reason": reason,
                "initial": first,
                "cotenants": [{"shares": c.shares, "pid": c.pid, "name": c.name,
                               "cpu": c.cpu, "evidence": c.evidence} for c in seen],
                "evidence": tenancy.evidence}) + "\n")
            self.events.flush()

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Poll on a daemon thread (call :meth:`step` once before, to pick the starting
        cache while the guest is not running yet)."""
        self._thread = threading.Thread(target=self._run, name="leakdbt-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self.step()

    def stop(self) -> None:
        """Stop polling (the guest has ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = self.clock()
        self.stats.seconds[self.mode.value] += now - self._since
        self._since = now

    def report(self) -> dict[str, object]:
        """Figures for --stats."""
        return {"polls": self.stats.polls, "switches": self.stats.switches,
                "detector errors": self.stats.errors,
                "seconds fast": round(self.stats.seconds["fast"], 4),
                "seconds hardened": round(self.stats.seconds["hardened"], 4)}


def _shares(seen: list[CoTenant]) -> str:
    kinds = sorted({c.shares for c in seen})
    names = ", ".join(sorted({f"{c.name or '?'}[{c.pid}]" if c.pid else c.name or "?"
                              for c in seen})[:4])
    return f"{'/'.join(kinds)}: {names}"
