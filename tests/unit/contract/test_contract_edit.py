"""Adding regions to a contract's text: the user's comments and layout survive, the result
is a valid contract with the new regions, and adding them again changes nothing."""

from __future__ import annotations

import pytest

from leakdbt.contract import loads
from leakdbt.contract.edit import RegionEntry, add_regions
from leakdbt.errors import ContractError

TEXT = """\
# A contract a person wrote.
version = 1

[[secret]]   # the key
name = "k"
argv = 1
length = 4

[protect]
adversary = "co-resident"  # who we fear
functions = ["f"]

# Checking: run it twice.
[check]
trials = 2
"""


def test_regions_go_after_protect_and_everything_else_stays() -> None:
    text, added = add_regions(TEXT, [RegionEntry("f+0x10", "branch", "a jne on the key"),
                                     RegionEntry("f+0x20", "table")])
    assert [e.at for e in added] == ["f+0x10", "f+0x20"]
    before, _, after = text.partition('[[protect.region]]\nat = "f+0x10"')
    assert before == TEXT.split("# Checking")[0]  # untouched up to the insertion
    assert after.endswith("\n\n# Checking: run it twice.\n[check]\ntrials = 2\n")
    c = loads(text)
    assert [(r.at.symbol, r.at.offset, r.kind.value if r.kind else None, r.why)
            for r in c.protect.regions] == [("f", 0x10, "branch", "a jne on the key"),
                                            ("f", 0x20, "table", "")]


def test_adding_the_same_regions_again_changes_nothing() -> None:
    once, _ = add_regions(TEXT, [RegionEntry("f+0x10", "branch")])
    twice, added = add_regions(once, [RegionEntry("f+0x10", "branch"),
                                      RegionEntry("f+0x10", "branch")])
    assert twice == once and added == []


def test_protect_last_appends_at_the_end() -> None:
    text = TEXT.split("# Checking")[0].rstrip() + "\n"
    out, _ = add_regions(text, [RegionEntry("f", "divide", 'quote " and \\ kept')])
    assert out.startswith(text.rstrip("\n"))
    assert loads(out).protect.regions[0].why == 'quote " and \\ kept'


def test_a_text_that_is_not_a_contract_is_refused() -> None:
    with pytest.raises(ContractError, match="protect: missing"):
        add_regions('version = 1\n', [RegionEntry("f", "branch")])
