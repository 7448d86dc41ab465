"""The monitor's decisions, step by step with a scripted detector and a fake clock: which
sharing matters to which adversary, switching to hardened at once, hold-down before fast,
errors meaning hardened, the events log and the time spent in each mode."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pytest

from leakdbt.contract.model import Adversary
from leakdbt.dbt.dispatch import Mode
from leakdbt.monitor.monitor import Monitor
from leakdbt.plugin_api import CoTenant, Tenancy


@dataclass
class FakeDispatcher:
    mode: Mode = Mode.HARDENED
    calls: list[Mode] = field(default_factory=list)

    def set_mode(self, mode: Mode) -> None:
        self.calls.append(mode)
        self.mode = mode


class Script:
    """A detector answering from a list: a shares kind, None (alone) or an exception."""

    def __init__(self, answers: list[str | None | Exception]) -> None:
        self.answers = list(answers)

    def observe(self) -> Tenancy:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return Tenancy(evidence="nobody")
        return Tenancy((CoTenant(answer, pid=42, name="busy", cpu=0),), evidence="seen")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(answers: list[str | None | Exception], adversary: Adversary = Adversary.SAME_CORE,
        hold_ms: float = 30, step_ms: float = 10) -> tuple[list[Mode], FakeDispatcher,
                                                           Monitor, list[dict]]:
    clock = Clock()
    dispatcher = FakeDispatcher()
    events = io.StringIO()
    monitor = Monitor(Script(answers), dispatcher, adversary, poll_ms=step_ms,  # type: ignore[arg-type]
                      hold_ms=hold_ms, events=events, clock=clock)
    modes = []
    for _ in answers:
        modes.append(monitor.step())
        clock.now += step_ms / 1000
    monitor.stop()
    return modes, dispatcher, monitor, [json.loads(x) for x in events.getvalue().splitlines()]


H, F = Mode.HARDENED, Mode.FAST


def test_alone_at_start_runs_fast_and_a_neighbour_switches_at_once() -> None:
    modes, d, m, events = run([None, None, "core", None])
    assert modes[:3] == [F, F, H]
    assert d.calls == [F, H]
    assert [(e["mode"], e["initial"]) for e in events] == [("fast", True), ("hardened", False)]
    assert events[1]["cotenants"][0]["pid"] == 42 and "core" in events[1]["reason"]
    assert m.stats.switches == 1


def test_back_to_fast_only_after_the_hold_down() -> None:
    # hold-down 30 ms, one poll every 10 ms: the neighbour is last seen at 0 ms, the quiet
    # polls at 10 and 20 ms stay hardened, the one at 30 ms goes fast
    modes, d, m, events = run(["core", None, None, None, None, "core", None], hold_ms=30)
    assert modes == [H, H, H, F, F, H, H]
    assert d.calls == [F, H]  # it starts hardened: nothing to switch at first
    assert m.stats.switches == 2
    assert [e["mode"] for e in events] == ["hardened", "fast", "hardened"]


@pytest.mark.parametrize(("adversary", "shares", "expected"), [
    (Adversary.SAME_CORE, "core", H), (Adversary.SAME_CORE, "cache", F),
    (Adversary.SAME_CORE, "machine", F), (Adversary.CO_RESIDENT, "core", H),
    (Adversary.CO_RESIDENT, "cache", H), (Adversary.CO_RESIDENT, "machine", F),
])
def test_the_adversary_decides_which_sharing_matters(adversary: Adversary, shares: str,
                                                     expected: Mode) -> None:
    modes, *_ = run([None, shares], adversary, hold_ms=0)
    assert modes == [F, expected]


def test_a_detector_error_means_hardened() -> None:
    modes, _, m, events = run([None, OSError("proc gone"), None, None, None, None], hold_ms=30)
    assert modes == [F, H, H, H, F, F]
    assert m.stats.errors == 1
    assert "detector error (OSError: proc gone)" in events[1]["reason"]


def test_time_in_each_mode_adds_up() -> None:
    _, _, m, _ = run([None, None, "core", "core", None, None, None, None], hold_ms=20)
    seconds = m.stats.seconds
    assert seconds["fast"] == pytest.approx(0.02 + 0.03) and seconds["hardened"] == \
        pytest.approx(0.03)
    assert m.report()["switches"] == 2
