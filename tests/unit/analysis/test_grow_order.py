"""The growing order of leakdbt/analysis/grow.py (suggested, enclosing loops innermost first,
the whole function, the call sites), its record of every attempt, the comment a refused
region is written with, and the region shapes it offers on real control flow."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from leakdbt.analysis.grow import (
    CALL_SITE,
    FUNCTION,
    LOOP,
    SUGGESTED,
    Candidates,
    call_site_branch,
    enclosing_loops,
    function_branch,
    grow,
    refused_comment,
)
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.dbt.cfg import FunctionCFG, function_cfg
from leakdbt.dbt.region import form_region
from leakdbt.loader.elf import load_image
from tests.conftest import binary

BRANCH = RegionEntry("f+0x10", "branch")
INNER = RegionEntry("f+0x8", "loop", bound=4)
OUTER = RegionEntry("f+0x4", "loop", bound=16)
WHOLE = RegionEntry("f", "branch")
SITE_A = RegionEntry("g+0x20", "branch")
SITE_B = RegionEntry("h+0x30", "branch")


class Judge:
    """Accepts the regions in ``accept``; records what it was asked, in order."""

    def __init__(self, *accept: RegionEntry) -> None:
        self.accept = set(accept)
        self.asked: list[RegionEntry] = []

    def __call__(self, entries: Sequence[RegionEntry]) -> list[tuple[bool, str]]:
        self.asked += entries
        return [(e in self.accept, "" if e in self.accept else f"refused {e.at}")
                for e in entries]


def _offer(loops: list[RegionEntry | str] | None = None,
           function: RegionEntry | None = WHOLE,
           sites: list[RegionEntry | str] | None = None) -> Candidates:
    return Candidates([INNER, OUTER] if loops is None else loops, function,
                      [SITE_A] if sites is None else sites)


def test_an_accepted_suggestion_is_kept_and_nothing_else_is_measured() -> None:
    def offer() -> Candidates:
        raise AssertionError("growing must not look further")

    g = grow(BRANCH, ["f+0x12"], Judge(BRANCH), offer)
    assert g.chosen == (BRANCH,) and not g.grown and not g.refused
    assert [(a.step, a.accepted) for a in g.attempts] == [(SUGGESTED, True)]


def test_the_innermost_loop_comes_first() -> None:
    judge = Judge(INNER, OUTER, WHOLE)
    g = grow(BRANCH, [], judge, _offer)
    assert g.chosen == (INNER,) and g.grown
    assert judge.asked == [BRANCH, INNER]


def test_then_the_outer_loop_then_the_function_then_the_call_sites() -> None:
    for accept, want, steps in (
            (OUTER, (OUTER,), [SUGGESTED, LOOP, LOOP]),
            (WHOLE, (WHOLE,), [SUGGESTED, LOOP, LOOP, FUNCTION]),
            (SITE_A, (SITE_A,), [SUGGESTED, LOOP, LOOP, FUNCTION, CALL_SITE])):
        g = grow(BRANCH, [], Judge(accept), _offer)
        assert g.chosen == want, accept
        assert [a.step for a in g.attempts] == steps
        assert [a.accepted for a in g.attempts] == [False] * (len(steps) - 1) + [True]
        assert g.attempts[0].reason == "refused f+0x10"


def test_every_call_site_must_be_accepted() -> None:
    both = grow(BRANCH, [], Judge(SITE_A, SITE_B), lambda: _offer(sites=[SITE_A, SITE_B]))
    assert both.chosen == (SITE_A, SITE_B)
    one = grow(BRANCH, [], Judge(SITE_A), lambda: _offer(sites=[SITE_A, SITE_B]))
    assert one.refused and one.chosen == ()
    unformed = grow(BRANCH, [], Judge(SITE_A),
                    lambda: _offer(sites=[SITE_A, "no branch region of g holds its call"]))
    assert unformed.refused
    assert ("call site", None, False, "no branch region of g holds its call") in \
        [(a.step, a.entry, a.accepted, a.reason) for a in unformed.attempts]


def test_what_could_not_be_tried_is_recorded_with_its_reason() -> None:
    g = grow(BRANCH, ["f+0x12"], Judge(), lambda: _offer(
        loops=["the loop at f+0x8 ended no entry in the run: no bound"], function=None,
        sites=[]))
    assert g.refused
    assert [(a.step, a.entry, a.reason) for a in g.attempts] == [
        (SUGGESTED, BRANCH, "refused f+0x10"),
        (LOOP, None, "the loop at f+0x8 ended no entry in the run: no bound"),
        (FUNCTION, None, "no branch region spans the function from its entry"),
        (CALL_SITE, None, "the run saw no call to the function")]
    assert g.refusal() == (
        "suggested f+0x10: refused f+0x10; enclosing loop: the loop at f+0x8 ended no entry "
        "in the run: no bound; whole function: no branch region spans the function from its "
        "entry; call site: the run saw no call to the function")


def test_a_region_equal_to_an_earlier_attempt_is_not_asked_again() -> None:
    judge = Judge()
    grow(BRANCH, [], judge, lambda: _offer(loops=[], function=BRANCH, sites=[]))
    assert judge.asked == [BRANCH]


def test_a_refused_region_is_written_under_its_comment_and_the_contract_reads() -> None:
    g = grow(BRANCH, [], Judge(), lambda: _offer(sites=[]))
    entry = RegionEntry(BRANCH.at, BRANCH.kind, "why", comment=refused_comment(g))
    text, added = add_regions("version = 1\n\n[protect]\nadversary = \"remote\"\n", [entry])
    assert added == [entry]
    lines = text.splitlines()
    start = lines.index("[[protect.region]]")
    comment = [line for line in lines[:start] if line.startswith("# ")]
    assert comment and all(len(line) <= 94 for line in comment)
    said = " ".join(line[2:] for line in comment)
    assert said == refused_comment(g)
    assert said.startswith("leakdbt analyze: no pass accepts this region")
    assert "suggested f+0x10: refused f+0x10; enclosing loop f+0x8: refused f+0x8" in said
    assert tomllib.loads(text)["protect"]["region"] == [
        {"at": "f+0x10", "kind": "branch", "why": "why"}]


def _cfg(program: str, function: str) -> FunctionCFG:
    image = load_image(binary("static", program))
    sym = image.symbol(function)
    assert sym is not None
    return function_cfg(image, sym)


def _name(cfg: FunctionCFG) -> Callable[[int], str]:
    return lambda address: f"{cfg.name}+{address - cfg.entry:#x}"


def test_the_loops_around_a_block_innermost_first(built: Path) -> None:
    """ct_modexp: the exponent-bit branch at modexp+0x2f is in the one loop, headed at
    modexp+0x20; the block before the loop is in none."""
    cfg = _cfg("ct_modexp", "modexp")
    block = cfg.block_at(cfg.entry + 0x2F)
    assert block is not None
    loops = enclosing_loops(cfg, block.start, _name(cfg))
    assert [(loop.entry - cfg.entry, loop.kind) for loop in loops] == [(0x20, "loop")]
    assert enclosing_loops(cfg, cfg.entry, _name(cfg)) == []


def test_the_whole_function_and_the_call_site_branch(built: Path) -> None:
    """switch_loop's step() starts with its branch, whose region is the whole function (both
    arms return); main's call to step is held by the branch region of a guard above it."""
    cfg = _cfg("switch_loop", "step")
    assert function_branch(cfg, cfg.entry, _name(cfg)) == "step+0x0"
    main = _cfg("switch_loop", "main")
    call = next(b for b in main.blocks.values()
                if b.last.mnemonic == "call" and b.last.target == cfg.entry)
    at = call_site_branch(main, call.start, _name(main))
    assert at is not None
    start = main.entry + int(at.split("+")[1], 16)
    assert main.dominates(start, call.start) and main.blocks[start].last.mnemonic[0] == "j"
    assert call.start in form_region(main, start, at, branch=True).blocks
    # the innermost: no branch between it and the call holds the call in its region
    assert call_site_branch(main, main.entry, _name(main)) is None  # the entry: none above
    region_cfg = _cfg("region_loop", "tiny_region")
    assert function_branch(region_cfg, region_cfg.entry, _name(region_cfg)) == \
        "tiny_region+0x0"
