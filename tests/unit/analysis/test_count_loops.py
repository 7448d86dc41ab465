"""analyze's loop-bound counting runs (leakdbt.analysis.loops.count_loops): one run that
suppresses every watched loop's secret exit, then a run of its own for each loop that run
never entered (a loop run earlier, with its exit suppressed, can end the run first), at most
``recounts`` of them; the reasons say what happened.  The runs are faked here: each says
which loops it entered (with the counts they gave) and how it ended.  The real thing:
tests/integration/test_loop_order.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from leakdbt.analysis.loops import Count, Counted, LoopCounter, count_loops


class FakeCounter:
    """A counting run's counter: the loops it entered, with their trip counts."""

    def __init__(self, entered: dict[str, tuple[int, ...]]) -> None:
        self.seen = entered

    def trips(self, name: str) -> tuple[int, ...]:
        return self.seen.get(name, ())

    def inner_trips(self, name: str) -> dict[int, int]:
        return {0x10: 3} if name in self.seen else {}

    def entered(self, name: str) -> bool:
        return name in self.seen

    def unknown(self, name: str, ended: str = "") -> str:
        return f"entered, no count ({ended})"


def runs_of(program: dict[frozenset[str], tuple[dict[str, tuple[int, ...]], str]]
            ) -> tuple[list[list[str]], Count]:
    """A fake counting run: for the watched set, what it entered and how it ended."""
    made: list[list[str]] = []

    def count(names: Sequence[str]) -> tuple[LoopCounter | None, str]:
        made.append(list(names))
        entered, ended = program[frozenset(names)]
        return cast(LoopCounter, FakeCounter(entered)), ended
    return made, count


def test_one_run_when_it_reaches_every_loop() -> None:
    made, count = runs_of({frozenset("ab"): ({"a": (4, 5), "b": (16,)}, "")})
    got = count_loops(["a", "b"], count)
    assert made == [["a", "b"]]
    assert (got.runs, got.alone) == (1, [])
    assert got.trips == {"a": (4, 5), "b": (16,)}
    assert got.inner == {"a": {0x10: 3}, "b": {0x10: 3}}


def test_a_loop_the_shared_run_missed_is_counted_alone() -> None:
    """a's suppressed exit makes the program fault inside a: b, run later, is never
    entered; counted alone (a's exit not suppressed), b gets its count."""
    fault = "guest killed by SIGSEGV at a+0x16"
    made, count = runs_of({frozenset("ab"): ({"a": ()}, fault),
                           frozenset("b"): ({"b": (16,)}, "")})
    got = count_loops(["a", "b"], count)
    assert made == [["a", "b"], ["b"]]
    assert (got.runs, got.alone) == (2, ["b"])
    assert got.trips == {"a": (), "b": (16,)}
    assert got.unknown["a"] == f"entered, no count ({fault})"


def test_a_loop_no_run_reaches_says_so() -> None:
    made, count = runs_of({frozenset("ab"): ({"a": (3,)}, "exit status 3"),
                           frozenset("b"): ({}, "exit status 3")})
    got = count_loops(["a", "b"], count)
    assert got.trips["b"] == ()
    assert got.unknown["b"] == ("neither the counting run nor one counting it alone reached "
                                "it (it ended: exit status 3)")


def test_a_single_loop_is_not_counted_twice() -> None:
    made, count = runs_of({frozenset("a"): ({}, "")})
    got = count_loops(["a"], count)
    assert made == [["a"]]
    assert got.runs == 1
    assert got.unknown["a"] == "the counting run never reached it"


def test_the_runs_counting_loops_alone_are_capped() -> None:
    names = [f"l{i}" for i in range(5)]
    program = {frozenset(names): ({"l0": ()}, "a fault")}
    program |= {frozenset([n]): ({n: (7,)}, "") for n in names[1:]}
    made, count = runs_of(program)
    got = count_loops(names, count, recounts=2)
    assert made == [names, ["l1"], ["l2"]]
    assert got.runs == 3 and got.alone == ["l1", "l2"]
    assert got.trips["l1"] == got.trips["l2"] == (7,)
    for n in ("l3", "l4"):
        assert got.trips[n] == ()
        assert got.unknown[n] == (
            "the counting run never reached it (it ended: a fault; a loop run before it, with "
            "its exit suppressed, may have changed what the program did next), and the 2 runs "
            "counting such loops alone were spent")


def test_nothing_counted_is_empty() -> None:
    assert Counted().runs == 0 and Counted().trips == {}
